"""Curation report: ``summary.json`` and PNG figures (cluster sizes, exemplar mosaic, 2-D embedding, selection)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def summary(manifest: pd.DataFrame, extra: dict) -> dict:
    """Counts that reconcile: candidates = selected + unselected + rejected (source-level rejects are candidates)."""
    rejected = manifest["reject_reason"].notna()
    reasons = manifest.loc[rejected, "reject_reason"].str.split(":").str[0].value_counts().to_dict()
    kept = (~rejected).to_numpy()  # masks and single columns only: no copy of the whole manifest
    top = manifest["cluster"][kept] if "cluster" in manifest else pd.Series(dtype=int)
    sizes = top.value_counts()
    selected_sizes = (manifest["cluster"][kept & manifest["selected"].to_numpy()].value_counts() if kept.any()
                      else sizes)
    out = dict(
        candidates=len(manifest),
        selected=int(manifest["selected"].sum()),
        unselected=int((~manifest["selected"] & ~rejected).sum()),
        rejected=int(rejected.sum()),
        rejected_by_reason={str(k): int(v) for k, v in reasons.items()},
        sources=int(manifest["source_path"].nunique()),
        sources_rejected=int((manifest["chip_id"].str.endswith(":source") & rejected).sum()),
        clusters=len(sizes),
        clusters_with_selection=len(selected_sizes),
        cluster_size_max=int(sizes.max()) if len(sizes) else 0,
        cluster_size_median=float(sizes.median()) if len(sizes) else 0.0,
        selected_per_cluster_max=int(selected_sizes.max()) if len(selected_sizes) else 0,
        metadata_issues={
            str(k): int(v)
            for k, v in manifest["metadata_issues"].str.split(";").explode().loc[lambda s: s != ""]
            .str.split(":").str[0].value_counts().items()
        },
        **extra,
    )
    assert out["candidates"] == out["selected"] + out["unselected"] + out["rejected"]
    return out


def write_report(
    out_dir: Path, manifest: pd.DataFrame, descriptors: np.ndarray, info: dict, figures: bool = True,
    mosaic_clusters: int = 8, seed: int = 0,
) -> dict:
    """descriptors: (n_accepted, D) standardised, in the order of the accepted manifest rows -> summary dict."""
    report = out_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    result = summary(manifest, info)
    (report / "summary.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    if figures and len(descriptors):
        import matplotlib

        matplotlib.use("Agg")
        accepted = manifest[manifest["reject_reason"].isna()].reset_index(drop=True)
        _cluster_sizes(report / "cluster_sizes.png", accepted)
        _embedding(report, accepted, descriptors, seed)
        _mosaic(report / "exemplar_mosaic.png", accepted, mosaic_clusters, seed)
    return result


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def _cluster_sizes(path: Path, accepted: pd.DataFrame) -> None:
    import matplotlib.pyplot as plt

    before = accepted["cluster"].value_counts()
    after = accepted.loc[accepted["selected"], "cluster"].value_counts().reindex(before.index, fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 4))
    ranks = np.arange(1, len(before) + 1)
    ax.bar(ranks, before.values, color="0.75", label="all accepted chips")
    ax.bar(ranks, after.values, color="tab:red", label="selected")
    ax.set(xlabel="cluster (by size)", ylabel="chips", yscale="log", title="Cluster sizes before / after selection")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _embedding(report: Path, accepted: pd.DataFrame, descriptors: np.ndarray, seed: int) -> None:
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(descriptors), size=min(len(descriptors), 20000), replace=False))
    xy = PCA(n_components=2, random_state=seed).fit_transform(descriptors[idx]) if descriptors.shape[1] > 1 else None
    if xy is None:
        return
    cluster = accepted["cluster"].to_numpy()[idx]
    selected = accepted["selected"].to_numpy()[idx]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xy[:, 0], xy[:, 1], c=cluster % 20, cmap="tab20", s=4, linewidths=0)
    exemplar = accepted["is_exemplar"].to_numpy()[idx]
    ax.scatter(xy[exemplar, 0], xy[exemplar, 1], marker="x", c="k", s=20, label="exemplars")
    ax.set(title="Descriptors (PCA) coloured by cluster", xlabel="PC 1", ylabel="PC 2")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(report / "embedding_clusters.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xy[:, 0], xy[:, 1], c="0.8", s=4, linewidths=0, label="all accepted")
    ax.scatter(xy[selected, 0], xy[selected, 1], c="tab:red", s=5, linewidths=0, label="selected")
    ax.set(title="Selected vs all chips (PCA of descriptors)", xlabel="PC 1", ylabel="PC 2")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(report / "selected_vs_all.png", dpi=110)
    plt.close(fig)


def read_chip_rgb(row: pd.Series, size: int = 96) -> np.ndarray:
    """One manifest row -> (size, size, 3) float in [0, 1]: windowed read, red/green/blue by band name, 2-98 % stretch.

    False-colour sources without blue (e.g. nir,green,red) show as they are stored.
    """
    import warnings

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    bands = row["bands"].split(",")
    wanted = ["red", "green", "blue"]
    order = [bands.index(b) + 1 for b in wanted] if all(b in bands for b in wanted) else [1, 2, 3][: len(bands)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(row["source_path"])
    with src:
        data = src.read(
            order, window=Window(int(row["col_off"]), int(row["row_off"]), int(row["width"]), int(row["height"])),
            out_shape=(len(order), size, size), resampling=Resampling.average,
        ).astype(np.float32)
    if len(order) < 3:
        data = np.repeat(data[:1], 3, axis=0)
    valid = data[:, data.any(axis=0)] if data.any() else data.reshape(3, -1)
    lo, hi = np.percentile(valid, 2), np.percentile(valid, 98)
    return np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


def _mosaic(path: Path, accepted: pd.DataFrame, n_clusters: int, seed: int, members: int = 5) -> None:
    """Rows = the largest clusters; first column its exemplar, then random members."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    largest = accepted["cluster"].value_counts().index[:n_clusters]
    fig, axes = plt.subplots(len(largest), members + 1, figsize=(1.6 * (members + 1), 1.6 * len(largest)),
                             squeeze=False)
    for r, cluster in enumerate(largest):
        group = accepted[accepted["cluster"] == cluster]
        exemplar = group[group["is_exemplar"]]
        others = group[~group["is_exemplar"]]
        pick = others.iloc[np.sort(rng.choice(len(others), size=min(members, len(others)), replace=False))]
        shown = pd.concat([exemplar.head(1), pick])
        for c in range(members + 1):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(shown):
                try:
                    ax.imshow(read_chip_rgb(shown.iloc[c]))
                except Exception as err:  # a figure must not fail the run; say what happened in the panel
                    ax.text(0.5, 0.5, type(err).__name__, ha="center", va="center", fontsize=6)
        axes[r, 0].set_title(f"cluster {cluster} (n={len(group)})", fontsize=7, loc="left")
    fig.suptitle("Exemplar (left) and members of the largest clusters", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


BENCHMARK_BLOCK = "curation-benchmark"


def _fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def benchmark_table(report: dict) -> str:
    """``benchmarks/bench_curation.py`` JSON -> the Markdown tables of the README (clustering, selection, reads)."""
    regime = report["data_regime"]
    lines = [
        f"Generated by `benchmarks/bench_curation.py` ({regime['mode']} mode, {regime['cpu_count']} CPUs; "
        f"skipped: {', '.join(regime['skipped']) or 'none'}). quality = net similarity of sklearn AP / of the "
        "method (both negative; 1 = as good, > 1 better); target: ours ≥ "
        f"{regime['targets']['quality_vs_sklearn']} and ≥ k-means.",
        "",
        "| case | n | sklearn K / iters / converged | sklearn s / GB | ours quality | ours ARI | ours K ratio "
        "| ours s / GB | k-means quality | h. k-means quality | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["compare"]:
        m = row["methods"]
        sk, ours = m["sklearn"], m["ours"]
        met = "met" if all(v is not False for v in row["checks"].values()) else "**MISSED**"
        if not row["sklearn_converged"]:
            met += " (sklearn not converged)"
        lines.append(
            f"| {row['case']} | {row['n']} | {sk['clusters']} / {sk.get('n_iter')} / "
            f"{'yes' if row['sklearn_converged'] else 'no'} | {_fmt(sk['seconds'], '.1f')} / "
            f"{_fmt(sk['peak_rss_growth_gb'], '.2f')} | {_fmt(ours.get('quality'), '.4f')} | "
            f"{_fmt(ours.get('ari_vs_sklearn'), '.2f')} | {_fmt(ours.get('cluster_ratio'), '.2f')} | "
            f"{_fmt(ours['seconds'], '.1f')} / {_fmt(ours['peak_rss_growth_gb'], '.2f')} | "
            f"{_fmt(m['kmeans'].get('quality'), '.4f')} | {_fmt(m['hkmeans'].get('quality'), '.4f')} | {met} |"
        )
    for sel in (report.get("selection"), report.get("selection_large")):
        if not sel:
            continue
        lines += [
            "",
            f"Selection on a skewed archive ({sel['n']} chips, {sel['types']} scene types, 90 % in 4 near-duplicate "
            f"types, {sel['low_information_chips']} low-information chips), budget {sel['budget']}"
            f"{', within: ' + sel['curated']['within'] if 'within' in sel['curated'] else ''}:",
            "",
            "| selection | coverage mean | coverage p95 | balance (entropy / log types) | types covered "
            "| low-information share |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("curated", "random", "kmeans"):
            s = sel[name]
            lines.append(f"| {name} | {s['coverage_mean']:.3f} | {s['coverage_p95']:.3f} | "
                         f"{s['balance_entropy']:.3f} | {s['types_covered']} | {s['low_information_share']:.3f} |")
    desc = report.get("descriptors")
    if desc:
        lines += ["", f"Descriptor extraction (default config, {desc['scenes']} scenes of {desc['size']}², "
                      f"{desc['chips']} chips, alternating arms): {desc['ours_chips_per_s']:.0f} chips/s vs bare "
                      f"windowed reads {desc['bare_chips_per_s']:.0f} chips/s = **{desc['descriptor_read_ratio']:.2f}**"
                      " (target ≥ 0.8)."]
    e2e = report.get("end_to_end")
    if e2e and "error" in e2e:
        lines += ["", f"End to end: **failed** ({e2e['error'].splitlines()[0]})."]
    elif e2e:
        lines += [
            "",
            f"End to end (clustering + selection + manifest, `pipeline.curate_candidates` on a Dask LocalCluster; "
            f"data: {e2e['regime']}; budget 10 %):",
            "",
            "| rows | seconds | clusters | client peak RSS GB (before data) | worker peak RSS GB (all workers) "
            "| manifest row groups |",
            "|---|---|---|---|---|---|",
        ]
        for r in e2e["runs"]:
            lines.append(f"| {r['n']:,} | {r['seconds']:.0f} | {r['clusters']:,} | {r['client_peak_gb']:.2f} "
                         f"({r['client_base_gb']:.2f}) | {r['worker_peak_gb']:.2f} ({r['workers_peak_gb']:.2f}) | "
                         f"{r['manifest_row_groups']} |")
        t = e2e["targets"]
        lines += ["", f"Client peak grows {e2e['client_marginal_bytes_per_row']:.0f} bytes per extra row (target ≤ "
                      f"{t['client_bytes_per_row']}: descriptor arrays and the columnar manifest, no per-row Python "
                      f"objects); largest worker process peak ratio {e2e['worker_peak_ratio']:.2f} for "
                      f"{e2e['size_ratio']:.0f}× the rows (target ≤ {t['worker_peak_ratio']}: bounded by the task "
                      "sizes, not by n)."]
    load = (regime.get("load_average_start"), regime.get("load_average_end"))
    if all(load):
        lines += ["", f"Machine load (1/5/15-min averages) at the start {', '.join(f'{v:.1f}' for v in load[0])}, "
                      f"at the end {', '.join(f'{v:.1f}' for v in load[1])}."]
    failed = report.get("failed") or []
    lines += ["", "Targets missed: " + ("; ".join(failed) if failed else "none") + "."]
    return "\n".join(lines)


def render_benchmark_readme(readme: str, report: dict) -> str:
    """Replace the ``curation-benchmark`` block of the curation README with ``benchmark_table(report)``."""
    from arctic_vit.card import replace_block

    return replace_block(readme, BENCHMARK_BLOCK, benchmark_table(report))
