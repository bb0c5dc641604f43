"""End to end on synthetic stand-ins: finetuning runs, the run key, lr sweep + compared grid, instance scoring;
the protocol's pieces with hand-computed answers: the evaluate oracle, a learning test, devices."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.backbones import build_backbone
from evaluation.compare import compare, parse_weights
from evaluation.datasets.card import card_from_dict
from evaluation.devices import Precision, resolve_device, run_devices
from evaluation.finetune import (
    build_model,
    code_version,
    evaluate,
    load_recipe,
    make_batch,
    run,
    train,
    train_step,
    weights_sha256,
)
from evaluation.tiling import random_view

MAPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maple_iwp"
TINY = ["model.img_size=32", "model.pyramid_channels=16", "model.decoder_channels=16", "train.epochs=1",
        "train.batch_size=4", "train.threads=1", "backbone.arch=vit_tiny_patch16_224", "eval.overlap=8",
        "train.device=cpu"]


@pytest.fixture(scope="module")
def synthetic_card(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return {"root": str(root / "rts"),
            "splits": {"group": "scene", "seed": 0, "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
            "generate": {"task": "rts", "scenes_dir": str(root / "scenes"), "scenes": 4, "size": 256,
                         "zone_size": 128, "seed": 0, "chip_size": 64}}


def _recipe(name: str, card_overrides: dict, out: Path, *extra: str) -> dict:
    cfg = load_recipe(f"evaluation/recipes/{name}.yaml", [*TINY, f"output.root={out}", *extra])
    cfg["dataset"]["card_overrides"] = card_overrides
    return cfg


def test_finetune_reports_test_split_and_skips_only_an_identical_run(tmp_path, synthetic_card, one_torch_thread,
                                                                     monkeypatch):
    monkeypatch.setattr("evaluation.finetune.code_version", lambda: "pinned")  # others may edit the shared tree
    cfg = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path)
    metrics = run(cfg, "random_vit_tiny", seed=0)
    out = tmp_path / "synthetic_rts_semantic" / "random_vit_tiny" / "seed0"
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_image.npz", "resolved_config.yaml"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval_split"] == "test" and set(saved["scores_by_split"]) == {"val", "test"}
    assert saved["protocol"] | {"lr": None} == {"normalization": "train-split z-score", "lr": None,
                                                "layer_decay": 1.0, "device": "cpu", "precision": "float32",
                                                "eval_overlap_px": 8, "tune_split": "val"}
    per_image = np.load(out / "per_image.npz")
    assert per_image["ids"].tolist() == sorted(per_image["ids"].tolist()) and len(per_image["ids"]) == saved["n_eval"]
    assert {g.split("_r")[0] for g in per_image["ids"]} == set(per_image["groups"].tolist())  # grouped by scene
    from evaluation.artefact import load_finetuned

    predictor = load_finetuned(out / "model")  # the finetuned model, as evaluation.predict loads it
    assert predictor.task == "semantic" and list(predictor.classes) == saved["classes"]
    assert run(cfg, "random_vit_tiny", seed=0)["skipped"] is True
    changed = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path, "train.lr=1e-3")
    assert "skipped" not in run(changed, "random_vit_tiny", seed=0)
    assert metrics["config_hash"] != json.loads((out / "metrics.json").read_text())["config_hash"]


def test_weights_key_is_the_content_not_the_path(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    first = weights_sha256(str(folder))
    (folder / "model.safetensors").write_bytes(b"weights v2")  # re-exported into the same folder
    assert weights_sha256(str(folder)) != first
    (folder / "model.safetensors").write_bytes(b"weights v1")
    assert weights_sha256(str(folder)) == first
    (folder / "config.json").write_text("{}")  # every file of an export folder counts
    assert weights_sha256(str(folder)) != first
    with pytest.raises(FileNotFoundError, match="--weights"):
        weights_sha256(str(tmp_path / "missing"))


def test_code_version_follows_the_source(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    first = code_version(tmp_path, ("pkg/*.py",))
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path, ("pkg/*.py",)) != first
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    assert code_version(tmp_path, ("pkg/*.py",)) == first
    assert code_version() == code_version()  # the real tree: stable between two calls


def test_lr_sweep_then_compare_grid_reports_intervals(tmp_path, synthetic_card, one_torch_thread):
    cfg = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path, "train.lr_sweep=[1e-4,1e-3,1e-2]")
    backbones = ["random_vit_tiny", "imagenet_mae_vit_large"]
    card = compare(cfg, backbones, seeds=[0, 1], weights=parse_weights(["imagenet_mae_vit_large=none"]), n_boot=50)
    root = tmp_path / "synthetic_rts_semantic"
    sweep = {p.parent.parent.name for p in root.glob("*/sweep/*/seed0/metrics.json")}
    assert sweep == {"lr0.0001", "lr0.001", "lr0.01"}
    for path in root.glob("*/sweep/*/seed0/metrics.json"):  # sweep runs never touch the test split
        assert set(json.loads(path.read_text())["scores_by_split"]) == {"val"}
    out = root / "compare"
    assert {"results.csv", "results.md", "results.png", "panels.png", "model_card.json"} <= {
        p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 4 and {r["eval_split"] for r in rows} == {"test"}
    for row in card["results"]:  # the chosen lr is the best tune-split score of its sweep
        swept = {float(k): v for k, v in row["lr_sweep"].items()}
        assert row["lr"] == max(swept, key=lambda lr: (swept[lr], -lr))
    table = (out / "results.md").read_text()
    assert "train-split z-score" in table and "(swept)" in table and "Δ fg mean F1 vs random_vit_tiny" in table
    assert json.loads((out / "model_card.json").read_text()) == card
    other = next(r for r in card["results"] if r["backbone"] == "imagenet_mae_vit_large")
    assert other["layer_decay"] == 0.75 and other["n_seeds"] == 2 and len(other["ci95"]) == 2
    assert card["results"][0]["layer_decay"] == 1.0  # random init: no layer-wise decay


def test_instance_recipe_headline_is_object_f1_with_intervals(tmp_path, synthetic_card, one_torch_thread):
    iwp = synthetic_card | {"root": synthetic_card["root"].replace("rts", "iwp"),
                            "generate": synthetic_card["generate"] | {"task": "iwp"}}
    cfg = _recipe("synthetic_iwp_instance", iwp, tmp_path, "train.batch_size=2", "model.img_size=64",
                  "eval.overlap=16")
    card = compare(cfg, ["random_vit_tiny"], seeds=[0], n_boot=20)
    row = card["results"][0]
    assert row["metric"] == "object_f1" and card["headline_metric"] == "instance_f1"
    assert set(row["intervals"]) == {"instance_f1", "map50", "detection_f1", "delineation_f1", "foreground_mean_f1"}
    metrics = json.loads((tmp_path / "synthetic_iwp_instance" / "random_vit_tiny" / "seed0" / "metrics.json")
                         .read_text())
    assert metrics["scores"]["instances_merged_across_tiles"] is True
    per_image = np.load(tmp_path / "synthetic_iwp_instance" / "random_vit_tiny" / "seed0" / "per_image.npz")
    objects = per_image["object_counts"].sum(0)
    tp, fp, fn = objects[1]
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert metrics["scores"]["instance_f1"] == pytest.approx(f1)  # the headline is recomputable from the counts


def test_bad_recipe_and_missing_cuda_raise(tmp_path, synthetic_card):
    with pytest.raises(ValueError, match=r"^task: input should be 'semantic' or 'instance', got 'panoptic' \(config "):
        _recipe("synthetic_rts_semantic", synthetic_card, tmp_path, "task=panoptic")  # refused at load, before work
    with pytest.raises(ValueError, match="BACKBONE=PATH"):
        parse_weights(["resnet50=x"])
    with pytest.raises(ValueError, match="--device 'gpu' is not a device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device 'cuda:1': CUDA is not available"):
            resolve_device("cuda:1")
        with pytest.raises(ValueError, match=r"train\.device 'cuda': CUDA is not available"):
            run(_recipe("synthetic_rts_semantic", synthetic_card, tmp_path, "train.device=cuda"), "random_vit_tiny", 0)
        assert resolve_device("auto") == torch.device("cpu") and run_devices("auto") == ["cpu"]
    assert Precision.for_device(torch.device("cpu")).dtype is None  # the CPU path stays float32


def test_compare_spreads_runs_over_every_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert run_devices("auto") == run_devices("cuda") == ["cuda:0", "cuda:1"]
    assert run_devices("cuda:1") == ["cuda:1"] and run_devices("cpu") == ["cpu"]
    with pytest.raises(ValueError, match="only 2 GPU"):
        resolve_device("cuda:2")


# --- the protocol's pieces with hand-computed answers ---------------------------------------------------------------


def _card(classes=("background", "a", "b")):
    return card_from_dict({"name": "oracle", "format": "raster_pairs", "root": "/nonexistent", "classes": list(classes),
                           "bands": ["red", "green", "blue"], "bit_depth": 8})


class _Chips:
    """The little a ``ChipDataset`` offers ``evaluate``: iteration, length, split name, groups."""

    def __init__(self, samples: list[dict]) -> None:
        self.samples, self.split = samples, "test"
        self.group_of = {s["id"]: s["id"] for s in samples}

    def __iter__(self):
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


class _Echo(torch.nn.Module):
    """Predicts the class id written in band 0 of its input: a model whose prediction the test sets exactly."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, image: torch.Tensor, latlon: torch.Tensor | None = None) -> torch.Tensor:
        return 10.0 * F.one_hot(image[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).float()


def _oracle_chip(pred: np.ndarray, mask: np.ndarray, name: str = "c0") -> dict:
    image = np.stack([pred, pred, pred]).astype(np.float32)
    return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask.astype(np.int64)), "instances": None,
            "latlon": torch.full((2,), float("nan")), "id": name}


def _oracle_cfg() -> dict:
    return load_recipe("evaluation/recipes/synthetic_rts_semantic.yaml",
                       ["model.img_size=32", "eval.overlap=8", "train.batch_size=4", "train.device=cpu"])


def test_evaluate_oracle_perfect_known_confusion_and_predicted_absent_class():
    mask = np.zeros((40, 40))  # 40 px with 32 px tiles overlapping by 8: blending runs, the seam is inside
    mask[0:10, 0:10] = 1  # 100 px of class a
    mask[20:25, 20:30] = 2  # 50 px of class b
    perfect = evaluate(_oracle_cfg(), _Echo(3), _Chips([_oracle_chip(mask, mask)]), _card())
    assert perfect["scores"]["foreground_mean_f1"] == 1.0 and perfect["scores"]["foreground_mean_iou"] == 1.0

    pred = np.zeros((40, 40))
    pred[0:10, 0:5] = 1  # half of a found: tp 50, fn 50
    pred[20:25, 20:25] = 1  # half of b called a: fp(a) 25, fn(b) 25
    pred[20:25, 25:30] = 2  # tp(b) 25
    scores = evaluate(_oracle_cfg(), _Echo(3), _Chips([_oracle_chip(pred, mask)]), _card())["scores"]
    f1_a, f1_b = 2 * 50 / (2 * 50 + 25 + 50), 2 * 25 / (2 * 25 + 0 + 25)
    assert scores["per_class_f1"] == pytest.approx({"background": scores["per_class_f1"]["background"], "a": f1_a,
                                                    "b": f1_b})
    assert scores["per_class_iou"]["a"] == pytest.approx(50 / 125) and scores["per_class_iou"]["b"] == 0.5
    assert scores["foreground_mean_f1"] == pytest.approx((f1_a + f1_b) / 2)

    no_b = np.where(mask == 2, 0, mask)  # b absent from the ground truth, predicted on 25 px
    scores = evaluate(_oracle_cfg(), _Echo(3), _Chips([_oracle_chip(pred, no_b)]), _card())["scores"]
    assert scores["scored_classes"] == ["a"] and scores["predicted_but_absent"] == {"b": 25}
    assert scores["per_class_f1"]["b"] is None  # undefined, not 0
    assert scores["foreground_mean_f1"] == pytest.approx(2 * 50 / (2 * 50 + 25 + 50))  # a alone
    assert any("'b' is absent" in w for w in scores["warnings"])


def test_a_separable_task_is_learnt_in_a_few_steps(one_torch_thread):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(8):
        mask = np.zeros((64, 64), dtype=np.int64)
        r, c = rng.integers(0, 32, 2)
        mask[r : r + 28, c : c + 28] = 1
        image = np.where(mask == 1, 200.0, 40.0)[None].repeat(3, 0) + rng.normal(0, 5, (3, 64, 64))
        samples.append({"image": torch.tensor(image, dtype=torch.float32), "mask": torch.from_numpy(mask),
                        "instances": None, "latlon": torch.full((2,), float("nan")), "id": f"c{i}"})
    card = _card(("background", "square"))
    cfg = load_recipe("evaluation/recipes/synthetic_rts_semantic.yaml", [
        "model.img_size=64", "model.pyramid_channels=16", "model.decoder_channels=16", "model.use_latlon=false",
        "train.epochs=12", "train.batch_size=4", "train.crops_per_image=1", "train.lr=0.001", "eval.overlap=0"])
    stats = {"mean": [120.0] * 3, "std": [80.0] * 3}
    backbone = build_backbone("random_vit_tiny", card, 64, arch="vit_tiny_patch16_224", dataset_stats=stats)
    torch.manual_seed(0)
    model = build_model(cfg, backbone, card)
    history = train(cfg, model, backbone.encoder, samples, seed=0)
    scores = evaluate(cfg, model, _Chips(samples), card)["scores"]
    assert history[-1] < 0.5 * history[0]
    assert scores["foreground_mean_f1"] > 0.9, (history, scores)


def test_device_reaches_every_tensor_of_a_step_and_of_evaluation(synthetic_card):
    """On the meta device any tensor left on the CPU inside the loop fails loudly, as it would on a GPU."""
    card = _card(("background", "a"))
    cfg = load_recipe("evaluation/recipes/synthetic_rts_semantic.yaml", [
        "model.img_size=32", "model.pyramid_channels=16", "model.decoder_channels=16", "model.use_latlon=true"])
    backbone = build_backbone("random_vit_tiny", card, 32, arch="vit_tiny_patch16_224",
                              dataset_stats={"mean": [1.0] * 3, "std": [1.0] * 3})
    model = build_model(cfg, backbone, card).to("meta")
    sample = {"image": torch.zeros(3, 40, 40), "mask": torch.zeros(40, 40, dtype=torch.long), "instances": None,
              "latlon": torch.tensor([70.0, -150.0]), "id": "x"}
    views = [random_view(sample, 32, np.random.default_rng(0)) for _ in range(2)]
    batch = make_batch(cfg, views, torch.device("meta"))
    assert {t.device.type for t in (batch["image"], batch["mask"], batch["latlon"])} == {"meta"}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = train_step(cfg, model, batch, optimizer, Precision.for_device(torch.device("meta")))
    assert loss.device.type == "meta"
    assert {p.device.type for p in model.parameters()} | {s["exp_avg"].device.type
                                                          for s in optimizer.state.values()} == {"meta"}
    from evaluation.chip_eval import semantic_forward

    forward = semantic_forward(model.eval(), sample["latlon"][None], torch.device("meta"),
                               Precision.for_device(torch.device("meta")))
    with pytest.raises(NotImplementedError, match="meta"):  # the forward ran on meta; only the copy back can't
        forward(torch.zeros(2, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.skipif(not (MAPLE_DIR / "labelled").is_dir(), reason="real MAPLE chips (../shared) not available")
def test_real_maple_semantic_recipe_runs(tmp_path):
    cfg = load_recipe("evaluation/recipes/maple_iwp_semantic.yaml",
                      [*TINY, "model.img_size=128", "train.crops_per_image=1", f"output.root={tmp_path}"])
    metrics = run(cfg, "random_vit_tiny", seed=0)
    assert metrics["n_by_split"] == {"val": 15, "test": 15} and metrics["eval_split"] == "test"
    assert metrics["scores"]["per_class_f1"]["lowcenter"] is not None


@pytest.mark.slow
def test_independent_runs_in_a_process_pool_match_runs_in_turn(tmp_path, synthetic_card):
    """compare's one-run-per-GPU pool, exercised with two CPU 'devices': the same scores as running in turn."""
    from evaluation.compare import run_jobs

    cfg = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path)
    jobs = [(cfg, "random_vit_tiny", seed, None, False, tmp_path / mode / f"seed{seed}", True)
            for mode in ("pool", "serial") for seed in (0, 1)]
    pooled = run_jobs(jobs[:2], ["cpu", "cpu"])
    serial = run_jobs(jobs[2:], ["cpu"])
    assert [m["scores"]["foreground_mean_f1"] for m in pooled] == [m["scores"]["foreground_mean_f1"] for m in serial]
    assert {m["protocol"]["device"] for m in pooled} == {"cpu"}
