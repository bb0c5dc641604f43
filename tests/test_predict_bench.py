"""benchmarks/bench_predict.py: its over_naive statistic, and PREDICT.md's table is generated from its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "evaluation" / "predict" / "benchmark.json"
README = REPO / "evaluation" / "PREDICT.md"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_predict", REPO / "benchmarks" / "bench_predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_over_naive_is_the_median_of_paired_ratios(bench):
    result = bench.paired([10.0, 9.0, 12.0, 8.0, 7.0], [5.0, 6.0, 4.0, 8.0, 3.5])  # ratios 2, 1.5, 3, 1, 2
    assert result == {"median": 2.0, "min": 1.0, "max": 3.0, "all": [2.0, 1.5, 3.0, 1.0, 2.0],
                      "min_over_min": 2.0}
    assert "median of per-round paired ratios" in bench.OVER_NAIVE_STATISTIC


def test_predict_md_table_is_the_committed_benchmark_json(bench):
    result = json.loads(RESULTS.read_text())
    assert result["over_naive_statistic"] == bench.OVER_NAIVE_STATISTIC
    assert result["over_naive"] == result["over_naive_paired"]["median"]
    assert result["tiles"]["overlap"] == bench.default_overlap()
    assert bench.render_readme(result) in README.read_text(), (
        "evaluation/PREDICT.md is stale: run benchmarks/bench_predict.py --readme-from "
        "evaluation/predict/benchmark.json")
