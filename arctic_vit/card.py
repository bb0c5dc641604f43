"""Model cards rendered from an export's ``config.json`` and evaluation results: pure functions, no I/O but the
card template, no model code (``arctic_vit.registry_cards`` renders the registry's cards and README tables).

- ``render_model_card(config, results)``: the card of an export folder (``config.json`` + the evaluation JSON
  rows written by ``evaluation.compare``: ``{"task", "dataset", "metric", "value", "std", "backbone", ...}``).
- ``results_table(rows)``: the results table of cards and README; ``replace_block`` swaps a generated block
  between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = "model_card.md"
TAGS = ["image-feature-extraction", "timm", "remote-sensing", "arctic", "permafrost", "mae", "vision-transformer"]


def _own_rows(results: Sequence[Mapping[str, Any]], own_backbone: str | None) -> list[Mapping[str, Any]]:
    """Rows that describe this model (not the baselines it is compared with), with a value."""
    rows = [r for r in results if r.get("value") is not None]
    if own_backbone is not None:
        return [r for r in rows if r.get("backbone") == own_backbone]
    return [r for r in rows if str(r.get("backbone", "arctic")).startswith("arctic")]


def card_data(config: Mapping[str, Any], results: Sequence[Mapping[str, Any]] = (),
              own_backbone: str | None = None) -> ModelCardData:
    """YAML front matter: licence, library, pipeline tag, tags, datasets, and a model-index of this model's F1."""
    meta = config.get("arctic_vit", {})
    cfg = config.get("pretrained_cfg", {})
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name=row["task"],
            dataset_type=row["dataset"],
            dataset_name=row["dataset"],
            metric_type=row.get("metric", "foreground_f1"),
            metric_name=row.get("metric_name", "foreground mean F1"),
            metric_value=round(float(row["value"]), 4),
        )
        for row in _own_rows(results, own_backbone)
    ]
    return ModelCardData(
        license=cfg.get("license", "cc-by-4.0"),
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        tags=TAGS,
        datasets=meta.get("datasets", ["arctic-vhsr-curated"]),
        base_model=meta.get("base_model"),
        model_name=meta.get("variant", config.get("architecture")),
        eval_results=eval_results or None,
    )


def results_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: recipe | dataset | backbone | weights | lr | foreground mean F1 (mean ± std, seeds) | Δ vs
    reference (CI). ``lr``: the learning rate of the reported runs, with the sweep it was chosen from on the tune split
    (``lr_sweep``: {lr: score}) when there was one."""
    lines = ["| recipe | dataset | backbone | weights | lr | foreground mean F1 | Δ vs reference [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        value = "–" if r.get("value") is None else f"{r['value']:.3f} ± {r.get('std') or 0:.3f} ({r.get('n_seeds', 1)})"
        ci = r.get("ci95")
        diff = r.get("diff_vs_reference")
        delta = "reference" if diff == 0.0 and not ci else (
            f"{diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "–")
        weights = r.get("weights", "–")  # "hub", "random init", or the local folder it was loaded from
        lines.append(f"| {r.get('recipe', r['task'])} | {r['dataset']} | {r.get('backbone', '')} | {weights} "
                     f"| {_lr_cell(r)} | {value} | {delta} |")
    if len(lines) == 2:
        lines.append("| – | – | – | – | – | not evaluated yet | – |")
    return "\n".join(lines)


def _lr_cell(row: Mapping[str, Any]) -> str:
    """'3e-04' or, after a sweep, '3e-04 (swept 1e-04, 3e-04, 1e-03 on val)'; '–' when the row has no lr."""
    if row.get("lr") is None:
        return "–"
    sweep = row.get("lr_sweep")
    if not sweep:
        return f"{row['lr']:.0e}"
    grid = ", ".join(f"{float(lr):.0e}" for lr in sorted(sweep, key=float))
    return f"{row['lr']:.0e} (swept {grid} on {row.get('tune_split') or 'val'})"


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The ``results`` rows of an evaluation JSON (``evaluation.compare``'s model_card.json), or of a list of them."""
    data = json.loads(Path(path).read_text())
    blocks = data if isinstance(data, list) else [data]
    return [{"recipe": block.get("recipe", row["task"])} | row for block in blocks for row in block.get("results", [])]


def render_model_card(
    config: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]] = (),
    own_backbone: str | None = None,
    index_rows: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Render the card Markdown (YAML front matter + sections) for an export's ``config.json``.

    ``results`` fill the evaluation table; the model-index holds ``index_rows`` when given, else this model's rows.
    """
    meta = config.get("arctic_vit", {})
    cfg = config.get("pretrained_cfg", {})
    corpus = config["corpus"]
    variant = meta.get("variant", config.get("architecture", "arctic_mae_vit"))
    bands = corpus["bands"]
    band_table = "\n".join(
        f"| {b} | {m:.4f} | {s:.4f} |" for b, m, s in zip(bands, cfg.get("mean", []), cfg.get("std", []))
    )
    training = meta.get("training", {})
    values = {
        "model_name": variant,
        "architecture": config.get("architecture", ""),
        "num_features": config.get("num_features", ""),
        "input_size": "×".join(str(v) for v in cfg.get("input_size", [])),
        "bands": ", ".join(bands),
        "bit_depth": corpus["bit_depth"],
        "max_value": 2 ** int(corpus["bit_depth"]) - 1,
        "gsd_m": corpus.get("gsd_m") or "",
        "license": cfg.get("license", ""),
        "paper": cfg.get("paper_name", ""),
        "sha256": meta.get("weights_sha256", ""),
        "band_table": band_table,
        "results_table": results_table(results),
        "bands_tuple": repr(tuple(bands)),
        "in_chans": len(bands),
        "training_summary": "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in training.items())
        or "- not recorded in this export",
    }
    template = resources.files(__package__).joinpath("templates", TEMPLATE).read_text()
    if index_rows is None:
        data = card_data(config, results, own_backbone)
    else:
        data = card_data(config, index_rows)
    return str(ModelCard.from_template(data, template_str=template, **values))


if __name__ == "__main__":  # ``python -m arctic_vit.card``: kept as the documented name of the registry-cards CLI
    from arctic_vit.registry_cards import main

    raise SystemExit(main())
