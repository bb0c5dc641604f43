"""The registry's documentation, generated: README weights/results tables and the cards in ``model_cards/``.

``python -m arctic_vit.registry_cards`` (also ``python -m arctic_vit.card``) rewrites them from each tag's
``pretrained_cfg`` and ``model_cards/results/*.json``; a test fails when they are stale. Built on the pure
``arctic_vit.card`` rendering and the one ``config.json`` builder (``arctic_vit.hub.build_config``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from .card import load_results, render_model_card, replace_block, results_table
from .corpus import CorpusContract
from .hub import build_config
from .models import _PRETRAINED_CFGS, ARCTIC_SIZES

__all__ = ["main", "registry_config", "render_readme", "render_registry_cards", "weights_table"]


def weights_table() -> str:
    """Markdown table of the registered pretrained tags, read from their ``pretrained_cfg``."""
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


def render_readme(readme: str, results: Sequence[Mapping[str, Any]]) -> str:
    """The README with its generated weights and results tables brought up to date."""
    return replace_block(replace_block(readme, "weights-table", weights_table()), "results-table",
                         results_table(results))


def registry_config(key: str) -> dict[str, Any]:
    """The ``config.json`` an export of registry tag ``key`` (``arch.tag``) would carry, without weights."""
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
    print(f"updated {readme} and {len(_PRETRAINED_CFGS)} cards in {cards} from {len(paths)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
