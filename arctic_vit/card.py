"""Model cards rendered from an export's ``config.json`` (its ``pretrained_cfg``) and, when given, evaluation results.

Nothing typed twice: bands, statistics, licence and paper come from the config; F1 figures from the evaluation JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = "model_card.md"


def card_data(config: Mapping[str, Any], results: Sequence[Mapping[str, Any]] = ()) -> ModelCardData:
    """YAML front matter: licence, library, pipeline tag, tags, datasets and a model-index of F1 results.

    ``results`` rows: ``{"task": ..., "dataset": ..., "metric": "foreground_f1", "value": 0.71, "backbone": ...}``.
    """
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
            metric_value=float(row["value"]),
        )
        for row in results
    ]
    return ModelCardData(
        license=cfg.get("license", "cc-by-4.0"),
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        tags=[
            "image-feature-extraction", "timm", "remote-sensing", "arctic", "permafrost", "mae",
            "vision-transformer"],
        datasets=["arctic-vhsr-curated"],
        base_model=None,
        model_name=meta.get("variant", config.get("architecture")),
        eval_results=eval_results or None,
    )


def render_model_card(
    config: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]] = (),
    sections: Mapping[str, str] | None = None,
) -> str:
    """Render the card Markdown (front matter + body) for an export config."""
    meta = config.get("arctic_vit", {})
    cfg = config.get("pretrained_cfg", {})
    variant = meta.get("variant", config.get("architecture", "arctic_mae_vit"))
    bands = meta.get("bands", [])
    table = "\n".join(
        f"| {b} | {m:.4f} | {s:.4f} |" for b, m, s in zip(bands, cfg.get("mean", []), cfg.get("std", []))
    )
    results_md = "\n".join(
        f"| {r['task']} | {r['dataset']} | {r.get('backbone', variant)} | {float(r['value']):.3f} |" for r in results
    ) or "| – | – | – | not evaluated yet |"
    values = {
        "model_name": variant,
        "architecture": config.get("architecture", ""),
        "num_features": config.get("num_features", ""),
        "input_size": "×".join(str(v) for v in cfg.get("input_size", [])),
        "bands": ", ".join(bands),
        "bit_depth": meta.get("bit_depth", ""),
        "max_value": 2 ** int(meta.get("bit_depth", 8)) - 1,
        "gsd_m": meta.get("gsd_m", ""),
        "license": cfg.get("license", ""),
        "paper": cfg.get("paper_name", ""),
        "sha256": meta.get("weights_sha256", ""),
        "band_table": table,
        "results_table": results_md,
        "bands_tuple": repr(tuple(bands)),
    }
    values.update(sections or {})
    template = resources.files(__package__).joinpath("templates", TEMPLATE).read_text()
    card = ModelCard.from_template(card_data(config, results), template_str=template, **values)
    return str(card)
