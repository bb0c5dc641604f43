"""Budgeted, diversity-aware selection: balanced per-cluster quotas (water-filling cap) and within-cluster picks."""

from __future__ import annotations

import numpy as np

WITHIN = ("closest", "random", "farthest", "balanced")


def water_fill_quotas(sizes: np.ndarray, budget: int) -> np.ndarray:
    """sizes: (K,) cluster sizes -> quotas (K,): ``min(size, cap)`` with the largest cap whose sum fits ``budget``.

    The leftover (budget minus the capped sum) goes one chip each to the clusters still above the cap, largest first
    (ties: lower cluster id), so ``quotas.sum() == min(budget, sizes.sum())``.
    """
    sizes = np.asarray(sizes, np.int64)
    if budget >= sizes.sum():
        return sizes.copy()
    low, high = 0, int(sizes.max())
    while low < high:  # largest cap with sum(min(sizes, cap)) <= budget
        mid = (low + high + 1) // 2
        if np.minimum(sizes, mid).sum() <= budget:
            low = mid
        else:
            high = mid - 1
    quotas = np.minimum(sizes, low)
    leftover = budget - int(quotas.sum())
    if leftover:
        above = np.flatnonzero(sizes > low)
        order = above[np.lexsort((above, -sizes[above]))]
        quotas[order[:leftover]] += 1
    return quotas


def select(
    x: np.ndarray,
    labels: np.ndarray,
    exemplars: np.ndarray,
    budget: int,
    *,
    within: str,
    finer_levels: list[np.ndarray] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """x: (n, d) descriptors, labels: (n,) cluster id 0..K-1, exemplars: (K,) index per cluster -> (n,) bool selected.

    ``within``: 'closest' (nearest the exemplar first), 'random', 'farthest' (farthest-point sampling from the
    exemplar: spreads picks over the cluster), 'balanced' (water-filling again over the next finer level's clusters,
    ``finer_levels`` fine -> coarse, then random: the balanced sampling of hierarchical k-means).
    """
    if within not in WITHIN:
        raise ValueError(f"select.within must be one of {WITHIN}, got {within!r}")
    rng = np.random.default_rng(seed)
    n = len(labels)
    selected = np.zeros(n, bool)
    if n == 0 or budget <= 0:
        return selected
    sizes = np.bincount(labels, minlength=len(exemplars))
    quotas = water_fill_quotas(sizes, budget)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for k in np.flatnonzero(quotas):
        members = order[starts[k] : starts[k + 1]]
        q = int(quotas[k])
        if q >= len(members):
            picks = members
        elif within == "closest":
            diff = x[members] - x[exemplars[k]]
            picks = members[np.argsort(np.einsum("ij,ij->i", diff, diff), kind="stable")[:q]]
        elif within == "random":
            picks = rng.choice(members, size=q, replace=False)
        elif within == "farthest":
            picks = _farthest_points(x, members, int(exemplars[k]), q)
        else:
            picks = _balanced(members, q, list(finer_levels or []), rng)
        selected[picks] = True
    return selected


def _farthest_points(x: np.ndarray, members: np.ndarray, start: int, q: int) -> np.ndarray:
    """Greedy farthest-point sampling of q members, starting from ``start``."""
    points = x[members]
    first = int(np.flatnonzero(members == start)[0]) if (members == start).any() else 0
    chosen = [first]
    diff = points - points[first]
    dist = np.einsum("ij,ij->i", diff, diff)
    for _ in range(q - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        diff = points - points[nxt]
        np.minimum(dist, np.einsum("ij,ij->i", diff, diff), out=dist)
    return members[np.asarray(chosen)]


def _balanced(members: np.ndarray, q: int, finer: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Water-fill q over the members' clusters at the next finer level, recursively; random at the finest."""
    if not finer:
        return rng.choice(members, size=q, replace=False)
    sub_ids, sub_labels = np.unique(finer[-1][members], return_inverse=True)
    quotas = water_fill_quotas(np.bincount(sub_labels, minlength=len(sub_ids)), q)
    picks = [
        _balanced(members[sub_labels == j], int(quotas[j]), finer[:-1], rng) for j in np.flatnonzero(quotas)
    ]
    return np.concatenate(picks)


def duplicate_mask(keys: list[bytes]) -> np.ndarray:
    """keys: per accepted chip (content hash + descriptor bytes) -> (n,) bool, True for a repeat of an earlier key."""
    seen: set[bytes] = set()
    out = np.zeros(len(keys), bool)
    for i, key in enumerate(keys):
        if key in seen:
            out[i] = True
        else:
            seen.add(key)
    return out


def duplicate_rows(keys: np.ndarray) -> np.ndarray:
    """keys: (n, b) uint8, one row per accepted chip -> (n,) bool, True for a repeat of an earlier row.

    The same answer as ``duplicate_mask`` on the rows' bytes, vectorised (a sort; no per-row Python objects).
    """
    keys = np.ascontiguousarray(keys, np.uint8)
    out = np.ones(len(keys), bool)
    if len(keys):
        out[np.unique(keys, axis=0, return_index=True)[1]] = False
    return out
