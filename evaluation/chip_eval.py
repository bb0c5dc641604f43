"""Score a finetuned model on whole evaluation chips: overlapping tiles, blended (semantic) or merged (instances).

Every chip is predicted as a whole with ``evaluation.overlap`` (the same tiling, blending and merging as whole-scene
prediction): tiles of the model's input size overlapping by ``eval.overlap`` px; semantic probabilities blended,
instances of neighbouring tiles merged into one object (``merge_instances``), then matched per chip against the
chip's whole ground-truth objects, so an object crossing a tile seam is one object on both sides.

Per chip it keeps counts, so runs can be pooled and bootstrapped after the fact (``evaluation.metrics``):
pixel [tp, fp, fn] per class; for instances also object / detection / delineation counts and the matches (mAP50).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from evaluation.datasets import ChipDataset, DatasetCard
from evaluation.datasets.card import IGNORE_INDEX
from evaluation.devices import Precision
from evaluation.metrics import (
    f1_iou,
    foreground_mean,
    instance_scores,
    object_scores,
    pixel_counts,
    scored_classes,
    semantic_scores,
)
from evaluation.overlap import TileInstance, merge_instances, pad_to_tile, predict_tiled, tile_origins

log = logging.getLogger(__name__)


def semantic_forward(model: torch.nn.Module, latlon: torch.Tensor, device: torch.device, precision: Precision):
    """-> forward(x: (N, C, T, T) on the CPU) -> logits (N, K, T, T) float32 on the CPU, computed on ``device``."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(x, latlon.to(device).expand(len(x), -1))
        return logits.float().cpu()

    return forward


def predict_objects(model: torch.nn.Module, image: torch.Tensor, latlon: torch.Tensor, tile: int, overlap: int,
                    batch_size: int, device: torch.device, precision: Precision,
                    merge_iou: float = 0.5) -> list[TileInstance]:
    """image: (C, H, W) raw DN -> Mask R-CNN objects of the whole chip, merged across overlapping tiles, clipped."""
    _, height, width = image.shape
    padded = pad_to_tile(image.float(), tile)
    origins = tile_origins(padded.shape[-2], padded.shape[-1], tile, overlap)
    found: list[TileInstance] = []
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        x = torch.stack([padded[:, r : r + tile, c : c + tile] for r, c in chunk]).to(device, non_blocking=True)
        with precision.autocast():
            outputs = model(x, None, latlon.to(device).expand(len(x), -1))
        for (row, col), out in zip(chunk, outputs):
            masks = (out["masks"][:, 0] > 0.5).cpu().numpy()
            for mask, label, score in zip(masks, out["labels"].cpu().tolist(), out["scores"].float().cpu().tolist()):
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                if len(rows) == 0:
                    continue
                r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                found.append(TileInstance(row + int(r0), col + int(c0), mask[r0:r1, c0:c1], int(label), score))
    return [clipped for inst in merge_instances(found, merge_iou) if (clipped := _clip(inst, height, width))]


def _clip(inst: TileInstance, height: int, width: int) -> TileInstance | None:
    """Drop the part of an object predicted in reflect-padding beyond the chip."""
    mask = inst.mask[: max(0, height - inst.row), : max(0, width - inst.col)]
    return TileInstance(inst.row, inst.col, mask, inst.label, inst.score) if mask.any() else None


def truth_objects(instances: dict[str, torch.Tensor]) -> list[TileInstance]:
    """{"masks": (G, H, W), "labels": (G,)} of a whole chip -> boxed ground-truth objects (score 1)."""
    objects = []
    for mask, label in zip(instances["masks"].bool().numpy(), instances["labels"].tolist()):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            objects.append(TileInstance(int(rows[0]), int(cols[0]),
                                        mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], int(label), 1.0))
    return objects


def paint(objects: list[TileInstance], height: int, width: int, threshold: float) -> torch.Tensor:
    """Objects -> (H, W) class map (higher scores painted last), for pixel scores of the instance task."""
    semantic = np.zeros((height, width), dtype=np.int64)
    for inst in sorted(objects, key=lambda i: i.score):
        if inst.score >= threshold:
            h, w = inst.mask.shape
            semantic[inst.row : inst.row + h, inst.col : inst.col + w][inst.mask] = inst.label
    return torch.from_numpy(semantic)


@torch.no_grad()
def evaluate(cfg: dict, model: torch.nn.Module, dataset: ChipDataset, card: DatasetCard,
             device: torch.device | str = "cpu", precision: Precision | None = None) -> dict[str, Any]:
    """Every chip of ``dataset`` predicted whole -> pooled scores and per-chip arrays (see module doc).

    -> {"scores", "ids", "groups", "pixel_counts" (n, K, 3), and for instances "object_counts",
    "detection_counts", "delineation_counts" (n, K, 3), "matches" (one dict per chip); "panels"}.
    """
    device = torch.device(device)
    precision = precision or Precision.for_device(device)
    model.eval()
    instance = cfg["task"] == "instance"
    size, batch_size = cfg["model"]["img_size"], cfg["train"]["batch_size"]
    overlap, threshold = int(cfg["eval"]["overlap"]), float(cfg["eval"]["score_threshold"])
    k, panels = card.num_classes, int(cfg["eval"]["panels"])
    out: dict[str, list] = {name: [] for name in ("ids", "groups", "pixel_counts", "object_counts",
                                                  "detection_counts", "delineation_counts", "matches", "panels")}
    start = time.time()
    for n, sample in enumerate(dataset, 1):
        image, mask, latlon = sample["image"], sample["mask"], sample["latlon"][None]
        if instance:
            objects = predict_objects(model, image, latlon, size, overlap, batch_size, device, precision,
                                      float(cfg["eval"]["merge_iou"]))
            pred = paint(objects, *mask.shape, threshold)
            scored = object_scores(objects, truth_objects(sample["instances"]), k, threshold)
            out["matches"].append(scored["match"])
            for name in ("object", "detection", "delineation"):
                out[f"{name}_counts"].append(scored[name])
        else:
            valid = mask != IGNORE_INDEX
            use_valid = valid if bool(valid.any()) and not bool(valid.all()) else None
            probs = predict_tiled(semantic_forward(model, latlon, device, precision), image, size, overlap,
                                  batch_size, valid=use_valid)
            pred = probs.argmax(0)
        out["pixel_counts"].append(pixel_counts(pred, mask, k))
        out["ids"].append(sample["id"])
        out["groups"].append(dataset.group_of.get(sample["id"], sample["id"]))
        if len(out["panels"]) < panels and bool((mask != IGNORE_INDEX).any()):
            r, c = _panel_origin(mask, size)
            window = (slice(r, r + size), slice(c, c + size))
            out["panels"].append((_fit(image[:, window[0], window[1]].numpy(), size, 0),
                                  _fit(mask[window].numpy(), size, IGNORE_INDEX), _fit(pred[window].numpy(), size, 0),
                                  f"{sample['id']}@{(r, c)}"))
        if n % 10 == 0 or n == len(dataset):
            log.info("evaluated %d/%d chips of split %r (%.0f s)", n, len(dataset), dataset.split, time.time() - start)
    pixel = np.stack(out["pixel_counts"])
    scores = semantic_scores(list(pixel), card.classes)
    if not scores["scored_classes"]:
        raise ValueError(f"split {dataset.split!r} of {card.name!r} holds no foreground pixel: every score would be "
                         "undefined; use a split with labelled objects")
    absent = [c for c in card.foreground_classes if c not in scores["scored_classes"]]
    scores["warnings"] = [f"class {name!r} is absent from the ground truth of split {dataset.split!r}: it is not "
                          "scored (no F1), and predictions of it are listed under predicted_but_absent"
                          for name in absent]
    result = {"ids": out["ids"], "groups": out["groups"], "pixel_counts": pixel, "panels": out["panels"]}
    if instance:
        for name in ("object", "detection", "delineation"):
            result[f"{name}_counts"] = np.stack(out[f"{name}_counts"])
        result["matches"] = out["matches"]
        scores |= instance_scores(out["matches"], card.classes, threshold)
        fixed = scored_classes(result["object_counts"].sum(0))
        for name in ("detection", "delineation"):
            scores[f"{name}_f1"] = foreground_mean(f1_iou(result[f"{name}_counts"].sum(0))[0], fixed)
        scores["instances_merged_across_tiles"] = True
    result["scores"] = scores
    return result


def _panel_origin(mask: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left of a ``size`` window with the most foreground pixels among a coarse grid (for the panels)."""
    height, width = mask.shape
    best, where = -1, (0, 0)
    for r, c in tile_origins(max(height, size), max(width, size), size, 0):
        fg = int(((mask[r : r + size, c : c + size] > 0) & (mask[r : r + size, c : c + size] != IGNORE_INDEX)).sum())
        if fg > best:
            best, where = fg, (r, c)
    return where


def _fit(array: np.ndarray, size: int, fill: int) -> np.ndarray:
    """Pad the last two axes to ``size`` (a chip smaller than a tile), so panels stack."""
    pad = [(0, 0)] * (array.ndim - 2) + [(0, size - array.shape[-2]), (0, size - array.shape[-1])]
    return np.pad(array, pad, constant_values=fill)
