"""Tables, plots and the model-card JSON of a backbone x seed grid (reads the runs' own files, nothing else).

Writes into the comparison folder:
- ``results.csv``: one row per run (backbone, weights, seed, split, normalisation, lr, scores, seconds);
- ``results.md``: per backbone the headline metric (foreground mean F1 for semantic recipes, object F1 at IoU >= 0.5
  for instance recipes) as mean ± std over seeds with a 95 % interval, the other metrics (instance recipes: each
  with its interval), and each backbone minus the reference with its interval. Intervals: hierarchical bootstrap
  over seeds x chips, chips resampled by scene/group where the card knows them, paired across backbones, over the
  class set fixed from the ground truth of the whole split (``evaluation.metrics.hierarchical_bootstrap``);
- ``results.png``: bar chart of the headline metric (mean over seeds, bootstrap interval);
- ``panels.png``: qualitative evaluation tiles (image, ground truth, prediction per backbone);
- ``model_card.json``: ``{"results": [{"task", "dataset", "metric", "metric_name", "value", "std", "value_ci95",
  "n_seeds", "backbone", "weights", "normalization", "lr", "diff_vs_reference", "ci95" (of the difference)}],
  "reference", "recipe", "eval_split", ...}``; its ``results`` rows are what
  ``arctic_vit.card.render_model_card(config, results)`` reads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from evaluation.metrics import counts_statistic, hierarchical_bootstrap, map50_statistic, scored_classes

matplotlib.use("Agg")
import matplotlib.pyplot as plt

METRICS = {  # key in metrics.json scores -> (card metric type, name, per_image.npz array or "matches")
    "foreground_mean_f1": ("foreground_f1", "foreground mean F1", "pixel_counts"),
    "instance_f1": ("object_f1", "object F1 (IoU >= 0.5, objects merged across tiles)", "object_counts"),
    "map50": ("map50", "mAP50", "matches"),
    "detection_f1": ("detection_f1", "detection F1 (object found)", "detection_counts"),
    "delineation_f1": ("delineation_f1", "delineation F1 (pixel F1 inside found objects)", "delineation_counts"),
}
HEADLINE = {"semantic": "foreground_mean_f1", "instance": "instance_f1"}
WITH_CI = {"semantic": ("foreground_mean_f1",),
           "instance": ("instance_f1", "map50", "detection_f1", "delineation_f1", "foreground_mean_f1")}
OTHER_METRICS = ("foreground_mean_iou", "instance_f1", "map50", "detection_f1", "delineation_f1")


def _fmt(values: Sequence[float | None]) -> str:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "–"
    return f"{np.mean(finite):.3f} ± {np.std(finite, ddof=1) if len(finite) > 1 else 0.0:.3f}"


def load_per_image(run_dirs: dict[str, list[Path]]) -> tuple[dict[str, list[dict]], list[str]]:
    """backbone -> per-seed per_image.npz contents, and the chips' groups; checks every run scored the same chips."""
    from evaluation.finetune import load_matches

    data, reference_ids, groups = {}, None, []
    for backbone, dirs in run_dirs.items():
        for d in dirs:
            loaded = dict(np.load(d / "per_image.npz"))
            ids = loaded["ids"].tolist()
            if reference_ids is None:
                reference_ids, groups = ids, loaded["groups"].tolist()
            elif ids != reference_ids:
                raise ValueError(f"{d}: evaluated other chips than the first run; runs cannot be paired")
            if "match_image" in loaded:
                loaded["matches"] = load_matches(loaded)
            data.setdefault(backbone, []).append(loaded)
    return data, groups


def bootstrap_metrics(per_image: dict[str, list[dict]], groups: list[str], task: str, reference: str | None,
                      n_boot: int) -> dict[str, dict[str, dict]]:
    """metric -> backbone -> hierarchical bootstrap row (value, ci, diff) for every metric of ``task`` with a CI."""
    first = next(iter(per_image.values()))[0]
    out = {}
    for metric in WITH_CI[task]:
        source = METRICS[metric][2]
        fixed = scored_classes((first["object_counts"] if source == "matches" else first[source]).sum(0))
        statistic = map50_statistic(fixed) if source == "matches" else counts_statistic(fixed)
        runs = {b: [item[source] for item in items] for b, items in per_image.items()}
        out[metric] = hierarchical_bootstrap(runs, statistic, groups, reference, n_boot=n_boot)
    return out


def write_report(runs: dict[str, list[dict]], run_dirs: dict[str, list[Path]], out_dir: Path, reference: str,
                 n_boot: int = 1000, chosen_lr: dict[str, dict] | None = None) -> dict:
    """runs: backbone -> metrics dicts (one per seed); run_dirs alike -> the report files; returns the card JSON.

    ``chosen_lr``: backbone -> {"lr", "sweep": {lr: tune-split score}} when compare swept the lr.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    first = next(iter(runs.values()))[0]
    task = first["task"]
    headline = HEADLINE[task]
    chosen_lr = chosen_lr or {}
    _write_csv(runs, out_dir / "results.csv")
    per_image, groups = load_per_image(run_dirs)
    boot = bootstrap_metrics(per_image, groups, task, reference if reference in runs else None, n_boot)
    rows = []
    for backbone, metrics in runs.items():
        values = [m["scores"].get(headline) for m in metrics]
        finite = [v for v in values if v is not None]
        b = boot[headline][backbone]
        diff = b.get("diff", 0.0 if backbone == reference else None)
        rows.append({
            "task": f"{task} segmentation", "dataset": first["dataset"], "metric": METRICS[headline][0],
            "metric_name": METRICS[headline][1], "value": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0, "n_seeds": len(metrics),
            "value_ci95": [b["ci_low"], b["ci_high"]], "backbone": backbone,
            "weights": metrics[0]["backbone"]["weights"], "normalization": metrics[0]["backbone"]["normalization"],
            "lr": metrics[0]["protocol"]["lr"], "lr_sweep": chosen_lr.get(backbone, {}).get("sweep"),
            "tune_split": metrics[0]["protocol"].get("tune_split"),
            "layer_decay": metrics[0]["protocol"]["layer_decay"],
            "diff_vs_reference": diff,
            "ci95": [b["diff_ci_low"], b["diff_ci_high"]] if "diff_ci_low" in b else None,
            "intervals": {m: {k: v for k, v in boot[m][backbone].items()} for m in boot},
        } | {name: _mean([m["scores"].get(name) for m in metrics]) for name in ("foreground_mean_f1", *OTHER_METRICS)})
    card = {"recipe": first["recipe"], "task": task, "dataset": first["dataset"], "reference": reference,
            "headline_metric": headline, "eval_split": first["eval_split"], "eval_note": first.get("eval_note"),
            "splits": first.get("splits"), "n_eval_images": first["n_eval"], "n_eval_groups": len(set(groups)),
            "bootstrap_resamples": n_boot,
            "bootstrap": "hierarchical: seeds x chips (chips grouped by scene where known), paired across backbones",
            "results": [r for r in rows if r["value"] is not None],
            "undefined": [r["backbone"] for r in rows if r["value"] is None]}  # every seed's score undefined
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2))
    (out_dir / "results.md").write_text(_markdown(runs, rows, reference, first, boot, len(set(groups))))
    _bar_chart(rows, out_dir / "results.png", first)
    _panels(run_dirs, out_dir / "panels.png", len(first["classes"]))
    return card


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def _write_csv(runs: dict[str, list[dict]], path: Path) -> None:
    fields = ["recipe", "dataset", "task", "backbone", "weights", "seed", "eval_split", "normalization", "lr",
              "layer_decay", "foreground_mean_f1", *OTHER_METRICS, "n_train", "n_eval", "seconds"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for backbone, metrics in runs.items():
            for m in metrics:
                writer.writerow({
                    "recipe": m["recipe"], "dataset": m["dataset"], "task": m["task"], "backbone": backbone,
                    "weights": m["backbone"]["weights"], "seed": m["seed"], "eval_split": m["eval_split"],
                    "normalization": m["backbone"]["normalization"], "lr": m["protocol"]["lr"],
                    "layer_decay": m["protocol"]["layer_decay"], "n_train": m["n_train"], "n_eval": m["n_eval"],
                    "seconds": m["seconds"],
                    **{k: m["scores"].get(k) for k in ("foreground_mean_f1", *OTHER_METRICS)},
                })


def _ci(row: dict | None) -> str:
    if not row or row.get("ci_low") is None:
        return ""
    return f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _markdown(runs: dict[str, list[dict]], rows: list[dict], reference: str, first: dict,
              boot: dict[str, dict[str, dict]], n_groups: int) -> str:
    task = first["task"]
    headline = HEADLINE[task]
    shown = [headline] + [m for m in WITH_CI[task] if m != headline] + (["foreground_mean_iou"]
                                                                          if task == "semantic" else [])
    names = {"foreground_mean_f1": "fg mean F1", "foreground_mean_iou": "fg mean IoU", "instance_f1": "object F1",
             "map50": "mAP50", "detection_f1": "detection F1", "delineation_f1": "delineation F1"}
    head = "| backbone | weights | normalisation | lr | seeds | " + " | ".join(
        f"{names[m]}{' [95 % CI]' if m in boot else ''}" for m in shown) + f" | Δ {names[headline]} vs {reference} " \
        "[95 % CI] |"
    lines = [f"# {first['recipe']}: {first['dataset']} ({task}), {first['eval_split']} split, {first['n_eval']} "
             f"chips in {n_groups} group(s)", "", f"Split: {first.get('splits')}; {first.get('eval_note')}.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        metrics = runs[row["backbone"]]
        lr = f"{row['lr']:g}" + (" (swept)" if row.get("lr_sweep") else "")
        cells = [row["backbone"], row["weights"], row["normalization"], lr, str(row["n_seeds"])]
        cells += [_fmt([m["scores"].get(name) for m in metrics]) + _ci(boot.get(name, {}).get(row["backbone"]))
                  for name in shown]
        if row["backbone"] == reference:
            cells.append("reference")
        elif row["ci95"] and row["ci95"][0] is not None:
            cells.append(f"{row['diff_vs_reference']:+.3f} [{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]")
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({w for ms in runs.values() for m in ms for w in m["scores"].get("warnings", [])})
    absent = {k: v for ms in runs.values() for m in ms for k, v in m["scores"].get("predicted_but_absent", {}).items()}
    rejects = {r["item"]: r["reason"] for ms in runs.values() for m in ms for r in m.get("rejects", [])}
    sweeps = [f"{r['backbone']}: " + ", ".join(f"{lr} -> {v:.3f}" if v is not None else f"{lr} -> –"
                                                for lr, v in r["lr_sweep"].items())
              for r in rows if r.get("lr_sweep")]
    lines += ["", "Mean ± std over seeds; [95 % CI]: hierarchical bootstrap over seeds x chips (chips resampled by "
              "group, the same draw for every backbone), over the class set fixed from the split's ground truth."]
    lines += [f"- lr sweep ({names[headline]} on the tune split, first seed): {s}" for s in sweeps]
    lines += [f"- note: {n}" for n in notes]
    if absent:
        lines.append(f"- predicted but absent from the ground truth (not scored): {absent}")
    undefined = {m: {b: r["undefined"] for b, r in rs.items() if r["undefined"]} for m, rs in boot.items()}
    lines += [f"- {names[m]}: resamples without ground truth of a scored class, left out: {u}"
              for m, u in undefined.items() if u]
    if rejects:
        lines.append(f"- {len(rejects)} training-data item(s) rejected by the loader, e.g. "
                     + "; ".join(f"{k}: {v}" for k, v in list(rejects.items())[:3]))
    return "\n".join(lines) + "\n"


def _bar_chart(rows: list[dict], path: Path, first: dict) -> None:
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    names = [r["backbone"] for r in rows]
    values = [r["value"] if r["value"] is not None else 0.0 for r in rows]
    low = [v - (r["value_ci95"][0] if r["value_ci95"][0] is not None else v) for v, r in zip(values, rows)]
    high = [(r["value_ci95"][1] if r["value_ci95"][1] is not None else v) - v for v, r in zip(values, rows)]
    ax.bar(range(len(rows)), values, yerr=[np.maximum(low, 0), np.maximum(high, 0)], capsize=4, color="#4c78a8")
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(rows[0]["metric_name"] if rows else "")
    ax.set_ylim(0, 1)
    ax.set_title(f"{first['dataset']} ({first['task']}, {first['eval_split']}), mean over seeds, 95 % bootstrap CI",
                 fontsize=9)
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
