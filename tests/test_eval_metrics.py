"""Scores of the evaluation: pixel F1/IoU from counts, instance matching, AP50, paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.metrics import (
    average_precision,
    instance_counts,
    instance_scores,
    match_instances,
    paired_bootstrap,
    pixel_counts,
    semantic_scores,
)


def test_pixel_counts_and_foreground_mean_f1_by_hand():
    target = torch.tensor([[0, 1, 1, 2], [0, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 0, 2], [1, 1, 2, 1]])
    counts = pixel_counts(pred, target, num_classes=3)
    # class 1: tp 2 (0,1),(1,1); fp 1 (1,0) + (1,3); fn 1 (0,2)  -> the ignored (1,2) pixel is not counted
    assert counts[1].tolist() == [2, 2, 1]
    assert counts[2].tolist() == [1, 0, 1]
    scores = semantic_scores([counts], ["background", "a", "b"])
    f1_a, f1_b = 4 / 7, 2 / 3
    assert scores["foreground_mean_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert scores["per_class_iou"]["b"] == pytest.approx(0.5)


def test_class_absent_everywhere_is_left_out_not_scored_zero():
    target = torch.tensor([[0, 1], [1, 0]])
    counts = pixel_counts(target.clone(), target, num_classes=3)
    scores = semantic_scores([counts], ["background", "a", "b"])
    assert scores["per_class_f1"]["b"] is None
    assert scores["foreground_mean_f1"] == pytest.approx(1.0)


def _square(r0: int, c0: int, size: int = 4) -> torch.Tensor:
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[r0 : r0 + size, c0 : c0 + size] = 1
    return mask


def test_instance_matching_is_greedy_class_aware_and_counts_duplicates_as_fp():
    gt = torch.stack([_square(0, 0), _square(8, 8)])
    gt_labels = torch.tensor([1, 1])
    pred = torch.stack([_square(0, 0), _square(0, 1), _square(8, 8), _square(4, 4)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([1, 1, 2, 1])  # the exact hit on the second square has the wrong class
    match = match_instances(pred, scores, labels, gt, gt_labels)
    assert match["tp"].tolist() == [True, False, False, False]
    counts = instance_counts(match, num_classes=3, score_threshold=0.5)
    assert counts[1].tolist() == [1, 2, 1]
    assert counts[2].tolist() == [0, 1, 0]
    result = instance_scores([match], ["background", "a", "b"])
    assert result["per_class_instance_f1"]["a"] == pytest.approx(2 / 5)


def test_average_precision_perfect_and_partial():
    assert average_precision(np.array([0.9, 0.8]), np.array([True, True]), n_gt=2) == pytest.approx(1.0)
    # one hit at top, then a miss; half the objects never found: precision 1 up to recall 0.5
    ap = average_precision(np.array([0.9, 0.8]), np.array([True, False]), n_gt=2)
    assert ap == pytest.approx(51 / 101)
    assert math.isnan(average_precision(np.zeros(0), np.zeros(0, dtype=bool), n_gt=0))


def _counts(n_images: int, tp: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.zeros((n_images, 2, 3), dtype=np.int64)
    arr[:, 1, 0] = tp + rng.integers(0, 3, n_images)
    arr[:, 1, 1] = 5
    arr[:, 1, 2] = 5
    return arr


def test_paired_bootstrap_identical_runs_have_zero_difference_and_better_runs_positive_ci():
    ref = [_counts(30, 5, s) for s in range(3)]
    better = [a.copy() for a in ref]
    for a in better:
        a[:, 1, 1] = 1  # fewer false positives on every image
    result = paired_bootstrap({"ref": ref, "same": [a.copy() for a in ref], "better": better}, "ref", n_boot=200)
    assert result["same"] == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert result["better"]["diff"] > 0 and result["better"]["ci_low"] > 0


def test_paired_bootstrap_refuses_unpaired_image_sets():
    with pytest.raises(ValueError, match="different image sets"):
        paired_bootstrap({"ref": [_counts(10, 5, 0)], "other": [_counts(12, 5, 0)]}, "ref")
