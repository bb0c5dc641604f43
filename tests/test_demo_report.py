"""The demo's sizes are validated before any work, and its result statement follows the measured intervals."""

from __future__ import annotations

import dataclasses

import pytest

from evaluation.demo import SIZES, main
from evaluation.demo_report import verdict


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_size_validates_and_plans_equal_steps(name):
    size = SIZES[name]
    size.validate(name)
    assert len(size.probe_seeds) >= 5 and size.pretrain_steps % (size.budget // 16) == 0  # exact cosine end


def test_paper_cpu_is_the_larger_version():
    small, large = SIZES["default"], SIZES["paper-cpu"]
    assert large.budget > small.budget and large.pretrain_steps > small.pretrain_steps
    assert len(large.seeds) >= 3 and set(small.tasks) <= set(large.tasks)


def test_bad_size_names_the_key_and_check_exits_early(capsys):
    bad = dataclasses.replace(SIZES["quick"], budget=9_984, pretrain_steps=624)  # 624 steps: 1 epoch of 9984
    with pytest.raises(ValueError, match="fewer than the budget of 9984"):
        bad.validate("bad")
    with pytest.raises(ValueError, match="invalid probe_seeds"):
        dataclasses.replace(SIZES["quick"], probe_seeds=(0, 1)).validate("bad")
    assert main(["--size", "paper-cpu", "--check"]) == 0
    assert '"budget": 960' in capsys.readouterr().out


def _facts(diffs: dict[str, tuple[float, float, float]]) -> dict:
    evaluation = {name: {"curated_vs_random": {"diff": d, "diff_ci_low": lo, "diff_ci_high": hi}, "results": []}
                  for name, (d, lo, hi) in diffs.items()}
    return {"probes": None, "evaluation": evaluation, "skipped": [], "synthetic": True,
            "pools": {"quality": {"curated": {"low_information_share": 0.5, "balance_entropy": 0.8,
                                              "coverage_mean": 0.3},
                                  "random": {"low_information_share": 0.7, "balance_entropy": 0.6,
                                             "coverage_mean": 0.2}}},
            "curation": {"reject_reasons": {"low_information": 3}},
            "size_config": {"pretrain_steps": 12, "budget": 48, "pretrain_img": 64, "seeds": [0],
                            "probe_seeds": [0, 1, 2, 3, 4]}}


def test_verdict_follows_the_intervals():
    text = "\n".join(verdict(_facts({"a": (0.02, -0.01, 0.05), "b": (-0.01, -0.04, 0.02)})))
    assert text.startswith("No difference between curated and random subsets is resolved")
    assert "a: +0.020 [-0.010, +0.050]" in text and "Most likely reasons" in text
    assert "low-information share 50% vs 70%" in text  # the reasons quote the measured diagnostics
    text = "\n".join(verdict(_facts({"a": (0.10, 0.04, 0.15)})))
    assert text.startswith("Curated beats the random subset on 1 of 1") and "Most likely reasons" not in text
    assert "\n".join(verdict(_facts({"a": (-0.1, -0.2, -0.05), "b": (0.0, -0.1, 0.1)}))).startswith(
        "The random subset beats curated on 1 of 2")
    assert verdict(_facts({}))[0].startswith("No paired curated-vs-random interval")
