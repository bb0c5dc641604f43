"""Normalisation of multispectral tensors (any band count, any bit depth); built from a corpus contract by
``arctic_vit.corpus.normalize_for`` / ``CorpusContract.normalizer``.

timm's own transforms are PIL/RGB-only; VHSR imagery arrives as 8-, 11- or 16-bit digital numbers in C bands.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MultispectralNormalize"]


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
