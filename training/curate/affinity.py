"""Affinity propagation: exact (vectorised float32, batched over partitions) and hierarchical (scalable).

Exact AP follows Frey & Dueck, Science 2007 (responsibility / availability messages, damping, and the usual
convergence test: the exemplar set unchanged for ``convergence_iter`` iterations). It runs on a batch of equal-sized
problems at once, ``S: (B, m, m)``, so many small partitions share one set of numpy passes.

Hierarchical AP (the idea of Hi-AP / weighted AP, Zhang et al. 2008-2009; own code): the points are shuffled
(seeded) and cut into partitions of at most ``partition_size``; exact AP runs inside each partition; the exemplars,
weighted by the number of points they stand for, are clustered again by *weighted* AP (``s'(i, k) = w_i s(i, k)``),
recursively until one partition is left. Memory is O(partition_size²) per task and time is linear in n. Every point
then joins its nearest final exemplar, and ``refine_iter`` medoid steps (for squared Euclidean distances the medoid
of a cluster is the member nearest its mean) move each exemplar to its cluster's medoid.

Partitions of the first level run as Dask tasks when a ``distributed.Client`` is given; results are identical to a
local run for the same seed (each task is a pure function of its inputs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

SIMILARITY_SAMPLE = 200_000
POLISH_MAX_GROUP_FACTOR = 4  # polish skips a group of more than 4 x polish_group points (memory bound per task)
SIMILARITY_BLOCK = 4_194_304  # elements (16 MB float32) of one (rows x exemplars) similarity block in the searches


def negative_sq_distances(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """x: (n, d), y: (m, d) -> (n, m) float32 ``-||x_i - y_j||²`` (clipped at 0 against round-off)."""
    y = x if y is None else y
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    sim = x @ y.T
    sim *= 2.0
    sim -= np.einsum("ij,ij->i", x, x)[:, None]
    sim -= np.einsum("ij,ij->i", y, y)[None, :]
    np.minimum(sim, 0.0, out=sim)
    return sim


def sample_similarities(x: np.ndarray, n_pairs: int = SIMILARITY_SAMPLE, seed: int = 0) -> np.ndarray:
    """Similarities of ``n_pairs`` random pairs (i != j) of x: (n, d) -> (n_pairs,)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, max(n, 2), n_pairs)) % n
    diff = x[i].astype(np.float32) - x[j].astype(np.float32)
    return -np.einsum("ij,ij->i", diff, diff)


def resolve_preference(
    x: np.ndarray, preference: str | float = "median", quantile: float = 0.5, seed: int = 0
) -> float:
    """``'median'``, ``'quantile'`` (of pairwise similarities) or a number -> the AP preference (a float)."""
    if isinstance(preference, (int, float)):
        return float(preference)
    if preference == "median":
        quantile = 0.5
    elif preference != "quantile":
        raise ValueError(f"preference must be 'median', 'quantile', 'target_k' or a number, got {preference!r}")
    return float(np.quantile(sample_similarities(x, seed=seed), quantile))


@dataclass
class ExactAPResult:
    labels: np.ndarray  # (B, m) index of each point's exemplar within its problem
    n_iter: int
    converged: np.ndarray  # (B,) bool


def exact_ap_batched(
    similarities: np.ndarray,
    preference: np.ndarray | float,
    *,
    weights: np.ndarray | None = None,
    self_cost: np.ndarray | None = None,
    damping: float = 0.7,
    max_iter: int = 200,
    convergence_iter: int = 15,
    seed: int = 0,
) -> ExactAPResult:
    """similarities: (B, m, m) float32 (overwritten), preference: scalar or (B,), weights: (B, m) -> labels (B, m).

    ``weights`` (number of points each item stands for) scale the rows: ``s'(i, k) = w_i s(i, k)``;
    the diagonal becomes ``s'(k, k) = p + self_cost_k`` (``self_cost``: (B, m), default 0).
    """
    if not 0.5 <= damping < 1.0:
        raise ValueError(f"damping must be in [0.5, 1), got {damping}")
    S = similarities
    B, m, _ = S.shape
    if m == 1:  # a single item is its own exemplar (the messages need a second candidate)
        return ExactAPResult(labels=np.zeros((B, 1), np.int64), n_iter=0, converged=np.ones(B, bool))
    diag = np.arange(m)
    if weights is not None:
        S *= weights.astype(np.float32)[:, :, None]
    S[:, diag, diag] = np.broadcast_to(np.asarray(preference, np.float32).reshape(-1, 1), (B, m))
    if self_cost is not None:
        S[:, diag, diag] += self_cost.astype(np.float32)
    # Tiny seeded noise removes degenerate ties (identical points) that would make messages oscillate.
    rng = np.random.default_rng(seed)
    scale = np.abs(S).max(axis=(1, 2), keepdims=True) + np.float32(1e-12)
    S += (rng.random(S.shape, dtype=np.float32) * np.float32(1e-6)) * scale
    R = np.zeros_like(S)
    A = np.zeros_like(S)
    T = np.empty_like(S)
    rows_b = np.arange(B)[:, None]
    rows_i = np.arange(m)[None, :]
    history = np.zeros((B, m, convergence_iter), bool)
    converged = np.zeros(B, bool)
    keep, step = np.float32(damping), np.float32(1.0 - damping)
    it = 0
    for it in range(max_iter):
        # responsibilities: r(i,k) = s(i,k) - max_{k' != k} (a(i,k') + s(i,k'))
        np.add(A, S, out=T)
        best = T.argmax(axis=2)
        first = T[rows_b, rows_i, best]
        T[rows_b, rows_i, best] = -np.inf
        second = T.max(axis=2)
        np.subtract(S, first[:, :, None], out=T)
        T[rows_b, rows_i, best] = S[rows_b, rows_i, best] - second
        R *= keep
        T *= step
        R += T
        # availabilities: a(i,k) = min(0, r(k,k) + sum_{i' not in {i,k}} max(0, r(i',k))), a(k,k) = sum_{i'!=k} ...
        np.maximum(R, 0.0, out=T)
        T[:, diag, diag] = R[:, diag, diag]
        column = T.sum(axis=1)
        np.subtract(column[:, None, :], T, out=T)
        self_avail = T[:, diag, diag].copy()
        np.minimum(T, 0.0, out=T)
        T[:, diag, diag] = self_avail
        A *= keep
        T *= step
        A += T
        exemplar = (A[:, diag, diag] + R[:, diag, diag]) > 0
        history[:, :, it % convergence_iter] = exemplar
        if it >= convergence_iter:
            stable = history.sum(axis=2)
            converged = ((stable == convergence_iter) | (stable == 0)).all(axis=1) & exemplar.any(axis=1)
            if converged.all():
                break
    exemplar = (A[:, diag, diag] + R[:, diag, diag]) > 0
    del R, A, T
    labels = np.empty((B, m), np.int64)
    for b in range(B):
        labels[b] = _assign_and_refine(S[b], np.flatnonzero(exemplar[b]))
    return ExactAPResult(labels=labels, n_iter=it + 1, converged=converged)


def _assign_and_refine(S: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """S: (m, m) with preferences on the diagonal, exemplars: (K,) -> labels (m,) = exemplar index per point."""
    m = S.shape[0]
    if len(exemplars) == 0:  # no exemplar emerged: one cluster around the best-connected point
        off = S.copy()
        np.fill_diagonal(off, 0.0)
        return np.full(m, int(off.sum(axis=0).argmax()))
    assign = S[:, exemplars].argmax(axis=1)
    assign[exemplars] = np.arange(len(exemplars))
    # as in the reference algorithm: each exemplar becomes the member with the largest summed similarity
    refined = np.empty_like(exemplars)
    for k in range(len(exemplars)):
        members = np.flatnonzero(assign == k)
        block = S[np.ix_(members, members)]
        refined[k] = members[block.sum(axis=0).argmax()]
    assign = S[:, refined].argmax(axis=1)
    assign[refined] = np.arange(len(refined))
    return refined[assign]


def exact_ap(
    x: np.ndarray,
    preference: float,
    *,
    weights: np.ndarray | None = None,
    damping: float = 0.7,
    max_iter: int = 200,
    convergence_iter: int = 15,
    seed: int = 0,
) -> tuple[np.ndarray, bool, int]:
    """x: (n, d) -> (labels (n,) exemplar index of each point, converged, n_iter). O(n²) memory (float32)."""
    S = negative_sq_distances(x)[None]
    result = exact_ap_batched(
        S, preference, weights=None if weights is None else weights[None], damping=damping, max_iter=max_iter,
        convergence_iter=convergence_iter, seed=seed,
    )
    return result.labels[0], bool(result.converged[0]), result.n_iter


def net_similarity(x: np.ndarray, labels: np.ndarray, preference: float, chunk: int = 65536) -> float:
    """AP objective: sum_i s(i, e(i)) over non-exemplars + K * preference. x: (n, d), labels: (n,) exemplar index."""
    exemplars = np.unique(labels)
    total = float(len(exemplars)) * preference
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.float32)
        diff = part - x[labels[start : start + chunk]].astype(np.float32)
        total -= float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
    return total


def _partition_ap(
    means: np.ndarray,
    candidates: np.ndarray,
    weights: np.ndarray,
    preference: float,
    bounds: np.ndarray,
    level_seed: int,
    ap_kwargs: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """One task over items in partition order -> (labels (n,) local exemplar index into the items, converged (P,)).

    bounds: (P + 1,) partition boundaries into the items (``bounds[-1] == n``).
    means: (n, d) mean of the points each item stands for, candidates: (n, d) the item's exemplar point,
    weights: (n,) its number of points. ``s'(i, k) = -w_i ||mean_i - x_k||²`` is exact for the points' summed squared
    distances (up to a constant), so upper levels optimise the same objective as exact AP on all points.
    """
    n = len(means)
    sizes = np.diff(bounds)
    labels = np.empty(n, np.int64)
    converged: list[np.ndarray] = []
    budget = 262_144  # elements per batched message array (1 MB float32: the 4 arrays stay in cache)
    for size in np.unique(sizes):
        starts = bounds[:-1][sizes == size]
        per_batch = max(1, budget // int(size) ** 2)
        for b0 in range(0, len(starts), per_batch):
            batch = starts[b0 : b0 + per_batch]
            idx = batch[:, None] + np.arange(size)[None, :]
            S = np.stack([negative_sq_distances(means[i], candidates[i]) for i in idx])
            diag = np.arange(size)
            self_cost = S[:, diag, diag] * weights[idx]
            result = exact_ap_batched(
                S, preference, weights=weights[idx], self_cost=self_cost, seed=level_seed + int(batch[0]), **ap_kwargs
            )
            labels[idx] = batch[:, None] + result.labels
            converged.append(result.converged)
    return labels, np.concatenate(converged)


def coherent_order(points: np.ndarray, n_parts: int, seed: int = 0, sample: int = 2048) -> np.ndarray:
    """points: (n, d) -> permutation (n,) whose ``n_parts`` blocks (``np.linspace`` bounds) are compact in space.

    Recursive bisection along each subset's principal axis (power iteration on at most ``sample`` of its points),
    split at the block boundary nearest the middle: a partition then holds whole neighbourhoods, not a random
    scatter, so exact AP inside it sees whole clusters. O(n d log(n_parts)); deterministic for a seed.
    """
    n = len(points)
    bounds = np.linspace(0, n, n_parts + 1).astype(np.int64)
    order = np.arange(n)
    rng = np.random.default_rng(seed)
    stack = [(0, n_parts)]
    while stack:
        p0, p1 = stack.pop()
        if p1 - p0 < 2:
            continue
        lo, hi = bounds[p0], bounds[p1]
        idx = order[lo:hi]
        sub = points[idx] if hi - lo <= sample else points[idx[rng.choice(hi - lo, sample, replace=False)]]
        centred = sub - sub.mean(axis=0)
        axis = rng.standard_normal(points.shape[1]).astype(np.float32)
        for _ in range(8):  # power iteration for the principal axis
            axis = centred.T @ (centred @ axis)
            axis /= np.linalg.norm(axis) + 1e-30
        pm = (p0 + p1) // 2
        projection = points[idx] @ axis
        left = bounds[pm] - lo
        split = np.argpartition(projection, left - 1) if 0 < left < len(idx) else np.arange(len(idx))
        order[lo:hi] = idx[split]
        stack.extend([(p0, pm), (pm, p1)])
    return order


@dataclass
class HierarchicalAPResult:
    labels: np.ndarray  # (n,) final cluster id 0..K-1
    exemplars: np.ndarray  # (K,) index of each cluster's exemplar in x
    level_labels: list[np.ndarray] = field(default_factory=list)  # per level: (n,) cluster id, fine -> coarse
    preference: float = 0.0  # the preference of the objective that was optimised (and of ``net_similarity``)
    levels: list[dict] = field(default_factory=list)  # per level: items in, exemplars out, partition, preference, s
    stop_reason: str = ""  # why the level loop ended: 'one_partition' | 'no_reduction_at_max_partition'


def max_levels(n: int, partition_size: int, max_partition_size: int, min_reduction: float) -> int:
    """Upper bound on the partition levels of ``hierarchical_ap`` for n items (the loop's termination proof).

    A level either cuts the items by at least ``min_reduction`` (at most ``log(n / partition_size) /
    -log(1 - min_reduction)`` such levels) or doubles the partition size (at most ``log2(max / start)`` times), or
    it is the last one.
    """
    cuts = math.ceil(math.log(max(n / partition_size, 1.0)) / -math.log1p(-min_reduction)) if n > partition_size else 0
    doublings = math.ceil(math.log2(max(max_partition_size / partition_size, 1.0)))
    return cuts + doublings + 1


def validate_ap_args(
    preference: str | float, quantile: float, damping: float, partition_size: int, max_partition_size: int,
    min_reduction: float, target_k: int | None = None, max_iter: int = 200, convergence_iter: int = 10,
    key: str = "cluster.ap",
) -> None:
    """Raise ValueError naming the config key for an argument out of range (called before any work)."""
    if isinstance(preference, bool) or not isinstance(preference, (int, float, str)):
        raise ValueError(f"{key}.preference must be 'median', 'quantile', 'target_k' or a number, got {preference!r}")
    if isinstance(preference, str) and preference not in ("median", "quantile", "target_k"):
        raise ValueError(f"{key}.preference must be 'median', 'quantile', 'target_k' or a number, got {preference!r}")
    if isinstance(preference, (int, float)) and not (math.isfinite(preference) and preference < 0):
        raise ValueError(f"{key}.preference must be a finite negative number (similarities are -distance²), "
                         f"got {preference}")
    if preference == "quantile" and not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"{key}.quantile must be in (0, 1), got {quantile}")
    if preference == "target_k" and (target_k is None or int(target_k) < 1):
        raise ValueError(f"{key}.target_k must be a positive integer with preference=target_k, got {target_k}")
    if not 0.5 <= float(damping) < 1.0:
        raise ValueError(f"{key}.damping must be in [0.5, 1), got {damping}")
    if int(partition_size) < 2 or int(max_partition_size) < int(partition_size):
        raise ValueError(f"{key}.partition_size must be >= 2 and <= {key}.max_partition_size, got "
                         f"{partition_size} / {max_partition_size}")
    if not 0.0 < float(min_reduction) < 1.0:
        raise ValueError(f"{key}.min_reduction must be in (0, 1), got {min_reduction}")
    if int(max_iter) < 1 or int(convergence_iter) < 1:
        raise ValueError(f"{key}.max_iter and {key}.convergence_iter must be >= 1, got {max_iter} / {convergence_iter}")


def _single_threaded_blas(fn: Callable) -> Callable:
    """Run ``fn`` with one BLAS thread: many small matmuls, where BLAS threads only spin (Dask parallelises)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


@_single_threaded_blas
def hierarchical_ap(
    x: np.ndarray,
    *,
    preference: str | float = "median",
    quantile: float = 0.5,
    target_k: int | None = None,
    partition_size: int = 512,
    max_partition_size: int = 2048,
    min_reduction: float = 0.1,
    damping: float = 0.6,
    max_iter: int = 200,
    convergence_iter: int = 10,
    refine_iter: int = 3,
    split: bool = True,
    merge: bool = True,
    polish_rounds: int = 3,
    polish_group: int = 512,
    polish_fixed: int = 64,
    coherent: bool = True,
    chunk_size: int = 16384,
    seed: int = 0,
    client=None,
    progress: Callable[[int], None] | None = None,
) -> HierarchicalAPResult:
    """x: (n, d) finite -> HierarchicalAPResult. ``client``: a ``distributed.Client`` (None: run here).

    ``preference``: 'median' | 'quantile' | 'target_k' | a number; one value for every level (recorded per level).
    With 'target_k' the top level searches the preference that gives ``target_k`` clusters (bisection) and the
    result reports the preference found. A level whose partitions cut fewer than ``min_reduction`` of its items
    doubles the partition size (up to ``max_partition_size``); when even that does not cut, the loop stops and the
    items left are the exemplars (``stop_reason``). ``split`` / ``merge``: re-run AP inside each final cluster and
    keep the splits that raise the net similarity; drop exemplars whose cluster costs less than ``-preference`` to
    absorb into the neighbouring ones. Every step after the levels only raises the net similarity.
    """
    import time

    validate_ap_args(preference, quantile, damping, partition_size, max_partition_size, min_reduction, target_k,
                     max_iter, convergence_iter)
    x = np.ascontiguousarray(x, np.float32)
    n = len(x)
    if n == 0:
        return HierarchicalAPResult(np.zeros(0, np.int64), np.zeros(0, np.int64))
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"hierarchical_ap: {len(bad)} rows with NaN/inf (first: row {bad[0]}); reject them first")
    ap_kwargs = dict(damping=damping, max_iter=max_iter, convergence_iter=convergence_iter)
    pref = resolve_preference(x, "median" if preference == "target_k" else preference, quantile, seed)
    rng = np.random.default_rng(seed)
    part = int(partition_size)
    bound = max_levels(n, part, max_partition_size, min_reduction)

    active = np.arange(n)  # indices (into x) of the items of the current level (each an exemplar point)
    weights = np.ones(n, np.float64)  # (len(active),) points each active item stands for
    sums = None  # (len(active), d) float64 summed coordinates of those points; None on the first level (= x)
    owner = np.arange(n)  # owner[i]: the active item that point i is represented by
    level_labels, levels = [], []
    level = 0
    stop_reason = "one_partition"
    while len(active) > part:
        if level >= bound:  # unreachable by the argument in max_levels; a guard, not a code path
            raise RuntimeError(f"hierarchical_ap: level {level} exceeds the bound {bound} (a bug)")
        t0 = time.perf_counter()
        means = x if sums is None else (sums / weights[:, None]).astype(np.float32)
        n_parts = -(-len(active) // part)
        order = coherent_order(means, n_parts, seed + level) if coherent else rng.permutation(len(active))
        items = active[order]
        item_w = weights[order]
        bounds = np.linspace(0, len(items), n_parts + 1).astype(np.int64)
        per_task = max(1, chunk_size // part)  # partitions per Dask task
        cuts = bounds[::per_task] if (n_parts % per_task) == 0 else np.append(bounds[::per_task], bounds[-1])
        chunks = list(zip(cuts[:-1].tolist(), cuts[1:].tolist()))

        def level_task(j: int, means=means, order=order, items=items, item_w=item_w, bounds=bounds, level=level,
                       chunks=chunks) -> tuple:  # built when submitted: no copy of the whole level at once
            a, b = chunks[j]
            return (means[order[a:b]], x[items[a:b]], item_w[a:b], pref, bounds[(bounds >= a) & (bounds <= b)] - a,
                    seed * 1_000_003 + level * 7919 + a, ap_kwargs)

        args = LazyArgs(len(chunks), level_task)
        if client is not None:
            local = _on_workers(client, _partition_ap_star, args)
        else:
            local = [_partition_ap_star(arg) for arg in args]
        if progress:
            progress(len(items))
        exemplar_of_item = np.concatenate([items[a:b][lab] for (a, b), (lab, _) in zip(chunks, local)])
        converged = float(np.mean(np.concatenate([c for _, c in local])))
        rep = np.empty(n, np.int64)
        rep[items] = exemplar_of_item
        # compact per-item state: memory O(items of the next level x d), not O(n x d) per level
        new_active, slot = np.unique(exemplar_of_item, return_inverse=True)
        new_weights = np.bincount(slot, weights=item_w, minlength=len(new_active))
        new_sums = np.zeros((len(new_active), x.shape[1]), np.float64)
        for a, b in chunks:
            np.add.at(new_sums, slot[a:b], x[items[a:b]] if sums is None else sums[order[a:b]])
        owner = rep[owner]
        level_labels.append(np.unique(owner, return_inverse=True)[1])
        reduction = 1.0 - len(new_active) / len(active)
        levels.append(dict(level=level, items=len(active), exemplars=len(new_active), partition_size=part,
                           preference=pref, partitions_converged=converged, seconds=time.perf_counter() - t0))
        active, weights, sums = new_active, new_weights, new_sums
        level += 1
        if reduction < min_reduction:
            if part >= max_partition_size:
                stop_reason = "no_reduction_at_max_partition"
                break
            part = min(2 * part, int(max_partition_size))

    t0 = time.perf_counter()
    if stop_reason == "one_partition":
        top_means = x[active] if sums is None else (sums / weights[:, None]).astype(np.float32)
        top_k = None if split else target_k  # with the split pass, target_k is met by merging its clusters below
        top_pref, top_labels = _top_level(top_means, x[active], weights, pref, top_k, ap_kwargs, seed)
        exemplars = active[np.unique(top_labels)]
    else:  # more exemplars than the largest partition: the items left are the exemplars
        top_pref, exemplars = pref, active
    levels.append(dict(level="top", items=len(active), exemplars=len(exemplars), partition_size=len(active),
                       preference=top_pref, stop_reason=stop_reason, seconds=time.perf_counter() - t0))
    if split:
        t0 = time.perf_counter()
        before = len(exemplars)
        exemplars = _split_clusters(x, exemplars, top_pref, partition_size, ap_kwargs, seed, client)
        levels.append(dict(level="split", items=before, exemplars=len(exemplars), preference=top_pref,
                           seconds=time.perf_counter() - t0))
    if merge:
        t0 = time.perf_counter()
        before = len(exemplars)
        exemplars, rounds = merge_exemplars(x, exemplars, top_pref)
        levels.append(dict(level="merge", items=before, exemplars=len(exemplars), preference=top_pref, rounds=rounds,
                           seconds=time.perf_counter() - t0))
    polish_kwargs = dict(damping=max(damping, 0.9), max_iter=max(max_iter, 500), convergence_iter=15)
    for round_ in range(polish_rounds):
        t0 = time.perf_counter()
        before = len(exemplars)
        exemplars, kept = polish_exemplars(x, exemplars, top_pref, polish_group, polish_fixed, polish_kwargs,
                                           seed + round_, client)
        if kept and merge:
            exemplars, _ = merge_exemplars(x, exemplars, top_pref)
        levels.append(dict(level=f"polish{round_}", items=before, exemplars=len(exemplars), preference=top_pref,
                           kept=kept, seconds=time.perf_counter() - t0))
        if not kept:
            break
    if split and target_k is not None:
        t0 = time.perf_counter()
        before = len(exemplars)
        top_pref, exemplars = _merge_to_k(x, exemplars, pref, target_k, ap_kwargs, seed)
        levels.append(dict(level="target_k", items=before, exemplars=len(exemplars), preference=top_pref,
                           seconds=time.perf_counter() - t0))
    exemplars = _refine(x, exemplars, refine_iter)
    labels = nearest_exemplar(x, exemplars)
    level_labels.append(labels)
    return HierarchicalAPResult(labels, exemplars, level_labels, top_pref, levels, stop_reason)


def merge_exemplars(
    x: np.ndarray, exemplars: np.ndarray, preference: float, n_neighbours: int = 16, max_rounds: int = 100,
    chunk: int = 16384,
) -> tuple[np.ndarray, int]:
    """x: (n, d), exemplars: (K,) -> (exemplars kept, rounds): drop exemplars whose removal raises the net similarity.

    Removing exemplar k saves ``-preference`` and costs ``sum_{i in C_k} (d2_i - d1_i)``, d1 the distance² to k and
    d2 to the nearest of k's ``n_neighbours`` nearest exemplars (an upper bound of the true cost). A round removes
    a set of clusters whose members' fallback exemplars are all kept, cheapest first; it stops when no removal
    pays or after ``max_rounds`` rounds. Each removal raises the objective by at least ``-preference - cost > 0``.
    """
    gain = -float(preference)
    rounds = 0
    while rounds < max_rounds and len(exemplars) > 1 and gain > 0:
        rounds += 1
        K = len(exemplars)
        centres = x[exemplars]
        m = min(n_neighbours, K - 1)
        nb = np.empty((K, m), np.int64)  # nearest other exemplars of each exemplar
        rows = _rows_per_block(chunk, K)
        for a in range(0, K, rows):
            sim = negative_sq_distances(centres[a : a + rows], centres)
            sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf
            nb[a : a + rows] = np.argpartition(-sim, m - 1, axis=1)[:, :m]
        labels = nearest_exemplar(x, exemplars, chunk)
        cost = np.zeros(len(x), np.float64)
        fallback = np.empty(len(x), np.int64)
        for a in range(0, len(x), chunk):
            part, lab = x[a : a + chunk], labels[a : a + chunk]
            diff = part - centres[lab]
            d1 = np.einsum("ij,ij->i", diff, diff)
            cand = nb[lab]  # (c, m) fallback candidates of each point
            diff = part[:, None, :] - centres[cand]
            d2 = np.einsum("ijk,ijk->ij", diff, diff)
            best = d2.argmin(axis=1)
            rows = np.arange(len(part))
            cost[a : a + len(part)] = d2[rows, best] - d1
            fallback[a : a + len(part)] = cand[rows, best]
        cluster_cost = np.bincount(labels, weights=cost, minlength=K)
        candidates = np.flatnonzero(cluster_cost < gain)
        if len(candidates) == 0:
            break
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=K))])
        removed = np.zeros(K, bool)
        needed = np.zeros(K, bool)  # fallback of a removed cluster's member: must stay this round
        for k in candidates[np.argsort(cluster_cost[candidates], kind="stable")]:
            if needed[k]:
                continue
            targets = fallback[order[starts[k] : starts[k + 1]]]
            if removed[targets].any():
                continue
            removed[k] = True
            needed[targets] = True
        exemplars = exemplars[~removed]
    return exemplars, rounds


def _merge_to_k(
    x: np.ndarray, exemplars: np.ndarray, preference: float, target_k: int, ap_kwargs: dict, seed: int
) -> tuple[float, np.ndarray]:
    """Weighted AP over the clusters of ``exemplars`` (means, sizes) with the preference bisected to ``target_k``."""
    if target_k >= len(exemplars):
        return preference, exemplars
    labels = nearest_exemplar(x, exemplars)
    counts = np.bincount(labels, minlength=len(exemplars)).astype(np.float64)
    sums = np.zeros((len(exemplars), x.shape[1]))
    np.add.at(sums, labels, x)
    means = (sums / counts[:, None]).astype(np.float32)
    pref, top_labels = _top_level(means, x[exemplars], counts, preference, target_k, ap_kwargs, seed)
    return pref, exemplars[np.unique(top_labels)]


def _partition_ap_star(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(limits=1):
        return _partition_ap(*args)


def _weighted_ap(means, candidates, weights, preference, ap_kwargs, seed) -> tuple[np.ndarray, bool]:
    S = negative_sq_distances(means, candidates)
    diag = np.arange(len(means))
    self_cost = (S[diag, diag] * weights)[None]
    result = exact_ap_batched(S[None], preference, weights=weights[None], self_cost=self_cost, seed=seed, **ap_kwargs)
    return result.labels[0], bool(result.converged[0])


def _top_level(
    means: np.ndarray, candidates: np.ndarray, weights: np.ndarray, preference: float, target_k: int | None,
    ap_kwargs: dict, seed: int,
) -> tuple[float, np.ndarray]:
    """Weighted exact AP over the last level's items; with ``target_k``, bisect the preference (log scale).

    The search runs between ``1e-3 x`` and ``total weight x`` the median similarity; runs that do not converge
    (AP oscillates at extreme preferences) only count when no converged run is closer to ``target_k``.
    """
    if target_k is None:
        return preference, _weighted_ap(means, candidates, weights, preference, ap_kwargs, seed)[0]
    if target_k >= len(means):
        return preference, np.arange(len(means))
    scale = abs(float(np.median(sample_similarities(means, seed=seed)))) or 1.0
    log_low, log_high = np.log(scale * 1e-3), np.log(scale * max(float(weights.sum()), 2.0))  # -p: many .. one
    best = None
    for _ in range(30):
        mid = -float(np.exp((log_low + log_high) / 2))
        labels, converged = _weighted_ap(means, candidates, weights, mid, ap_kwargs, seed)
        k = len(np.unique(labels))
        key = (not converged, abs(k - target_k))
        if best is None or key < best[0]:
            best = (key, mid, labels)
        if k == target_k and converged:
            break
        if k > target_k:
            log_low = np.log(-mid)
        else:
            log_high = np.log(-mid)
    return best[1], best[2]


class LazyArgs(Sequence):
    """A sequence of task arguments made on access (``make(i)``), so a pass never holds every task's data at once."""

    def __init__(self, count: int, make: Callable[[int], object]):
        self.count, self.make = count, make

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.make(j) for j in range(*i.indices(self.count))]
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return self.make(i % self.count)


def _on_workers(client, fn: Callable, args: Sequence, retries: int = 3, window: int | None = None) -> list:
    """fn over args on Dask workers -> results in input order.

    Each task's arguments are scattered when it is submitted (sent to the workers as data, not embedded in the task
    graph) and at most ``window`` tasks (default: twice the cluster's threads) are in flight, so the client holds
    the data of ``window`` tasks, not of the whole pass. Scattered data dies with its worker, so a task that fails
    (its worker killed, its data lost) is re-scattered and re-run, up to ``retries`` times, then an error names it.
    Tasks are pure: a re-run gives the same result.
    """
    count = len(args)
    window = window or max(2, 2 * sum(client.nthreads().values()))

    def submit(i: int):
        # hash=False: fresh keys, so data equal to an earlier call's (being released) is never shared with it
        return client.submit(fn, client.scatter([args[i]], hash=False)[0], pure=False)

    futures: dict[int, object] = {}
    results = []
    submitted = 0
    for i in range(count):
        while submitted < count and submitted < i + window:
            futures[submitted] = submit(submitted)
            submitted += 1
        future = futures.pop(i)
        for attempt in range(retries + 1):
            try:
                results.append(future.result())
                break
            except Exception as err:  # KilledWorker, lost scattered data, a cancelled future ...
                if attempt == retries:
                    raise RuntimeError(f"{fn.__name__} task {i} of {count} failed {retries + 1} times on the "
                                       f"Dask workers: {type(err).__name__}: {err}") from err
                future = submit(i)
        del future  # released: its scattered data can go
    return results


def _rows_per_block(chunk: int, n_exemplars: int) -> int:
    """Rows of one similarity block against ``n_exemplars`` centres: at most ``chunk``, at most SIMILARITY_BLOCK
    elements (so the searches' memory does not grow with the number of clusters), at least 256."""
    return int(max(256, min(chunk, SIMILARITY_BLOCK // max(n_exemplars, 1))))


def nearest_exemplar(x: np.ndarray, exemplars: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """x: (n, d), exemplars: (K,) indices -> (n,) cluster id 0..K-1 of the nearest exemplar (exemplars map to self)."""
    centres = x[exemplars]
    labels = np.empty(len(x), np.int64)
    chunk = _rows_per_block(chunk, len(exemplars))
    for start in range(0, len(x), chunk):
        labels[start : start + chunk] = negative_sq_distances(x[start : start + chunk], centres).argmax(axis=1)
    labels[exemplars] = np.arange(len(exemplars))
    return labels


def _split_one(x: np.ndarray, preference: float, sample_size: int, ap_kwargs: dict, seed: int) -> np.ndarray:
    """Points of one cluster x: (c, d) -> exemplar indices (into x) of the best of {one medoid, AP on the points}.

    A cluster larger than ``sample_size`` is represented by a seeded sample of that size, each sampled point
    weighted by ``c / sample_size`` (weighted AP); every point then joins its nearest candidate exemplar.
    """
    diff = x - x.mean(axis=0)
    medoid = int(np.einsum("ij,ij->i", diff, diff).argmin())
    single = net_similarity(x, np.full(len(x), medoid), preference)
    if len(x) <= sample_size:
        labels, _, _ = exact_ap(x, preference, seed=seed, **ap_kwargs)
        candidate = np.unique(labels)
    else:
        sample = np.sort(np.random.default_rng(seed).choice(len(x), size=sample_size, replace=False))
        weights = np.full(sample_size, len(x) / sample_size, np.float32)
        sample_labels, _, _ = exact_ap(x[sample], preference, weights=weights, seed=seed, **ap_kwargs)
        candidate = sample[np.unique(sample_labels)]
        labels = candidate[nearest_exemplar(x, candidate)]
    if len(candidate) > 1 and net_similarity(x, labels, preference) > single:
        return candidate
    return np.array([medoid])


def _split_clusters_star(args: tuple) -> list[np.ndarray]:
    with threadpool_limits(limits=1):
        return [_split_one(*a) for a in args]


def _split_clusters(
    x: np.ndarray, exemplars: np.ndarray, preference: float, partition_size: int, ap_kwargs: dict, seed: int, client
) -> np.ndarray:
    """Re-run AP on the points of each final cluster; keep a split where it raises the net similarity.

    Upper levels see each first-level group only through its mean, so they cannot split a dense cluster that exact
    AP on all points would split; this top-down pass restores that (the objective decomposes over clusters).
    """
    labels = nearest_exemplar(x, exemplars)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(exemplars)))])
    members = [order[bounds[k] : bounds[k + 1]] for k in range(len(exemplars))]
    # clusters grouped into tasks of about 16k points; a task's points are copied when it is submitted
    groups, current, size = [], [], 0
    for k, m in enumerate(members):
        current.append(k)
        size += len(m)
        if size >= 16384:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    args = LazyArgs(len(groups), lambda g: [(x[members[k]], preference, 4 * partition_size, ap_kwargs, seed + k)
                                            for k in groups[g]])
    if client is not None:
        results = [r for group in _on_workers(client, _split_clusters_star, args) for r in group]
    else:
        results = [r for group in args for r in _split_clusters_star(group)]
    return np.sort(np.concatenate([m[local] for m, local in zip(members, results)]))


def _polish_group(
    points: np.ndarray, fixed: np.ndarray, old: np.ndarray, preference: float, ap_kwargs: dict, seed: int
) -> np.ndarray | None:
    """Exact AP on one group's points with the nearest outside exemplars as already-open exemplars.

    points: (m, d) the members of a few neighbouring clusters, fixed: (f, d) outside exemplars (no preference to
    pay; they never join another exemplar), old: (k,) indices into points of the group's current exemplars ->
    indices into points of a better exemplar set, or None when AP's does not lower ``sum min distance² +
    -preference * count`` over the group (both sets scored with the same fixed exemplars).
    """
    m, f = len(points), len(fixed)
    S = np.empty((m + f, m + f), np.float32)
    S[:m, :m] = negative_sq_distances(points)
    S[:m, m:] = negative_sq_distances(points, fixed) if f else 0.0
    S[m:, :] = np.float32(10.0) * (np.abs(S[:m]).max() + abs(preference))  # fixed rows: only themselves
    S[m:, :] *= -1
    self_cost = np.zeros((1, m + f), np.float32)
    self_cost[0, m:] = -preference  # s(k, k) = 0 for a fixed exemplar
    result = exact_ap_batched(S[None], preference, self_cost=self_cost, seed=seed, **ap_kwargs)
    local = np.unique(result.labels[0][:m])
    new = local[local < m]

    def cost(exemplars: np.ndarray) -> float:
        centres = np.concatenate([points[exemplars], fixed])
        return float(-negative_sq_distances(points, centres).max(axis=1).sum()) - preference * len(exemplars)

    if len(new) and cost(new) < cost(old) * (1 - 1e-7):
        return new
    return None


def _polish_star(args: tuple) -> list[np.ndarray | None]:
    with threadpool_limits(limits=1):
        return [_polish_group(*a) for a in args]


def polish_exemplars(
    x: np.ndarray, exemplars: np.ndarray, preference: float, group_size: int, n_fixed: int, ap_kwargs: dict,
    seed: int, client=None,
) -> tuple[np.ndarray, bool]:
    """One round of large-neighbourhood search: re-solve groups of neighbouring clusters by exact AP.

    The clusters are cut into groups of about ``group_size`` points (``coherent_order`` of their exemplars; a group
    of more than ``POLISH_MAX_GROUP_FACTOR x group_size`` points, around a giant cluster, is skipped); each
    group's points are re-clustered by exact AP with the ``n_fixed`` nearest outside exemplars open for free, and
    the group's exemplars are replaced where that lowers the group's cost. The round is kept only if the net
    similarity of all points rises (groups are solved independently, in parallel on Dask) -> (exemplars, kept).
    """
    labels = nearest_exemplar(x, exemplars)
    K = len(exemplars)
    n_groups = max(1, round(len(x) / group_size))
    if n_groups < 1 or K < 2:
        return exemplars, False
    order = coherent_order(x[exemplars], min(n_groups, K), seed)
    bounds = np.linspace(0, K, min(n_groups, K) + 1).astype(np.int64)
    member_order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=K))])
    jobs, meta = [], []
    for g in range(len(bounds) - 1):
        ks = np.sort(order[bounds[g] : bounds[g + 1]])
        if starts[ks + 1].sum() - starts[ks].sum() > POLISH_MAX_GROUP_FACTOR * group_size:
            continue  # a group around a giant cluster: left as it is (exact AP on it would need O(points²) memory)
        pts = np.sort(np.concatenate([member_order[starts[k] : starts[k + 1]] for k in ks]))
        inside = np.zeros(K, bool)
        inside[ks] = True
        others = np.flatnonzero(~inside)
        if len(others):
            gap = negative_sq_distances(x[exemplars[ks]], x[exemplars[others]]).max(axis=0)
            others = others[np.argsort(-gap, kind="stable")[:n_fixed]]
        jobs.append((others, np.searchsorted(pts, exemplars[ks]), seed * 7919 + g))
        meta.append((ks, pts))

    def polish_task(t: int) -> list[tuple]:  # four groups per task, their points copied when it is submitted
        return [(x[meta[g][1]], x[exemplars[jobs[g][0]]], jobs[g][1], preference, ap_kwargs, jobs[g][2])
                for g in range(4 * t, min(4 * t + 4, len(jobs)))]

    args = LazyArgs(-(-len(jobs) // 4), polish_task)
    if client is not None:
        results = [r for group in _on_workers(client, _polish_star, args) for r in group]
    else:
        results = [r for group in args for r in _polish_star(group)]
    keep = np.ones(K, bool)
    added = []
    for (ks, pts), new in zip(meta, results):
        if new is not None:
            keep[ks] = False
            added.append(pts[new])
    if not added:
        return exemplars, False
    proposal = np.unique(np.concatenate([exemplars[keep], *added]))
    before = net_similarity(x, exemplars[labels], preference)
    after = net_similarity(x, proposal[nearest_exemplar(x, proposal)], preference)
    return (proposal, True) if after > before else (exemplars, False)


def _refine(x: np.ndarray, exemplars: np.ndarray, n_iter: int) -> np.ndarray:
    """Medoid steps: each exemplar moves to its cluster member nearest the cluster mean (squared Euclidean)."""
    for _ in range(n_iter):
        labels = nearest_exemplar(x, exemplars)
        counts = np.bincount(labels, minlength=len(exemplars)).astype(np.float64)
        sums = np.zeros((len(exemplars), x.shape[1]))
        np.add.at(sums, labels, x)
        means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        dist = np.empty(len(x), np.float32)
        for a in range(0, len(x), 65536):  # in blocks: no (n, d) temporaries
            diff = x[a : a + 65536] - means[labels[a : a + 65536]]
            dist[a : a + 65536] = np.einsum("ij,ij->i", diff, diff)
        order = np.lexsort((dist, labels))
        first = np.searchsorted(labels[order], np.arange(len(exemplars)))
        moved = order[first]
        if np.array_equal(np.sort(moved), np.sort(exemplars)):
            break
        exemplars = moved
    return exemplars
