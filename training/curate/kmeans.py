"""Hierarchical k-means (the idea of Vo et al. 2024, "Automatic data curation for self-supervised learning"; own code).

Level 1 clusters the points, each next level clusters the previous level's centroids, so the levels nest. With
``select.within=balanced`` the budget is water-filled over the top clusters, then over their children, down to the
finest level — the balanced sampling that flattens the archive's long tail. (The paper's resampling refinement of
each level is not implemented.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans


@dataclass
class HierarchicalKMeansResult:
    labels: np.ndarray  # (n,) top-level cluster id
    exemplars: np.ndarray  # (K,) the point nearest each top-level centroid
    level_labels: list[np.ndarray] = field(default_factory=list)  # fine -> coarse, nested
    levels: list[dict] = field(default_factory=list)


def default_levels(n: int) -> list[int]:
    """Cluster counts fine -> coarse: about sqrt(n), then its square root (at least 2 each, at most n)."""
    fine = max(2, min(n, round(math.sqrt(n))))
    coarse = max(2, min(fine, round(math.sqrt(fine))))
    return [fine, coarse] if coarse < fine else [fine]


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(x))
    if len(x) > 50_000:
        model = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=3)
    else:
        model = KMeans(n_clusters=k, random_state=seed, n_init=1)
    labels = model.fit_predict(x)
    return labels.astype(np.int64), model.cluster_centers_.astype(np.float32)


def hierarchical_kmeans(x: np.ndarray, levels: list[int] | None = None, seed: int = 0) -> HierarchicalKMeansResult:
    """x: (n, d) -> HierarchicalKMeansResult; ``levels``: cluster counts fine -> coarse (default: sqrt rule)."""
    import time

    x = np.ascontiguousarray(x, np.float32)
    if len(x) == 0:
        return HierarchicalKMeansResult(np.zeros(0, np.int64), np.zeros(0, np.int64))
    levels = list(levels or default_levels(len(x)))
    level_labels, info = [], []
    points, point_labels = x, None
    for depth, k in enumerate(levels):
        t0 = time.perf_counter()
        labels, centres = _kmeans(points, k, seed + depth)
        point_labels = labels if point_labels is None else labels[point_labels]
        level_labels.append(np.unique(point_labels, return_inverse=True)[1])
        info.append(dict(level=depth, items=len(points), clusters=len(np.unique(labels)),
                         seconds=time.perf_counter() - t0))
        points = centres
    top = level_labels[-1]
    n_top = int(top.max()) + 1
    # exemplar of a top cluster: its member nearest the member mean
    sums = np.zeros((n_top, x.shape[1]))
    np.add.at(sums, top, x)
    means = (sums / np.bincount(top, minlength=n_top)[:, None]).astype(np.float32)
    diff = x - means[top]
    dist = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((dist, top))
    exemplars = order[np.searchsorted(top[order], np.arange(n_top))]
    return HierarchicalKMeansResult(top, exemplars, level_labels, info)
