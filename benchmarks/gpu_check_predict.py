"""First-GPU check of whole-scene mapping (``evaluation.predict`` on CUDA), unattended, a few minutes on one GPU.

What runs only on a GPU, and what this checks:

1. **Semantic model, default precision on CUDA** (bf16 autocast, patch embedding float32, channels-last, batches
   of 8 moved to the device): ``predict --device cuda`` of a 2048-px synthetic scene (nodata collar) against the
   same model ``--device cpu --precision float32``: class agreement >= 0.98 over valid pixels, mean |Δp| <= 0.01,
   identical nodata and window counts (the CPU bf16 default measured 0.997 / 7e-5 on the same kind of model).
2. **Instance model on CUDA** (torchvision Mask R-CNN under bf16 autocast; masks and boxes brought back to the
   CPU per tile): the scene maps, its polygons count equals the summary's objects, no failed scene.
3. **Dask on one GPU** (``--scheduler local``, 2 workers, one task per scene): two scenes map, and each class
   raster agrees with the synchronous CUDA run on >= 0.999 of pixels (cuDNN may pick other kernels per process).
4. **Speed, reported, not a target**: ``benchmarks/bench_predict.py``'s ``over_naive`` on the GPU (ours: default
   settings; naive loop: float32, one window per forward, on the GPU) over 3 alternating rounds, and the same
   with a forward that costs ~nothing (the pipeline alone), which bounds what a GPU can show with this model.

    .venv/bin/python benchmarks/gpu_check_predict.py             # on a machine with CUDA
    CPU_DRY_RUN=1 .venv/bin/python benchmarks/gpu_check_predict.py   # the same plumbing on the CPU (small scene)

Prints one JSON object last; exit status 0 all checks passed, 1 a check failed, 2 no CUDA device (nothing checked).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_predict as bench  # noqa: E402


def agreement(a: Path, b: Path) -> dict:
    """``bench_predict.scene_agreement`` of two predict outputs of one scene, and whether their nodata is the same."""
    with rasterio.open(a / "class.tif") as ca, rasterio.open(b / "class.tif") as cb:
        same_nodata = bool(((ca.read(1) == 255) == (cb.read(1) == 255)).all())
    return bench.scene_agreement(a, b) | {"same_nodata": same_nodata}


def run(work: Path, device: str, scene_px: int, rounds: int) -> tuple[dict, list[str]]:
    from evaluation.predict import PredictConfig, predict

    failures: list[str] = []
    semantic = bench.model_folder(work / "semantic", "tiny")
    instance = bench.model_folder(work / "instance", "tiny", task="instance")
    scenes = work / "scenes"
    scenes.mkdir()
    scene = bench.write_scene(scenes / "a.tif", scene_px, seed=0)
    bench.write_scene(scenes / "b.tif", scene_px // 2, seed=1)

    def mapped(model: Path, source: Path, out: str, **kw) -> dict:
        summary = predict(PredictConfig(model=model, input=source, out=work / out, progress=False, **kw))
        for record in summary["scenes"]:
            if record["status"] != "done":
                failures.append(f"{out}: {record['scene_id']} {record['status']}: {record.get('reason')}")
        return summary

    result: dict = {"device": device, "scene_px": scene_px}
    start = time.perf_counter()
    on_device = mapped(semantic, scene, "semantic_device", device=device)
    result["semantic_device_s"] = round(time.perf_counter() - start, 2)
    on_cpu = mapped(semantic, scene, "semantic_cpu_fp32", device="cpu", precision="float32")
    agree = agreement(work / "semantic_device" / "a", work / "semantic_cpu_fp32" / "a")
    result["semantic_vs_cpu_float32"] = agree
    if agree["class_agreement"] < 0.98 or agree["prob_mean_abs_diff"] > 0.01 or not agree["same_nodata"]:
        failures.append(f"semantic map on {device} differs from the CPU float32 map: {agree}")
    windows = [(s["scenes"][0]["windows_run"], s["scenes"][0]["windows_skipped_nodata"]) for s in (on_device, on_cpu)]
    if windows[0] != windows[1]:
        failures.append(f"windows run / skipped differ between {device} and cpu: {windows}")

    inst = mapped(instance, scene, "instance_device", device=device, score_threshold=0.0)
    import geopandas as gpd

    polygons = gpd.read_parquet(work / "instance_device" / "a" / "polygons.parquet")
    result["instance_objects"] = inst["scenes"][0].get("objects_per_class")
    if inst["scenes"][0]["status"] == "done" and len(polygons) != sum(result["instance_objects"].values()):
        failures.append(f"instance polygons {len(polygons)} != objects {result['instance_objects']}")

    mapped(semantic, scenes, "dask_sync", device=device)
    dask = mapped(semantic, scenes, "dask_local", device=device, scheduler="local", n_workers=2)
    result["dask_scenes_done"] = dask["totals"]["done"]
    result["dask_vs_sync"] = {name: agreement(work / "dask_local" / name, work / "dask_sync" / name)["class_agreement"]
                              for name in ("a", "b")}
    if dask["totals"]["done"] != 2 or min(result["dask_vs_sync"].values()) < 0.999:
        failures.append(f"dask on {device}: {dask['totals']['done']} scenes done, agreement {result['dask_vs_sync']}")

    from evaluation.artefact import load_finetuned

    naive_model = load_finetuned(semantic, device).model
    speed_scene = bench.write_scene(work / "speed.tif", 1344 if scene_px >= 1344 else scene_px, seed=0)
    ours_s, naive_s = [], []
    for r in range(rounds + 1):  # the first round is the warm-up
        o = bench.ours(semantic, speed_scene, work / f"speed_ours_{r}", threads=None, device=device)
        n = bench.naive(naive_model, speed_scene, work / f"speed_naive_{r}.tif")
        if r:
            ours_s.append(round(o, 3))
            naive_s.append(round(n, 3))
    result["over_naive_on_device"] = bench.paired(naive_s, ours_s) | {"ours_s": ours_s, "naive_s": naive_s}
    result["over_naive_free_forward"] = bench.free_forward(work, 1344 if scene_px >= 1344 else scene_px, rounds)
    return result, failures


def main() -> int:
    dry = os.environ.get("CPU_DRY_RUN") == "1"
    if not dry and not torch.cuda.is_available():
        print("gpu_check_predict: no CUDA device visible to torch: nothing checked (CPU_DRY_RUN=1 checks the "
              "plumbing on the CPU)", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    if not dry:
        print("gpu_check_predict:", torch.cuda.get_device_name(0), "| torch", torch.__version__, flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_predict_") as tmp:
        result, failures = run(Path(tmp), device, 448 if dry else 2048, 1 if dry else 3)
    result["failures"] = failures
    print(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
