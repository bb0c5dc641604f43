"""End to end on synthetic stand-ins: one finetuning run, skip on re-run, a compared grid and its report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evaluation.compare import compare, parse_weights
from evaluation.finetune import load_recipe, run

MAPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maple_iwp"
TINY = ["model.img_size=64", "model.pyramid_channels=16", "model.decoder_channels=16", "train.epochs=1",
        "train.batch_size=4", "train.threads=1", "backbone.arch=vit_tiny_patch16_224"]


@pytest.fixture(scope="module")
def synthetic_card(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return {"root": str(root / "rts"), "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.5}},
            "generate": {"task": "rts", "scenes_dir": str(root / "scenes"), "scenes": 1, "size": 256,
                         "zone_size": 128, "seed": 0, "chip_size": 64}}


def _recipe(name: str, card_overrides: dict, out: Path, *extra: str) -> dict:
    cfg = load_recipe(f"evaluation/recipes/{name}.yaml", [*TINY, f"output.root={out}", *extra])
    cfg["dataset"]["card_overrides"] = card_overrides
    return cfg


def test_finetune_writes_scores_and_skips_a_finished_run(tmp_path, synthetic_card):
    cfg = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path)
    metrics = run(cfg, "random_vit_tiny", seed=0)
    out = tmp_path / "synthetic_rts_semantic" / "random_vit_tiny" / "seed0"
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "per_image.npz", "resolved_config.yaml"}
    saved = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= saved["scores"]["foreground_mean_f1"] <= 1.0
    assert saved["backbone"]["normalization"].startswith("dataset z-score")
    assert saved["n_eval"] > 0 and len(saved["loss_per_epoch"]) == 1
    assert run(cfg, "random_vit_tiny", seed=0)["skipped"] is True
    changed = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path, "train.lr=1e-3")
    assert "skipped" not in run(changed, "random_vit_tiny", seed=0)
    assert metrics["config_hash"] != json.loads((out / "metrics.json").read_text())["config_hash"]


def test_compare_grid_writes_table_chart_panels_and_card_json(tmp_path, synthetic_card):
    cfg = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path)
    backbones = ["random_vit_tiny", "imagenet_mae_vit_large"]
    card = compare(cfg, backbones, seeds=[0, 1], weights=parse_weights(["imagenet_mae_vit_large=none"]),
                   n_boot=50)
    out = tmp_path / "synthetic_rts_semantic" / "compare"
    assert {"results.csv", "results.md", "results.png", "panels.png", "model_card.json"} <= {
        p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 4 and {r["backbone"] for r in rows} == set(backbones)
    table = (out / "results.md").read_text()
    assert "Δ F1 vs random_vit_tiny" in table and "± " in table and "model-native" in table
    saved = json.loads((out / "model_card.json").read_text())
    assert saved == card and saved["reference"] == "random_vit_tiny"
    other = next(r for r in saved["results"] if r["backbone"] == "imagenet_mae_vit_large")
    assert other["n_seeds"] == 2 and other["ci95"][0] <= other["diff_vs_reference"] <= other["ci95"][1]
    assert {"task", "dataset", "metric", "value", "backbone"} <= set(other)  # what arctic_vit.card reads


def test_instance_recipe_scores_instances(tmp_path, synthetic_card):
    iwp = synthetic_card | {"root": synthetic_card["root"].replace("rts", "iwp"),
                            "generate": synthetic_card["generate"] | {"task": "iwp"}}
    cfg = _recipe("synthetic_iwp_instance", iwp, tmp_path, "train.batch_size=2")
    metrics = run(cfg, "random_vit_tiny", seed=0)
    assert {"instance_f1", "map50", "foreground_mean_f1"} <= set(metrics["scores"])


def test_bad_recipe_and_eval_split_without_objects_raise(tmp_path, synthetic_card):
    cfg = _recipe("synthetic_rts_semantic", synthetic_card, tmp_path, "task=panoptic")
    with pytest.raises(ValueError, match="task must be one of"):
        run(cfg, "random_vit_tiny", seed=0)
    with pytest.raises(ValueError, match="BACKBONE=PATH"):
        parse_weights(["resnet50=x"])
    cfg = _recipe("synthetic_iwp_instance", synthetic_card, tmp_path)  # RTS chips carry no instance ids
    with pytest.raises(ValueError, match="needs instance labels"):
        run(cfg, "random_vit_tiny", seed=0)
    background_only = synthetic_card | {"classes": ["background", "slump"], "name": "bg"}
    cfg = _recipe("synthetic_rts_semantic", background_only, tmp_path, "dataset.eval_split=val")
    cfg["dataset"]["card_overrides"]["options"] = {"label_band": 2}  # instance band: all zero for RTS chips
    with pytest.raises(ValueError, match="holds no foreground pixel"):
        run(cfg, "random_vit_tiny", seed=0)


@pytest.mark.slow
@pytest.mark.skipif(not (MAPLE_DIR / "labelled").is_dir(), reason="real MAPLE chips (../shared) not available")
def test_real_maple_semantic_recipe_runs(tmp_path):
    cfg = load_recipe("evaluation/recipes/maple_iwp_semantic.yaml",
                      [*TINY, "model.img_size=128", "train.crops_per_image=1", f"output.root={tmp_path}"])
    metrics = run(cfg, "random_vit_tiny", seed=0)
    assert metrics["n_eval"] == 20 and metrics["scores"]["per_class_f1"]["lowcenter"] is not None
