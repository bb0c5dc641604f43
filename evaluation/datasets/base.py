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
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evaluation.datasets.card import IGNORE_INDEX, DatasetCard


@dataclass(frozen=True)
class Reject:
    item: str
    reason: str


class ChipDataset(Dataset):
    """Base class: subclasses list the items of one folder (``_list_items(root)``: id -> anything) and load one
    (``_load``). The card's ``splits`` say which folder each split reads and how the rest is divided.

    ``split_of``: id -> split for every chip; ``group_of``: id -> group (scene) key, the chip itself when unknown.
    """

    def __init__(self, card: DatasetCard, split: str | None = None) -> None:
        self.card = card
        self.rejects: list[Reject] = []
        spec = card.splits
        if split is not None and split not in spec.names:
            raise ValueError(f"dataset {card.name!r} has no split {split!r}; splits: {list(spec.names)} "
                             f"({card.source or 'card'} splits)")
        items: dict[str, object] = {}
        self.split_of: dict[str, str] = {}
        for name, folder in spec.folders.items():
            self._add(items, self._list_items(folder), f"folder {folder}")
            self.split_of.update(dict.fromkeys(self._last_added, name))
        self.moved: list[str] = []
        if spec.open_fractions or spec.list_file or not spec.folders:
            found = self._list_items(card.root)
            self._add(items, found, f"root {card.root}")
            assigned, self.moved = spec.assign(list(found))
            self.split_of.update(assigned)
        if not items:
            raise ValueError(f"dataset {card.name!r}: no samples found under {card.root}")
        self.group_of = {i: spec.group_of(i) for i in items}
        self.split = split
        self.ids = sorted(i for i in items if split is None or self.split_of[i] == split)
        if split is not None and not self.ids:
            groups = len(set(self.group_of.values()))
            raise ValueError(f"split {split!r} of dataset {card.name!r} is empty ({len(items)} chips in {groups} "
                             f"group(s), splits {spec.kind}); give more chips/groups or other splits.fractions "
                             f"({card.source or 'card'})")
        self._items = items

    def _add(self, items: dict, found: dict, where: str) -> None:
        twice = sorted(set(items) & set(found))
        if twice:
            raise ValueError(f"dataset {self.card.name!r}: chip id(s) {twice[:3]} of {where} are already in another "
                             "split: an id may be in one split only (card splits.folders)")
        items.update(found)
        self._last_added = list(found)

    def _list_items(self, root: Path) -> dict[str, object]:
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
