"""Normalisation of multispectral tensors (any band count, any bit depth) from a model's ``pretrained_cfg``.

timm's own transforms are PIL/RGB-only; VHSR imagery arrives as 8-, 11- or 16-bit digital numbers in C bands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["MultispectralNormalize", "normalize_for"]


class MultispectralNormalize(nn.Module):
    """Scale digital numbers to [0, 1] by ``1 / max_value``, then standardise per band: ``(x / max - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], max_value: float = 2047.0) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} bands but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        if max_value <= 0:
            raise ValueError(f"max_value must be positive, got {max_value}")
        self.max_value = float(max_value)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C, H, W) digital numbers of any dtype -> (..., C, H, W) float32."""
        if x.shape[-3] != self.mean.shape[0]:
            raise ValueError(f"input has {x.shape[-3]} bands, the normalisation expects {self.mean.shape[0]}")
        return (x.float() / self.max_value - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"bands={self.mean.shape[0]}, max_value={self.max_value:g}"


def normalize_for(model_or_cfg: nn.Module | Mapping[str, Any], bit_depth: int | None = None) -> MultispectralNormalize:
    """Build the normalisation a model expects from its ``pretrained_cfg`` (mean/std, bit depth; 8-bit by default).

    ``bit_depth`` overrides the one in the config, e.g. for 8-bit exports of imagery whose weights saw 11-bit DNs.
    """
    cfg = model_or_cfg if isinstance(model_or_cfg, Mapping) else getattr(model_or_cfg, "pretrained_cfg", None)
    if not cfg or "mean" not in cfg or "std" not in cfg:
        raise ValueError("no pretrained_cfg with mean/std to build a normalisation from")
    depth = int(bit_depth if bit_depth is not None else cfg.get("bit_depth", 8))
    return MultispectralNormalize(cfg["mean"], cfg["std"], max_value=float(2**depth - 1))
