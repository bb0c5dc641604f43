"""Selection quality: what curation is for, measured on any selection of an archive's chips.

- ``coverage_mean`` / ``coverage_p95``: mean and 95th percentile of the Euclidean distance in descriptor space from
  every candidate to its nearest selected chip (lower: the selection leaves fewer regions of the archive unseen);
- ``balance_entropy``: entropy of the selection over the archive's scene types divided by ``log`` of the number of
  types in the archive (1: every type equally represented; 0: one type only);
- ``types_covered``: scene types with at least one selected chip;
- ``low_information_share``: share of the selection that is low-information.

Memory is bounded by the block sizes, not by the number of candidates or the size of the selection.
"""

from __future__ import annotations

import math

import numpy as np

QUERY_BLOCK = 8192
"""Candidates per distance block."""
SELECTED_BLOCK = 16384
"""Selected chips per distance block."""


def nearest_selected_distance(descriptors: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """descriptors: (n, D); selected: (n,) bool or (k,) int indices -> (n,) distance to the nearest selected chip."""
    x = np.asarray(descriptors, dtype=np.float64)
    chosen = _indices(selected, len(x))
    if len(chosen) == 0:
        raise ValueError("selection is empty: coverage is undefined")
    norms = np.einsum("ij,ij->i", x, x)
    nearest = np.full(len(x), np.inf)
    for b in range(0, len(chosen), SELECTED_BLOCK):
        block = chosen[b : b + SELECTED_BLOCK]
        s, s_norms = x[block], norms[block]
        for a in range(0, len(x), QUERY_BLOCK):
            sq = norms[a : a + QUERY_BLOCK, None] - 2.0 * x[a : a + QUERY_BLOCK] @ s.T + s_norms[None, :]
            nearest[a : a + QUERY_BLOCK] = np.minimum(nearest[a : a + QUERY_BLOCK], sq.min(axis=1))
    return np.sqrt(np.maximum(nearest, 0.0))


def selection_quality(descriptors: np.ndarray, selected: np.ndarray, scene_types: np.ndarray | None = None,
                      low_information: np.ndarray | None = None) -> dict[str, float]:
    """descriptors: (n, D); selected: (n,) bool or (k,) int; scene_types: (n,) any labels; low_information: (n,) bool.

    Returns ``selected``, ``coverage_mean``, ``coverage_p95`` and, when their inputs are given, ``balance_entropy``,
    ``types_covered`` and ``low_information_share``.
    """
    n = len(descriptors)
    chosen = _indices(selected, n)
    nearest = nearest_selected_distance(descriptors, chosen)
    out: dict[str, float] = {"selected": len(chosen), "coverage_mean": float(nearest.mean()),
                             "coverage_p95": float(np.quantile(nearest, 0.95))}
    if scene_types is not None:
        types = np.asarray(scene_types)
        if len(types) != n:
            raise ValueError(f"scene_types has {len(types)} rows, descriptors {n}")
        _, codes = np.unique(types, return_inverse=True)
        n_types = int(codes.max()) + 1
        counts = np.bincount(codes[chosen], minlength=n_types)
        p = counts[counts > 0] / counts.sum()
        out["balance_entropy"] = float(-(p * np.log(p)).sum() / math.log(n_types)) if n_types > 1 else 1.0
        out["types_covered"] = int((counts > 0).sum())
    if low_information is not None:
        low = np.asarray(low_information, dtype=bool)
        if len(low) != n:
            raise ValueError(f"low_information has {len(low)} rows, descriptors {n}")
        out["low_information_share"] = float(low[chosen].mean())
    return out


def _indices(selected: np.ndarray, n: int) -> np.ndarray:
    selected = np.asarray(selected)
    if selected.dtype == bool:
        if len(selected) != n:
            raise ValueError(f"boolean selection has {len(selected)} rows, descriptors {n}")
        return np.flatnonzero(selected)
    chosen = np.unique(selected.astype(np.int64))
    if len(chosen) and (chosen[0] < 0 or chosen[-1] >= n):
        raise ValueError(f"selection indices must be in [0, {n}), got {chosen[0]}..{chosen[-1]}")
    return chosen
