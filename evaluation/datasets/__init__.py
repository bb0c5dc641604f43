"""Labelled datasets behind one interface: ``build_dataset(card, split)`` -> a ``ChipDataset`` of sample dicts."""

from __future__ import annotations

from pathlib import Path

from evaluation.datasets.base import ChipDataset, Reject
from evaluation.datasets.card import IGNORE_INDEX, DatasetCard, load_card
from evaluation.datasets.raster_pairs import RasterPairDataset
from evaluation.datasets.vector import VectorDataset
from evaluation.datasets.via_json import ViaJsonDataset

LOADERS: dict[str, type[ChipDataset]] = {
    "via_json": ViaJsonDataset,
    "raster_pairs": RasterPairDataset,
    "vector": VectorDataset,
}


def build_dataset(card: DatasetCard | str | Path, split: str | None = None) -> ChipDataset:
    """The dataset a card describes (synthetic cards are generated on first use), restricted to ``split``."""
    from evaluation.datasets.synthetic_tasks import ensure_generated  # lazy: the module is also a CLI (-m)

    card = card if isinstance(card, DatasetCard) else load_card(card)
    card = ensure_generated(card)
    return LOADERS[card.format](card, split)


__all__ = [
    "IGNORE_INDEX", "LOADERS", "ChipDataset", "DatasetCard", "Reject", "build_dataset", "load_card",
]
