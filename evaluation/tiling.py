"""Fixed-size training views of samples for a ViT of fixed input size: random crops with flips, batched.

Evaluation does not tile here: chips are predicted whole with ``evaluation.overlap`` (``evaluation.chip_eval``).

Chips smaller than the tile are padded (image with 0, mask with ``IGNORE_INDEX``), so padding is never scored.
Instances are cropped with their chip; an instance keeping fewer than ``min_pixels`` pixels in a view is dropped
from it (a sliver of an object at a tile edge is not an object to detect), which ``dropped`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.datasets.card import IGNORE_INDEX


@dataclass
class View:
    image: torch.Tensor  # (C, S, S)
    mask: torch.Tensor  # (S, S)
    instances: dict | None
    latlon: torch.Tensor  # (2,)
    source: str
    origin: tuple[int, int]
    dropped: int = 0


def pad_to(sample: dict, height: int, width: int) -> dict:
    """Pad a sample at the bottom/right to at least (height, width)."""
    h, w = sample["mask"].shape
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return sample
    out = dict(sample)
    out["image"] = F.pad(sample["image"], (0, pw, 0, ph), value=0.0)
    out["mask"] = F.pad(sample["mask"], (0, pw, 0, ph), value=IGNORE_INDEX)
    if sample.get("instances") is not None:
        out["instances"] = {"masks": F.pad(sample["instances"]["masks"], (0, pw, 0, ph), value=0),
                            "labels": sample["instances"]["labels"]}
    return out


def crop(sample: dict, row: int, col: int, size: int, min_pixels: int = 16) -> View:
    sl = (slice(row, row + size), slice(col, col + size))
    instances, dropped = None, 0
    if sample.get("instances") is not None:
        masks = sample["instances"]["masks"][:, sl[0], sl[1]]
        keep = masks.flatten(1).sum(1) >= min_pixels if len(masks) else torch.zeros(0, dtype=torch.bool)
        dropped = int((masks.flatten(1).any(1) & ~keep).sum()) if len(masks) else 0
        instances = {"masks": masks[keep], "labels": sample["instances"]["labels"][keep]}
    return View(sample["image"][:, sl[0], sl[1]], sample["mask"][sl], instances, sample["latlon"], sample["id"],
                (row, col), dropped)


def random_view(sample: dict, size: int, rng: np.random.Generator, flips: bool = True) -> View:
    """A random ``size`` crop (with random flips) of ``sample``."""
    sample = pad_to(sample, size, size)
    h, w = sample["mask"].shape
    view = crop(sample, int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)
    if flips:
        for axis, flip in ((-1, rng.random() < 0.5), (-2, rng.random() < 0.5)):
            if flip:
                view.image, view.mask = view.image.flip(axis), view.mask.flip(axis)
                if view.instances is not None:
                    view.instances["masks"] = view.instances["masks"].flip(axis)
    return view


def stack(views: list[View]) -> dict:
    """Batch views -> image (N, C, S, S), mask (N, S, S), latlon (N, 2), instances list."""
    return {
        "image": torch.stack([v.image for v in views]), "mask": torch.stack([v.mask for v in views]),
        "latlon": torch.stack([v.latlon for v in views]), "instances": [v.instances for v in views],
    }
