"""Selection diagnostics of the demo's pools: quality metrics, coverage curves and a mosaic per pool.

The metrics are the curation stage's (``training.curate.quality.selection_quality``: coverage of the archive's
descriptor space, balance over scene types, share of low-information chips); this module only applies them to each
pool and draws the figures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COVERAGE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
"""Budget fractions of the accepted chips at which the coverage curves are measured."""


def pool_quality(x: np.ndarray, selections: dict[str, np.ndarray], scene_types: np.ndarray,
                 low_information: np.ndarray) -> dict[str, dict]:
    """x: (n, D) standardised descriptors of the accepted chips; selections: pool -> (n,) bool -> pool -> metrics."""
    from training.curate.quality import selection_quality

    return {name: {k: _plain(v) for k, v in selection_quality(x, chosen, scene_types, low_information).items()}
            for name, chosen in selections.items()}


def archive_quality(x: np.ndarray, scene_types: np.ndarray, low_information: np.ndarray) -> dict:
    """The archive's own balance and low-information share (every accepted chip 'selected'): the pools' baseline."""
    return pool_quality(x, {"archive": np.ones(len(x), bool)}, scene_types, low_information)["archive"]


def coverage_curves(x: np.ndarray, selectors: dict[str, Callable[[int], np.ndarray]], scene_types: np.ndarray,
                    low_information: np.ndarray, fractions: Sequence[float] = COVERAGE_FRACTIONS,
                    log: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """selectors: pool -> (budget -> (n,) bool) -> pool -> [{"fraction", "budget", "coverage_mean", ...}, ...]."""
    from training.curate.quality import selection_quality

    curves: dict[str, list[dict]] = {}
    for i, fraction in enumerate(fractions):
        budget = max(1, round(fraction * len(x)))
        t0 = time.perf_counter()
        for name, selector in selectors.items():
            quality = selection_quality(x, selector(budget), scene_types, low_information)
            curves.setdefault(name, []).append({"fraction": float(fraction), "budget": budget}
                                                | {k: _plain(v) for k, v in quality.items()})
        log(f"coverage curve {i + 1}/{len(fractions)}: budget {budget} ({fraction:.0%}) in "
            f"{time.perf_counter() - t0:.1f} s")
    return curves


def plot_coverage_curves(curves: dict[str, list[dict]], path: Path, metric: str = "coverage_mean") -> Path:
    """Coverage (mean distance from an archive chip to its nearest selected chip; lower is better) vs budget."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in curves.items():
        ax.plot([p["fraction"] for p in points], [p[metric] for p in points], marker="o", label=name)
    ax.set(xlabel="budget (fraction of accepted chips)", ylabel=metric.replace("_", " "),
           title="Coverage of the archive's descriptor space (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pool_mosaic(rows: pd.DataFrame, path: Path, title: str, scene_types: Sequence[str] | None = None,
                n: int = 24, columns: int = 8, seed: int = 0) -> Path:
    """A grid of ``n`` chips drawn at random from a pool's manifest rows (titled by scene type when known)."""
    from training.curate.report import read_chip_rgb

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    n_rows = max(1, -(-len(pick) // columns))
    fig, axes = plt.subplots(n_rows, columns, figsize=(1.3 * columns, 1.4 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, i in zip(axes.ravel(), pick):
        try:
            ax.imshow(read_chip_rgb(rows.iloc[i], size=64))
        except Exception as err:  # a figure must not fail the run; say what happened in the panel
            ax.text(0.5, 0.5, type(err).__name__, ha="center", va="center", fontsize=6)
        if scene_types is not None:
            ax.set_title(str(scene_types[i]), fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value, indent=2, default=_plain))
    return path


def _plain(value):
    """numpy scalars / arrays -> JSON-ready Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
