"""The README's first command at CI size: every stage runs and leaves outputs a newcomer (and a script) can read."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard

from evaluation.demo import VARIANTS, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, "quick", seed=0)
    return out, report


def test_every_stage_left_its_outputs(demo):
    out, report = demo
    assert report == out / "REPORT.md"
    for rel in ("curate/manifest.parquet", "curate/report/summary.json", "random_subset/manifest_random_subset.parquet",
                "summary.json"):
        assert (out / rel).is_file(), rel
    for variant in VARIANTS:
        assert (out / "shards" / variant / "corpus.json").is_file()
        assert any((out / "pretrain" / variant / "checkpoints").glob("*.pt"))
        assert {p.name for p in (out / "export" / variant).iterdir()} >= {"model.safetensors", "config.json",
                                                                        "README.md"}
    text = report.read_text()
    for section in ("## 1. Curation", "## 2. MAE pretraining", "## 3. Export and reload", "## 4. Evaluation",
                    "## 5. Model card", "## Folder layout"):
        assert section in text
    for image in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (out / image).is_file(), image


def test_summary_counts_reconcile(demo):
    out, _ = demo
    facts = json.loads((out / "summary.json").read_text())
    cur = facts["curation"]
    assert cur["candidates"] == cur["selected"] + cur["unselected"] + cur["rejected"]
    chips = {variant: facts["pretrain"][variant]["chips"] for variant in VARIANTS}
    assert set(chips.values()) == {cur["selected"]}


def test_export_reloads_through_plain_timm(demo):
    out, _ = demo
    folder = out / "export" / "mae_curated"
    script = textwrap.dedent(f"""
        import sys, timm, torch
        model = timm.create_model('local-dir:{folder}', pretrained=True).eval()
        assert 'arctic_vit' not in sys.modules
        c, h, w = model.pretrained_cfg['input_size']
        assert torch.isfinite(model(torch.randn(1, c, h, w))).all()
        print('ok', c, h, w)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith("ok 4"), done.stderr[-2000:]


def test_results_table_parses_and_card_validates(demo):
    out, report = demo
    rows = [line for line in report.read_text().splitlines() if line.startswith("| semantic segmentation |")]
    assert len(rows) == 2 * 3  # quick size: 2 tasks x (curated, random subset, random init)
    shown = sorted(row.strip("|").split("|")[4].strip().split(" ± ")[0] for row in rows)
    measured = sorted(f"{r['value']:.3f}" for path in (out / "evaluation").glob("*/compare/model_card.json")
                      for r in json.loads(path.read_text())["results"])
    assert shown == measured  # the report shows what the runs measured
    for path in (out / "evaluation").glob("*/compare/model_card.json"):
        card_json = json.loads(path.read_text())
        assert card_json["eval_split"] == "test" and card_json["n_eval_groups"] >= 1  # held-out scene(s)
    card = ModelCard.load(out / "export" / "mae_curated" / "README.md")
    assert card.data.library_name == "timm" and card.data.license
    assert {r.dataset_name for r in card.data.eval_results} == {"synthetic_iwp", "synthetic_rts"}
    config = json.loads((out / "export" / "mae_curated" / "config.json").read_text())
    assert f"| {config['corpus']['bands'][0]} | {config['pretrained_cfg']['mean'][0]:.4f} |" in card.text
