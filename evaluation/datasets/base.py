"""One loader interface for every labelled dataset: a torch ``Dataset`` of sample dicts.

A sample is
    image:     float32 (C, H, W), raw digital numbers in the card's band order (normalisation is the backbone's job)
    mask:      int64 (H, W) class ids, ``IGNORE_INDEX`` where not scored (nodata, padding)
    instances: {"masks": uint8 (K, H, W), "labels": int64 (K,)} or None when the format has no instances
    latlon:    float32 (2,) degrees, NaN when unknown
    id:        str

Bad input never disappears silently: it raises with the file named, or lands in ``rejects`` as (id, reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from evaluation.datasets.card import IGNORE_INDEX, DatasetCard, assign_splits


@dataclass(frozen=True)
class Reject:
    item: str
    reason: str


class ChipDataset(Dataset):
    """Base class: subclasses list their items (``_list_items``: id -> anything) and load one (``_load``)."""

    def __init__(self, card: DatasetCard, split: str | None = None) -> None:
        self.card = card
        self.rejects: list[Reject] = []
        items = self._list_items()
        if not items:
            raise ValueError(f"dataset {card.name!r}: no samples found under {card.root}")
        self.split_of = assign_splits(list(items), card.split_fractions, card.split_seed)
        if split is not None and split not in card.split_fractions:
            raise ValueError(f"dataset {card.name!r} has no split {split!r}; splits: {list(card.split_fractions)}")
        self.split = split
        self.ids = sorted(i for i in items if split is None or self.split_of[i] == split)
        self._items = items

    def _list_items(self) -> dict[str, object]:
        raise NotImplementedError

    def _load(self, item_id: str, item: object) -> dict:
        raise NotImplementedError

    def reject(self, item: str, reason: str) -> None:
        self.rejects.append(Reject(item, reason))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        item_id = self.ids[index]
        return self._load(item_id, self._items[item_id])

    def check_image(self, image: np.ndarray, where: str) -> torch.Tensor:
        """image: (C, H, W) any dtype -> float32 tensor; ``ValueError`` naming ``where`` if the band count is off."""
        if image.ndim != 3 or image.shape[0] != len(self.card.bands):
            raise ValueError(
                f"{where}: image has shape {image.shape}, expected {len(self.card.bands)} bands "
                f"{self.card.bands} (dataset card {self.card.name!r})"
            )
        return torch.from_numpy(image.astype(np.float32))

    def check_mask(self, mask: np.ndarray, where: str) -> torch.Tensor:
        """mask: (H, W) class ids -> int64 tensor; ``ValueError`` naming ``where`` on ids the card does not know."""
        values = np.unique(mask)
        unknown = [int(v) for v in values if v != IGNORE_INDEX and not 0 <= v < self.card.num_classes]
        if unknown:
            raise ValueError(
                f"{where}: label value(s) {unknown} are not classes of dataset card {self.card.name!r} "
                f"(ids 0..{self.card.num_classes - 1} = {list(self.card.classes)}, {IGNORE_INDEX} = ignore)"
            )
        return torch.from_numpy(mask.astype(np.int64))

    def latlon_tensor(self, latlon: tuple[float, float] | None) -> torch.Tensor:
        latlon = latlon or self.card.latlon
        return torch.tensor(latlon if latlon else (math.nan, math.nan), dtype=torch.float32)


def instances_from_ids(instance_ids: np.ndarray, class_ids: np.ndarray) -> dict[str, torch.Tensor]:
    """instance_ids, class_ids: (H, W) -> {"masks": (K, H, W) uint8, "labels": (K,)}; id 0 is no instance.

    An instance's label is its majority class; instances on background only are dropped (not objects).
    """
    masks, labels = [], []
    for value in np.unique(instance_ids):
        if value == 0:
            continue
        region = instance_ids == value
        classes = class_ids[region]
        classes = classes[(classes > 0) & (classes != IGNORE_INDEX)]
        if classes.size == 0:
            continue
        masks.append(region)
        labels.append(int(np.bincount(classes).argmax()))
    height, width = instance_ids.shape
    return {
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros(0, height, width,
                                                                                              dtype=torch.uint8),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
