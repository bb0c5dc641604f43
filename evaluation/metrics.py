"""Scores of the comparison: foreground mean F1 (pixel F1 per foreground class, averaged) and IoU; instance F1 at
IoU >= 0.5 and mAP50 where instances exist; a paired bootstrap over evaluation images for differences.

Everything is computed from per-image counts, so runs can be pooled and resampled after the fact.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    """counts: (K, 3) [tp, fp, fn] -> F1 (K,), IoU (K,); NaN for a class absent from both target and prediction."""
    tp, fp, fn = (counts[..., i].astype(np.float64) for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    return f1, iou


def foreground_mean(values: np.ndarray) -> float:
    """Mean over foreground classes (index >= 1), NaN classes left out; NaN if none is defined."""
    fg = values[1:]
    return float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")


def semantic_scores(per_image_counts: Sequence[np.ndarray], class_names: Sequence[str]) -> dict:
    """Pool per-image (K, 3) counts -> foreground mean F1 / IoU and per-class values."""
    total = np.sum(np.stack(per_image_counts), axis=0)
    f1, iou = f1_iou(total)
    return {
        "foreground_mean_f1": foreground_mean(f1), "foreground_mean_iou": foreground_mean(iou),
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


def match_instances(pred_masks: torch.Tensor, pred_scores: torch.Tensor, pred_labels: torch.Tensor,
                    gt_masks: torch.Tensor, gt_labels: torch.Tensor, iou_threshold: float = 0.5) -> dict:
    """Greedy class-aware matching in descending score order (COCO style) for one image.

    -> {"scores": (P,), "labels": (P,), "tp": (P,) bool, "gt_labels": (G,)} as numpy arrays.
    """
    order = torch.argsort(pred_scores, descending=True)
    ious = mask_iou(pred_masks[order].bool(), gt_masks.bool())
    taken = torch.zeros(len(gt_masks), dtype=torch.bool)
    tp = torch.zeros(len(order), dtype=torch.bool)
    labels = pred_labels[order]
    for i in range(len(order)):
        if len(gt_masks) == 0:
            break
        candidates = ious[i].clone()
        candidates[taken | (gt_labels != labels[i])] = -1
        best = int(torch.argmax(candidates))
        if candidates[best] >= iou_threshold:
            taken[best] = True
            tp[i] = True
    return {"scores": pred_scores[order].numpy(), "labels": labels.numpy(), "tp": tp.numpy(),
            "gt_labels": gt_labels.numpy()}


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
    return {
        "instance_f1": foreground_mean(f1), "map50": foreground_mean(ap),
        "per_class_instance_f1": {n: _clean(v) for n, v in zip(class_names, f1)},
        "per_class_ap50": {n: _clean(v) for n, v in zip(class_names, ap)},
        "score_threshold": score_threshold,
    }


def pooled_foreground_f1(counts: np.ndarray) -> float:
    """counts: (n_images, K, 3) -> foreground mean F1 of their sum."""
    return foreground_mean(f1_iou(counts.sum(axis=0))[0])


def paired_bootstrap(runs: dict[str, list[np.ndarray]], reference: str, n_boot: int = 1000,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Paired bootstrap over evaluation images of (backbone - reference) foreground mean F1.

    runs: backbone -> one (n_images, K, 3) count array per seed, all over the same images in the same order.
    Each resample draws images once and scores every backbone and seed on them; a backbone's score is its mean
    over seeds. -> backbone -> {"diff", "ci_low", "ci_high"} (95 %, percentile).
    """
    if reference not in runs:
        raise ValueError(f"reference backbone {reference!r} has no runs; have {sorted(runs)}")
    n_images = {arr.shape[0] for arrays in runs.values() for arr in arrays}
    if len(n_images) != 1:
        raise ValueError(f"runs were scored on different image sets (sizes {sorted(n_images)}): cannot pair them")
    n = n_images.pop()
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, n, n) for _ in range(n_boot)]

    def score(arrays: list[np.ndarray], index: np.ndarray | None) -> float:
        return float(np.nanmean([pooled_foreground_f1(a if index is None else a[index]) for a in arrays]))

    ref_point = score(runs[reference], None)
    ref_boot = np.array([score(runs[reference], s) for s in samples])
    out = {}
    for name, arrays in runs.items():
        if name == reference:
            continue
        diffs = np.array([score(arrays, s) for s in samples]) - ref_boot
        low, high = np.nanpercentile(diffs, [2.5, 97.5])
        out[name] = {"diff": score(arrays, None) - ref_point, "ci_low": float(low), "ci_high": float(high)}
    return out


def _clean(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
