"""The README's first command at CI size: the curation experiment runs end to end and leaves outputs a newcomer (and
a script) can read: equal-budget pools, their diagnostics, both measurements, the mapped scene and a plain verdict."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard

from evaluation.demo import SIZES, run_demo
from evaluation.demo_pools import POOLS
from evaluation.demo_report import QUALITY_COLUMNS, SECTIONS

SIZE = SIZES["quick"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, "quick", seed=0)
    return out, report, json.loads((out / "summary.json").read_text())


def _table(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_every_stage_left_its_outputs(demo):
    out, report, _ = demo
    assert report == out / "REPORT.md"
    for rel in ("curate/manifest.parquet", "curate/report/summary.json", "pools/pools.json", "pools/diagnostics.json",
                "pools/coverage_curves.png", "probes/probes.json", "probes/probes.png", "summary.json"):
        assert (out / rel).is_file(), rel
    for pool in POOLS:
        assert (out / "pools" / f"manifest_{pool}.parquet").is_file()
        assert (out / "pools" / f"mosaic_{pool}.png").is_file()
        assert (out / "shards" / pool / "corpus.json").is_file()
        assert any((out / "pretrain" / pool / "checkpoints").glob("*.pt"))
        assert {p.name for p in (out / "export" / pool).iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    text = report.read_text()
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"pools/coverage_curves.png", "probes/probes.png"} <= set(images)
    for image in images:
        assert (out / image).is_file(), image


def test_pools_are_equal_budget_and_pretrained_alike(demo):
    _, report, facts = demo
    cur = facts["curation"]
    assert cur["candidates"] == cur["selected"] + cur["unselected"] + cur["rejected"]
    pools = facts["pools"]["pools"]
    assert {n: pools[n]["chips"] for n in ("curated", "random", "kmeans")} == dict.fromkeys(
        ("curated", "random", "kmeans"), SIZE.budget)
    assert pools["whole"]["chips"] == facts["pools"]["accepted"] > SIZE.budget
    steps = {n: t["steps"] for n, t in facts["pretrain"].items()}
    assert set(steps.values()) == {SIZE.pretrain_steps} and set(steps) == set(POOLS)
    rows = _table(report.read_text(), "| pool | chips | coverage")
    quality = facts["pools"]["quality"]
    for cells in rows:  # the diagnostics table shows what diagnostics.json holds
        shown = cells[2:2 + len(QUALITY_COLUMNS)]
        expected = [f"{quality[cells[0]][c]:.3f}" if isinstance(quality[cells[0]][c], float)
                    else str(quality[cells[0]][c]) for c in QUALITY_COLUMNS]
        assert shown == expected, cells[0]
    assert [r[0] for r in rows] == list(POOLS)


def test_probe_table_matches_probes_json(demo):
    out, report, _ = demo
    probes = json.loads((out / "probes" / "probes.json").read_text())
    table = _table(report.read_text(), "| probe | encoder |")
    null = [r for r in table if r[1].startswith("null (")]  # one per metric: two random inits' difference
    assert len(null) == len(probes["metrics"]) and all(r[2] == "–" and r[3] != "–" for r in null)
    rows = [r for r in table if r not in null]
    assert {r[1] for r in rows} == {*POOLS, "random_init"}
    assert len(rows) == len(probes["metrics"]) * (len(POOLS) + 1)
    for cells in rows:
        metric = next(m for m, d in probes["metrics"].items() if d == cells[0])
        summary = probes["encoders"][cells[1]][metric]
        shown = "–" if summary["mean"] is None else f"{summary['mean']:.3f}"  # undefined: a class absent from a split
        assert cells[2].startswith(shown) and int(cells[4]) == len(SIZE.probe_seeds) >= 5


def test_finetune_table_parses_and_card_validates(demo):
    out, report, facts = demo
    rows = [line for line in report.read_text().splitlines() if line.startswith("| semantic segmentation |")]
    assert len(rows) == len(SIZE.tasks) * (len(POOLS) + 2)  # every pool + random init + its null, per task
    shown = sorted(row.strip("|").split("|")[5].strip().split(" ± ")[0] for row in rows)
    measured = sorted(f"{r['value']:.3f}" for path in (out / "evaluation").glob("*/compare/model_card.json")
                      for r in json.loads(path.read_text())["results"])
    assert shown == measured  # the report shows what the runs measured
    for card in facts["evaluation"].values():
        assert card["eval_split"] == "test" and card["n_eval_groups"] >= 1  # held-out scene(s)
        assert {r["layer_decay"] for r in card["results"] if r["backbone"] == "random_init"} == {1.0}
        assert {r["normalization"] for r in card["results"]} == {"train-split z-score"}
        null_seeds = {p.name for p in (out / "evaluation" / card["recipe"] / "random_init_null").iterdir()}
        assert null_seeds == {f"seed{s + 100}" for s in SIZE.seeds}  # other draws than random_init's seeds
        assert "random_init_null" not in card.get("vs_random", {})
    card = ModelCard.load(out / "export" / "curated" / "README.md")
    assert card.data.library_name == "timm" and card.data.license
    assert "random_init_null" not in card.text  # the model card compares encoders; the null is REPORT.md's
    assert {r.dataset_name for r in card.data.eval_results} == {f"synthetic_{t}" for t in SIZE.tasks}
    config = json.loads((out / "export" / "curated" / "config.json").read_text())
    assert f"| {config['corpus']['bands'][0]} | {config['pretrained_cfg']['mean'][0]:.4f} |" in card.text


def test_mapped_scene_and_verdict(demo):
    _, report, facts = demo
    text = report.read_text()
    mapped = text[text.index(SECTIONS[7]):text.index(SECTIONS[8])]
    assert "| scores.object f1 |" in mapped and "![mapped scene](" in mapped
    assert f"| scores.object f1 | {facts['mapped']['scores']['object_f1']:.3f} |" in mapped
    verdict = text[text.index(SECTIONS[8]):text.index(SECTIONS[9])]
    intervals = [card["curated_vs_random"] for card in facts["evaluation"].values()]
    intervals += [d["curated - random"]["ci95"] for d in facts["probes"]["differences"].values()
                  if d["curated - random"]["ci95"][0] is not None]
    lows_highs = [(i["diff_ci_low"], i["diff_ci_high"]) if isinstance(i, dict) else tuple(i) for i in intervals]
    head = verdict.split("\n\n")[1]
    if all(low == high for low, high in lows_highs):  # one seed x one test scene: nothing to resample
        assert head.startswith(f"Not resolvable at this size: all {len(lows_highs)} ")
    else:
        assert re.search(r"Curated minus random subset: .*\[[-+]\d\.\d{3}, [-+]\d\.\d{3}\]", verdict)
        assert head.startswith(("Curated beats", "The random subset beats", "Mixed:", "No difference"))


def test_export_reloads_through_plain_timm(demo):
    out, _, _ = demo
    folder = out / "export" / "curated"
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


@pytest.mark.slow
def test_paper_cpu_code_path_smoke(tmp_path, monkeypatch):
    """paper-cpu's own code path (four tasks, ten probe seeds, its coverage fractions, the whole-archive pool) at
    quick-size numbers, end to end; its summary renders the README block."""
    import dataclasses

    from evaluation.demo_report import readme_block

    paper = SIZES["paper-cpu"]
    small = dataclasses.replace(paper, scenes=4, scene_px=768, budget=48, pretrain_steps=12, probe_scenes=8,
                                finetune_epochs=1, seeds=(0,), task_scenes=5, n_boot=100)
    small.validate("paper-cpu smoke")
    monkeypatch.setitem(SIZES, "paper-cpu", small)
    run_demo(tmp_path, "paper-cpu", seed=0)
    facts = json.loads((tmp_path / "summary.json").read_text())
    assert facts["size"] == "paper-cpu"
    assert set(facts["evaluation"]) == {f"synthetic_{t}_semantic" for t in paper.tasks}
    assert len(facts["probes"]["protocol"]["seeds"]) == len(paper.probe_seeds)
    block = readme_block(facts)
    assert block.count("| finetuning ") == len(paper.tasks) and "Not yet run" not in block
