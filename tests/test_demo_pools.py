"""The curation experiment's equal-budget pools, on a small arctic-profile archive curated for real."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.demo_pools import (
    PoolError,
    accepted_rows,
    build_pools,
    chip_types,
    curated_selection,
    kmeans_clusters,
    low_information_of,
    standardised_descriptors,
)
from training.curate.select import water_fill_quotas
from training.schemas import CurateSelect

BUDGET = 40
WEIGHTS = {"spectral": 1.0, "texture": 1.0, "metadata": 0.5}
WITHIN = CurateSelect().within  # the curation default the fixture runs with


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from training.config import load_config
    from training.curate import run_curation
    from training.synthetic import generate_archive

    root = tmp_path_factory.mktemp("pools")
    generate_archive(root / "archive", n_scenes=4, size=768, seed=0, labels=False, profile="arctic")
    cfg = load_config("training/configs/curate.yaml", overrides=[
        f"input.path={root / 'archive'}", f"out={root / 'curate'}", f"select.budget={BUDGET}", "tiling.chip_size=128",
        "tiling.stride=128", "dask.scheduler=synchronous", "progress=false", "report.figures=false"])
    manifest = run_curation(cfg)
    return root, manifest, build_pools(manifest, root / "pools", BUDGET, seed=0, within=WITHIN, weights=WEIGHTS)


def test_pools_have_the_budget_and_draw_from_accepted_chips(curated):
    _, manifest, pools = curated
    table = pd.read_parquet(manifest)
    accepted = set(table.index[accepted_rows(table)])
    assert set(pools) == {"curated", "random", "kmeans", "whole"}
    for name, pool in pools.items():
        chosen = pd.read_parquet(pool["manifest"])
        picked = set(chosen.index[chosen["selected"]])
        assert picked <= accepted, name
        assert len(picked) == pool["chips"] == (len(accepted) if name == "whole" else BUDGET), name
        assert chosen.drop(columns="selected").equals(table.drop(columns="selected"))  # only `selected` differs
    assert not np.array_equal(pools["random"]["selected"], pools["curated"]["selected"])


def test_curated_rule_reapplied_reproduces_the_pipeline(curated):
    _, manifest, _ = curated
    table = pd.read_parquet(manifest)
    x = standardised_descriptors(manifest.parent, table, WEIGHTS)
    again = curated_selection(table, x, BUDGET, WITHIN, seed=0)
    assert np.array_equal(again, table["selected"].to_numpy()[accepted_rows(table)])
    assert curated_selection(table, x, BUDGET // 2, WITHIN, seed=0).sum() == BUDGET // 2


def test_kmeans_pool_fills_water_filled_quotas_over_its_clusters(curated):
    _, manifest, pools = curated
    table = pd.read_parquet(manifest)
    x = standardised_descriptors(manifest.parent, table, WEIGHTS)
    labels = kmeans_clusters(x, seed=0).labels
    sizes = np.bincount(labels)
    picked = np.bincount(labels[pools["kmeans"]["selected"]], minlength=len(sizes))
    assert np.array_equal(picked, water_fill_quotas(sizes, BUDGET))


def test_chip_types_follow_the_profile_quotas(curated):
    from training.synthetic_arctic import zone_quotas

    _, manifest, _ = curated
    table = pd.read_parquet(manifest)
    types = chip_types(table)
    expected = {k: 4 * v for k, v in zone_quotas(4 * 9).items() if v}  # 768 px scenes: 9 zones of 4 chips each
    assert pd.Series(types).value_counts().to_dict() == expected
    assert low_information_of(np.array(["open_water", "thaw_slump"])).tolist() == [True, False]


def test_too_few_chips_and_empty_pools_are_errors(curated, tmp_path):
    _, manifest, _ = curated
    table = pd.read_parquet(manifest)
    n = len(accepted_rows(table))
    with pytest.raises(PoolError, match=rf"{n} accepted chips, fewer than the pool budget of {n + 1}"):
        build_pools(manifest, tmp_path / "p", n + 1, seed=0, within=WITHIN, weights=WEIGHTS)
    empty = manifest.parent / "empty" / "manifest.parquet"
    empty.parent.mkdir()
    table.assign(selected=False).to_parquet(empty)
    for name in ("descriptors.parquet",):
        (empty.parent / name).write_bytes((manifest.parent / name).read_bytes())
    with pytest.raises(PoolError, match=r"pool 'curated' .* is empty"):
        build_pools(empty, tmp_path / "q", BUDGET, seed=0, within=WITHIN, weights=WEIGHTS)
