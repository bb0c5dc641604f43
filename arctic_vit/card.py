"""Model cards and README tables rendered from ``pretrained_cfg`` and evaluation results: no number typed twice.

- ``render_model_card(config, results)``: the card of an export folder (``config.json`` + the evaluation JSON
  rows written by ``evaluation.compare``: ``{"task", "dataset", "metric", "value", "std", "backbone", ...}``).
- ``weights_table()`` / ``results_table(rows)``: the README's tables, between ``<!-- NAME:start -->`` and
  ``<!-- NAME:end -->`` markers, and the registry cards in ``model_cards/``: ``python -m arctic_vit.card``
  rewrites them all from ``pretrained_cfg`` and ``model_cards/results/*.json``.
"""

from __future__ import annotations

import json
import re
import sys
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
    """Markdown table: recipe | dataset | backbone | foreground mean F1 (mean ± std, seeds) | Δ vs reference (CI)."""
    lines = ["| recipe | dataset | backbone | weights | foreground mean F1 | Δ vs reference [95 % CI] |",
             "|---|---|---|---|---|---|"]
    for r in results:
        value = "–" if r.get("value") is None else f"{r['value']:.3f} ± {r.get('std') or 0:.3f} ({r.get('n_seeds', 1)})"
        ci = r.get("ci95")
        diff = r.get("diff_vs_reference")
        delta = "reference" if diff == 0.0 and not ci else (
            f"{diff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "–")
        weights = r.get("weights", "–")  # "hub", "random init", or the local folder it was loaded from
        lines.append(f"| {r.get('recipe', r['task'])} | {r['dataset']} | {r.get('backbone', '')} | {weights} | {value} "
                     f"| {delta} |")
    if len(lines) == 2:
        lines.append("| – | – | – | – | not evaluated yet | – |")
    return "\n".join(lines)


def weights_table() -> str:
    """Markdown table of the registered pretrained tags, read from their ``pretrained_cfg``."""
    import timm
    import torch

    from .models import _PRETRAINED_CFGS

    lines = ["| model | params | bands | input | GSD | licence | weights (hub @ revision) |",
             "|---|---|---|---|---|---|---|"]
    for key, cfg in reversed(_PRETRAINED_CFGS.items()):  # large first
        arch = key.split(".", 1)[0]
        with torch.device("meta"):
            n_params = sum(p.numel() for p in timm.create_model(arch).parameters())
        where = (f"[{cfg.hf_hub_id}](https://huggingface.co/{cfg.hf_hub_id}) @ `{cfg.hf_hub_revision[:12]}`"
                 if cfg.hf_hub_revision else f"`{cfg.hf_hub_id}`: not published yet (train with `training/`)")
        lines.append(
            f"| `{key}` | {n_params / 1e6:.1f} M | {', '.join(cfg.bands)} ({cfg.bit_depth}-bit) | "
            f"{'×'.join(str(v) for v in cfg.input_size)} | {cfg.gsd_m} m | {cfg.license} | {where} |"
        )
    return "\n".join(lines)


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def render_readme(readme: str, results: Sequence[Mapping[str, Any]]) -> str:
    """The README with its generated weights and results tables brought up to date."""
    return replace_block(replace_block(readme, "weights-table", weights_table()), "results-table",
                         results_table(results))


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


def registry_config(key: str) -> dict[str, Any]:
    """The ``config.json`` an export of registry tag ``key`` (``arch.tag``) would carry, without weights."""
    from .corpus import CorpusContract
    from .hub import build_config
    from .models import _PRETRAINED_CFGS, ARCTIC_SIZES

    cfg = _PRETRAINED_CFGS[key].to_dict()
    arch = key.split(".", 1)[0]
    size = next(v for k, v in ARCTIC_SIZES.items() if f"_{k}_" in arch)
    config = build_config(arch, CorpusContract.from_pretrained_cfg(cfg), cfg, img_size=cfg["input_size"][1],
                          num_features=size["embed_dim"], global_pool="token",
                          weights_sha256=cfg.get("sha256") or "not published yet")
    config["pretrained_cfg"]["notes"] = list(cfg["notes"])  # registry tags state their own (neutral) statistics
    return config


def render_registry_cards(results: Sequence[Mapping[str, Any]] = ()) -> dict[str, str]:
    """Card Markdown of every registry tag, keyed by file name (``<arch>.md``).

    A card shows the comparisons (recipes) its own size took part in (``arctic_mae_vit_<size>``), and only its own
    rows enter its model-index.
    """
    from .models import _PRETRAINED_CFGS, ARCTIC_SIZES

    cards = {}
    for key in _PRETRAINED_CFGS:
        arch = key.split(".", 1)[0]
        own = next(f"arctic_mae_vit_{size}" for size in ARCTIC_SIZES if f"_{size}_" in arch)
        recipes = {r.get("recipe") for r in results if r.get("backbone") == own}
        rows = [r for r in results if r.get("recipe") in recipes]
        # the model-index of a registry card holds results of its published weights only ("hub"), never of a
        # locally trained stand-in of the same size
        own_index = [r for r in rows if r.get("backbone") == own and r.get("weights") == "hub"]
        cards[f"{arch}.md"] = render_model_card(registry_config(key), rows, own_backbone=own, index_rows=own_index)
    return cards


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the README's generated tables and the registry cards from pretrained_cfg + evaluation JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m arctic_vit.card", description=main.__doc__)
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--cards", default="model_cards", help="folder of the rendered registry cards")
    parser.add_argument("--results", nargs="*", default=None,
                        help="evaluation JSON files (default: <cards>/results/*.json)")
    args = parser.parse_args(argv)
    cards = Path(args.cards)
    paths = args.results if args.results is not None else sorted((cards / "results").glob("*.json"))
    results = [row for path in paths for row in load_results(path)]
    readme = Path(args.readme)
    readme.write_text(render_readme(readme.read_text(), results))
    cards.mkdir(parents=True, exist_ok=True)
    for name, text in render_registry_cards(results).items():
        (cards / name).write_text(text)
    print(f"updated {readme} and {len(_registry_keys())} cards in {cards} from {len(paths)} result file(s)")
    return 0


def _registry_keys() -> list[str]:
    from .models import _PRETRAINED_CFGS

    return list(_PRETRAINED_CFGS)


if __name__ == "__main__":
    sys.exit(main())
