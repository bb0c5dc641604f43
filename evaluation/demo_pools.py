"""Equal-budget pretraining pools from one curated archive: the curation experiment's four arms.

- ``curated``: the pipeline's own selection (``training.curate``: affinity propagation, balanced quotas);
- ``random``: the same number of chips drawn uniformly among the accepted ones (the baseline);
- ``kmeans``: hierarchical k-means on the same standardised descriptors with balanced sampling over its levels
  (``training.curate.kmeans`` + ``select(within="balanced")``: the usual alternative, Vo et al. 2024);
- ``whole``: every accepted chip (when the size allows packing it; pretraining steps stay equal, not epochs).

Every pool draws from the same accepted chips (after the pipeline's nodata / low-information / duplicate rejects), so
the pools differ only in how the budget is spent. Each is written as a manifest (``selected`` redrawn) that
``training.pack`` reads like the curated one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from training.curate.descriptors import DESCRIPTOR_NAMES, standardise
from training.curate.kmeans import hierarchical_kmeans
from training.curate.select import select

POOLS = ("curated", "random", "kmeans", "whole")
BUDGET_POOLS = ("curated", "random", "kmeans")
"""The pools of exactly ``budget`` chips (``whole`` is the archive itself)."""


class PoolError(ValueError):
    """A pool cannot be built as asked (too few accepted chips for the budget, an empty pool)."""


def accepted_rows(manifest: pd.DataFrame) -> np.ndarray:
    """Manifest -> (n_accepted,) row positions of the candidates curation accepted (no reject reason)."""
    return np.flatnonzero(manifest["reject_reason"].isna().to_numpy())


def check_budget(n_accepted: int, budget: int, where: str | Path) -> None:
    """An archive with fewer accepted chips than the budget cannot give equal-budget pools: say both numbers."""
    if budget < 1:
        raise PoolError(f"pool budget must be >= 1 chip, got {budget}")
    if n_accepted < budget:
        raise PoolError(f"{where}: {n_accepted} accepted chips, fewer than the pool budget of {budget}: equal-budget "
                        "pools need at least as many (lower select.budget / the size's budget, or add scenes)")


def standardised_descriptors(curate_dir: Path, manifest: pd.DataFrame,
                             weights: dict[str, float] | None) -> np.ndarray:
    """(n_accepted, D) descriptors standardised as curation did, in the order of the accepted manifest rows."""
    table = pd.read_parquet(curate_dir / "descriptors.parquet")
    ids = manifest["chip_id"].to_numpy()[accepted_rows(manifest)]
    if len(table) != len(ids) or not np.array_equal(table["chip_id"].to_numpy(), ids):
        raise PoolError(f"{curate_dir / 'descriptors.parquet'}: chip ids do not match the manifest's accepted rows")
    x, _ = standardise(table[list(DESCRIPTOR_NAMES)].to_numpy(np.float64), weights)
    return x


def curated_selection(manifest: pd.DataFrame, x: np.ndarray, budget: int, within: str, seed: int) -> np.ndarray:
    """The pipeline's selection rule re-applied to its own clusters at another ``budget`` -> (n_accepted,) bool.

    At the pipeline's budget this reproduces the manifest's ``selected`` column (tested), so coverage curves of the
    curated arm cost a quota computation, not a new clustering.
    """
    rows = manifest.iloc[accepted_rows(manifest)]
    labels = rows["cluster"].to_numpy()
    exemplars = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, np.int64)
    flags = rows["is_exemplar"].to_numpy()
    exemplars[labels[flags]] = np.flatnonzero(flags)
    levels = sorted((c for c in rows.columns if c.startswith("cluster_l")), key=lambda c: int(c[len("cluster_l"):]))
    finer = [rows[c].to_numpy() for c in levels][:-1]
    return select(x, labels, exemplars, budget, within=within, finer_levels=finer, seed=seed)


def kmeans_clusters(x: np.ndarray, seed: int):
    """Hierarchical k-means of the standardised descriptors (default levels: sqrt(n), then its sqrt)."""
    return hierarchical_kmeans(x, seed=seed)


def kmeans_selection(x: np.ndarray, clusters, budget: int, seed: int) -> np.ndarray:
    """Balanced sampling over the k-means hierarchy -> (n_accepted,) bool with ``min(budget, n)`` chips."""
    return select(x, clusters.labels, clusters.exemplars, budget, within="balanced",
                  finer_levels=clusters.level_labels[:-1], seed=seed)


def random_selection(n: int, budget: int, seed: int) -> np.ndarray:
    """``budget`` of ``n`` accepted chips, uniformly -> (n,) bool."""
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(seed).choice(n, size=min(budget, n), replace=False)] = True
    return chosen


def build_pools(manifest_path: Path, out_dir: Path, budget: int, seed: int, *, whole: bool = True,
                within: str, weights: dict[str, float] | None = None) -> dict[str, dict]:
    """One manifest per pool under ``out_dir`` -> pool -> {"manifest", "chips", "selected" ((n_accepted,) bool)}.

    ``within`` / ``weights``: curation's ``select.within`` and ``descriptors.weights`` (the curated arm is read
    from the manifest; they are used to re-apply its rule). Errors: fewer accepted chips than ``budget``; a pool
    that ends up empty or off the budget.
    """
    manifest = pd.read_parquet(manifest_path)
    accepted = accepted_rows(manifest)
    check_budget(len(accepted), budget, manifest_path)
    x = standardised_descriptors(manifest_path.parent, manifest, weights)
    selections = {
        "curated": manifest["selected"].to_numpy()[accepted],
        "random": random_selection(len(accepted), budget, seed),
        "kmeans": kmeans_selection(x, kmeans_clusters(x, seed), budget, seed),
    }
    if whole:
        selections["whole"] = np.ones(len(accepted), bool)
    out_dir.mkdir(parents=True, exist_ok=True)
    pools = {}
    for name, chosen in selections.items():
        count = int(chosen.sum())
        if count == 0:
            raise PoolError(f"pool {name!r} of {manifest_path} is empty: no chip selected")
        if name in BUDGET_POOLS and count != budget:
            raise PoolError(f"pool {name!r} has {count} chips, not the budget of {budget} ({manifest_path})")
        table = manifest.copy()
        table["selected"] = False
        table.loc[table.index[accepted[chosen]], "selected"] = True
        path = out_dir / f"manifest_{name}.parquet"
        table.to_parquet(path, index=False)
        pools[name] = {"manifest": path, "chips": count, "selected": chosen}
    (out_dir / "pools.json").write_text(json.dumps(
        {name: {"manifest": str(p["manifest"]), "chips": p["chips"]} for name, p in pools.items()}
        | {"budget": budget, "accepted": len(accepted), "seed": seed}, indent=2))
    return pools


def chip_types(rows: pd.DataFrame) -> np.ndarray:
    """Manifest rows -> (n,) scene type of each chip (from the generator's zone tables; 'unknown' without one)."""
    from training.synthetic import chip_scene_types, zone_table_path

    out = np.full(len(rows), "unknown", dtype=object)
    positions = np.arange(len(rows))
    for source, group in rows.assign(_pos=positions).groupby("source_path", sort=False):
        if not zone_table_path(Path(source)).is_file():
            continue
        windows = list(zip(group["row_off"], group["col_off"], group["height"], group["width"]))
        out[group["_pos"].to_numpy()] = chip_scene_types(Path(source), windows)
    return out.astype(str)


def low_information_of(types: np.ndarray) -> np.ndarray:
    from training.synthetic_arctic import low_information_types

    return np.isin(types, low_information_types())
