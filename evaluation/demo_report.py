"""REPORT.md of the curation experiment (``evaluation.demo``): every table and figure generated from the run's facts.

Sections: archive profile, curation, pools and selection diagnostics, MAE pretraining, export and reload, probes,
finetuning, the mapped scene, the result in plain words (whichever way it falls), model card, folder layout.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

POOL_ORDER = ("curated", "random", "kmeans", "whole", "random_init", "random_init_null")
QUALITY_COLUMNS = ("coverage_mean", "coverage_p95", "balance_entropy", "types_covered", "low_information_share")
QUALITY_NOTES = {
    "coverage_mean": "mean distance from an accepted chip to its nearest pool chip in the standardised descriptor "
                     "space (lower: the pool covers the archive better)",
    "coverage_p95": "95th percentile of that distance (the worst-covered chips)",
    "balance_entropy": "normalised entropy of the pool's scene-type shares (1: every type equally often)",
    "types_covered": "scene types with at least one chip in the pool",
    "low_information_share": "share of the pool's chips whose scene type is low-information or near-duplicate",
}
SECTIONS = ("## 1. Archive", "## 2. Curation", "## 3. Pools and selection diagnostics", "## 4. MAE pretraining",
            "## 5. Export and reload", "## 6. Frozen-encoder probes", "## 7. Finetuning", "## 8. Mapped scene",
            "## 9. Result", "## 10. Model card", "## Folder layout")


def _num(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return format(float(value), spec)


def _interval(low: Any, high: Any, spec: str = ".3f") -> str:
    return "" if low is None or high is None else f" [{format(low, spec)}, {format(high, spec)}]"


def _ordered(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda n: (POOL_ORDER.index(n) if n in POOL_ORDER else len(POOL_ORDER), n))


def archive_section(facts: dict, rel) -> list[str]:
    lines = [SECTIONS[0], "", f"Input: {facts['input']}."]
    if not facts["synthetic"]:
        return [*lines, "", "No scene-type profile: the input is not the synthetic generator's archive.", ""]
    from training.synthetic_arctic import ARCTIC_PROFILE, profile_markdown

    lines += ["", profile_markdown(), "", "Measured in this archive (chips by their majority scene type):", "",
              "| scene type | profile share | candidate chips | share | rejected by curation | accepted |",
              "|---|---|---|---|---|---|"]
    counts = facts["pools"]["type_counts"]
    total = sum(counts["candidates"].values()) or 1
    for name in [*ARCTIC_PROFILE, *sorted(set(counts["candidates"]) - set(ARCTIC_PROFILE))]:
        share = ARCTIC_PROFILE[name].share if name in ARCTIC_PROFILE else None
        n = counts["candidates"].get(name, 0)
        lines.append(f"| {name} | {_num(share, '.0%')} | {n} | {n / total:.0%} | {counts['rejected'].get(name, 0)} "
                     f"| {counts['accepted'].get(name, 0)} |")
    return [*lines, ""]


def curation_section(facts: dict, out: Path, rel) -> list[str]:
    c = facts["curation"]
    lines = [SECTIONS[1], "", f"{c['candidates']} candidate chips → {c['selected']} selected, {c['unselected']} "
             f"unselected, {c['rejected']} rejected (reasons: {c['reject_reasons'] or 'none'}). Manifest: "
             f"`{rel(facts['manifest'])}`.", ""]
    for figure in sorted((out / "curate" / "report").glob("*.png")):
        lines += [f"![{figure.stem}]({rel(figure)})", ""]
    return lines


def pools_section(facts: dict, rel) -> list[str]:
    p = facts["pools"]
    budget = facts["size_config"]["budget"]
    lines = [SECTIONS[2], "", f"Every pool draws from the same {p['accepted']} accepted chips (after curation's "
             f"nodata, low-information and duplicate rejects); curated, random and k-means hold exactly {budget} "
             "chips each, `whole` holds all of them. curated: the pipeline's selection (affinity propagation, "
             "balanced quotas); random: uniform; kmeans: hierarchical k-means on the same standardised descriptors "
             "with balanced sampling over its levels (Vo et al. 2024); whole: the archive itself.", "",
             "| pool | chips | " + " | ".join(c.replace("_", " ") for c in QUALITY_COLUMNS) + " |",
             "|---|---|" + "---|" * len(QUALITY_COLUMNS)]
    rows = {name: p["quality"][name] for name in _ordered(p["quality"])}
    for name, quality in rows.items():
        lines.append(f"| {name} | {p['pools'][name]['chips']} | "
                     + " | ".join(_num(quality.get(c)) for c in QUALITY_COLUMNS) + " |")
    lines += [""] + [f"- {c.replace('_', ' ')}: {QUALITY_NOTES[c]}" for c in QUALITY_COLUMNS] + [""]
    counts = p["type_counts"]
    types = sorted(counts["accepted"], key=lambda t: -counts["accepted"][t])
    lines += ["Scene types per pool (chips):", "", "| pool | " + " | ".join(types) + " |",
              "|---|" + "---|" * len(types),
              "| accepted (archive) | " + " | ".join(str(counts["accepted"].get(t, 0)) for t in types) + " |"]
    for name in _ordered(p["quality"]):
        lines.append(f"| {name} | " + " | ".join(str(counts.get(name, {}).get(t, 0)) for t in types) + " |")
    lines += ["", f"![coverage curves]({rel(p['figures']['coverage_curves'])})", "",
              "Coverage curves: each selection rule re-applied at other budgets (curated: the pipeline's quotas over "
              "its own clusters; k-means: the same clustering; random: a fresh uniform draw).", ""]
    for name in _ordered([n for n in p["figures"] if n != "coverage_curves"]):
        lines += [f"Pool `{name}`: ![mosaic {name}]({rel(p['figures'][name])})", ""]
    return lines


def pretrain_section(facts: dict, out: Path, rel) -> list[str]:
    lines = [SECTIONS[3], "", "The same recipe (`training/configs/pretrain_demo.yaml`, tiny ViT, "
             f"{facts['size_config']['pretrain_img']} px crops), the same seed and the same number of steps for "
             "every pool (equal steps, not epochs).", "",
             "| pool | chips | steps | epochs | schedule steps | first loss | last loss | export |",
             "|---|---|---|---|---|---|---|---|"]
    for name in _ordered(facts["pretrain"]):
        t = facts["pretrain"][name]
        lines.append(f"| {name} | {t['chips']} | {t['steps']} | {t['epochs']} | {t['schedule_steps']} | "
                     f"{t['first_loss']} | {t['last_loss']} | `{rel(t['export'])}` |")
    lines.append("")
    for name in _ordered(facts["pretrain"]):
        for png in sorted((out / "pretrain" / name / "vis").glob("*.png"))[-1:]:
            lines += [f"Reconstruction ({name}): ![{name}]({rel(png)})", ""]
    return lines


def reload_section(facts: dict, encoder: str) -> list[str]:
    curated = facts["reload"]["curated"]
    return [SECTIONS[4], "", f"Reloaded every export with `timm.create_model('{encoder}', pretrained=True, "
            "pretrained_cfg_overlay=dict(file=FOLDER))` and with plain timm `local-dir:FOLDER`; outputs agree: "
            f"{all(r['plain_timm_agrees'] for r in facts['reload'].values())}. Bands {curated['bands']}, corpus "
            f"mean of the curated pool {np.round(curated['mean'], 4).tolist()}.", ""]


def _encoder_rank(row: dict) -> int:
    return POOL_ORDER.index(row["encoder"]) if row["encoder"] in POOL_ORDER else len(POOL_ORDER)


def _negate(value: float | None) -> float | None:
    return None if value is None else -value


def probe_rows(probes: dict) -> list[dict]:
    """``evaluation.probes.run_probes`` result -> flat rows {probe, encoder, metric, value, ci_low, ci_high, n_seeds,
    diff_vs_random ({"diff", "ci_low", "ci_high"} of encoder minus the random subset, paired)}."""
    rows = []
    for metric, description in (probes.get("metrics") or {}).items():
        pairs = probes.get("differences", {}).get(metric, {})
        for encoder, summary in probes.get("encoders", {}).items():
            if metric not in summary:
                continue
            s = summary[metric]
            diff = None
            if f"{encoder} - random" in pairs:
                d = pairs[f"{encoder} - random"]
                diff = {"diff": d["diff"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1]}
            elif f"random - {encoder}" in pairs:  # the pair stored the other way round
                d = pairs[f"random - {encoder}"]
                diff = {"diff": _negate(d["diff"]), "ci_low": _negate(d["ci95"][1]), "ci_high": _negate(d["ci95"][0])}
            rows.append({"probe": metric, "encoder": encoder, "metric": description, "value": s.get("mean"),
                         "ci_low": s["ci95"][0], "ci_high": s["ci95"][1], "n_seeds": len(s.get("per_seed", [])),
                         "diff_vs_random": diff})
    return rows


def probe_chart(rows: list[dict], path: Path) -> Path:
    """Bars: one panel per probe, one bar per encoder, 95 % interval whiskers."""
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    fig, axes = plt.subplots(1, len(probes), figsize=(3.2 * len(probes), 3.2), squeeze=False)
    for ax, probe in zip(axes[0], probes):
        mine = sorted((r for r in rows if r["probe"] == probe), key=_encoder_rank)
        values = np.array([r.get("value") if r.get("value") is not None else np.nan for r in mine], float)
        low = np.array([r.get("ci_low") if r.get("ci_low") is not None else v for r, v in zip(mine, values)], float)
        high = np.array([r.get("ci_high") if r.get("ci_high") is not None else v for r, v in zip(mine, values)], float)
        whiskers = [np.maximum(values - low, 0), np.maximum(high - values, 0)]
        colours = ["0.6" if r["encoder"] == "random_init" else "#4c78a8" for r in mine]
        ax.bar(range(len(mine)), np.nan_to_num(values), yerr=whiskers, capsize=3, color=colours)
        ax.set_xticks(range(len(mine)), [r["encoder"] for r in mine], rotation=25, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(probe.replace("_", " "), fontsize=8)
    fig.suptitle("Frozen-encoder probes: mean over seeds, 95 % interval over seeds x scenes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probes_section(facts: dict, out: Path, rel) -> list[str]:
    lines = [SECTIONS[5], ""]
    probes = facts.get("probes")
    if not probes:
        return [*lines, "Not run: " + ("; ".join(s for s in facts["skipped"] if "probe" in s) or "no probes") + ".", ""]
    rows = probe_rows(probes)
    protocol = probes.get("protocol", {})
    classes = probes.get("classes", {})
    lines += [f"Frozen encoders on a held-out archive of the same profile (`{rel(protocol['archive'])}`, split "
              f"{protocol.get('split')}); preprocessing: {protocol.get('preprocessing')}; intervals: "
              f"{protocol.get('intervals')}. Scene types scored: {classes.get('scene_types_scored')}.", "",
              "| probe | encoder | value [95 % CI] | Δ vs random subset [95 % CI] | seeds |", "|---|---|---|---|---|"]
    null = probes.get("null_difference") or {}
    null_name = null.get("what", "").split(":")[0]
    null_rows = {metric: f"| {probes['metrics'].get(metric, metric)} | null ({null_name}) | – | {d['diff']:+.3f}"
                         f"{_interval(*d['ci95'], '+.3f')} | – |"
                 for metric, d in null.items() if isinstance(d, dict) and d.get("diff") is not None}
    for r in sorted(rows, key=lambda r: (r["probe"], _encoder_rank(r))):
        diff = r.get("diff_vs_random")
        delta = "–" if not isinstance(diff, dict) or diff.get("diff") is None else (
            f"{diff['diff']:+.3f}" + _interval(diff.get("ci_low"), diff.get("ci_high"), "+.3f"))
        lines.append(f"| {r['metric']} | {r['encoder']} | {_num(r.get('value'))}"
                     f"{_interval(r.get('ci_low'), r.get('ci_high'))} | {delta} | {r.get('n_seeds', '–')} |")
        null_row = null_rows.get(r["probe"]) if r["encoder"] == probes.get("reference") else None
        if null_row:
            lines.append(null_row)
    if rows:
        chart = probe_chart(rows, out / "probes" / "probes.png")
        lines += ["", f"![probe bars]({rel(chart)})"]
    if null_rows:
        lines += [f"- null rows: {null.get('what', '')}; their Δ column is that difference, not one against the "
                  "random subset"]
    absent = {k: v for k, v in classes.items() if k != "scene_types_scored" and v}
    lines += [f"- not averaged in: {k.replace('_', ' ')}: {v}" for k, v in absent.items()]
    return [*lines, ""]


def finetune_section(facts: dict, out: Path, rel) -> list[str]:
    from arctic_vit.card import results_table

    lines = [SECTIONS[6], "", "Evaluation protocol: every backbone gets the same preprocessing (per-band z-score of "
             "the training split); random init trains without layer-wise lr decay; splits keep whole scenes on one "
             "side (train / val / test) and the test split is scored once. Intervals: hierarchical bootstrap over "
             "seeds x chips grouped by scene, paired across backbones.", ""]
    for name, card in facts["evaluation"].items():
        lines += [f"### {name} ({card['eval_split']} split, {card['n_eval_images']} chips in "
                  f"{card['n_eval_groups']} scene(s))", "", results_table(card["results"]), ""]
        null = next((r for r in card["results"] if r["backbone"] == "random_init_null"), None)
        if null is not None and null.get("diff_vs_reference") is not None:
            low, high = null.get("ci95") or (None, None)
            lines += [f"Null row `random_init_null`: random init again with other seeds; its difference from "
                      f"random_init, {null['diff_vs_reference']:+.3f}{_interval(low, high, '+.3f')}, is what two "
                      "draws of the same thing differ by: a pool's difference smaller than that says nothing.", ""]
        versus = {k: d for k, d in (card.get("vs_random") or {}).items() if d.get("diff") is not None}
        if versus:
            lines += [f"Minus the random subset ({card['headline_metric'].replace('_', ' ')}, paired): " + "; ".join(
                f"{k} {d['diff']:+.3f}{_interval(d['diff_ci_low'], d['diff_ci_high'], '+.3f')}"
                for k, d in sorted(versus.items(), key=lambda kv: _encoder_rank({"encoder": kv[0]}))) + ".", ""]
        for png in ("results.png", "panels.png"):
            path = out / "evaluation" / name / "compare" / png
            if path.is_file():
                lines += [f"![{name} {png}]({rel(path)})", ""]
    return lines


def _flat_numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """Nested dict -> {"a.b": number} of its numeric leaves (booleans left out)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out |= _flat_numbers(v, f"{prefix}{k}.")
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix.rstrip("."): value}
    return {}


def map_section(facts: dict, rel) -> list[str]:
    lines = [SECTIONS[7], ""]
    mapped = facts.get("mapped")
    if not mapped:
        why = "; ".join(s for s in facts["skipped"] if "mapping" in s) or "mapping off"
        return [*lines, f"Not run: {why}.", ""]
    out_dir = Path(mapped["out_dir"])
    lines += [f"A fresh labelled scene (`{rel(mapped['scene'])}`, never used for training or scoring; labels: the "
              f"`{mapped['task']}` class) mapped with the curated pool's finetuned `{mapped['recipe']}` model "
              f"(`{rel(mapped['model'])}`) through `evaluation.predict` (COG, GeoPackage, overlay); scored against "
              "its label raster.", ""]
    numbers = _flat_numbers({k: mapped[k] for k in ("scores", "km2_mapped", "objects_per_class") if k in mapped})
    if numbers:
        lines += ["| figure | value |", "|---|---|"] + [f"| {k.replace('_', ' ')} | {_num(v)} |"
                                                      for k, v in numbers.items()] + [""]
    for name in _strings(mapped.get("outputs", {})):
        path = Path(name) if Path(name).is_absolute() else out_dir / name
        if path.suffix == ".png" and path.is_file():
            lines += [f"![mapped scene]({rel(path)})", ""]
        elif path.is_file():
            lines.append(f"- `{rel(path)}`")
    return [*lines, ""]


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def versus_random(facts: dict) -> dict[str, list[tuple[str, float, float, float]]]:
    """Every paired encoder-minus-random-subset difference with a 95 % interval in the facts -> encoder -> [(what,
    diff, low, high)]: the probes' metrics, then each finetuning recipe's headline metric."""
    findings: dict[str, list[tuple[str, float, float, float]]] = {}
    for r in probe_rows(facts.get("probes") or {}):
        d = r.get("diff_vs_random")
        if isinstance(d, dict) and None not in (d.get("ci_low"), d.get("ci_high")):
            findings.setdefault(r["encoder"], []).append((f"probe {r['probe']}", d["diff"], d["ci_low"], d["ci_high"]))
    for name, card in facts["evaluation"].items():
        for encoder, d in (card.get("vs_random") or {"curated": card.get("curated_vs_random") or {}}).items():
            if d.get("diff_ci_low") is not None and d.get("diff_ci_high") is not None:
                findings.setdefault(encoder, []).append(
                    (f"finetuning {name}", d["diff"], d["diff_ci_low"], d["diff_ci_high"]))
    return findings


def curated_vs_random(facts: dict) -> list[tuple[str, float, float, float]]:
    """The curated pool's rows of ``versus_random`` -> [(what, diff, low, high)]."""
    return versus_random(facts).get("curated", [])


def verdict(facts: dict) -> list[str]:
    """The result in plain words from the measured differences (curated vs random subset), whichever way it falls."""
    findings = curated_vs_random(facts)
    if not findings:
        return ["No paired curated-vs-random interval was measured (see the sections above)."]
    degenerate = [f for f in findings if f[2] == f[3]]  # one seed x one test scene: no spread to resample
    findings = [f for f in findings if f[2] != f[3]]
    if not findings:
        return [f"Not resolvable at this size: all {len(degenerate)} curated-vs-random intervals are degenerate (one "
                "seed and one test scene leave nothing to resample); run the default or paper-cpu size."]
    better = [f for f in findings if f[2] > 0]
    worse = [f for f in findings if f[3] < 0]
    listing = "; ".join(f"{w}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for w, d, lo, hi in findings)
    if better and not worse:
        head = (f"Curated beats the random subset on {len(better)} of {len(findings)} measurements (95 % interval "
                "above 0); on the rest the interval includes 0.")
    elif worse and not better:
        head = (f"The random subset beats curated on {len(worse)} of {len(findings)} measurements (95 % interval "
                "below 0); on the rest the interval includes 0.")
    elif better and worse:
        head = (f"Mixed: curated is better on {len(better)}, worse on {len(worse)} of {len(findings)} measurements "
                "(95 % intervals excluding 0); the rest include 0.")
    else:
        head = (f"No difference between curated and random subsets is resolved at this scale: all {len(findings)} "
                "95 % intervals of curated minus random include 0.")
    lines = [head, "", f"Curated minus random subset: {listing}.", ""]
    if degenerate:
        lines += [f"Left out (degenerate interval, a single draw): {', '.join(f[0] for f in degenerate)}.", ""]
    if len(better) < len(findings):
        lines += ["Most likely reasons, from this run's own figures:", "", *reasons(facts)]
    return lines


def _excludes_zero(low: float | None, high: float | None) -> bool:
    """A resolved difference: a non-degenerate 95 % interval that excludes 0."""
    return low is not None and high is not None and low != high and (low > 0 or high < 0)


def reasons(facts: dict) -> list[str]:
    """Measured facts that bear on a missing advantage, each stated with its numbers (no claim beyond them)."""
    out = []
    q = facts["pools"]["quality"]
    if "curated" in q and "random" in q:
        c, r = q["curated"], q["random"]
        figures = (f"low-information share {_num(c.get('low_information_share'), '.0%')} vs "
                   f"{_num(r.get('low_information_share'), '.0%')}, scene-type balance (entropy) "
                   f"{_num(c.get('balance_entropy'))} vs {_num(r.get('balance_entropy'))}, coverage "
                   f"{_num(c.get('coverage_mean'))} vs {_num(r.get('coverage_mean'))}")
        if not facts["synthetic"]:
            figures = f"coverage {_num(c.get('coverage_mean'))} vs {_num(r.get('coverage_mean'))} (no scene types here)"
        less_low = (c.get("low_information_share") or 0) < (r.get("low_information_share") or 0) - 0.05
        more_balanced = (c.get("balance_entropy") or 0) > (r.get("balance_entropy") or 0) + 0.05
        shifted = facts["synthetic"] and (less_low or more_balanced)
        out.append(f"- The pools (curated vs random): {figures}. " + (
            "Curation did shift the pool towards rarer, more varied chips, so the selection worked as designed; "
            "the encoders trained on it did not turn that into better features at this scale." if shifted else
            "Curation barely changed the pool's make-up, so the pretraining data, and hence the encoders, barely "
            "differ." if facts["synthetic"] else "Without scene types the pools' make-up cannot be compared."))
    out += _other_pools(facts)
    rej = facts["curation"]["reject_reasons"]
    if rej:
        out.append(f"- Every pool, random included, draws from chips that survived curation's rejects ({rej}): the "
                   "random baseline is already partly curated.")
    size = facts["size_config"]
    versus_init = []  # (what, diff, low, high) of curated minus random init
    for name, card in facts["evaluation"].items():
        rows = {r["backbone"]: r for r in card["results"]}
        if "curated" in rows and rows["curated"].get("ci95") and rows["curated"]["ci95"][0] is not None:
            versus_init.append((name, rows["curated"]["diff_vs_reference"], *rows["curated"]["ci95"]))
    probes = facts.get("probes") or {}
    for metric, pairs in probes.get("differences", {}).items():
        d = pairs.get(f"curated - {probes.get('reference')}")
        if d and d["ci95"][0] is not None:
            versus_init.append((f"probe {metric}", d["diff"], *d["ci95"]))
    inert, above, below = [], [], []
    for what, diff, low, high in versus_init:
        text = f"{what}: curated minus random init {diff:+.3f} [{low:+.3f}, {high:+.3f}]"
        (inert if not _excludes_zero(low, high) else above if low > 0 else below).append(text)
    scale = (f"- Scale: a ViT-tiny pretrained for {size['pretrain_steps']} steps on {size['budget']} chips at "
             f"{size['pretrain_img']} px.")
    if inert:
        scale += (f" Pretraining itself is not resolved from random init on {len(inert)} measurement(s) "
                  f"({'; '.join(inert)}): where pretraining barely moves a score, the choice of pool cannot show.")
    if above:
        scale += f" Pretraining beats random init on {len(above)} ({'; '.join(above)})."
    if below:
        scale += (f" Random init beats the pretrained encoder on {len(below)} ({'; '.join(below)}): at this scale "
                  "the MAE features are worse than random ones there, so no pool can win through them.")
    out.append(scale)
    out.append(f"- Variance: {len(size['seeds'])} finetuning seed(s) and {len(size['probe_seeds'])} probe seeds over "
               "a few held-out scenes; the intervals above are that wide.")
    if facts["synthetic"]:
        out.append("- The generator's profile was fixed before any score was seen (`training.synthetic_arctic."
                   "PROFILE_FIXED`) and was not tuned afterwards.")
    return out


def _other_pools(facts: dict) -> list[str]:
    """A pool other than curated that the random subset does not match where curated does: its resolved wins against
    the random subset and its make-up beside curated's (no paired pool-vs-pool interval is claimed)."""
    findings, quality, out = versus_random(facts), facts["pools"]["quality"], []
    curated_wins = sum(_excludes_zero(lo, hi) and lo > 0 for _, _, lo, hi in findings.get("curated", []))
    for pool in ("kmeans", "whole"):
        wins = [f for f in findings.get(pool, []) if _excludes_zero(f[2], f[3]) and f[2] > 0]
        if len(wins) <= curated_wins:
            continue
        q, c = quality.get(pool, {}), quality.get("curated", {})
        low, low_curated = q.get("low_information_share"), c.get("low_information_share")
        make_up = (f"Its low-information share is {_num(low, '.0%')} against curated's {_num(low_curated, '.0%')} "
                   f"(balance {_num(q.get('balance_entropy'))} vs {_num(c.get('balance_entropy'))})")
        if pool == "whole":
            make_up += f", with {q.get('selected', '?')} chips against the budget of {c.get('selected', '?')}."
        elif low is not None and low_curated is not None and low < low_curated - 0.05:
            make_up += ("; one reading, not tested here: the features follow how much of the pool is textured, "
                        "rare terrain more than how evenly it spreads over the descriptor clusters.")
        else:
            make_up += "."
        out.append(f"- The {pool} pool beats the random subset on {len(wins)} of {len(findings[pool])} measurements "
                   f"(curated: {curated_wins}): {', '.join(w for w, *_ in wins)}. {make_up}")
    return out


def write_report(out: Path, facts: dict[str, Any]) -> Path:
    """REPORT.md under ``out`` from the demo's facts -> its path."""
    from evaluation.demo import ENCODER

    def rel(p):
        return Path(p).resolve().relative_to(out.resolve())

    stages = ", ".join(f"{k} {v:.0f} s" for k, v in facts["stage_seconds"].items())
    lines = ["# arctic-vit demo report: what does curating the pretraining pool buy?", "",
             f"Size: `{facts['size']}`. Seed {facts['seed']}. Wall time {facts['seconds'] / 60:.1f} min on "
             f"{facts['threads']} CPU thread(s). Stages: {stages}.", ""]
    load = facts.get("load_average")
    if load:
        lines += [f"Machine load (1/5/15-min load average, {load['cpus']} CPUs): {load['start']} at the start, "
                  f"{load['end']} at the end; on a shared machine the times above are inflated accordingly.", ""]
    if facts["skipped"]:
        lines += ["Skipped for this input: " + "; ".join(facts["skipped"]) + ".", ""]
    lines += archive_section(facts, rel) + curation_section(facts, out, rel) + pools_section(facts, rel)
    lines += pretrain_section(facts, out, rel) + reload_section(facts, ENCODER) + probes_section(facts, out, rel)
    lines += finetune_section(facts, out, rel) + map_section(facts, rel)
    lines += [SECTIONS[8], "", *verdict(facts), ""]
    lines += [SECTIONS[9], "", f"`{rel(facts['card'])}` (rendered from the curated export's pretrained_cfg and the "
              "finetuning results above).", "", SECTIONS[10], "", "```",
              "archive/             synthetic scenes (.tif, .IMD/.XML sidecars, .labels.tif, .zones.json, catalog.csv)",
              "curate/              manifest.parquet, descriptors.parquet, report/ (summary.json, figures)",
              "pools/               manifest_<pool>.parquet, pools.json, diagnostics.json, mosaics, coverage curves",
              "shards/<pool>/       packed chips + corpus.json (bands, bit depth, per-band mean/std)",
              "pretrain/<pool>/     checkpoints/, metrics JSONL, vis/ reconstructions",
              "export/<pool>/       hub folders: model.safetensors, config.json, README.md (model card)",
              "probe_archive/       a held-out archive of the same profile; probes/ their results and bars",
              "tasks/               labelled stand-ins for finetuning (a separate seeded archive, cut per task)",
              "evaluation/<recipe>/<pool>/seed<N>/  finetuning runs; evaluation/<recipe>/compare/ tables, plots",
              "map_scene/           a fresh labelled scene and its map (COG, GeoPackage, overlay PNG)",
              "summary.json         every figure of this report, machine-readable",
              "REPORT.md            this file", "```", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


README_MARKER = "paper-cpu"
README_START, README_END = f"<!-- {README_MARKER}:start -->", f"<!-- {README_MARKER}:end -->"
README_COMMAND = "python -m evaluation.demo_report --readme OUT/summary.json"
QUOTED_SUMMARY = Path(__file__).with_name("paper_cpu_summary.json")
"""The summary.json the README block quotes, copied here by ``--readme`` (a test regenerates the block from it)."""


def readme_block(facts: dict | None) -> str:
    """The README's paper-cpu results block (markers included) from a ``--size paper-cpu`` summary.json's facts, or
    "not yet run" for None."""
    lines = [README_START, f"Generated by `{README_COMMAND}` from the run's summary.json; do not edit by hand.", ""]
    if facts is None:
        lines += ["**Not yet run**: no `--size paper-cpu` summary exists yet, so there are no results to quote."]
        return "\n".join([*lines, README_END])
    if facts.get("size") != "paper-cpu":
        raise ValueError(f"summary.json: size is {facts.get('size')!r}, the README block quotes a paper-cpu run")
    load = facts.get("load_average") or {}
    where = f", load average {load['start']} at the start, {load['end']} at the end" if load else ""
    lines += [f"`--size paper-cpu`, seed {facts['seed']}: {facts['seconds'] / 60:.1f} min on {facts['threads']} CPU "
              f"thread(s){where}.", ""]
    quality = facts["pools"]["quality"]
    if quality:
        lines += ["Pools (equal budget except `whole`; the curation issue's diagnostics):", "",
                  "| pool | chips | coverage p95 | balance entropy | low-information share |", "|---|---|---|---|---|"]
        lines += [f"| {pool} | {q.get('selected', '–')} | {_num(q.get('coverage_p95'))} | "
                  f"{_num(q.get('balance_entropy'))} | {_num(q.get('low_information_share'))} |"
                  for pool, q in quality.items()]
        lines += [""]
    findings = versus_random(facts)
    arms = [a for a in ("curated", "kmeans", "whole", "random_init") if a in findings]
    arms += [a for a in findings if a not in arms]
    lines += ["Each encoder minus the MAE on the random subset (paired; 95 % interval; **bold**: the interval excludes "
              "0):", "", "| measurement | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    cells = {arm: {what: f"**{text}**" if _excludes_zero(low, high) else text
                   for what, diff, low, high in findings[arm]
                   for text in [f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]"]} for arm in arms}
    order = list(dict.fromkeys(what for arm in arms for what in cells[arm]))
    for what in order:
        lines.append(f"| {what} | " + " | ".join(cells[arm].get(what, "–") for arm in arms) + " |")
    if not order:
        lines += ["| (no paired interval measured) |" + " |" * len(arms)]
    lines += ["", *verdict(facts)]
    while not lines[-1]:
        lines.pop()
    return "\n".join([*lines, README_END])


def update_readme(readme: Path, summary: Path | None) -> str:
    """Rewrite the marker block of ``readme`` from ``summary`` (None: "not yet run") -> the new block."""
    import json

    from arctic_vit.card import replace_block

    text = readme.read_text()
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{readme}: needs exactly one {README_START} ... {README_END} block")
    facts = json.loads(summary.read_text()) if summary is not None else None
    block = readme_block(facts)
    inner = block.removeprefix(README_START + "\n").removesuffix("\n" + README_END)
    readme.write_text(replace_block(text, README_MARKER, inner))
    return block


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m evaluation.demo_report",
                                     description="Regenerate the README's paper-cpu results block.")
    parser.add_argument("--readme", type=Path, required=True, metavar="SUMMARY",
                        help="a --size paper-cpu run's summary.json ('none': write the 'not yet run' block)")
    parser.add_argument("--readme-file", type=Path, default=Path("README.md"))
    parser.add_argument("--copy-to", type=Path, default=QUOTED_SUMMARY,
                        help="where the quoted summary.json is kept beside the README (default: %(default)s)")
    args = parser.parse_args(argv)
    summary = None if str(args.readme) == "none" else args.readme
    if summary is not None and not summary.is_file():
        parser.error(f"--readme: {summary} is not a file")
    print(update_readme(args.readme_file, summary))
    if summary is None:  # the block says "not yet run": no quoted summary may contradict it
        args.copy_to.unlink(missing_ok=True)
    elif summary.resolve() != args.copy_to.resolve():
        shutil.copyfile(summary, args.copy_to)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
