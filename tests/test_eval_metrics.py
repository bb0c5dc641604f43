"""Scores of the evaluation: pixel F1/IoU from counts, the fixed class set, instance matching, AP50, object /
detection / delineation counts, merging across a tile seam, the hierarchical bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.chip_eval import predict_objects, truth_objects
from evaluation.devices import Precision
from evaluation.metrics import (
    average_precision,
    counts_statistic,
    f1_iou,
    foreground_mean,
    hierarchical_bootstrap,
    instance_counts,
    instance_scores,
    match_instances,
    object_scores,
    pixel_counts,
    scored_classes,
    semantic_scores,
)
from evaluation.overlap import TileInstance, tile_origins


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


def test_predicted_but_absent_class_has_no_f1_and_is_reported():
    counts = np.array([[10, 0, 0], [5, 1, 1], [0, 7, 0]])  # class 2: no ground truth, 7 false-positive pixels
    f1, iou = f1_iou(counts)
    assert math.isnan(f1[2]) and math.isnan(iou[2])  # undefined, not 0
    scores = semantic_scores([counts], ["bg", "a", "b"])
    assert scores["scored_classes"] == ["a"] and scores["predicted_but_absent"] == {"b": 7}
    assert scores["foreground_mean_f1"] == pytest.approx(10 / 12)
    scored = scored_classes(np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]]))
    assert scored.tolist() == [False, True, True]
    assert math.isnan(foreground_mean(np.array([1.0, 0.5, np.nan]), scored))  # same class set or undefined


def _counts(n_images: int, tp: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.zeros((n_images, 2, 3), dtype=np.int64)
    arr[:, 1, 0] = tp + rng.integers(0, 3, n_images)
    arr[:, 1, 1] = 5
    arr[:, 1, 2] = 5
    return arr


FG = np.array([False, True])


def test_hierarchical_bootstrap_identical_runs_zero_difference_better_runs_positive():
    ref = [_counts(30, 5, s) for s in range(3)]
    better = [a.copy() for a in ref]
    for a in better:
        a[:, 1, 1] = 1  # fewer false positives on every image
    groups = [f"scene{i // 3}" for i in range(30)]
    runs = {"ref": ref, "same": [a.copy() for a in ref], "better": better}
    result = hierarchical_bootstrap(runs, counts_statistic(FG), groups, "ref", n_boot=200)
    same = result["same"]
    assert same["diff"] == 0.0 and same["value"] == result["ref"]["value"]
    # the same seeds are not paired across backbones, so identical runs differ by seed draws only: a narrow interval
    assert same["diff_ci_low"] <= 0.0 <= same["diff_ci_high"] and same["diff_ci_high"] - same["diff_ci_low"] < 0.05
    assert result["better"]["diff"] > 0 and result["better"]["diff_ci_low"] > 0


def test_hierarchical_bootstrap_takes_seed_variance_and_whole_groups():
    chips = _counts(20, 5, 0)
    low, high = chips.copy(), chips.copy()
    high[:, 1, 1] = 0  # the second seed is much better on every chip
    stat = counts_statistic(FG)
    one_group = ["s"] * 20  # one scene: resampling chips by group cannot move anything
    result = hierarchical_bootstrap({"b": [low, high]}, stat, one_group, None, n_boot=400)["b"]
    everything = np.arange(20)
    seed_values = sorted([stat(low, everything), stat(high, everything)])
    assert result["value"] == pytest.approx(np.mean(seed_values))
    assert result["ci_low"] == pytest.approx(seed_values[0]) and result["ci_high"] == pytest.approx(seed_values[1])
    single_seed = hierarchical_bootstrap({"b": [low]}, stat, one_group, None, n_boot=50)["b"]
    assert single_seed["ci_low"] == single_seed["ci_high"] == pytest.approx(seed_values[0])


def test_hierarchical_bootstrap_counts_resamples_without_a_scored_class_and_refuses_unpaired_sets():
    chips = _counts(4, 5, 0)
    chips[1:, 1] = 0  # only the first chip holds the class
    result = hierarchical_bootstrap({"b": [chips]}, counts_statistic(FG), ["a", "b", "c", "d"], None, n_boot=200)
    assert 0 < result["b"]["undefined"] < 200  # (3/4)^4 of the draws miss the first chip
    with pytest.raises(ValueError, match="different image sets"):
        hierarchical_bootstrap({"ref": [_counts(10, 5, 0)], "other": [_counts(12, 5, 0)]}, counts_statistic(FG),
                               ["g"] * 10, "ref")


def _object(row: int, col: int, h: int, w: int, label: int = 1, score: float = 1.0) -> TileInstance:
    return TileInstance(row, col, np.ones((h, w), dtype=bool), label, score)


def test_object_detection_and_delineation_by_hand():
    gt = [_object(0, 0, 10, 10), _object(20, 20, 10, 10), _object(40, 40, 4, 4)]
    pred = [_object(0, 0, 10, 8, score=0.9),  # IoU 0.8: an object match, 80 of 100 pixels
            _object(20, 27, 10, 10, score=0.8),  # IoU 30/170: found (detection), not an object match
            _object(60, 60, 5, 5, score=0.7),  # nothing there
            _object(40, 40, 4, 4, score=0.3)]  # exact but below the score threshold: only in mAP
    scored = object_scores(pred, gt, num_classes=2, score_threshold=0.5)
    assert scored["object"][1].tolist() == [1, 2, 2]
    assert scored["detection"][1].tolist() == [2, 1, 1]
    assert scored["delineation"][1].tolist() == [80 + 30, 0 + 70, 20 + 70]
    assert scored["match"]["tp"].tolist() == [True, False, False, True]  # score order, every prediction


class _SeamDetector(torch.nn.Module):
    """A Mask R-CNN stand-in that 'detects' exactly the part of one ground-truth object each tile sees."""

    def __init__(self, truth: torch.Tensor, tile: int, origins: list[tuple[int, int]]) -> None:
        super().__init__()
        self.truth, self.tile, self.origins, self.calls = truth, tile, origins, 0

    def forward(self, images, targets=None, latlon=None):
        outputs = []
        for _ in images:
            r, c = self.origins[self.calls]
            self.calls += 1
            part = self.truth[r : r + self.tile, c : c + self.tile]
            found = part.any()
            outputs.append({"masks": part[None, None].float() if found else torch.zeros(0, 1, self.tile, self.tile),
                            "labels": torch.tensor([1] if found else [], dtype=torch.long),
                            "scores": torch.tensor([0.9] if found else [])})
        return outputs


def test_one_polygon_across_a_tile_seam_scores_as_one_object():
    truth = torch.zeros(48, 48, dtype=torch.bool)
    truth[10:20, 20:44] = True  # crosses the seams of 32 px tiles overlapping by 16 (origins 0 and 16)
    origins = tile_origins(48, 48, 32, 16)
    detector = _SeamDetector(truth, 32, origins)
    objects = predict_objects(detector, torch.zeros(3, 48, 48), torch.full((1, 2), float("nan")), tile=32, overlap=16,
                              batch_size=len(origins), device=torch.device("cpu"), precision=Precision("cpu", None))
    assert len(objects) == 1 and objects[0].mask.sum() == truth.sum()
    gt = truth_objects({"masks": truth[None].to(torch.uint8), "labels": torch.tensor([1])})
    scored = object_scores(objects, gt, num_classes=2)
    assert scored["object"][1].tolist() == [1, 0, 0] and scored["delineation"][1].tolist() == [240, 0, 0]
    unmerged = [TileInstance(r, c, truth[r : r + 32, c : c + 32].numpy(), 1, 0.9) for r, c in origins
                if truth[r : r + 32, c : c + 32].any()]
    assert len(unmerged) > 1  # what per-tile scoring would have counted as separate objects
