"""Model cards and README tables come from pretrained_cfg + evaluation JSON, and parse back with huggingface_hub."""

from __future__ import annotations

import json

import pytest
import timm
from huggingface_hub import ModelCard

import arctic_vit
from arctic_vit.card import load_results, render_model_card, results_table
from arctic_vit.corpus import CorpusContract
from arctic_vit.registry_cards import registry_config, render_readme, render_registry_cards
from tests.conftest import REPO_ROOT

BGRN = ("blue", "green", "red", "nir")

CARDS = REPO_ROOT / "model_cards"
RESULT_FILES = sorted((CARDS / "results").glob("*.json"))
RESULTS = [row for path in RESULT_FILES for row in load_results(path)]
SECTIONS = ("## Model details", "## Uses", "## Limitations", "## How to start", "## Training data and curation",
            "## Training procedure", "## Evaluation", "## Environmental impact", "## Citation")
ROWS = [
    {"task": "iwp segmentation", "dataset": "maple_iwp", "metric": "foreground_f1", "value": 0.612, "std": 0.01,
     "n_seeds": 3, "backbone": "arctic_mae_vit_tiny", "diff_vs_reference": 0.05, "ci95": [0.02, 0.08]},
    {"task": "iwp segmentation", "dataset": "maple_iwp", "metric": "foreground_f1", "value": 0.562, "std": 0.02,
     "n_seeds": 3, "backbone": "random_vit_tiny", "diff_vs_reference": 0.0, "ci95": None},
]


def test_readme_tables_are_generated_from_the_same_data():
    readme = (REPO_ROOT / "README.md").read_text()
    assert render_readme(readme, RESULTS) == readme, "README tables are stale: run `python -m arctic_vit cards`"


def test_registry_cards_are_current_and_valid():
    for name, text in render_registry_cards(RESULTS).items():
        path = CARDS / name
        assert path.read_text() == text, f"{path} is stale: run `python -m arctic_vit cards`"
        card = ModelCard.load(path)
        cfg = timm.models.get_pretrained_cfg(name[:-3] + ".mae_arctic")
        assert card.data.license == cfg.license
        assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-feature-extraction"
        assert all(section in card.text for section in SECTIONS)
        assert ", ".join(cfg.bands) in card.text


def test_readme_card_and_pretrained_cfg_agree():
    readme = (REPO_ROOT / "README.md").read_text()
    for key in ("arctic_mae_vit_large_patch16_224.mae_arctic", "arctic_mae_vit_tiny_patch16_224.mae_arctic"):
        cfg = timm.models.get_pretrained_cfg(key)
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{key}`"))
        assert ", ".join(cfg.bands) in row and cfg.license in row and "×".join(map(str, cfg.input_size)) in row
        card = (CARDS / f"{key.split('.')[0]}.md").read_text()
        for band, mean, std in zip(cfg.bands, cfg.mean, cfg.std):
            assert f"| {band} | {mean:.4f} | {std:.4f} |" in card


def test_export_card_has_front_matter_model_index_and_bands(tmp_path):
    model = timm.create_model("arctic_mae_vit_tiny_patch16_224", img_size=32)
    corpus = CorpusContract(BGRN, 11, (0.12, 0.2, 0.3, 0.4), (0.25,) * 4)
    folder = arctic_vit.export_folder("arctic_mae_vit_tiny_patch16_224", model, tmp_path, corpus=corpus, results=ROWS,
                                      training={"corpus": "demo", "epochs": 3})
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-feature-extraction"
    [own] = card.data.eval_results  # the baseline row is in the table, not in this model's model-index
    assert own.metric_value == pytest.approx(0.612) and own.dataset_name == "maple_iwp"
    assert "| blue | 0.1200 |" in card.text and "random_vit_tiny" in card.text
    assert "- corpus: demo" in card.text
    config = json.loads((folder / "config.json").read_text())
    assert config["arctic_vit"]["training"] == {"corpus": "demo", "epochs": 3}


def test_results_table_formats_mean_std_and_ci():
    table = results_table(ROWS)
    assert "0.612 ± 0.010 (3)" in table and "+0.050 [+0.020, +0.080]" in table and "reference" in table
    assert "not evaluated yet" in results_table([])
    swept = results_table([ROWS[0] | {"lr": 3e-4, "lr_sweep": {"0.001": 0.5, "0.0001": 0.4, "0.0003": 0.6}}])
    assert "| 3e-04 (swept 1e-04, 3e-04, 1e-03 on val) |" in swept  # the chosen lr and its grid, sorted
    assert "| 3e-04 |" in results_table([ROWS[0] | {"lr": 3e-4, "lr_sweep": None}]) and "| – |" in table


def test_registry_config_matches_an_export_config(tmp_path):
    model = timm.create_model("arctic_mae_vit_tiny_patch16_224")
    registry = CorpusContract.from_pretrained_cfg(model.pretrained_cfg)
    folder = arctic_vit.export_folder("arctic_mae_vit_tiny_patch16_224", model, tmp_path, corpus=registry)
    exported = json.loads((folder / "config.json").read_text())
    expected = registry_config("arctic_mae_vit_tiny_patch16_224.mae_arctic")
    assert exported["pretrained_cfg"]["mean"] == list(expected["pretrained_cfg"]["mean"])
    for key in ("architecture", "num_features", "model_args"):
        assert exported[key] == expected[key]
    assert render_model_card(expected).startswith("---\n")
