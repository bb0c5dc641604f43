"""Whole-scene mapping (``evaluation.predict``): speed, speed over a naive loop, memory flatness, seams.

Data regime: synthetic 4-band (blue, green, red, nir) 11-bit GeoTIFF scenes at 0.5 m GSD written here (smooth
blobs + noise, deflate-tiled like vendor products, a nodata collar of 1/8 of the width on the left, as orthorectified
strips have); random-init finetuned-model folders (``save_finetuned``) with the recipes' default heads (UPerNet,
pyramid and decoder 256 channels), 224-px tiles, the default overlap (``run.default_overlap``: tile // 7 = 32 px);
CPU. Speed does not depend on the weights, so random init measures what trained weights would.

- ``km2_per_hour``: ``predict()`` end to end (model load and sha256 check, reads, inference, COGs, polygons) at its
  default settings (precision ``auto``: on a CPU with native bf16, bf16 autocast with the patch embedding in
  float32, else float32; channels-last; strips read ahead) for the tiny and small encoders.
- ``over_naive``: km²/h of ``predict()`` (defaults) over the straightforward loop on the same scene and model
  (non-overlapping windows read one at a time, one window per forward in float32, written window by window). Each
  arm runs once untimed first (oneDNN builds its kernels on a process's first forward of a shape; the warm-up
  seconds are reported); then the arms alternate within each round (ours, naive, ours in float32), and the
  statistic, fixed before any result was seen, is the **median of the per-round paired ratios** naive / ours (each
  pair ran back to back, so load changes on a shared machine hit both sides); min / min and the spread are reported
  beside it. Target >= 2. Also reported: ``float32_over_naive`` (``--precision float32``, same statistic),
  ``default_vs_float32`` (class agreement and probability differences of the default-precision map vs the float32
  map of the same scene) and ``forward_only``: ms per tile of the model alone as each arm runs it (ours: a batch of
  8 under the default precision, channels-last; naive: one float32 tile), alternated, medians, and the bound they
  put on ``over_naive`` with zero I/O and overhead: (naive ms x naive tiles) / (ours ms x our tiles).
- ``over_naive_free_forward`` (not a target): both arms with the 5x5-conv stand-in, whose forward costs ~nothing,
  alternated, same statistic: the pipeline alone, which is what ``over_naive`` tends to as the forward gets cheap
  (a fast GPU with a small model).
- ``peak_rss_gb``: peak resident memory of a child process mapping one scene, a small and a 4x-wider scene
  (16x the pixels); the model is a 5x5-conv stand-in so that the 16k scene fits in minutes: what is measured is the
  pipeline (strip reads, blending buffers, GeoTIFF writes, COG conversion, polygons); a real model adds its
  constant weights and one batch of activations. Target: ratio <= 1.3.
- ``seam_max_abs_diff``: streamed tiles-with-overlap (the default overlap) vs whole-image probabilities of a
  translation-equivariant model (the conv stand-in) on one scene, both sides in float32; any seam shows up as a
  difference. Target <= 1e-3. Also ``seam_max_abs_diff_bf16`` (both sides under bf16 autocast) and
  ``seam_max_abs_diff_overlap_56`` (overlap tile // 4 = 56 px, the previous default).

    python benchmarks/bench_predict.py --quick      # this 2-core machine: 672-px speed scenes, 1k vs 4k memory
    python benchmarks/bench_predict.py --readme     # 1344-px speed scenes, 4k vs 16k memory; writes PREDICT.md
    python benchmarks/bench_predict.py --readme-from evaluation/predict/benchmark.json   # the table only

Prints one JSON object last; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BANDS = ("blue", "green", "red", "nir")
CLASSES = ("background", "feature")
GSD = 0.5
TILE = 224
TARGETS = {"over_naive": 2.0, "peak_rss_ratio": 1.3, "seam_max_abs_diff": 1e-3}
OVER_NAIVE_STATISTIC = "median of per-round paired ratios naive_s / ours_s (after one untimed warm-up run per arm)"


def default_overlap() -> int:
    from evaluation.predict.run import default_overlap as overlap_for

    return overlap_for(TILE)


def write_scene(path: Path, size: int, seed: int = 0, block_rows: int = 512) -> Path:
    """A ``size`` x ``size`` 11-bit scene written strip by strip (never whole in memory); collar = size // 8."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", nodata=0, NBITS=11,
                   crs="EPSG:32606", transform=from_origin(500000, 7800000, GSD, GSD), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", bigtiff="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for i, band in enumerate(BANDS):
            dst.set_band_description(i + 1, band)
        for row in range(0, size, block_rows):
            h = min(block_rows, size - row)
            base = ndimage.gaussian_filter(rng.normal(size=(h, size)), 8)
            base = (base - base.min()) / (np.ptp(base) + 1e-9)
            data = np.stack([300 + 1400 * base * (0.6 + 0.1 * b) + rng.integers(0, 80, (h, size))
                             for b in range(4)]).astype(np.uint16)
            data[:, :, : size // 8] = 0
            dst.write(data, window=Window(0, row, size, h))
    return path


def model_folder(folder: Path, size: str, task: str = "semantic") -> Path:
    """A random-init finetuned-model folder: the recipes' default UPerNet (semantic) or Mask R-CNN (instance)."""
    from arctic_vit.corpus import CorpusContract
    from evaluation.artefact import build_kwargs_from_recipe, save_finetuned
    from evaluation.backbones import build_backbone
    from evaluation.datasets.card import DatasetCard
    from evaluation.models import InstanceSegmentationModel, SemanticSegmentationModel

    torch.manual_seed(0)
    card = DatasetCard(name="bench", format="raster_pairs", root=Path("."), classes=CLASSES, bands=BANDS,
                       bit_depth=11)
    backbone = build_backbone(f"arctic_mae_vit_{size}", card, TILE, weights="none")
    cfg = {"task": task, "model": {"pyramid_channels": 256, "decoder_channels": 256, "use_latlon": False,
                                   "freeze_encoder": False}, "backbone": {}}
    kwargs = build_kwargs_from_recipe(cfg, backbone.name)
    if task == "semantic":
        model = SemanticSegmentationModel(backbone, len(CLASSES), **kwargs["model_kwargs"]).eval()
    else:
        model = InstanceSegmentationModel(backbone, len(CLASSES), img_size=TILE, **kwargs["model_kwargs"]).eval()
    save_finetuned(folder, model, task=task, classes=CLASSES, corpus=CorpusContract(BANDS, 11, gsd_m=GSD),
                   tile_size=TILE, normalization=backbone.normalization, encoder_provenance=backbone.describe(),
                   build_kwargs=kwargs)
    return folder


def tiles(size: int, overlap: int) -> int:
    """Model forwards per scene (the collar is narrower than a tile: no window is skipped)."""
    from evaluation.overlap import tile_origins

    if overlap == 0:
        return (-(-size // TILE)) ** 2
    return len(tile_origins(size, size, TILE, overlap))


def km2(size: int) -> float:
    """Mapped (valid) area of a benchmark scene."""
    return size * (size - size // 8) * GSD**2 / 1e6


def ours(model_dir: Path, scene: Path, out: Path, threads: int | None, overlap: int | None = None,
         precision: str = "auto", device: str = "cpu") -> float:
    """predict() end to end (model load, inference, COGs, polygons) -> seconds."""
    from evaluation.predict import PredictConfig, predict

    start = time.perf_counter()
    summary = predict(PredictConfig(model=model_dir, input=scene, out=out, device=device, threads=threads,
                                    progress=False, overwrite=True, overlap=overlap, precision=precision))
    if summary["scenes"][0].get("this_run") != "mapped":
        raise RuntimeError(f"predict failed: {summary['scenes']}")
    return time.perf_counter() - start


def naive(model: torch.nn.Module, scene: Path, out: Path) -> float:
    """The straightforward loop: non-overlapping windows read one at a time, one window per forward (on the
    model's device, float32) -> seconds."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = src.profile | {"count": 1 + len(CLASSES), "dtype": "uint8", "nodata": None, "compress": "deflate"}
        profile.pop("NBITS", None)
        with rasterio.open(out, "w", **profile) as dst:
            for row in range(0, src.height, TILE):
                for col in range(0, src.width, TILE):
                    window = Window(col, row, min(TILE, src.width - col), min(TILE, src.height - row))
                    x = torch.zeros(1, src.count, TILE, TILE)
                    x[0, :, : window.height, : window.width] = torch.from_numpy(src.read(window=window)
                                                                                .astype(np.float32))
                    with torch.inference_mode():
                        probs = torch.softmax(model(x.to(device)), 1)[0, :, : window.height, : window.width].cpu()
                    classes = probs.argmax(0, keepdim=True).to(torch.uint8)
                    scaled = (probs * 255).round().to(torch.uint8)
                    dst.write(torch.cat([classes, scaled]).numpy(), window=window)
    return time.perf_counter() - start


def spread(seconds: list[float]) -> dict:
    return {"min": min(seconds), "max": max(seconds), "all": seconds}


def agreement(default_dir: Path, float32_dir: Path) -> dict:
    """``scene_agreement`` of the one scene each run folder holds."""
    (a,), (b,) = (list(d.glob("*/class.tif")) for d in (default_dir, float32_dir))
    return scene_agreement(a.parent, b.parent)


def scene_agreement(scene_dir: Path, reference_dir: Path) -> dict:
    """One scene's outputs vs a reference's (e.g. default precision vs float32): class agreement and probability
    difference over the reference's valid pixels (probabilities as stored: uint8 round(255 p))."""
    a, b = scene_dir / "class.tif", reference_dir / "class.tif"
    with rasterio.open(a) as ca, rasterio.open(b) as cb, \
            rasterio.open(a.with_name("prob.tif")) as pa, rasterio.open(b.with_name("prob.tif")) as pb:
        class_a, class_b, prob_b = ca.read(1), cb.read(1), pb.read()
        valid = class_b != 255
        diff = np.abs(pa.read().astype(np.int16) - prob_b.astype(np.int16))[:, valid] / 255.0
    # a random-init model's probabilities sit near 1/K, where any rounding flips the argmax: agreement is also
    # reported over the pixels whose float32 top probability is >= 0.6 (and their share)
    confident = valid & (prob_b.max(axis=0) >= 0.6 * 255)
    return {"class_agreement": round(float((class_a[valid] == class_b[valid]).mean()), 5),
            "class_agreement_where_float32_p_ge_0.6": round(float((class_a[confident] == class_b[confident]).mean()),
                                                            5) if confident.any() else None,
            "share_float32_p_ge_0.6": round(float(confident.sum() / valid.sum()), 5),
            "prob_max_abs_diff": round(float(diff.max()), 4), "prob_mean_abs_diff": round(float(diff.mean()), 5)}


def forward_only(model_dir: Path, reps: int = 6) -> dict:
    """ms per tile of the model alone as each arm runs it, alternated: ours (batch 8, default precision,
    channels-last: ``run.semantic_forward``) and naive (batch 1, float32) -> medians and the bound on over_naive."""
    from evaluation.artefact import load_finetuned
    from evaluation.devices import Precision
    from evaluation.predict.run import cpu_bf16, float32_patch_embedding, semantic_forward

    cpu = torch.device("cpu")
    ours_predictor, naive_model = load_finetuned(model_dir), load_finetuned(model_dir).model
    forward = semantic_forward(ours_predictor, torch.full((1, 2), float("nan")), cpu)
    precision = Precision("cpu", torch.bfloat16 if cpu_bf16("auto", cpu) else None)
    x = torch.rand(8, len(BANDS), TILE, TILE, generator=torch.Generator().manual_seed(0)) * 1500 + 200
    times: dict[str, list[float]] = {"ours": [], "naive": []}
    with torch.inference_mode(), float32_patch_embedding(ours_predictor.model):
        for r in range(reps + 1):  # the first rep is the warm-up
            start = time.perf_counter()
            with precision.autocast():
                forward(x)
            ours_ms = (time.perf_counter() - start) / len(x) * 1000
            start = time.perf_counter()
            for tile in x:
                naive_model(tile[None])
            naive_ms = (time.perf_counter() - start) / len(x) * 1000
            if r:
                times["ours"].append(ours_ms)
                times["naive"].append(naive_ms)
    ours_ms, naive_ms = (float(np.median(times[k])) for k in ("ours", "naive"))
    return {"ours_ms_per_tile": round(ours_ms, 1), "naive_ms_per_tile": round(naive_ms, 1),
            "ours_ms_all": [round(t, 1) for t in times["ours"]], "naive_ms_all": [round(t, 1) for t in times["naive"]]}


def paired(naive_s: list[float], ours_s: list[float]) -> dict:
    """The over_naive statistic (``OVER_NAIVE_STATISTIC``) and its spread."""
    ratios = [n / o for n, o in zip(naive_s, ours_s)]
    return {"median": round(float(np.median(ratios)), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3),
            "all": [round(r, 3) for r in ratios], "min_over_min": round(min(naive_s) / min(ours_s), 3)}


def speed(work: Path, size: str, scene_size: int, threads: int, rounds: int, with_naive: bool) -> dict:
    """One untimed warm-up run per arm, then the arms alternated within each round: ours (default settings), the
    naive loop (float32), ours in float32."""
    from evaluation.artefact import load_finetuned

    model_dir = model_folder(work / f"model_{size}", size)
    scene = write_scene(work / f"speed_{scene_size}.tif", scene_size)
    model = load_finetuned(model_dir).model
    arms = {"ours_s": lambda out: ours(model_dir, scene, out, threads)}
    if with_naive:
        arms["naive_s"] = lambda out: naive(model, scene, out.with_suffix(".tif"))
        arms["ours_float32_s"] = lambda out: ours(model_dir, scene, out, threads, precision="float32")
    result: dict = {"warmup_s": {k: round(run_arm(work / f"warm_{size}_{k}"), 2) for k, run_arm in arms.items()}}
    result |= {k: [] for k in arms}
    for r in range(rounds):  # alternate arms so machine noise hits all of them
        for k, run_arm in arms.items():
            result[k].append(round(run_arm(work / f"{k}_{size}_{r}"), 2))
        print(f"{size} round {r}: " + "  ".join(f"{k} {result[k][-1]}" for k in arms) + "  load "
              + " ".join(Path("/proc/loadavg").read_text().split()[:3]), file=sys.stderr, flush=True)
    area = km2(scene_size)
    result["km2_per_hour"] = round(area / min(result["ours_s"]) * 3600, 2)
    if with_naive:
        result["naive_km2_per_hour"] = round(area / min(result["naive_s"]) * 3600, 2)
        result["over_naive_paired"] = paired(result["naive_s"], result["ours_s"])
        result["float32_over_naive_paired"] = paired(result["naive_s"], result["ours_float32_s"])
        result["default_vs_float32"] = agreement(work / f"ours_s_{size}_0", work / f"ours_float32_s_{size}_0")
        result["forward_only"] = forward_only(model_dir)
    return result


class ConvStandIn(torch.nn.Module):
    """A translation-equivariant segmentation model: DN / 2047 -> 5x5 conv -> 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, len(CLASSES), 5, padding=2)
        self.conv.weight.data *= 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x / 2047.0)


def stand_in_predictor(folder: Path):
    from arctic_vit.corpus import CorpusContract
    from evaluation.artefact import Predictor

    return Predictor(ConvStandIn().eval(), "semantic", CLASSES, CorpusContract(BANDS, 11, mean=(0.2,) * 4,
                                                                            std=(0.1,) * 4), TILE, "stand-in",
                     {}, "stand-in", folder)


def free_forward(work: Path, scene_size: int, rounds: int) -> dict:
    """Both arms with the conv stand-in, whose forward costs ~nothing: the pipeline alone (reads, blending, writes;
    ours also COGs and polygons, without the model folder's load and sha256 check), which is what ``over_naive``
    tends to as the forward gets cheap (a fast GPU with a small model). Alternated, median of paired ratios."""
    scene = work / f"speed_{scene_size}.tif"  # the speed arms' scene
    if not scene.exists():
        write_scene(scene, scene_size)
    model = ConvStandIn().eval()

    def ours_free(out: Path) -> float:
        start = time.perf_counter()
        map_with_stand_in(scene, out)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"ours_s": [], "naive_s": []}
    for r in range(rounds + 1):  # the first round is the warm-up
        ours_s = ours_free(work / f"free_{r}")
        naive_s = naive(model, scene, work / f"free_naive_{r}.tif")
        if r:
            times["ours_s"].append(round(ours_s, 3))
            times["naive_s"].append(round(naive_s, 3))
    return {"over_naive_free_forward": paired(times["naive_s"], times["ours_s"]), "seconds": times}


def map_with_stand_in(scene: Path, out: Path) -> None:
    """``predict_scene`` of ``scene`` into ``out`` with the conv stand-in (no model folder: no load or sha256
    check; no checkpoints)."""
    from evaluation.predict import PredictConfig, predict_scene
    from evaluation.predict.scenes import Scene, inspect

    info = inspect(Scene(scene, scene.stem), BANDS, 11, False)
    predict_scene(info, stand_in_predictor(out), PredictConfig(model=out, input=scene, out=out, progress=False,
                                                               checkpoint_seconds=1e9), torch.device("cpu"))


def rss_child(scene: Path, out: Path) -> None:
    """Map ``scene`` with the conv stand-in in this process; print peak RSS (GB) and seconds."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    map_with_stand_in(scene, out)
    # VmHWM: this process image's high-water mark (ru_maxrss would carry the parent's peak over fork + exec)
    hwm_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmHWM:"))
    peak_gb = hwm_kb / 1024**2
    print(json.dumps({"peak_rss_gb": peak_gb, "seconds": time.perf_counter() - start}))


def peak_rss(work: Path, sizes: tuple[int, int]) -> dict:
    out = {}
    for size in sizes:
        scene = write_scene(work / f"rss_{size}.tif", size, seed=1)
        child = subprocess.run([sys.executable, __file__, "--rss-child", str(scene), str(work / f"rss_out_{size}")],
                               capture_output=True, text=True, timeout=3600, check=False)
        if child.returncode != 0:
            raise RuntimeError(f"memory child for {size} px failed: {child.stderr[-2000:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        out[f"{size}px"] = {"peak_rss_gb": round(result["peak_rss_gb"], 3), "seconds": round(result["seconds"], 1)}
        scene.unlink()
        print(f"memory {size} px: {out[f'{size}px']}", file=sys.stderr, flush=True)
    small, large = (out[f"{s}px"]["peak_rss_gb"] for s in sizes)
    return {"peak_rss_gb": out, "peak_rss_ratio": round(large / small, 3), "pixels_ratio": (sizes[1] / sizes[0]) ** 2}


def seam(work: Path, precision: str, overlap: int, size: int = 700) -> float:
    """Max |streamed tiles-with-overlap - whole-image| probability of the conv stand-in, both sides at
    ``precision`` (``evaluation.predict.run.inference_precision``) with channels-last input, as predict runs."""
    from evaluation.predict.run import inference_precision
    from evaluation.predict.stream import stream_semantic

    scene = work / "seam.tif"
    if not scene.exists():
        write_scene(scene, size, seed=2)
    autocast = inference_precision(precision, torch.device("cpu")).autocast
    model = ConvStandIn().eval().to(memory_format=torch.channels_last)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=torch.channels_last))

    with rasterio.open(scene) as src:
        streamed = np.concatenate([s.probs for s in stream_semantic(src, (1, 2, 3, 4), forward, len(CLASSES), TILE,
                                                                    overlap, autocast=autocast)], axis=1)
        image = torch.from_numpy(src.read().astype(np.float32))
        valid = torch.from_numpy(src.read_masks().min(axis=0) > 0)
    with torch.inference_mode(), autocast():
        whole = torch.softmax(forward(image[None]).float(), 1)[0] * valid
    # nodata pixels feed neither (tiles fill them with their valid mean, the whole image holds 0 there), so compare
    # away from the collar by the conv's reach
    keep = np.zeros(valid.shape, dtype=bool)
    keep[:, size // 8 + 2 :] = True
    return float(np.abs(streamed - whole.numpy())[:, keep].max())


def precision_name() -> str:
    from evaluation.predict.run import cpu_bf16

    return "bf16 autocast, patch embedding float32" if cpu_bf16("auto", torch.device("cpu")) else "float32"


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    speed_px, rss_sizes = (672, (1024, 4096)) if args.quick else (1344, (4096, 16384))
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        work = Path(tmp)
        seams = {"float32": seam(work, "float32", default_overlap()), "bf16": seam(work, "bf16", default_overlap()),
                 "float32_overlap_56": seam(work, "float32", TILE // 4)}
        tiny = speed(work, "tiny", speed_px, args.threads, args.rounds, with_naive=True)
        small = speed(work, "small", speed_px, args.threads, 1, with_naive=False)
        free = free_forward(work, speed_px, args.rounds)
        memory = peak_rss(work, rss_sizes)
    ours_tiles, naive_tiles = tiles(speed_px, default_overlap()), tiles(speed_px, 0)
    forward = tiny["forward_only"]
    result = {
        "regime": f"synthetic 4-band 11-bit GeoTIFF, {GSD} m GSD, 1/8 nodata collar; random-init UPerNet models, "
                  f"tile {TILE}, overlap {default_overlap()} (the default); CPU, {args.threads} torch thread(s); ours "
                  f"at its default precision ({precision_name()}, channels-last), the naive loop in float32",
        "quick": args.quick, "cpu": cpu_name(), "cpu_bf16": cpu_bf16_kind(), "default_precision": precision_name(),
        "load_average_before": load_before, "load_average_after": Path("/proc/loadavg").read_text().split()[:3],
        "speed_scene_px": speed_px, "speed_scene_km2": round(km2(speed_px), 4), "rounds": args.rounds,
        "km2_per_hour": {"tiny": tiny["km2_per_hour"], "small": small["km2_per_hour"]},
        "naive_km2_per_hour_tiny": tiny["naive_km2_per_hour"],
        "over_naive": tiny["over_naive_paired"]["median"], "over_naive_statistic": OVER_NAIVE_STATISTIC,
        "over_naive_paired": tiny["over_naive_paired"],
        "float32_over_naive": tiny["float32_over_naive_paired"]["median"],
        "float32_over_naive_paired": tiny["float32_over_naive_paired"],
        "default_vs_float32": tiny["default_vs_float32"],
        "forward_only": forward | {"over_naive_bound": round(forward["naive_ms_per_tile"] * naive_tiles
                                                             / (forward["ours_ms_per_tile"] * ours_tiles), 3)},
        "tiles": {"ours": ours_tiles, "naive": naive_tiles, "overlap": default_overlap()},
        "free_forward": free,
        "seconds": {"tiny_ours": spread(tiny["ours_s"]), "tiny_naive": spread(tiny["naive_s"]),
                    "tiny_ours_float32": spread(tiny["ours_float32_s"]), "small_ours": spread(small["ours_s"]),
                    "warmup": {"tiny": tiny["warmup_s"], "small": small["warmup_s"]}},
        **memory, "seam_max_abs_diff": seams["float32"], "seam_max_abs_diff_bf16": seams["bf16"],
        "seam_max_abs_diff_overlap_56": seams["float32_overlap_56"],
        "targets": TARGETS,
    }
    result["missed"] = [k for k, limit in TARGETS.items()
                        if (result[k] < limit if k == "over_naive" else result[k] > limit)]
    return result


def cpu_bf16_kind() -> str:
    """How this CPU runs bf16 matrix maths: AMX tiles, AVX512-BF16 dot products, or neither."""
    flags = Path("/proc/cpuinfo").read_text()
    return "amx_bf16" if "amx_bf16" in flags else "avx512_bf16 (no AMX)" if "avx512_bf16" in flags else "none"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


MARK_START, MARK_END = "<!-- predict-benchmark:start -->", "<!-- predict-benchmark:end -->"


def render_readme(result: dict) -> str:
    """The benchmark table of evaluation/PREDICT.md from a benchmark JSON."""
    s, t = result["seconds"], result["targets"]
    agree = result["default_vs_float32"]
    rss = result["peak_rss_gb"]
    (small_px, small_rss), (large_px, large_rss) = ((k, v["peak_rss_gb"]) for k, v in rss.items())

    def arm(name: str) -> str:
        return f"{s[name]['min']} s ({s[name]['min']}-{s[name]['max']} over {len(s[name]['all'])} rounds)"

    def met(key: str) -> str:
        return "missed" if key in result["missed"] else "met"

    pair, pair32, fwd, tiles_ = (result["over_naive_paired"], result["float32_over_naive_paired"],
                                 result["forward_only"], result["tiles"])
    free, fs = result["free_forward"]["over_naive_free_forward"], result["free_forward"]["seconds"]
    rows = [
        ("`km2_per_hour` tiny / small, end to end", f"{result['km2_per_hour']['tiny']} / "
         f"{result['km2_per_hour']['small']} km²/h", "–"),
        ("ours, tiny, default precision", arm("tiny_ours"), "–"),
        ("naive loop, tiny, float32", f"{arm('tiny_naive')}: {result['naive_km2_per_hour_tiny']} km²/h", "–"),
        ("ours, tiny, `--precision float32`", arm("tiny_ours_float32"), "–"),
        (f"`over_naive`: median of {len(pair['all'])} per-round paired ratios (spread {pair['min']}-{pair['max']}; "
         f"min / min {pair['min_over_min']}; {tiles_['ours']} forwards at overlap {tiles_['overlap']} px vs "
         f"{tiles_['naive']})", f"**{result['over_naive']}**", f"≥ {t['over_naive']} ({met('over_naive')})"),
        ("`float32_over_naive` (ours in float32, same statistic, not a target)",
         f"{result['float32_over_naive']} (spread {pair32['min']}-{pair32['max']})", "–"),
        ("model alone, ms per tile: ours (batch 8, default precision) / naive (batch 1, float32); bound on "
         "`over_naive` with zero I/O and overhead",
         f"{fwd['ours_ms_per_tile']} / {fwd['naive_ms_per_tile']} ms; {fwd['over_naive_bound']}", "–"),
        ("`over_naive` with a forward that costs ~nothing (a 5x5-conv stand-in in both arms: the pipeline alone, "
         "what a fast accelerator tends to with a small model; not a target)",
         f"{free['median']} (spread {free['min']}-{free['max']}; ours {min(fs['ours_s'])} s, naive "
         f"{min(fs['naive_s'])} s)", "–"),
        ("default vs float32 maps: class agreement (all valid pixels; where float32 p ≥ 0.6, share of such "
         "pixels) / max / mean abs probability difference",
         f"{agree['class_agreement']} ({agree['class_agreement_where_float32_p_ge_0.6']}, "
         f"{agree['share_float32_p_ge_0.6']}) / {agree['prob_max_abs_diff']} / {agree['prob_mean_abs_diff']}", "–"),
        (f"`peak_rss_gb` {small_px} / {large_px} scene", f"{small_rss} / {large_rss} GB", "–"),
        ("`peak_rss_ratio`", f"**{result['peak_rss_ratio']}**", f"≤ {t['peak_rss_ratio']} ({met('peak_rss_ratio')})"),
        (f"`seam_max_abs_diff` at overlap {tiles_['overlap']} px, float32 both sides / bf16 autocast both sides / "
         "float32 at overlap 56 px",
         f"**{result['seam_max_abs_diff']:.2g}** / {result['seam_max_abs_diff_bf16']:.2g} / "
         f"{result['seam_max_abs_diff_overlap_56']:.2g}",
         f"≤ {t['seam_max_abs_diff']} ({met('seam_max_abs_diff')})"),
    ]
    mode = "quick" if result["quick"] else "full"
    head = (f"Generated by `benchmarks/bench_predict.py --readme` ({mode} mode, {result['speed_scene_px']}-px speed "
            f"scene of {result['speed_scene_km2']} km²; CPU {result['cpu']}, bf16 by {result['cpu_bf16']}; "
            f"default precision "
            f"{result['default_precision']}; load average {' '.join(result['load_average_before'])} before, "
            f"{' '.join(result['load_average_after'])} after; JSON: `evaluation/predict/benchmark.json`).")
    table = ["| figure | measured | target |", "| --- | --- | --- |", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    return "\n".join([MARK_START, head, "", *table, MARK_END])


def write_readme(result: dict) -> None:
    readme = REPO / "evaluation" / "PREDICT.md"
    text = readme.read_text()
    if MARK_START not in text or MARK_END not in text:
        raise ValueError(f"{readme}: no {MARK_START} ... {MARK_END} block to replace")
    before, rest = text.split(MARK_START, 1)
    after = rest.split(MARK_END, 1)[1]
    readme.write_text(before + render_readme(result) + after)
    (REPO / "evaluation" / "predict" / "benchmark.json").write_text(json.dumps(result, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes for a 2-core machine")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core box)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up run per arm)")
    parser.add_argument("--readme", action="store_true",
                        help="write the table in evaluation/PREDICT.md and evaluation/predict/benchmark.json")
    parser.add_argument("--readme-from", metavar="JSON", help="only regenerate the PREDICT.md table from this JSON")
    parser.add_argument("--rss-child", nargs=2, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), Path(args.rss_child[1]))
        return 0
    if args.readme_from:
        write_readme(json.loads(Path(args.readme_from).read_text()))
        return 0
    result = run(args)
    print(json.dumps(result))
    if args.readme:
        write_readme(result)
    return 1 if result["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
