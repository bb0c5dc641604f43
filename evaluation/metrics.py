"""Scores of the comparison: foreground mean F1 (pixel F1 per foreground class, averaged) and IoU; object F1 at
IoU >= 0.5, mAP50, detection F1 and delineation F1 where instances exist; a hierarchical bootstrap over seeds x
chips (chips grouped by scene) for intervals and differences.

The scored class set is fixed once: the foreground classes present in the ground truth of the whole evaluation
split (``scored_classes``). Every resample and every backbone averages over exactly that set; a resample in which a
scored class has no ground truth is undefined (counted, not silently averaged over fewer classes). A class absent
from the ground truth has no F1 (NaN, never 0); if it is predicted anyway, its false-positive pixels/objects are
reported (``predicted_but_absent``), not averaged in.

Everything is computed from per-image counts, so runs can be pooled and resampled after the fact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from evaluation.datasets.card import IGNORE_INDEX


def pixel_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """pred, target: (H, W) class ids -> (K, 3) int64 [tp, fp, fn] per class; ignored pixels are not counted."""
    valid = target != ignore_index
    pred, target = pred[valid].long(), target[valid].long()
    confusion = torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, -1)
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    return torch.stack([tp, fp, fn], dim=1).numpy().astype(np.int64)


def f1_iou(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """counts: (K, 3) [tp, fp, fn] -> F1 (K,), IoU (K,); NaN for a class absent from the ground truth (tp + fn = 0),
    whatever was predicted: its F1 is undefined, not 0."""
    tp, fp, fn = (counts[..., i].astype(np.float64) for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fn > 0, tp / (tp + fp + fn), np.nan)
    return f1, iou


def scored_classes(total: np.ndarray) -> np.ndarray:
    """total: (K, 3) counts of the whole split -> (K,) bool: foreground classes present in the ground truth."""
    present = (total[:, 0] + total[:, 2]) > 0
    present[0] = False
    return present


def foreground_mean(values: np.ndarray, scored: np.ndarray | None = None) -> float:
    """Mean over the ``scored`` classes (default: foreground classes with a value); NaN if any scored class is
    undefined, so every average is over the same class set."""
    if scored is None:
        scored = np.isfinite(values)
        scored[0] = False
    if not scored.any():
        return float("nan")
    chosen = values[scored]
    return float(np.mean(chosen)) if np.isfinite(chosen).all() else float("nan")


def predicted_but_absent(total: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Foreground classes with no ground truth but false positives -> their count (reported, not scored)."""
    return {name: int(total[c, 1]) for c, name in enumerate(class_names)
            if c > 0 and total[c, 0] + total[c, 2] == 0 and total[c, 1] > 0}


def semantic_scores(per_image_counts: Sequence[np.ndarray], class_names: Sequence[str]) -> dict:
    """Pool per-image (K, 3) counts -> foreground mean F1 / IoU over the scored classes, per-class values."""
    total = np.sum(np.stack(per_image_counts), axis=0)
    f1, iou = f1_iou(total)
    scored = scored_classes(total)
    return {
        "foreground_mean_f1": foreground_mean(f1, scored), "foreground_mean_iou": foreground_mean(iou, scored),
        "scored_classes": [n for n, s in zip(class_names, scored) if s],
        "predicted_but_absent": predicted_but_absent(total, class_names),
        "per_class_f1": {name: _clean(v) for name, v in zip(class_names, f1)},
        "per_class_iou": {name: _clean(v) for name, v in zip(class_names, iou)},
    }


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """pred: (P, H, W), gt: (G, H, W) binary -> (P, G) IoU."""
    if len(pred) == 0 or len(gt) == 0:
        return torch.zeros(len(pred), len(gt))
    p, g = pred.flatten(1).float(), gt.flatten(1).float()
    inter = p @ g.T
    union = p.sum(1, keepdim=True) + g.sum(1) - inter
    return inter / union.clamp(min=1)


def greedy_match(ious: np.ndarray, scores: np.ndarray, labels: np.ndarray, gt_labels: np.ndarray,
                 iou_threshold: float) -> np.ndarray:
    """ious: (P, G) -> (P,) index of the ground truth each prediction matched, -1 if none.

    Greedy, class-aware, in descending score order (COCO style): each prediction takes the free ground truth of its
    class with the highest IoU if that IoU reaches ``iou_threshold`` (``iou_threshold=0``: any overlap > 0).
    """
    matched = np.full(len(scores), -1, dtype=np.int64)
    taken = np.zeros(len(gt_labels), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        if len(gt_labels) == 0:
            break
        candidates = np.where(taken | (gt_labels != labels[i]), -1.0, ious[i])
        best = int(np.argmax(candidates))
        if candidates[best] > 0 and candidates[best] >= iou_threshold:
            taken[best] = True
            matched[i] = best
    return matched


def _match_dict(matched: np.ndarray, scores: np.ndarray, labels: np.ndarray, gt_labels: np.ndarray) -> dict:
    order = np.argsort(-scores, kind="stable")
    return {"scores": scores[order], "labels": labels[order], "tp": matched[order] >= 0, "gt_labels": gt_labels,
            "gt_index": matched[order]}


def match_instances(pred_masks: torch.Tensor, pred_scores: torch.Tensor, pred_labels: torch.Tensor,
                    gt_masks: torch.Tensor, gt_labels: torch.Tensor, iou_threshold: float = 0.5) -> dict:
    """Full-image masks of one image -> {"scores": (P,), "labels": (P,), "tp": (P,) bool, "gt_labels": (G,),
    "gt_index": (P,)} as numpy arrays, predictions in descending score order (see ``greedy_match``)."""
    ious = mask_iou(pred_masks.bool(), gt_masks.bool()).numpy()
    scores, labels, gts = pred_scores.float().numpy(), pred_labels.numpy(), gt_labels.numpy()
    return _match_dict(greedy_match(ious, scores, labels, gts, iou_threshold), scores, labels, gts)


def boxed_overlaps(pred: Sequence[Any], gt: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Objects with ``row``, ``col``, ``mask`` (h, w) bool (``evaluation.overlap.TileInstance``) -> (P, G) IoU and
    (P, G, 3) [intersection, pred-only, gt-only] pixel counts, computed inside overlapping boxes only."""
    ious = np.zeros((len(pred), len(gt)))
    pixels = np.zeros((len(pred), len(gt), 3), dtype=np.int64)
    if not len(pred) or not len(gt):
        return ious, pixels
    pb = np.array([(p.row, p.col, p.row + p.mask.shape[0], p.col + p.mask.shape[1]) for p in pred])
    gb = np.array([(g.row, g.col, g.row + g.mask.shape[0], g.col + g.mask.shape[1]) for g in gt])
    psize = np.array([int(p.mask.sum()) for p in pred])
    gsize = np.array([int(g.mask.sum()) for g in gt])
    overlap = ((pb[:, None, 0] < gb[None, :, 2]) & (gb[None, :, 0] < pb[:, None, 2])
               & (pb[:, None, 1] < gb[None, :, 3]) & (gb[None, :, 1] < pb[:, None, 3]))
    for i, j in zip(*np.nonzero(overlap)):
        r0, c0 = max(pb[i, 0], gb[j, 0]), max(pb[i, 1], gb[j, 1])
        r1, c1 = min(pb[i, 2], gb[j, 2]), min(pb[i, 3], gb[j, 3])
        a = pred[i].mask[r0 - pb[i, 0] : r1 - pb[i, 0], c0 - pb[i, 1] : c1 - pb[i, 1]]
        b = gt[j].mask[r0 - gb[j, 0] : r1 - gb[j, 0], c0 - gb[j, 1] : c1 - gb[j, 1]]
        inter = int(np.logical_and(a, b).sum())
        pixels[i, j] = (inter, psize[i] - inter, gsize[j] - inter)
        ious[i, j] = inter / max(psize[i] + gsize[j] - inter, 1)
    return ious, pixels


def object_scores(pred: Sequence[Any], gt: Sequence[Any], num_classes: int, score_threshold: float = 0.5,
                  iou_threshold: float = 0.5) -> dict:
    """Objects of one chip (whole objects, merged across tiles) -> its matches and counts.

    - ``match``: every prediction matched at IoU >= ``iou_threshold`` (for mAP50; ``match_instances`` layout);
    - ``object``: (K, 3) [tp, fp, fn] objects at IoU >= ``iou_threshold`` among predictions >= ``score_threshold``;
    - ``detection``: (K, 3) objects found: a prediction (>= ``score_threshold``) overlapping a ground-truth object
      of its class at all (IoU > 0, one-to-one, greedy by score);
    - ``delineation``: (K, 3) [tp, fp, fn] pixels of the detection-matched pairs (pixel F1 inside found objects).
    """
    scores = np.array([p.score for p in pred], dtype=np.float64)
    labels = np.array([p.label for p in pred], dtype=np.int64)
    gt_labels = np.array([g.label for g in gt], dtype=np.int64)
    ious, pixels = boxed_overlaps(pred, gt)
    match = _match_dict(greedy_match(ious, scores, labels, gt_labels, iou_threshold), scores, labels, gt_labels)
    kept = scores >= score_threshold
    found = np.full(len(pred), -1, dtype=np.int64)
    found[kept] = greedy_match(ious[kept], scores[kept], labels[kept], gt_labels, 0.0)
    detection = np.zeros((num_classes, 3), dtype=np.int64)
    delineation = np.zeros((num_classes, 3), dtype=np.int64)
    for c in range(1, num_classes):
        mine = kept & (labels == c)
        tp = int((found[mine] >= 0).sum())
        detection[c] = (tp, int(mine.sum()) - tp, int((gt_labels == c).sum()) - tp)
        for i in np.flatnonzero(mine & (found >= 0)):
            delineation[c] += pixels[i, found[i]]
    return {"match": match, "object": instance_counts(match, num_classes, score_threshold), "detection": detection,
            "delineation": delineation}


def instance_counts(match: dict, num_classes: int, score_threshold: float = 0.5) -> np.ndarray:
    """One image's match -> (K, 3) [tp, fp, fn] per class for predictions scoring >= ``score_threshold``."""
    counts = np.zeros((num_classes, 3), dtype=np.int64)
    kept = match["scores"] >= score_threshold
    for c in range(1, num_classes):
        mine = kept & (match["labels"] == c)
        tp = int((match["tp"] & mine).sum())
        counts[c] = (tp, int(mine.sum()) - tp, int((match["gt_labels"] == c).sum()) - tp)
    return counts


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of one class; NaN without ground truth."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = tp[order].astype(np.float64)
    recall = np.cumsum(hits) / n_gt
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    index = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in index]))


def instance_scores(matches: Sequence[dict], class_names: Sequence[str], score_threshold: float = 0.5) -> dict:
    """Pool per-image matches -> instance F1 at IoU >= 0.5 (foreground mean and per class) and mAP50."""
    k = len(class_names)
    counts = np.sum([instance_counts(m, k, score_threshold) for m in matches], axis=0)
    f1, _ = f1_iou(counts)
    scores = np.concatenate([m["scores"] for m in matches]) if matches else np.zeros(0)
    labels = np.concatenate([m["labels"] for m in matches]) if matches else np.zeros(0)
    tps = np.concatenate([m["tp"] for m in matches]) if matches else np.zeros(0, dtype=bool)
    gts = np.concatenate([m["gt_labels"] for m in matches]) if matches else np.zeros(0)
    ap = np.array([np.nan] + [average_precision(scores[labels == c], tps[labels == c], int((gts == c).sum()))
                              for c in range(1, k)])
    scored = scored_classes(counts)
    return {
        "instance_f1": foreground_mean(f1, scored), "map50": foreground_mean(ap, scored),
        "instance_predicted_but_absent": predicted_but_absent(counts, class_names),
        "per_class_instance_f1": {n: _clean(v) for n, v in zip(class_names, f1)},
        "per_class_ap50": {n: _clean(v) for n, v in zip(class_names, ap)},
        "score_threshold": score_threshold,
    }


def map50_of(matches: Sequence[dict], scored: np.ndarray) -> float:
    """Pool matches (one dict per image, as ``match_instances``) -> mAP50 over the ``scored`` classes."""
    scores = np.concatenate([m["scores"] for m in matches]) if matches else np.zeros(0)
    labels = np.concatenate([m["labels"] for m in matches]) if matches else np.zeros(0)
    tps = np.concatenate([m["tp"] for m in matches]) if matches else np.zeros(0, dtype=bool)
    gts = np.concatenate([m["gt_labels"] for m in matches]) if matches else np.zeros(0)
    ap = np.full(len(scored), np.nan)
    for c in np.flatnonzero(scored):
        ap[c] = average_precision(scores[labels == c], tps[labels == c], int((gts == c).sum()))
    return foreground_mean(ap, scored)


def counts_statistic(scored: np.ndarray, which: str = "f1") -> Callable[[np.ndarray, np.ndarray], float]:
    """A bootstrap statistic: (n_images, K, 3) counts, image index -> foreground mean F1 (or IoU) of their sum."""
    column = 0 if which == "f1" else 1

    def statistic(counts: np.ndarray, index: np.ndarray) -> float:
        return foreground_mean(f1_iou(counts[index].sum(axis=0))[column], scored)

    return statistic


def map50_statistic(scored: np.ndarray) -> Callable[[list[dict], np.ndarray], float]:
    """A bootstrap statistic: per-image matches, image index -> mAP50 of the drawn images (repeats count twice)."""
    return lambda matches, index: map50_of([matches[i] for i in index], scored)


def hierarchical_bootstrap(runs: dict[str, list[Any]], statistic: Callable[[Any, np.ndarray], float],
                           groups: Sequence[str], reference: str | None = None, n_boot: int = 1000,
                           seed: int = 0) -> dict[str, dict[str, float | int | None]]:
    """Bootstrap over seeds x chips, chips resampled by group (scene), paired across backbones.

    runs: backbone -> one per-image data item per seed (counts (n_images, K, 3) or a list of matches), all over the
    same images in the same order; groups: (n_images,) group key of each image (the image itself when unknown).
    Each resample draws groups with replacement (their images together, the same draw for every backbone), then
    each backbone's seeds with replacement; its value is the mean over drawn seeds of ``statistic``.
    -> backbone -> {"value", "ci_low", "ci_high"} (95 %, percentile) and, for others than ``reference``,
    {"diff", "diff_ci_low", "diff_ci_high"}; "undefined": resamples left out because a scored class had no ground
    truth in them.
    """
    if reference is not None and reference not in runs:
        raise ValueError(f"reference backbone {reference!r} has no runs; have {sorted(runs)}")
    n = len(groups)
    sizes = {len(item) for items in runs.values() for item in items}
    if sizes != {n}:
        raise ValueError(f"runs were scored on different image sets (sizes {sorted(sizes)}, {n} groups given): "
                         "cannot pair them")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    blocks = [np.array(v) for v in members.values()]
    rng = np.random.default_rng(seed)
    everything = np.arange(n)
    values = {name: np.empty(n_boot) for name in runs}
    for b in range(n_boot):
        drawn = rng.integers(0, len(blocks), len(blocks))
        index = np.concatenate([blocks[d] for d in drawn])
        for name, items in runs.items():
            seeds = rng.integers(0, len(items), len(items))
            values[name][b] = np.mean([statistic(items[s], index) for s in seeds])
    out: dict[str, dict] = {}
    for name, items in runs.items():
        point = float(np.mean([statistic(item, everything) for item in items]))
        boot = values[name]
        ok = np.isfinite(boot)
        low, high = np.percentile(boot[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan)
        row = {"value": point, "ci_low": _clean(low), "ci_high": _clean(high), "undefined": int((~ok).sum())}
        if reference is not None and name != reference:
            ref_point = float(np.mean([statistic(item, everything) for item in runs[reference]]))
            diffs = boot - values[reference]
            ok = np.isfinite(diffs)
            dlow, dhigh = np.percentile(diffs[ok], [2.5, 97.5]) if ok.any() else (np.nan, np.nan)
            row |= {"diff": point - ref_point, "diff_ci_low": _clean(dlow), "diff_ci_high": _clean(dhigh)}
        out[name] = row
    return out


def _clean(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def strict_json(value: Any) -> Any:
    """NaN / inf -> None recursively, so a JSON of scores is strict (an undefined score reads as null)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
