"""Exact and hierarchical affinity propagation, hierarchical k-means, and the selection rules."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import AffinityPropagation
from sklearn.datasets import make_blobs

from training.curate.affinity import (
    exact_ap,
    hierarchical_ap,
    net_similarity,
    resolve_preference,
)
from training.curate.kmeans import hierarchical_kmeans
from training.curate.select import duplicate_mask, select, water_fill_quotas


def blobs(n: int, centers: int = 12, seed: int = 0) -> np.ndarray:
    x, _ = make_blobs(n, n_features=8, centers=centers, cluster_std=1.5, random_state=seed)
    return x.astype(np.float32)


def test_exact_ap_matches_sklearn():
    x = blobs(300)
    pref = resolve_preference(x, "median")
    labels, converged, _ = exact_ap(x, pref)
    reference = AffinityPropagation(preference=pref, random_state=0).fit(x)
    assert converged
    assert set(np.unique(labels)) == set(reference.cluster_centers_indices_)
    assert np.array_equal(labels, reference.cluster_centers_indices_[reference.labels_])


@pytest.mark.parametrize("partition_size", [64, 200])
def test_hierarchical_ap_quality_and_determinism(partition_size):
    x = blobs(1500)
    pref = resolve_preference(x, "median")
    exact_labels, _, _ = exact_ap(x, pref)
    first = hierarchical_ap(x, preference=pref, partition_size=partition_size, seed=3)
    again = hierarchical_ap(x, preference=pref, partition_size=partition_size, seed=3)
    assert np.array_equal(first.labels, again.labels) and np.array_equal(first.exemplars, again.exemplars)
    assert len(first.levels) >= 2, "more points than one partition: at least one recursion"
    ours = net_similarity(x, first.exemplars[first.labels], pref)
    exact = net_similarity(x, exact_labels, pref)
    assert exact / ours >= 0.95  # both negative: ours is at most 5 % worse
    assert np.array_equal(first.labels[first.exemplars], np.arange(len(first.exemplars)))
    for level in first.level_labels:
        assert level.shape == (len(x),) and level.min() == 0


def test_preference_controls_cluster_count():
    x = blobs(600, centers=20)
    few = hierarchical_ap(x, preference="quantile", quantile=0.02, partition_size=128)
    many = hierarchical_ap(x, preference="quantile", quantile=0.9, partition_size=128)
    assert len(few.exemplars) < len(many.exemplars)
    target = hierarchical_ap(x, preference="target_k", target_k=8, partition_size=128)
    assert abs(len(target.exemplars) - 8) <= 1


def test_hierarchical_kmeans_levels_nest():
    x = blobs(800)
    result = hierarchical_kmeans(x, [30, 6], seed=0)
    fine, coarse = result.level_labels
    assert len(np.unique(fine)) == 30 and len(np.unique(coarse)) == 6
    for cluster in np.unique(fine):  # every fine cluster sits inside one coarse cluster
        assert len(np.unique(coarse[fine == cluster])) == 1
    assert np.array_equal(result.labels[result.exemplars], np.arange(6))


def test_water_fill_quotas():
    assert water_fill_quotas(np.array([100, 10, 5]), 30).tolist() == [15, 10, 5]
    assert water_fill_quotas(np.array([100, 10, 5]), 500).tolist() == [100, 10, 5]
    quotas = water_fill_quotas(np.array([7, 7, 7, 2]), 10)
    assert quotas.sum() == 10 and quotas.max() - quotas[:3].min() <= 1 and quotas[3] == 2


@pytest.mark.parametrize("within", ["closest", "random", "farthest", "balanced"])
def test_select_budget_and_balance(within):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 4)).astype(np.float32)
    labels = np.repeat(np.arange(4), [700, 200, 80, 20])
    exemplars = np.array([0, 700, 900, 980])
    finer = [np.arange(1000) // 10]
    chosen = select(x, labels, exemplars, 200, within=within, finer_levels=finer, seed=1)
    assert chosen.sum() == 200
    assert np.bincount(labels[chosen], minlength=4).tolist() == [60, 60, 60, 20]
    if within == "closest":
        members = np.flatnonzero(labels == 0)
        dist = ((x[members] - x[0]) ** 2).sum(1)
        assert set(members[np.argsort(dist)[:60]]) == set(np.flatnonzero(chosen & (labels == 0)))
    if within == "balanced":  # 70 sub-clusters of 10 in cluster 0: at most one pick from each of 60 of them
        assert np.bincount(finer[0][chosen & (labels == 0)]).max() == 1


def test_farthest_spreads_more_than_closest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2)).astype(np.float32)
    labels = np.zeros(500, np.int64)
    spread = {}
    for within in ("closest", "farthest"):
        chosen = select(x, labels, np.array([0]), 20, within=within)
        spread[within] = x[chosen].std()
    assert spread["farthest"] > spread["closest"]


def test_duplicate_mask():
    assert duplicate_mask([b"a", b"b", b"a", b"c", b"b"]).tolist() == [False, False, True, False, True]
