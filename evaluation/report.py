"""Tables, plots and the model-card JSON of a backbone x seed grid (reads the runs' own files, nothing else).

Writes into the comparison folder:
- ``results.csv``: one row per run (backbone, weights, seed, normalisation, scores, seconds);
- ``results.md``: mean ± std over seeds per backbone, and each backbone minus the reference with a paired bootstrap
  95 % CI (images resampled jointly across backbones and seeds);
- ``results.png``: bar chart of foreground mean F1 (mean ± std over seeds);
- ``panels.png``: qualitative evaluation tiles (image, ground truth, prediction per backbone);
- ``model_card.json``: ``{"results": [{"task", "dataset", "metric", "metric_name", "value", "std", "n_seeds",
  "backbone", "weights", "normalization", "diff_vs_reference", "ci95"}], "reference", "recipe", ...}``; its
  ``results`` rows are what ``arctic_vit.card.render_model_card(config, results)`` reads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from evaluation.metrics import paired_bootstrap

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METRIC = "foreground_mean_f1"
OTHER_METRICS = ("foreground_mean_iou", "instance_f1", "map50")


def _fmt(values: Sequence[float | None]) -> str:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "–"
    return f"{np.mean(finite):.3f} ± {np.std(finite, ddof=1) if len(finite) > 1 else 0.0:.3f}"


def load_counts(run_dirs: dict[str, list[Path]]) -> dict[str, list[np.ndarray]]:
    """backbone -> per-seed (n_images, K, 3) pixel counts; checks every run scored the same images in order."""
    counts, reference_ids = {}, None
    for backbone, dirs in run_dirs.items():
        for d in dirs:
            data = np.load(d / "per_image.npz")
            ids = data["ids"].tolist()
            if reference_ids is None:
                reference_ids = ids
            elif ids != reference_ids:
                raise ValueError(f"{d}: evaluated other images than the first run; runs cannot be paired")
            counts.setdefault(backbone, []).append(data["pixel_counts"])
    return counts


def write_report(runs: dict[str, list[dict]], run_dirs: dict[str, list[Path]], out_dir: Path, reference: str,
                 n_boot: int = 1000) -> dict:
    """runs: backbone -> metrics dicts (one per seed); run_dirs alike -> the report files; returns the card JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    first = next(iter(runs.values()))[0]
    _write_csv(runs, out_dir / "results.csv")
    bootstrap = paired_bootstrap(load_counts(run_dirs), reference, n_boot=n_boot) if reference in runs else {}
    rows = []
    for backbone, metrics in runs.items():
        values = [m["scores"].get(METRIC) for m in metrics]
        finite = [v for v in values if v is not None]
        ci = bootstrap.get(backbone)
        rows.append({
            "task": f"{first['task']} segmentation", "dataset": first["dataset"], "metric": "foreground_f1",
            "metric_name": "foreground mean F1", "value": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0, "n_seeds": len(metrics),
            "backbone": backbone, "weights": metrics[0]["backbone"]["weights"],
            "normalization": metrics[0]["backbone"]["normalization"],
            "diff_vs_reference": ci["diff"] if ci else (0.0 if backbone == reference else None),
            "ci95": [ci["ci_low"], ci["ci_high"]] if ci else None,
        } | {name: _mean([m["scores"].get(name) for m in metrics]) for name in OTHER_METRICS})
    card = {"recipe": first["recipe"], "task": first["task"], "dataset": first["dataset"], "reference": reference,
            "eval_split": first["eval_split"], "n_eval_images": first["n_eval"], "bootstrap_resamples": n_boot,
            "results": [r for r in rows if r["value"] is not None],
            "undefined": [r["backbone"] for r in rows if r["value"] is None]}  # every seed's score undefined
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2))
    (out_dir / "results.md").write_text(_markdown(runs, rows, reference, first))
    _bar_chart(rows, out_dir / "results.png", first)
    _panels(run_dirs, out_dir / "panels.png", len(first["classes"]))
    return card


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _write_csv(runs: dict[str, list[dict]], path: Path) -> None:
    fields = ["recipe", "dataset", "task", "backbone", "weights", "seed", "normalization", METRIC, *OTHER_METRICS,
              "n_train", "n_eval", "seconds"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for backbone, metrics in runs.items():
            for m in metrics:
                writer.writerow({
                    "recipe": m["recipe"], "dataset": m["dataset"], "task": m["task"], "backbone": backbone,
                    "weights": m["backbone"]["weights"], "seed": m["seed"],
                    "normalization": m["backbone"]["normalization"], "n_train": m["n_train"], "n_eval": m["n_eval"],
                    "seconds": m["seconds"], **{k: m["scores"].get(k) for k in (METRIC, *OTHER_METRICS)},
                })


def _markdown(runs: dict[str, list[dict]], rows: list[dict], reference: str, first: dict) -> str:
    instance = first["task"] == "instance"
    head = "| backbone | weights | normalisation | seeds | fg mean F1 | fg mean IoU |"
    head += " instance F1 | mAP50 |" if instance else ""
    head += f" Δ F1 vs {reference} [95 % CI] |"
    lines = [f"# {first['recipe']}: {first['dataset']} ({first['task']}), {first['eval_split']} split, "
             f"{first['n_eval']} images", "", head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        metrics = runs[row["backbone"]]
        cells = [row["backbone"], row["weights"], row["normalization"], str(row["n_seeds"]),
                 _fmt([m["scores"].get(METRIC) for m in metrics]),
                 _fmt([m["scores"].get("foreground_mean_iou") for m in metrics])]
        if instance:
            cells += [_fmt([m["scores"].get("instance_f1") for m in metrics]),
                      _fmt([m["scores"].get("map50") for m in metrics])]
        if row["backbone"] == reference:
            cells.append("reference")
        elif row["ci95"]:
            cells.append(f"{row['diff_vs_reference']:+.3f} [{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]")
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({w for ms in runs.values() for m in ms for w in m["scores"].get("warnings", [])})
    rejects = {r["item"]: r["reason"] for ms in runs.values() for m in ms for r in m.get("rejects", [])}
    lines += ["", "Mean ± std over seeds. CI: paired bootstrap over evaluation images (same resampled images for "
              "every backbone and seed; a backbone's score is its mean over seeds)."]
    lines += [f"- note: {n}" for n in notes]
    if rejects:
        lines.append(f"- {len(rejects)} training-data item(s) rejected by the loader, e.g. "
                     + "; ".join(f"{k}: {v}" for k, v in list(rejects.items())[:3]))
    return "\n".join(lines) + "\n"


def _bar_chart(rows: list[dict], path: Path, first: dict) -> None:
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    names = [r["backbone"] for r in rows]
    values = [r["value"] if r["value"] is not None else 0.0 for r in rows]
    ax.bar(range(len(rows)), values, yerr=[r["std"] for r in rows], capsize=4, color="#4c78a8")
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("foreground mean F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"{first['dataset']} ({first['task']}), mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _display(image: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """(C, H, W) DN -> (H, W, 3) in [0, 1]: red, green, blue if present, else the first 3 bands; 2-98 % stretch."""
    bands = list(bands)
    if all(b in bands for b in ("red", "green", "blue")):
        rgb = image[[bands.index(b) for b in ("red", "green", "blue")]]
    else:
        rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    rgb = np.moveaxis(rgb.astype(np.float64), 0, -1)
    low, high = np.percentile(rgb, [2, 98])
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)


def _panels(run_dirs: dict[str, list[Path]], path: Path, num_classes: int) -> None:
    previews = {b: np.load(dirs[0] / "predictions.npz") for b, dirs in run_dirs.items()
                if (dirs[0] / "predictions.npz").is_file()}
    if not previews:
        return
    first = next(iter(previews.values()))
    n = len(first["images"])
    fig, axes = plt.subplots(n, 2 + len(previews), figsize=(2.0 * (2 + len(previews)), 2.0 * n), squeeze=False)
    k = num_classes - 1
    for i in range(n):
        mask = np.where(first["masks"][i] == 255, np.nan, first["masks"][i])
        axes[i, 0].imshow(_display(first["images"][i], first["card_bands"].tolist()))
        axes[i, 1].imshow(mask, vmin=0, vmax=k, cmap="viridis", interpolation="nearest")
        for j, (backbone, data) in enumerate(previews.items()):
            axes[i, 2 + j].imshow(data["preds"][i], vmin=0, vmax=k, cmap="viridis", interpolation="nearest")
            if i == 0:
                axes[0, 2 + j].set_title(backbone, fontsize=7)
    axes[0, 0].set_title("image (RGB or first 3 bands)", fontsize=7)
    axes[0, 1].set_title("ground truth", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
