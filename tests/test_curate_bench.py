"""The curation benchmark can fail, and the README table is generated from its JSON (never typed by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from training.curate.report import BENCHMARK_BLOCK, benchmark_table, render_benchmark_readme

REPO = Path(__file__).resolve().parents[1]
README = REPO / "training" / "curate" / "README.md"
RESULTS = REPO / "training" / "curate" / "benchmark.json"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_curation", REPO / "benchmarks" / "bench_curation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(case: str, ours_net: float, kmeans_net: float, converged: bool = True) -> dict:
    sk_net = -100.0
    methods = {
        "sklearn": dict(clusters=10, n_iter=50, seconds=2.0, peak_rss_growth_gb=0.5, net_similarity=sk_net),
        "ours": dict(clusters=11, seconds=0.5, peak_rss_growth_gb=0.01, net_similarity=ours_net,
                     quality=sk_net / ours_net, ari_vs_sklearn=0.9, cluster_ratio=1.1, preference_reported=-1.0),
        "kmeans": dict(clusters=10, seconds=0.1, peak_rss_growth_gb=0.01, net_similarity=kmeans_net,
                       quality=sk_net / kmeans_net),
        "hkmeans": dict(clusters=10, seconds=0.1, peak_rss_growth_gb=0.01, net_similarity=-120.0, quality=100 / 120),
    }
    checks = {"quality_vs_sklearn": (sk_net / ours_net >= 0.98) if converged else None,
              "beats_kmeans": ours_net >= kmeans_net, "preference_reported_is_used": True}
    return dict(case=case, n=5000, methods=methods, sklearn_converged=converged, checks=checks)


def _report(rows: list[dict]) -> dict:
    regime = dict(mode="quick", cpu_count=2, skipped=[], targets=dict(quality_vs_sklearn=0.98))
    report = dict(data_regime=regime, compare=rows)
    report["failed"] = _bench().failed_checks(report)
    return report


def test_the_benchmark_fails_when_a_target_is_missed():
    bench = _bench()
    assert bench.failed_checks(_report([_row("gaussian", -101.0, -105.0)])) == []
    # 100 / 103 = 0.971 < 0.98, and k-means (-102) beats ours (-103): both are reported
    assert bench.failed_checks(_report([_row("maple", -103.0, -102.0)])) == [
        "maple n=5000: quality_vs_sklearn", "maple n=5000: beats_kmeans"]
    # sklearn not converged: its ratio is not a target (None), the k-means target still is
    assert bench.failed_checks(_report([_row("uniform", -150.0, -140.0, converged=False)])) == [
        "uniform n=5000: beats_kmeans"]
    assert bench.failed_checks({"compare": [], "descriptors": {"checks": {"read_ratio": False}}}) == [
        "descriptors: read_ratio"]


def test_table_is_generated_from_the_json():
    table = benchmark_table(_report([_row("gaussian", -101.0, -105.0), _row("maple", -103.0, -102.0)]))
    lines = table.splitlines()
    gaussian = next(line for line in lines if line.startswith("| gaussian |"))
    assert "| 0.9901 |" in gaussian and "| 0.9524 |" in gaussian and gaussian.endswith("| met |")
    maple = next(line for line in lines if line.startswith("| maple |"))
    assert "| 0.9709 |" in maple and maple.endswith("**MISSED** |")
    assert lines[-1] == "Targets missed: maple n=5000: quality_vs_sklearn; maple n=5000: beats_kmeans."
    text = f"a\n<!-- {BENCHMARK_BLOCK}:start -->\nold\n<!-- {BENCHMARK_BLOCK}:end -->\nb\n"
    assert render_benchmark_readme(text, _report([_row("gaussian", -101.0, -105.0)])).count("| gaussian |") == 1


def test_readme_table_is_the_committed_benchmark_json():
    report = json.loads(RESULTS.read_text())
    readme = README.read_text()
    assert render_benchmark_readme(readme, report) == readme, (
        "training/curate/README.md is stale: run benchmarks/bench_curation.py --readme")


def test_skewed_archive_and_medoids():
    bench = _bench()
    x, types, low = bench.skewed_archive()
    counts = np.bincount(types)
    assert counts[:4].sum() / len(x) > 0.85 and counts[4:44].max() <= 60 and low.sum() == 800
    points = np.array([[0.0], [1.0], [5.0], [10.0], [11.0]], np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    # cluster 0 mean 2.0: nearest member 1.0 (index 1); cluster 1 mean 10.5: tie 10 / 11 -> the first, index 3
    assert bench.medoid_exemplars(points, labels).tolist() == [1, 3]
