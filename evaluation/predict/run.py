"""Map scenes with a finetuned model folder: one scene at a time here, or one Dask task per scene.

Output folder (``--out``)::

    run.json                      the model (sha256) and settings this folder belongs to
    summary.json                  scenes, km² mapped, windows run / skipped as nodata, objects per class, timings
    <scene_id>/class.tif          COG, uint8 class ids, 255 = nodata
    <scene_id>/prob.tif           COG, one uint8 band per class, round(255 · p)
    <scene_id>/polygons.gpkg      polygons (layer "polygons") and the same as GeoParquet: polygons.parquet
    <scene_id>/scene.json         written last: the scene is done (its record in the summary)
    <scene_id>/.partial/          work in progress of an interrupted scene (removed when the scene is done)

Resuming: a scene with ``scene.json`` is not redone; an interrupted one restarts from its last checkpoint (every
``checkpoint_seconds``) and produces the same outputs as an uninterrupted run. A folder whose ``run.json`` names
another model or other settings is refused unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from tqdm import tqdm

from arctic_vit.corpus import CorpusContract
from evaluation.artefact import Predictor, load_finetuned, read_predictor_json
from evaluation.devices import Precision, resolve_device
from evaluation.overlap import TileInstance, merge_instances
from evaluation.predict import scenes as scn
from evaluation.predict.stream import StreamState, stream_instances, stream_semantic
from evaluation.predict.writer import (
    GDAL_ENV,
    PartialRasters,
    atomic_json,
    instance_polygons,
    instance_strip,
    semantic_polygons,
    semantic_strip,
    to_cog,
    write_polygons,
)

log = logging.getLogger(__name__)
RUN_NAME, SUMMARY_NAME, SCENE_NAME, PARTIAL = "run.json", "summary.json", "scene.json", ".partial"


@dataclass
class PredictConfig:
    model: Path
    input: Path
    out: Path
    device: str = "auto"
    batch_size: int = 8
    overlap: int | None = None  # px; default ``default_overlap(tile_size)``
    margin: int | None = None  # blend margin, default overlap // 4 (evaluation.overlap)
    score_threshold: float = 0.5  # instance models
    target_crs: str | None = "EPSG:3413"
    allow_ungeoreferenced: bool = False
    overwrite: bool = False
    bands: tuple[str, ...] | None = None  # scene band names when the files carry none
    scheduler: str = "synchronous"  # synchronous | local | tcp://address
    n_workers: int = 2
    threads: int | None = None  # torch threads per scene task
    checkpoint_seconds: float = 30.0
    labels: Path | None = None  # folder of label rasters <scene_id>.tif (or one label file): score the maps
    overlay: bool = False  # <scene>/overlay.png: true colour + predicted classes (decimated)
    precision: str = "auto"  # auto (bf16 on CUDA and, semantic models, on CPUs with native bf16) | float32 | bf16
    progress: bool = True

    def identity(self, sha256: str, tile: int) -> dict[str, Any]:
        """What the outputs depend on: a folder holding another identity is another model's run."""
        overlap = self.overlap if self.overlap is not None else default_overlap(tile)
        return {"model_sha256": sha256, "tile_size": tile, "overlap": overlap, "margin": self.margin,
                "precision": self.precision,
                "score_threshold": self.score_threshold, "target_crs": self.target_crs,
                "bands": list(self.bands) if self.bands else None}


PRECISIONS = ("auto", "float32", "bf16")


def default_overlap(tile: int) -> int:
    """Tile overlap in px when ``--overlap`` is not given: ``tile // 7`` (32 px for 224-px tiles, 14 %).

    The blend margin (``overlap // 4`` = 8 px) hides each tile's padding-affected border and the sin² ramp spans the
    remaining 16 px; the seam stays within the benchmark's target (``seam_max_abs_diff``, reported at this default
    and at ``tile // 4``). Against ``tile // 4`` (56 px) it runs (168 / 192)² = 0.77x the forwards of a large
    scene (1344 px: 49 tiles instead of 64)."""
    return tile // 7


def inference_precision(name: str, device: torch.device) -> Precision:
    """``auto``: ``evaluation.devices`` (bf16 autocast on CUDA, float32 elsewhere; semantic models on a CPU with
    native bf16: ``cpu_bf16``); ``float32``; ``bf16``: autocast on any device. Under autocast the patch embedding
    stays float32 (``float32_patch_embedding``)."""
    if name not in PRECISIONS:
        raise ValueError(f"--precision {name!r}: use one of {PRECISIONS}")
    if name == "auto":
        return Precision.for_device(device)
    return Precision(device.type, None if name == "float32" else torch.bfloat16)


def cpu_bf16(name: str, device: torch.device) -> bool:
    """``auto`` on a CPU with native bf16 (AVX512-BF16 / AMX): semantic models run under bf16 autocast with their
    patch embedding in float32 (``float32_patch_embedding``), see PREDICT.md."""
    from training.runtime import cpu_supports_bf16

    return name == "auto" and device.type == "cpu" and cpu_supports_bf16()


@contextlib.contextmanager
def float32_patch_embedding(model: torch.nn.Module) -> Iterator[int]:
    """While open, timm ``PatchEmbed`` modules of ``model`` run in float32 under autocast -> how many.

    Their input is the normalised image: cast to bf16 (8 significant bits) it loses low-contrast texture. Measured
    with a finetuned synthetic-IWP model (tiny encoder, 128-px tiles) on a 1024-px ``training.synthetic`` scene,
    ``predict`` bf16 vs float32: whole model in bf16, 29 % of pixels changed class (mean |Δp| 0.15); patch
    embedding in float32, none did (max |Δp| 0.0039, one uint8 step; mean 3e-4). The model is restored on exit."""
    from timm.layers import PatchEmbed

    patched = [m for m in model.modules() if isinstance(m, PatchEmbed)]
    for module in patched:
        module.forward = _without_autocast(type(module).forward.__get__(module))
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def _without_autocast(forward):
    def run(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float(), *args, **kwargs)

    return run


def _claim(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Write run.json, or check the folder belongs to this model + settings (else refuse / clear with overwrite)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_NAME
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("identity") != identity:
            diff = {k: (previous.get("identity", {}).get(k), v) for k, v in identity.items()
                    if previous.get("identity", {}).get(k) != v}
            if not overwrite:
                raise ValueError(f"{out} holds a run of another model or settings ({diff}, as (theirs, ours)); "
                                 "choose another --out or pass --overwrite to replace it")
            for child in out.iterdir():
                if child.is_dir() and ((child / SCENE_NAME).is_file() or (child / PARTIAL).is_dir()):
                    shutil.rmtree(child)
            (out / SUMMARY_NAME).unlink(missing_ok=True)
    atomic_json(path, {"identity": identity})


def _save_state(partial: Path, state: StreamState, valid_pixels: int) -> None:
    arrays: dict[str, np.ndarray] = {"next_row": np.array(state.next_row), "valid_pixels": np.array(valid_pixels),
                                     "windows": np.array([state.windows_run, state.windows_skipped])}
    if state.carry_probs is not None:
        arrays["carry_probs"], arrays["carry_weights"] = state.carry_probs, state.carry_weights
    if state.instances:
        arrays["inst_meta"] = np.array([[i.row, i.col, *i.mask.shape, i.label] for i in state.instances])
        arrays["inst_scores"] = np.array([i.score for i in state.instances])
        arrays["inst_masks"] = np.concatenate([i.mask.ravel() for i in state.instances])
    tmp = partial / ".state.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(partial / "state.npz")
    atomic_json(partial / "progress.json", {"next_row": state.next_row})


def _load_state(partial: Path) -> tuple[StreamState, int] | None:
    if not (partial / "progress.json").is_file() or not (partial / "state.npz").is_file():
        return None
    with np.load(partial / "state.npz") as data:
        state = StreamState(int(data["next_row"]), data.get("carry_probs"),
                            data.get("carry_weights"), *map(int, data["windows"]))
        if "inst_meta" in data:
            offset, masks = 0, data["inst_masks"]
            for (row, col, h, w, label), score in zip(data["inst_meta"], data["inst_scores"]):
                mask = masks[offset : offset + h * w].reshape(h, w)
                state.instances.append(TileInstance(int(row), int(col), mask, int(label), float(score)))
                offset += h * w
        return state, int(data["valid_pixels"])


def _latlon(src) -> torch.Tensor:
    """(1, 2) lat/lon of the scene centre (NaN without CRS): what location-aware models receive for every tile."""
    if src.crs is None:
        return torch.full((1, 2), float("nan"))
    from rasterio.warp import transform

    x, y = src.xy(src.height // 2, src.width // 2)
    lon, lat = transform(src.crs, "EPSG:4326", [x], [y])
    return torch.tensor([[lat[0], lon[0]]], dtype=torch.float32)


def semantic_forward(predictor: Predictor, latlon: torch.Tensor, device: torch.device):
    """The semantic model as (N, C, T, T) -> logits, in channels-last memory format (weights and input: oneDNN's
    fast path for convolutions on CPU and tensor cores on CUDA; the same results to float rounding)."""
    model = predictor.model.to(memory_format=torch.channels_last)
    where = latlon.to(device) if getattr(getattr(model, "features", None), "latlon", None) is not None else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return model(x) if where is None else model(x, where.expand(len(x), 2))

    return forward


def predict_scene(scene: scn.Scene, predictor: Predictor, cfg: PredictConfig, device: torch.device) -> dict:
    """Map one inspected scene into ``cfg.out/<scene_id>`` (resuming a checkpoint) -> its record."""
    folder = cfg.out / scene.scene_id
    done = folder / SCENE_NAME
    if done.is_file():
        return json.loads(done.read_text()) | {"this_run": "already done"}
    partial = folder / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    tile = predictor.tile_size
    overlap = cfg.overlap if cfg.overlap is not None else default_overlap(tile)
    resumed = _load_state(partial)
    state, valid_pixels = resumed or (StreamState(), 0)
    precision = inference_precision(cfg.precision, device)
    if predictor.task == "semantic" and cpu_bf16(cfg.precision, device):
        precision = Precision("cpu", torch.bfloat16)
    start = time.perf_counter()
    with rasterio.Env(**GDAL_ENV), warnings.catch_warnings(), float32_patch_embedding(predictor.model):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(scene.path) as src:
            rasters = PartialRasters(partial, src.profile, predictor.num_classes, resume=resumed is not None)
            if predictor.task == "semantic":
                strips = stream_semantic(src, scene.band_indexes, semantic_forward(predictor, _latlon(src), device),
                                         predictor.num_classes, tile, overlap, cfg.margin, cfg.batch_size, state,
                                         device, precision.autocast)
            else:
                strips = stream_instances(src, scene.band_indexes, predictor.model, tile, overlap, cfg.batch_size,
                                          cfg.score_threshold, state, device, precision.autocast)
            bar = tqdm(total=src.height, initial=0, desc=scene.scene_id, unit="row", leave=False,
                       disable=not cfg.progress, mininterval=2)
            last = time.perf_counter()
            try:
                for strip in strips:
                    valid_pixels += int(strip.valid.sum())
                    if strip.probs is not None:
                        rasters.write(strip.row0, *semantic_strip(strip.probs, strip.valid))
                    bar.update(strip.row1 - strip.row0)
                    if time.perf_counter() - last >= cfg.checkpoint_seconds:
                        rasters.close()
                        _save_state(partial, strip.state, valid_pixels)
                        rasters.open()
                        last = time.perf_counter()
                if predictor.task == "instance":
                    instances = merge_instances(state.instances)
                    _paint_instances(src, rasters, instances, predictor.num_classes)
            finally:
                strips.close()  # joins its read-ahead thread before ``src`` closes
                bar.close()
                rasters.close()
            inference_s = time.perf_counter() - start
            t0 = time.perf_counter()
            to_cog(rasters.paths["class"], folder / "class.tif", "nearest")
            to_cog(rasters.paths["prob"], folder / "prob.tif", "average")
            cog_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            if predictor.task == "semantic":
                records = semantic_polygons(rasters.paths["class"], rasters.paths["prob"])
            else:
                records = instance_polygons(instances, src.transform)
            write_polygons(records, predictor.classes, scene.scene_id, scene.acquired, src.crs,
                           cfg.target_crs, folder)
            vector_s = time.perf_counter() - t0
            pixel_m2 = abs(src.transform.a * src.transform.e - src.transform.b * src.transform.d)
            georeferenced = src.crs is not None and src.crs.is_projected
    if cfg.overlay:
        from evaluation.predict.overlay import overlay_png

        overlay_png(scene.path, folder / "class.tif", folder / "overlay.png", bands=cfg.bands)
    counts = Counter(predictor.classes[r["class_id"]] for r in records)
    record = {
        "scene_id": scene.scene_id, "path": str(scene.path), "status": "done", "acquired": scene.acquired,
        "height": scene.height, "width": scene.width, "bands_used": [scene.bands[i - 1] for i in scene.band_indexes],
        "km2_mapped": valid_pixels * pixel_m2 / 1e6 if georeferenced else math.nan,
        "windows_run": state.windows_run, "windows_skipped_nodata": state.windows_skipped,
        "objects_per_class": {c: counts.get(c, 0) for c in predictor.classes[1:]},
        "resumed_from_row_index": None if resumed is None else resumed[0].next_row,
        "seconds": {"inference": round(inference_s, 2), "cog": round(cog_s, 2), "polygons": round(vector_s, 2)},
        "warnings": scene.warnings, "this_run": "mapped",
    }
    if cfg.labels is not None:
        from evaluation.predict.score import score_scene

        record["scores"] = score_scene(folder / "class.tif", folder / "prob.tif", cfg.labels, scene.scene_id,
                                       predictor, instances if predictor.task == "instance" else None)
    atomic_json(done, record)
    shutil.rmtree(partial)
    return record


def _paint_instances(src, rasters: PartialRasters, instances: list[TileInstance], num_classes: int,
                     block_rows: int = 512) -> None:
    from rasterio.windows import Window

    for row0 in range(0, src.height, block_rows):
        row1 = min(row0 + block_rows, src.height)
        valid = src.read_masks(window=Window(0, row0, src.width, row1 - row0)).min(axis=0) > 0
        rasters.write(row0, *instance_strip(instances, row0, row1, src.width, valid, num_classes))


_PREDICTORS: dict[tuple[str, str], Predictor] = {}


def _scene_task(scene: scn.Scene, cfg: PredictConfig) -> dict:
    """One scene, failures recorded (a Dask task, or a loop iteration): the model is loaded once per process."""
    try:
        device = resolve_device(cfg.device)
        key = (str(cfg.model), str(device))
        if key not in _PREDICTORS:
            _PREDICTORS[key] = load_finetuned(cfg.model, device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return predict_scene(scene, _PREDICTORS[key], cfg, device)
    except Exception as err:  # recorded with its reason (the CLI exits 1); the other scenes go on
        return _failed(scene, err)


def _failed(scene: scn.Scene, err: BaseException) -> dict:
    log.warning("scene %s failed: %s: %s", scene.scene_id, type(err).__name__, err)
    return {"scene_id": scene.scene_id, "path": str(scene.path), "status": "failed",
            "reason": f"{type(err).__name__}: {err}"}


def predict(cfg: PredictConfig) -> dict:
    """Map every scene of ``cfg.input`` -> the summary (also written to ``cfg.out/summary.json``)."""
    start = time.perf_counter()
    cfg = dataclasses.replace(cfg, model=Path(cfg.model), input=Path(cfg.input), out=Path(cfg.out),
                              labels=Path(cfg.labels) if cfg.labels else None)
    device = resolve_device(cfg.device)  # everything is validated before the weights are read
    if cfg.labels is not None and not cfg.labels.exists():
        raise FileNotFoundError(f"--labels {cfg.labels}: not found")
    inference_precision(cfg.precision, device)
    meta = read_predictor_json(cfg.model)
    corpus = CorpusContract.from_dict(meta["corpus"], f"{cfg.model / 'predictor.json'} [corpus]")
    tile = int(meta["tile_size"])
    identity = cfg.identity(meta["sha256"], tile)
    if not 0 <= identity["overlap"] < tile:
        raise ValueError(f"--overlap {identity['overlap']} must be in 0..{tile - 1} (tile size {tile})")
    scenes, failed = [], []
    for scene in scn.discover(cfg.input):
        try:
            scenes.append(scn.inspect(scene, corpus.bands, corpus.bit_depth, cfg.allow_ungeoreferenced, cfg.bands))
        except RasterioError as err:  # unreadable header: recorded, the others run
            failed.append({"scene_id": scene.scene_id, "path": str(scene.path), "status": "failed",
                           "reason": f"{type(err).__name__}: {err}"})
    for scene in scenes:
        for message in scene.warnings:
            log.warning("!!! %s: %s", scene.scene_id, message)
    predictor = load_finetuned(cfg.model, "cpu")  # sha256-verified
    _claim(cfg.out, identity, cfg.overwrite)
    if device.type == "cpu" and cfg.scheduler in ("synchronous", "sync", "none"):
        _PREDICTORS[(str(cfg.model), "cpu")] = predictor
    records = list(failed)
    bar = tqdm(total=len(scenes) + len(failed), initial=len(failed), desc="scenes", unit="scene",
               disable=not cfg.progress)
    if cfg.scheduler in ("synchronous", "sync", "none"):
        for scene in scenes:
            records.append(_scene_task(scene, cfg))
            bar.update(1)
    else:
        from distributed import as_completed

        from training.runtime import dask_client

        # a CUDA process holds 2-3 GB of host memory for the CUDA libraries alone: on a GPU, Dask's own share
        # ("auto": the machine's memory over the workers) instead of the CPU workers' 4 GiB, so none is killed
        memory_limit = "4GiB" if device.type == "cpu" else "auto"
        with dask_client({"scheduler": cfg.scheduler, "n_workers": cfg.n_workers, "threads_per_worker": 1,
                          "memory_limit": memory_limit}) as client:
            futures = {client.submit(_scene_task, scene, dataclasses.replace(cfg, progress=False), pure=False): scene
                       for scene in scenes}
            for future in as_completed(futures):
                try:
                    records.append(future.result())
                except Exception as err:  # a worker lost (e.g. killed for memory): recorded, the others go on
                    records.append(_failed(futures[future], err))
                bar.update(1)
    bar.close()
    order = {s.scene_id: i for i, s in enumerate(scenes)}
    records.sort(key=lambda r: order.get(r["scene_id"], -1))
    summary = _summary(records, predictor, identity, cfg, time.perf_counter() - start)
    atomic_json(cfg.out / SUMMARY_NAME, summary)
    return summary


def _summary(records: list[dict], predictor: Predictor, identity: dict, cfg: PredictConfig, seconds: float) -> dict:
    done = [r for r in records if r["status"] == "done"]
    objects = Counter()
    for r in done:
        objects.update(r["objects_per_class"])
    return {
        "model": str(cfg.model), "identity": identity, "classes": list(predictor.classes),
        "model_bands": list(predictor.corpus.bands), "device": cfg.device,
        "totals": {
            "scenes": len(records), "done": len(done), "failed": len(records) - len(done),
            "km2_mapped": float(np.nansum([r["km2_mapped"] for r in done])) if done else 0.0,
            "windows_run": sum(r["windows_run"] for r in done),
            "windows_skipped_nodata": sum(r["windows_skipped_nodata"] for r in done),
            "objects_per_class": {c: objects.get(c, 0) for c in predictor.classes[1:]},
            "seconds": round(seconds, 2),
        },
        "scenes": records,
    }
