"""MAE pretraining step throughput on CPU: fp32 eager vs the fast path (bf16 autocast + torch.compile).

Both use the attention the engine picks (``run.attention: auto``): fused SDPA for fp32, the explicit softmax for bf16
on CPU. The fast path with fused SDPA is measured as well (``img_per_s_fast_fused_attention``) to show why.

ViT-S/16 MAE (256-d x 4-block decoder, as training/configs/pretrain_small.yaml), 224 px, batch 32, AdamW. Also:
FLOPs per image of a train step (torch.utils.flop_counter), a matmul peak measured in the same process (so the
achieved GFLOP/s can be read as a fraction of what this CPU does at all), and the shard loader's throughput against
what the step consumes.

    python benchmarks/bench_pretrain.py                          # synthetic 4-band 11-bit shards
    python benchmarks/bench_pretrain.py --shards outputs/maple_shards --workers 2

The last line is one JSON object with img_per_s_fp32, img_per_s_fast, fast_over_plain,
fraction_of_matmul_peak_fp32, loader_over_step and the numbers behind them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from training.mae import build_mae
from training.pack import pack
from training.pretrain import autocast_context, cpu_supports_bf16, resolve_attention, set_attention
from training.shards import AugmentConfig, ShardDataset, ShardSampler

MODEL_CFG = {"encoder": "arctic_mae_vit_small_patch16_224", "decoder_embed_dim": 256, "decoder_depth": 4,
             "decoder_num_heads": 8, "mask_ratio": 0.75, "norm_pix_loss": True}
BANDS = ("blue", "green", "red", "nir")


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


def make_step(model, optimizer, precision: str):
    def step(images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        with autocast_context(precision, images.device):
            loss, _, _ = model(images, valid)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def step_throughput(precision: str, compiled: bool, batch: int, img_size: int, warmup: int, steps: int,
                    attention: str = "auto"):
    """(median img/s over timed steps, seconds spent in warm-up incl. compilation)"""
    torch.manual_seed(0)
    model = build_mae(MODEL_CFG, BANDS, img_size)
    set_attention(model, resolve_attention(attention, precision, torch.device("cpu")))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    forward = torch.compile(model) if compiled else model
    step = make_step(forward, optimizer, precision)
    images = torch.randn(batch, len(BANDS), img_size, img_size)
    valid = torch.ones(batch, img_size, img_size, dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(warmup):
        step(images, valid)
    warm_s = time.perf_counter() - start
    rates = []
    for _ in range(steps):
        start = time.perf_counter()
        step(images, valid)
        rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates), warm_s


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
    total = batches
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    seen = 0
    epoch = 0
    while seen < total:
        try:
            next(iterator)
            seen += 1
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            iterator = iter(loader)
    return seen * batch / (time.perf_counter() - start)


def synthetic_shards(root: Path, count: int, size: int) -> Path:
    """``count`` 4-band 11-bit chips of ``size`` px, packed as training.pack writes them."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    chips = root / "chips"
    chips.mkdir(parents=True)
    for i in range(count):
        data = rng.integers(1, 2048, size=(4, size, size), dtype=np.uint16)
        with rasterio.open(chips / f"chip_{i:04d}.tif", "w", driver="GTiff", width=size, height=size, count=4,
                           dtype="uint16", transform=from_origin(0, size, 1, 1)) as dst:
            dst.write(data)
    pack(root / "shards", chip_dir=chips, bands=list(BANDS), bit_depth=11, shard_size=64)
    return root / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader measurement")
    parser.add_argument("--shards", type=Path, default=None, help="shard folder (default: synthetic 256 px)")
    parser.add_argument("--no-compile", action="store_true", help="fast path = bf16 autocast only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fast_precision = "bf16" if cpu_supports_bf16() else "fp32"

    peak_fp32 = matmul_peak_gflops(torch.float32)
    peak_bf16 = matmul_peak_gflops(torch.bfloat16)
    flops = train_flops_per_image(args.img_size)
    plain, _ = step_throughput("fp32", False, args.batch, args.img_size, args.warmup, args.steps)
    print(f"fp32 eager: {plain:.2f} img/s", flush=True)
    fast, compile_s = step_throughput(fast_precision, not args.no_compile, args.batch, args.img_size, args.warmup,
                                      args.steps)
    fast_label = f"{fast_precision} autocast{'' if args.no_compile else ' + compile'}"
    fast_attention = resolve_attention("auto", fast_precision, torch.device("cpu"))
    print(f"{fast_label}, {fast_attention} attention: {fast:.2f} img/s", flush=True)
    fast_fused, _ = step_throughput(fast_precision, not args.no_compile, args.batch, args.img_size, args.warmup,
                                    args.steps, attention="fused")
    print(f"{fast_label}, fused attention: {fast_fused:.2f} img/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or synthetic_shards(Path(tmp), count=128, size=256)
        loader = loader_throughput(shards, args.batch, args.img_size, args.workers, batches=8)
    print(f"loader ({args.workers} workers): {loader:.1f} img/s", flush=True)

    result = {
        "model": "MAE ViT-S/16 (decoder 256x4)", "img_size": args.img_size, "batch": args.batch,
        "threads": torch.get_num_threads(), "fast_path": f"{fast_precision} autocast"
        + ("" if args.no_compile else " + torch.compile"),
        "attention_fp32": resolve_attention("auto", "fp32", torch.device("cpu")),
        "attention_fast": fast_attention,
        "img_per_s_fp32": round(plain, 2), "img_per_s_fast": round(fast, 2), "fast_over_plain": round(fast / plain, 2),
        "img_per_s_fast_fused_attention": round(fast_fused, 2),
        "train_gflop_per_img": round(flops / 1e9, 2),
        "achieved_gflops_fp32": round(plain * flops / 1e9, 1), "achieved_gflops_fast": round(fast * flops / 1e9, 1),
        "matmul_peak_gflops_fp32": round(peak_fp32, 1), "matmul_peak_gflops_bf16": round(peak_bf16, 1),
        "fraction_of_matmul_peak_fp32": round(plain * flops / 1e9 / peak_fp32, 3),
        "fraction_of_matmul_peak_fast": round(fast * flops / 1e9 / (peak_bf16 if fast_precision == "bf16"
                                                                     else peak_fp32), 3),
        "warmup_s_fast_incl_compile": round(compile_s, 1),
        "loader_img_per_s": round(loader, 1), "loader_workers": args.workers,
        "loader_over_step": round(loader / max(plain, fast), 2),
        "loader_data": str(args.shards) if args.shards else "synthetic 4-band 11-bit 256 px",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
