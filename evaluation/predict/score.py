"""Score a mapped scene against its labels: pixel F1 and object F1 at IoU >= 0.5, detection and delineation F1.

Labels per scene in ``<labels>/`` (or one label file for a single scene): a raster ``<scene_id>.labels.tif`` (as
``training.synthetic`` writes: ``LABELS_SUFFIX``; looked for first, so the scenes' own folder can be ``<labels>``),
``<scene_id>.tif`` or ``<scene_id>_labels.tif``, band 1 = class ids of
the model's classes (0 background, 255 not scored) on the scene's grid; or vectors ``<scene_id>.gpkg`` /
``.parquet`` / ``.geojson`` with a ``class_id`` or ``class`` (name) column, in any CRS (reprojected to the scene's,
rasterised at pixel centres). Objects: ground truth = each label polygon (vectors: touching polygons stay two), or
the connected regions (4-connectivity) of each foreground class (rasters); predictions = connected regions of the
class map (semantic; score = mean probability) or the merged instances (instance models) — the same
``TileInstance`` objects and ``evaluation.metrics.object_scores`` as chip evaluation. Scoring reads the scene's
class and label rasters whole: labelled scenes are evaluation scenes of a few thousand pixels a side, not archive
scenes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from scipy import ndimage

from evaluation.datasets.card import IGNORE_INDEX
from evaluation.metrics import f1_iou, foreground_mean, object_scores, pixel_counts
from evaluation.overlap import TileInstance
from evaluation.predict.writer import NODATA_CLASS
from training.synthetic import LABELS_SUFFIX

VECTOR_SUFFIXES = (".gpkg", ".parquet", ".geojson")


def label_path(labels: Path, scene_id: str) -> Path:
    """``labels``: a label file (raster or vectors) itself, or a folder holding one for ``scene_id``."""
    labels = Path(labels)
    if labels.is_file():
        return labels
    # X.labels.tif first: it is unambiguous where --labels is the scenes' own folder (which holds X.tif itself)
    stems = (scene_id, f"{scene_id}_labels", f"{scene_id}_label")
    for name in (f"{scene_id}{LABELS_SUFFIX}", *(f"{stem}{suffix}" for stem in stems
                                                for suffix in (".tif", *VECTOR_SUFFIXES))):
        if (labels / name).is_file():
            return labels / name
    raise FileNotFoundError(f"--labels {labels}: no labels for scene {scene_id!r} ({scene_id}.tif, "
                            f"{scene_id}{LABELS_SUFFIX} or {scene_id}{'/'.join(VECTOR_SUFFIXES)})")


def vector_labels(path: Path, classes: tuple[str, ...], crs, transform, height: int, width: int
                  ) -> tuple[np.ndarray, list[TileInstance]]:
    """Label polygons -> (H, W) class ids and one TileInstance per polygon, on the scene's grid."""
    import geopandas as gpd
    from rasterio.features import rasterize
    from rasterio.windows import from_bounds

    frame = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    if "class_id" in frame.columns:
        ids = frame["class_id"].astype(int).tolist()
    elif "class" in frame.columns:
        unknown = sorted(set(frame["class"]) - set(classes))
        if unknown:
            raise ValueError(f"{path}: classes {unknown} are not the model's {list(classes)}")
        ids = [classes.index(c) for c in frame["class"]]
    else:
        raise ValueError(f"{path}: needs a 'class_id' or 'class' column; has {list(frame.columns)}")
    if crs is not None and frame.crs is not None:
        frame = frame.to_crs(crs)
    target = np.zeros((height, width), dtype=np.uint8)
    objects = []
    for geometry, label in zip(frame.geometry, ids):
        window = from_bounds(*geometry.bounds, transform=transform)
        r0, c0 = max(0, math.floor(window.row_off)), max(0, math.floor(window.col_off))
        r1 = min(height, math.ceil(window.row_off + window.height))
        c1 = min(width, math.ceil(window.col_off + window.width))
        if r1 <= r0 or c1 <= c0:
            continue
        mask = rasterize([(geometry, 1)], out_shape=(r1 - r0, c1 - c0), dtype="uint8",
                         transform=transform @ Affine.translation(c0, r0)) > 0
        if mask.any():
            target[r0:r1, c0:c1][mask] = label
            objects.append(TileInstance(r0, c0, mask, int(label), 1.0))
    return target, objects


def regions(classes: np.ndarray, num_classes: int, probs: np.ndarray | None = None) -> list[TileInstance]:
    """classes: (H, W) ids -> one TileInstance per connected region of each foreground class (score: mean prob)."""
    out = []
    for k in range(1, num_classes):
        labels, _ = ndimage.label(classes == k)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[box] == index
            score = 1.0 if probs is None else float(probs[k][box][mask].mean()) / 255.0
            out.append(TileInstance(box[0].start, box[1].start, mask, k, score))
    return out


def score_maps(pred: np.ndarray, target: np.ndarray, num_classes: int, class_names: tuple[str, ...],
               pred_objects: list[TileInstance], score_threshold: float = 0.5,
               gt_objects: list[TileInstance] | None = None) -> dict:
    """pred, target: (H, W) class ids (NODATA_CLASS / IGNORE_INDEX not scored) -> pixel and object scores.

    ``gt_objects``: the labelled objects (default: connected regions of ``target``)."""
    target = target.astype(np.int64).copy()
    target[pred == NODATA_CLASS] = IGNORE_INDEX
    pred = np.where(pred == NODATA_CLASS, 0, pred).astype(np.int64)
    pixel = pixel_counts(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
    if gt_objects is None:
        gt_objects = regions(np.where(target == IGNORE_INDEX, 0, target), num_classes)
    objects = object_scores(pred_objects, gt_objects, num_classes, score_threshold)
    out = {}
    for name, counts in (("pixel", pixel), ("object", objects["object"]), ("detection", objects["detection"]),
                         ("delineation", objects["delineation"])):
        f1, _ = f1_iou(counts)
        out[f"{name}_f1"] = _finite(foreground_mean(f1))
        out[f"{name}_per_class_f1"] = {c: _finite(v) for c, v in zip(class_names[1:], f1[1:])}
        out[f"{name}_counts"] = counts[1:].tolist()
    out["objects"] = {"predicted": len(pred_objects), "ground_truth": len(gt_objects)}
    return out


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def score_scene(class_path: Path, prob_path: Path, labels: Path, scene_id: str, predictor,
                instances: list[TileInstance] | None = None) -> dict:
    """Scores of a finished scene (see module doc); the label raster must match the scene's grid."""
    path = label_path(Path(labels), scene_id)
    with rasterio.open(class_path) as c, rasterio.open(prob_path) as p:
        pred, probs = c.read(1), p.read()
        gt_objects = None
        if path.suffix in VECTOR_SUFFIXES:
            target, gt_objects = vector_labels(path, predictor.classes, c.crs, c.transform, c.height, c.width)
        else:
            with rasterio.open(path) as t:
                if (t.height, t.width) != (c.height, c.width):
                    raise ValueError(f"{path}: {t.height}x{t.width} labels for a {c.height}x{c.width} scene")
                target = t.read(1)
    k = predictor.num_classes
    foreign = np.unique(target[(target >= k) & (target != IGNORE_INDEX)])
    if foreign.size:
        raise ValueError(f"{path}: class ids {foreign.tolist()} are not among the model's {k} classes "
                         f"{list(predictor.classes)} (255 = not scored)")
    pred_objects = instances if instances is not None else regions(np.where(pred == NODATA_CLASS, 0, pred), k, probs)
    return score_maps(pred, target, k, predictor.classes, pred_objects, gt_objects=gt_objects) | {"labels": str(path)}
