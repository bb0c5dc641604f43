"""Exact and hierarchical affinity propagation, hierarchical k-means, and the selection rules."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import AffinityPropagation
from sklearn.datasets import make_blobs

from training.curate.affinity import (
    exact_ap,
    hierarchical_ap,
    max_levels,
    merge_exemplars,
    negative_sq_distances,
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


def test_default_selection_covers_better_than_random_at_a_large_budget():
    """The demo's regime (a third of the chips selected from few clusters): the configured default order covers the
    data at least as well as a random subset (p95 distance to the nearest pick), which `closest` did not."""
    from training.curate.quality import selection_quality
    from training.schemas import CurateSelect

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(8, 6))
    labels = rng.integers(0, 8, 3000)
    x = (centres[labels] + rng.normal(size=(3000, 6))).astype(np.float32)
    exemplars = np.array([np.flatnonzero(labels == k)[0] for k in range(8)])
    p95 = {within: selection_quality(x, select(x, labels, exemplars, 1000, within=within, seed=0))["coverage_p95"]
           for within in ("closest", CurateSelect().within)}
    random = np.zeros(3000, bool)
    random[rng.choice(3000, 1000, replace=False)] = True
    assert p95[CurateSelect().within] <= selection_quality(x, random)["coverage_p95"] < p95["closest"]


def test_duplicate_mask():
    assert duplicate_mask([b"a", b"b", b"a", b"c", b"b"]).tolist() == [False, False, True, False, True]


# --- termination on hard regimes, the preference that is reported, the per-level record -----------------------------

def hard_case(kind: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "gaussian":
        return rng.standard_normal((n, 24)).astype(np.float32)
    if kind == "uniform":
        return rng.random((n, 24)).astype(np.float32)
    centres = int(kind.removeprefix("blobs"))
    x, _ = make_blobs(n, n_features=24, centers=centres, cluster_std=2.5, random_state=0)
    return x.astype(np.float32)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["gaussian", "uniform", "blobs300", "blobs500"])
def test_hierarchical_ap_terminates_and_records_every_level(kind):
    """The old loop never ended on these (> 256 natural clusters, continuous data): bounded levels now."""
    x = hard_case(kind, 2500)
    pref = resolve_preference(x, "median")
    result = hierarchical_ap(x, preference=pref, partition_size=64, max_partition_size=256, polish_rounds=1)
    bound = max_levels(len(x), 64, 256, 0.1)
    partition_levels = [lv for lv in result.levels if isinstance(lv["level"], int)]
    assert 1 <= len(partition_levels) <= bound
    assert result.preference == pref
    assert all(lv["preference"] == pref for lv in result.levels), "no silent preference change"
    for lv in partition_levels:
        assert lv["exemplars"] <= lv["items"] and {"partition_size", "partitions_converged", "seconds"} <= set(lv)
    assert result.stop_reason in ("one_partition", "no_reduction_at_max_partition")
    assert np.array_equal(result.labels[result.exemplars], np.arange(len(result.exemplars)))


@pytest.mark.timeout(60)
def test_no_reduction_at_the_largest_partition_stops_with_the_items_as_exemplars():
    x = hard_case("blobs500", 2000)  # ~500 clusters can never fit in partitions of at most 32 items
    pref = resolve_preference(x, "median")
    result = hierarchical_ap(x, preference=pref, partition_size=16, max_partition_size=32, split=False,
                             merge=False, polish_rounds=0, refine_iter=0)
    assert result.stop_reason == "no_reduction_at_max_partition"
    top = next(lv for lv in result.levels if lv["level"] == "top")
    assert top["exemplars"] == top["items"] == len(result.exemplars)
    sizes = [lv["partition_size"] for lv in result.levels if isinstance(lv["level"], int)]
    assert sizes[0] == 16 and sizes[-1] == 32 and sizes == sorted(sizes)


def test_max_levels_bound():
    # 10_000 items, partitions of 100, at least 50 % cut per level: log2(100) -> 7 cuts, log2(400 / 100) = 2 doublings
    assert max_levels(10_000, 100, 400, 0.5) == 7 + 2 + 1
    assert max_levels(50, 100, 100, 0.1) == 1


@pytest.mark.timeout(120)
def test_quality_against_best_configured_sklearn_on_continuous_data():
    """Net similarity (the AP objective) >= 0.98 x sklearn's AP (damping 0.9, 1000 iterations) on Gaussian 24-d."""
    x = hard_case("gaussian", 2000)
    pref = resolve_preference(x, "median")
    sim = negative_sq_distances(x)
    reference = AffinityPropagation(damping=0.9, max_iter=1000, convergence_iter=15, preference=pref,
                                    affinity="precomputed", random_state=0).fit(sim)
    assert reference.n_iter_ < 1000, "sklearn did not converge: the comparison would be meaningless"
    sk_labels = reference.cluster_centers_indices_[reference.labels_]
    ours = hierarchical_ap(x, preference=pref, partition_size=256)
    ratio = net_similarity(x, sk_labels, pref) / net_similarity(x, ours.exemplars[ours.labels], pref)
    assert ratio >= 0.98


def test_merge_exemplars_hand_computed():
    x = np.array([[0.0], [0.2], [10.0]], np.float32)
    # removing exemplar 0 or 1 costs 0.04 < 1 = -preference; they are each other's fallback, so only the first goes
    kept, rounds = merge_exemplars(x, np.array([0, 1, 2]), preference=-1.0)
    assert kept.tolist() == [1, 2] and rounds == 2
    # a preference of -0.01: keeping both (cost 0.04 > 0.01) is better
    assert merge_exemplars(x, np.array([0, 1, 2]), preference=-0.01)[0].tolist() == [0, 1, 2]


def test_polish_never_lowers_the_objective():
    x = hard_case("uniform", 1500)
    pref = resolve_preference(x, "median")
    plain = hierarchical_ap(x, preference=pref, partition_size=128, polish_rounds=0)
    polished = hierarchical_ap(x, preference=pref, partition_size=128, polish_rounds=2)
    assert net_similarity(x, polished.exemplars[polished.labels], pref) >= net_similarity(
        x, plain.exemplars[plain.labels], pref) - 1e-6 * abs(pref)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(damping=1.0), "cluster.ap.damping"),
    (dict(damping=0.3), "cluster.ap.damping"),
    (dict(preference=5.0), "cluster.ap.preference"),
    (dict(preference=float("nan")), "cluster.ap.preference"),
    (dict(preference="mean"), "cluster.ap.preference"),
    (dict(preference="quantile", quantile=1.5), "cluster.ap.quantile"),
    (dict(partition_size=512, max_partition_size=256), "cluster.ap.partition_size"),
    (dict(min_reduction=0.0), "cluster.ap.min_reduction"),
])
def test_out_of_range_arguments_fail_before_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        hierarchical_ap(np.zeros((10, 2), np.float32), **kwargs)


def test_non_finite_rows_are_an_error():
    x = blobs(100)
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        hierarchical_ap(x)


def test_polish_skips_a_group_around_a_giant_cluster(monkeypatch):
    """A polish group of more than POLISH_MAX_GROUP_FACTOR x polish_group points is not solved (its exact AP would
    need O(points²) memory); the other groups are, and the objective still only rises."""
    from training.curate import affinity

    rng = np.random.default_rng(0)
    giant = rng.standard_normal((400, 4)).astype(np.float32) * 0.1  # one cluster of 400 points
    small = (rng.integers(0, 20, 200)[:, None] * 3.0 + 10 + rng.standard_normal((200, 4))).astype(np.float32)
    x = np.concatenate([giant, small])
    exemplars = np.array([0, *range(400, 600, 10)])
    sizes = []
    solve = affinity._polish_group

    def recording(points, *rest):
        sizes.append(len(points))
        return solve(points, *rest)

    monkeypatch.setattr(affinity, "_polish_group", recording)
    pref = -5.0
    before = net_similarity(x, exemplars[affinity.nearest_exemplar(x, exemplars)], pref)
    new, _ = affinity.polish_exemplars(x, exemplars, pref, group_size=32, n_fixed=4, ap_kwargs=dict(damping=0.9),
                                       seed=0)
    assert sizes and max(sizes) <= affinity.POLISH_MAX_GROUP_FACTOR * 32
    assert sum(sizes) <= len(x) - len(giant), "the giant cluster's group was skipped"
    assert net_similarity(x, new[affinity.nearest_exemplar(x, new)], pref) >= before
