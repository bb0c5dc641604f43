"""Score a mapped scene against its label raster: pixel F1 and object F1 at IoU >= 0.5, detection and delineation F1.

Label raster: ``<labels>/<scene_id>.tif`` (or ``<scene_id>_labels.tif``), band 1 = class ids of the model's classes
(0 background, 255 not scored), on the scene's grid. Objects: ground truth = connected regions (4-connectivity) of
each foreground class; predictions = connected regions of the class map (semantic; score = mean probability) or
the merged instances (instance models) — the same ``TileInstance`` objects and ``evaluation.metrics.object_scores``
as chip evaluation. Scoring reads the scene's class and label rasters whole: labelled scenes are evaluation scenes
of a few thousand pixels a side, not archive scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from scipy import ndimage

from evaluation.datasets.card import IGNORE_INDEX
from evaluation.metrics import f1_iou, foreground_mean, object_scores, pixel_counts
from evaluation.overlap import TileInstance
from evaluation.predict.writer import NODATA_CLASS


def label_path(labels: Path, scene_id: str) -> Path:
    for name in (f"{scene_id}.tif", f"{scene_id}_labels.tif", f"{scene_id}_label.tif"):
        if (labels / name).is_file():
            return labels / name
    raise FileNotFoundError(f"--labels {labels}: no label raster for scene {scene_id!r} ({scene_id}.tif)")


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
               pred_objects: list[TileInstance], score_threshold: float = 0.5) -> dict:
    """pred, target: (H, W) class ids (NODATA_CLASS / IGNORE_INDEX not scored) -> pixel and object scores."""
    target = target.astype(np.int64).copy()
    target[pred == NODATA_CLASS] = IGNORE_INDEX
    pred = np.where(pred == NODATA_CLASS, 0, pred).astype(np.int64)
    pixel = pixel_counts(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
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
    with rasterio.open(class_path) as c, rasterio.open(prob_path) as p, rasterio.open(path) as t:
        if (t.height, t.width) != (c.height, c.width):
            raise ValueError(f"{path}: {t.height}x{t.width} labels for a {c.height}x{c.width} scene")
        pred, probs, target = c.read(1), p.read(), t.read(1)
    k = predictor.num_classes
    pred_objects = instances if instances is not None else regions(np.where(pred == NODATA_CLASS, 0, pred), k, probs)
    return score_maps(pred, target, k, predictor.classes, pred_objects) | {"labels": str(path)}
