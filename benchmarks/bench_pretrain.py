"""MAE pretraining step throughput on CPU, arms paired: every arm is built (and compiled) first, then single steps
alternate between arms round after round, and each arm is reported as the median of its per-round ratio to a
reference arm (plus the 25-75 % spread). On a shared, noisy machine a slow spell hits every arm of a round alike, so
the ratios hold where absolute img/s do not.

Arms (ViT-S/16 MAE, 256-d x 4-block decoder as training/configs/pretrain_small.yaml, 3 bands, 224 px, batch 32,
AdamW; our arms run the engine's own step, ``training.pretrain._train_step``):
  fp32_eager, fp32_compile, bf16_eager, bf16_compile (attention as ``run.attention: auto`` picks: the explicit
  softmax for bf16 on CPU), bf16_compile_fused (fused SDPA), and official_fp32: facebookresearch/mae's own
  ``models_mae.MaskedAutoencoderViT`` step from a local checkout given by ``--official-mae PATH`` (never vendored;
  skipped when absent). bf16 arms are skipped on CPUs without avx512_bf16/AMX.
Also: FLOPs per image of a train step (torch.utils.flop_counter), a matmul peak measured in the same process
(``fraction_of_matmul_peak_fp32``), and the shard loader with 1 worker against the fastest step
(``loader_over_step``).

Data regime: synthetic tensors for the steps (no nodata: the engine's cheap path); for the loader, 128 synthetic
3-band 11-bit 256 px chips packed by training.pack (or ``--shards``).

    python benchmarks/bench_pretrain.py --official-mae /tmp/mae          # git clone facebookresearch/mae /tmp/mae
    python benchmarks/bench_pretrain.py --rounds 4 --no-compile          # quick look

Targets (asserted; exit 1 when one is missed): fp32 eager >= 0.97 x official fp32, the fast path (bf16 + compile,
auto attention; fp32 + compile without bf16) >= 1.6 x official fp32, loader_over_step >= 5 with 1 worker. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from training.mae import build_mae
from training.pack import pack
from training.pretrain import (
    DistributedContext,
    _train_step,
    resolve_attention,
    set_attention,
)
from training.runtime import cpu_supports_bf16
from training.shards import AugmentConfig, ShardDataset, ShardSampler

MODEL_CFG = {"encoder": "arctic_mae_vit_small_patch16_224", "decoder_embed_dim": 256, "decoder_depth": 4,
             "decoder_num_heads": 8, "mask_ratio": 0.75, "norm_pix_loss": True}
BANDS = ("red", "green", "blue")  # official MAE's patchify is 3-channel only
TARGETS = {"fp32_eager_over_official_fp32": 0.97, "fast_over_official_fp32": 1.6, "loader_over_step": 5.0}


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, reps: int = 10) -> float:
    """Best-of GFLOP/s of a square matmul in ``dtype``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))


def engine_arm(precision: str, compiled: bool, attention: str, batch: int, img_size: int) -> Callable[[], None]:
    """One optimizer step of ``training.pretrain`` (its loss normalisation, masking generator, AdamW)."""
    torch.manual_seed(0)
    model = build_mae(MODEL_CFG, BANDS, img_size)
    set_attention(model, resolve_attention(attention, precision, torch.device("cpu")))
    optimizer = _optimizer(model)
    train_model = torch.compile(model) if compiled else model
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ctx = DistributedContext()
    mask_gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, len(BANDS), img_size, img_size)
    valid = torch.ones(batch, img_size, img_size, dtype=torch.bool)

    def step() -> None:
        _train_step(train_model, iter([(images, valid)]), optimizer, scaler, 1, precision, ctx, 0.0, mask_gen)

    return step


def load_official_mae(path: Path):
    """``models_mae`` from a facebookresearch/mae checkout, run as-is on today's numpy/timm.

    Two shims, applied before its import and touching no computation: ``np.float`` (removed in numpy 1.24, used by
    its sin-cos position embedding) and timm's ``Block`` accepting the ``qk_scale=None`` argument timm 0.3 had.
    """
    import timm.models.vision_transformer as vit

    if not (path / "models_mae.py").is_file():
        raise FileNotFoundError(f"--official-mae {path}: no models_mae.py (git clone facebookresearch/mae there)")
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]

    class Block(vit.Block):
        def __init__(self, *args, qk_scale=None, **kwargs):
            if qk_scale is not None:
                raise ValueError("qk_scale other than None is not supported")
            super().__init__(*args, **kwargs)

    original = vit.Block
    vit.Block = Block
    sys.path.insert(0, str(path))
    try:
        return importlib.import_module("models_mae")
    finally:
        vit.Block = original
        sys.path.remove(str(path))


def official_arm(models_mae, batch: int, img_size: int) -> Callable[[], None]:
    """Official MAE's train step in fp32 (engine_pretrain.train_one_epoch without its lr/logging bookkeeping)."""
    torch.manual_seed(0)
    model = models_mae.MaskedAutoencoderViT(
        img_size=img_size, patch_size=16, in_chans=len(BANDS), embed_dim=384, depth=12, num_heads=6,
        decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), norm_pix_loss=True)
    optimizer = _optimizer(model)
    images = torch.randn(batch, len(BANDS), img_size, img_size)

    def step() -> None:
        loss, _, _ = model(images, mask_ratio=0.75)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # official logs loss.item() every step

    return step


def paired_rounds(arms: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of every arm, round by round; the arm order rotates each round."""
    names = list(arms)
    for name in names:
        start = time.perf_counter()
        for _ in range(warmup):
            arms[name]()
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names),
              file=sys.stderr, flush=True)
    return times


def ratio_stats(times: dict[str, list[float]], arm: str, reference: str) -> dict[str, float]:
    """Median and 25/75 % quantiles of the per-round speed-ups ``t(reference) / t(arm)``."""
    ratios = [ref / own for ref, own in zip(times[reference], times[arm])]
    q25, _, q75 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": round(statistics.median(ratios), 3), "q25": round(q25, 3), "q75": round(q75, 3)}


def train_flops_per_image(img_size: int, batch: int = 2) -> float:
    """FLOPs of forward + backward of one image (matmuls/convolutions, as counted by torch)."""
    model = build_mae(MODEL_CFG, BANDS, img_size)
    images = torch.randn(batch, len(BANDS), img_size, img_size)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = model(images)
        loss.backward()
    return counter.get_total_flops() / batch


def loader_throughput(shards: Path, batch: int, img_size: int, workers: int, batches: int) -> float:
    dataset = ShardDataset(shards, AugmentConfig(size=img_size))
    sampler = ShardSampler(dataset.shard_counts, batch_size=batch, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    seen, epoch = 0, 0
    while seen < batches:
        try:
            next(iterator)
            seen += 1
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            iterator = iter(loader)
    return seen * batch / (time.perf_counter() - start)


def synthetic_shards(root: Path, count: int, size: int) -> Path:
    """``count`` 3-band 11-bit chips of ``size`` px, packed as training.pack writes them."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    chips = root / "chips"
    chips.mkdir(parents=True)
    for i in range(count):
        data = rng.integers(1, 2048, size=(len(BANDS), size, size), dtype=np.uint16)
        with rasterio.open(chips / f"chip_{i:04d}.tif", "w", driver="GTiff", width=size, height=size,
                           count=len(BANDS), dtype="uint16", transform=from_origin(0, size, 1, 1)) as dst:
            dst.write(data)
    pack(root / "shards", chip_dir=chips, bands=list(BANDS), bit_depth=11, shard_size=64)
    return root / "shards"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds of one step per arm")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers for the loader measurement")
    parser.add_argument("--shards", type=Path, default=None, help="shard folder (default: synthetic 256 px)")
    parser.add_argument("--official-mae", type=Path, default=None, help="local facebookresearch/mae checkout")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile arms")
    parser.add_argument("--arms", default=None, help="comma-separated subset of arms (fp32_eager always runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = cpu_supports_bf16()

    arms: dict[str, Callable[[], None]] = {}
    if args.official_mae is not None:
        arms["official_fp32"] = official_arm(load_official_mae(args.official_mae), args.batch, args.img_size)
    arms["fp32_eager"] = engine_arm("fp32", False, "auto", args.batch, args.img_size)
    if not args.no_compile:
        arms["fp32_compile"] = engine_arm("fp32", True, "auto", args.batch, args.img_size)
    if bf16:
        arms["bf16_eager"] = engine_arm("bf16", False, "auto", args.batch, args.img_size)
        if not args.no_compile:
            arms["bf16_compile"] = engine_arm("bf16", True, "auto", args.batch, args.img_size)
            arms["bf16_compile_fused"] = engine_arm("bf16", True, "fused", args.batch, args.img_size)
    if args.arms:
        keep = {*args.arms.split(","), "fp32_eager"}
        arms = {name: step for name, step in arms.items() if name in keep}
    fast = "bf16_compile" if "bf16_compile" in arms else ("bf16_eager" if bf16 else
                                                          ("fp32_compile" if "fp32_compile" in arms else "fp32_eager"))
    times = paired_rounds(arms, args.rounds, args.warmup)

    peak_fp32 = matmul_peak_gflops(torch.float32)
    peak_bf16 = matmul_peak_gflops(torch.bfloat16) if bf16 else None
    flops = train_flops_per_image(args.img_size)
    img_per_s = {name: round(args.batch / statistics.median(t), 2) for name, t in times.items()}
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or synthetic_shards(Path(tmp), count=128, size=256)
        loader = loader_throughput(shards, args.batch, args.img_size, args.workers, batches=8)

    over_fp32 = {name: ratio_stats(times, name, "fp32_eager") for name in arms if name != "fp32_eager"}
    over_official = ({name: ratio_stats(times, name, "official_fp32") for name in arms if name != "official_fp32"}
                     if "official_fp32" in arms else None)
    result = {
        "model": "MAE ViT-S/16 (decoder 256x4), 3 bands", "img_size": args.img_size, "batch": args.batch,
        "threads": torch.get_num_threads(), "rounds": args.rounds, "fast_path": fast,
        "attention": {name: resolve_attention("fused" if name.endswith("fused") else "auto",
                                              "bf16" if name.startswith("bf16") else "fp32", torch.device("cpu"))
                      for name in arms if name != "official_fp32"},
        "img_per_s_median": img_per_s,
        "over_fp32_eager": over_fp32,
        "over_official_fp32": over_official,
        "train_gflop_per_img": round(flops / 1e9, 2),
        "matmul_peak_gflops_fp32": round(peak_fp32, 1),
        "matmul_peak_gflops_bf16": None if peak_bf16 is None else round(peak_bf16, 1),
        "fraction_of_matmul_peak_fp32": round(img_per_s["fp32_eager"] * flops / 1e9 / peak_fp32, 3),
        "loader_img_per_s": round(loader, 1), "loader_workers": args.workers,
        "loader_over_step": round(loader / max(img_per_s.values()), 2),
        "data": "steps: synthetic tensors, no nodata; loader: " + (str(args.shards) if args.shards
                                                                   else "128 synthetic 3-band 11-bit 256 px chips"),
    }
    checks = {"loader_over_step": result["loader_over_step"]}
    if over_official is not None:
        checks["fp32_eager_over_official_fp32"] = over_official["fp32_eager"]["median"]
        checks["fast_over_official_fp32"] = over_official[fast]["median"]
    missed = {key: value for key, value in checks.items() if value < TARGETS[key]}
    result["targets"] = {key: {"value": value, "target": TARGETS[key], "met": key not in missed}
                         for key, value in checks.items()}
    if over_official is None:
        result["targets_skipped"] = "official MAE arms (no --official-mae PATH)"
    print(json.dumps(result))
    if missed:
        print(f"targets missed: {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
