"""Frozen-encoder probes: oracles (features that encode the label -> ~1.0, shuffled labels -> chance), scores equal
to scikit-learn's, classes absent from a split reported and left out, determinism per seed, the whole run on a
tiny arctic archive."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

import arctic_vit
from arctic_vit.corpus import CorpusContract
from evaluation.metrics import f1_iou, foreground_mean
from evaluation.probe_data import ProbeChips, cut_chips, patch_targets
from evaluation.probes import (
    METRICS,
    NULL_NAME,
    ProbeTask,
    _subsample,
    classification_scores,
    patch_counts,
    plot_probes,
    probes_markdown,
    run_probes,
    scene_type_probes,
    segmentation_probe,
)
from training.synthetic import generate_archive
from training.synthetic_arctic import ARCTIC_PROFILE

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tiny matrices: 1 thread is faster
CONTRACT = CorpusContract(("blue", "green", "red", "nir"), 11, (0.2, 0.2, 0.2, 0.3), (0.1, 0.1, 0.1, 0.1), 0.5, 0)


def _label_features(labels: np.ndarray, n_classes: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Features that are a known function of the label: a fixed class direction (per ``dim``) plus small noise."""
    directions = np.random.default_rng(dim).standard_normal((n_classes, dim))
    return directions[labels] + 0.1 * rng.standard_normal((len(labels), dim))


def test_scene_type_probes_reach_one_on_label_features_and_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    n_classes = 5
    y_train, y_test = rng.integers(0, n_classes, 300), rng.integers(0, n_classes, 200)
    x_train, x_test = (_label_features(y, n_classes, 32, rng) for y in (y_train, y_test))
    for probe, pred in scene_type_probes(x_train, y_train, x_test, seed=0).items():
        assert classification_scores(y_test, pred, n_classes)[0] > 0.98, probe
    noise_train, noise_test = rng.standard_normal((300, 32)), rng.standard_normal((1000, 32))
    y_test = rng.integers(0, n_classes, 1000)
    for probe, pred in scene_type_probes(noise_train, rng.permutation(y_train), noise_test, 0).items():
        accuracy = classification_scores(y_test, pred, n_classes)[0]
        assert abs(accuracy - 1 / n_classes) < 0.06, (probe, accuracy)


def test_segmentation_probe_oracle_and_shuffled_targets():
    rng = np.random.default_rng(1)
    n_classes = 4
    targets = rng.choice(n_classes, size=(60, 16), p=[0.7, 0.1, 0.1, 0.1])
    features = _label_features(targets.ravel(), n_classes, 24, rng).reshape(60, 16, 24)
    train, test = np.arange(40), np.arange(40, 60)
    scored = np.array([False, True, True, True])

    def f1(pred: np.ndarray) -> float:
        return foreground_mean(f1_iou(patch_counts(targets[test], pred, n_classes).sum(0))[0], scored)

    assert f1(segmentation_probe(features[train], targets[train], features[test], n_classes, seed=0)) > 0.98
    noise = rng.standard_normal(features.shape)  # features unrelated to the (shuffled) targets: chance, ~0.15
    shuffled = rng.permutation(targets[train].ravel()).reshape(40, 16)
    assert f1(segmentation_probe(noise[train], shuffled, noise[test], n_classes, seed=0)) < 0.25


def test_classification_scores_equal_scikit_learn():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 4, 120)
    pred = np.where(rng.random(120) < 0.6, truth, rng.integers(0, 5, 120))  # 4 = a class seen in training only
    accuracy, macro_f1 = classification_scores(truth, pred, 4)
    assert accuracy == pytest.approx(balanced_accuracy_score(truth, np.where(pred == 4, -1, pred)))
    assert macro_f1 == pytest.approx(f1_score(truth, pred, labels=[0, 1, 2, 3], average="macro"))
    assert np.isnan(classification_scores(truth[truth != 2], pred[truth != 2], 4)[0]), "a scored class with no sample"


def test_patch_targets_majority_rare_class():
    masks = np.zeros((1, 32, 32), np.uint8)
    masks[0, :16, :16] = 1  # patch 0: all class 1
    masks[0, :16, 16:20] = 2  # patch 1: 25 % class 2 (kept at min_share 0.25), 75 % background
    masks[0, 16:, :3] = 3  # patch 2: 19 % class 3 (dropped)
    masks[0, 16:, 16:24], masks[0, 16:, 24:26] = 2, 3  # patch 3: 50 % class 2, 12.5 % class 3
    assert patch_targets(masks, 16, 0.25).tolist() == [[1, 2, 0, 2]]


def _chips(types_by_scene: dict[str, list[str]]) -> ProbeChips:
    scenes = [s for s, types in types_by_scene.items() for _ in types]
    types = [t for types in types_by_scene.values() for t in types]
    n = len(types)
    return ProbeChips(np.ones((n, 4, 16, 16), np.uint16), np.array(scenes), np.array(types), None, ())


def test_a_type_absent_from_a_split_is_reported_and_not_scored(tmp_path):
    common = ["water", "tundra"] * 3
    chips = _chips({f"s{i}": common + (["slump"] if i == 0 else []) for i in range(6)})
    task = ProbeTask.build(chips, tmp_path)
    report = task.report
    assert "slump" not in task.scene_types and set(task.scene_types) == {"tundra", "water"}
    assert report["scene_types_absent_from_test"] + report["scene_types_absent_from_train"] == ["slump"]
    assert all(type(t) is str for t in report["scene_types_scored"]), "plain str: reports print them"
    slump_in_test = report["scene_types_absent_from_train"] == ["slump"]
    assert report["test_chips_left_out"] == (1 if slump_in_test else 0)
    assert set(chips.scenes[task.train]).isdisjoint(chips.scenes[task.test]), "split by scene"
    assert len(task.y_test) == len(task.scored_test) and task.y_test.max() < len(task.scene_types)


def test_too_few_shared_types_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than 2 scene types in both splits"):
        ProbeTask.build(_chips({"a": ["water"] * 4, "b": ["tundra"] * 4}), tmp_path)


def test_probes_are_deterministic_per_seed_and_seeds_differ():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    x = _label_features(y, 3, 16, rng) + rng.standard_normal((200, 16))
    first = scene_type_probes(x[:150], y[:150], x[150:], seed=4)
    again = scene_type_probes(x[:150], y[:150], x[150:], seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(_subsample(150, 4), _subsample(150, 5))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_torch_thread_per_module):
    """run_probes on a tiny arctic archive (8 scenes, 64 px chips) with one export and the random-init reference."""
    root = tmp_path_factory.mktemp("probes")
    archive = root / "archive"
    generate_archive(archive, n_scenes=8, size=256, seed=21, zone_size=128, profile="arctic")
    torch.manual_seed(0)
    source = timm.create_model("arctic_mae_vit_tiny_patch16_224", pretrained=False, img_size=64)
    export = arctic_vit.export_folder("arctic_mae_vit_tiny_patch16_224", source, root / "export", corpus=CONTRACT)
    encoders = {"curated": export, "random_init": None}
    kwargs = dict(seeds=(0, 1), chip_px=64, n_boot=30)
    return root, encoders, run_probes(encoders, archive, root / "out", **kwargs), kwargs


def test_run_probes_result_layout_and_file(tiny_run):
    root, encoders, result, _ = tiny_run
    assert json.loads((root / "out" / "probes.json").read_text()) == result
    assert result["reference"] == "random_init"
    for name in encoders:
        for metric in result["metrics"]:
            row = result["encoders"][name][metric]
            assert len(row["per_seed"]) == 2 and set(row) >= {"mean", "ci95", "undefined_resamples"}
            assert row["mean"] is None or 0.0 <= row["mean"] <= 1.0
    assert set(result["metrics"]) == set(METRICS)
    assert set(result["differences"]["linear_balanced_accuracy"]) == {"curated - random_init"}
    assert NULL_NAME in result["null_difference"]["what"] and "linear_macro_f1" in result["null_difference"]
    split = result["protocol"]["split"]
    assert not set(split["train_scenes"]) & set(split["test_scenes"])
    assert result["protocol"]["preprocessing"].startswith("train-split z-score")


def test_cut_chips_labels_agree_with_the_archive(tiny_run):
    root, _, _, _ = tiny_run
    chips = cut_chips(root / "archive", 64)
    assert chips.images.shape[1:] == (4, 64, 64) and chips.masks.shape[1:] == (64, 64)
    assert len(chips) <= 8 * 16 and len(set(chips.scenes)) == 8
    assert chips.class_names[:2] == ("background", "ice_wedge_polygon")
    for scene_type, mask in zip(chips.scene_types, chips.masks):
        allowed = {0, ARCTIC_PROFILE[scene_type].label_class}
        assert set(np.unique(mask).tolist()) <= allowed, scene_type  # zones are 128 px: a 64 px chip is one zone
    low = np.array([ARCTIC_PROFILE[t].group == "low_information" for t in chips.scene_types])
    assert low.mean() > 0.6 and chips.masks[~low].any(axis=(1, 2)).mean() > 0.5


def test_probe_report_table_and_plot(tiny_run, tmp_path):
    _, _, result, _ = tiny_run
    table = probes_markdown(result)
    curated = result["encoders"]["curated"]["linear_balanced_accuracy"]
    assert f"| curated | {curated['mean']:.3f}" in table
    diff = result["differences"]["linear_balanced_accuracy"]["curated - random_init"]["diff"]
    assert f"| curated - random_init | {diff:.3f}" in table and f"null: {NULL_NAME} - random_init" in table
    assert plot_probes(result, tmp_path / "probes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_probes_is_deterministic(tiny_run):
    root, encoders, result, kwargs = tiny_run
    again = run_probes(encoders, root / "archive", root / "again", **kwargs)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}


def test_run_probes_refuses_bad_input(tiny_run, tmp_path):
    root, encoders, _, kwargs = tiny_run
    with pytest.raises(ValueError, match="one random-init reference at most"):
        run_probes({"a": None, "b": None}, root / "archive", tmp_path, **kwargs)
    with pytest.raises(ValueError, match="multiple of the 16 px patch"):
        run_probes(encoders, root / "archive", tmp_path, seeds=(0,), chip_px=60)
    other = arctic_vit.export_folder(
        "arctic_mae_vit_tiny_patch16_224",
        timm.create_model("arctic_mae_vit_tiny_patch16_224", pretrained=False, img_size=64), tmp_path / "eight_bit",
        corpus=CorpusContract(CONTRACT.bands, 8, CONTRACT.mean, CONTRACT.std))
    with pytest.raises(ValueError, match="expect different data"):
        run_probes({**encoders, "eight_bit": other}, root / "archive", tmp_path, **kwargs)
    with pytest.raises(FileNotFoundError, match="no scene with a zone table"):
        run_probes(encoders, tmp_path, tmp_path / "out", **kwargs)


def test_knn_interval_is_not_degenerate_when_every_seed_agrees():
    """kNN has no randomness of its own: if every seed gives the same predictions the seed draw adds nothing, and the
    interval must still come from resampling the test scenes (hierarchical: seeds x scenes), not collapse to a point.
    Hand check: 4 scenes of 4 chips, 2 classes; scenes 0-1 all right, scenes 2-3 half right -> point 0.75."""
    from evaluation.metrics import hierarchical_bootstrap
    from evaluation.probes import _classification_statistic

    truth = np.tile([0, 1, 0, 1], 4)
    pred = truth.copy()
    pred[8:16:2] = 1  # scenes 2 and 3: class-0 chips wrong
    item = np.stack([truth, pred], axis=1)
    groups = np.repeat([f"scene{i}" for i in range(4)], 4)
    statistic = _classification_statistic(0, 2)
    boot = hierarchical_bootstrap({"knn": [item] * 5, "ref": [np.stack([truth, truth], 1)] * 5}, statistic, groups,
                                  reference="ref", n_boot=300)
    assert boot["knn"]["value"] == pytest.approx(0.75)
    assert boot["knn"]["ci_low"] < 0.75 < boot["knn"]["ci_high"]  # scene resampling moves it
    assert boot["knn"]["ci_low"] >= 0.5 and boot["knn"]["ci_high"] == pytest.approx(1.0)
    assert boot["knn"]["diff_ci_low"] < boot["knn"]["diff_ci_high"] <= 0
