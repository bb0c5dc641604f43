"""ViTDet-style simple feature pyramid over a plain ViT, and the multi-level encoder built on it.

A plain ViT has one stride (16). ViTDet (Li et al. 2022) shows that a pyramid built from the last feature maps by
deconvolution (×4, ×2), identity and max-pooling (×½) serves dense heads as well as a hierarchical backbone; the
location-aware framework this project evaluates in takes the maps from several blocks (L: 5, 11, 17, 23), one per
pyramid level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["PYRAMID_STRIDES", "SimpleFeaturePyramid", "ViTPyramidEncoder", "default_out_indices"]

PYRAMID_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


def default_out_indices(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Evenly spaced block indices ending at the last block: depth 24 -> (5, 11, 17, 23), 12 -> (2, 5, 8, 11)."""
    step = depth // levels
    return tuple(step * (i + 1) - 1 for i in range(levels))


def _rescale(embed_dim: int, stride: int) -> nn.Module:
    """(N, D, h, w) at stride 16 -> stride ``stride``."""
    if stride == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim // 2, 2, stride=2),
            LayerNorm2d(embed_dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim // 2, embed_dim // 4, 2, stride=2),
        )
    if stride == 8:
        return nn.ConvTranspose2d(embed_dim, embed_dim // 2, 2, stride=2)
    if stride == 16:
        return nn.Identity()
    if stride == 32:
        return nn.MaxPool2d(2, 2)
    raise ValueError(f"unsupported pyramid stride {stride}; supported: {PYRAMID_STRIDES}")


def _rescaled_dim(embed_dim: int, stride: int) -> int:
    return {4: embed_dim // 4, 8: embed_dim // 2}.get(stride, embed_dim)


class SimpleFeaturePyramid(nn.Module):
    """Four stride-16 ViT maps -> four maps at strides 4, 8, 16, 32 with ``out_channels`` each."""

    def __init__(self, embed_dim: int, out_channels: int = 256) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.rescale = nn.ModuleList(_rescale(embed_dim, s) for s in PYRAMID_STRIDES)
        self.project = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(_rescaled_dim(embed_dim, s), out_channels, 1, bias=False),
                LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LayerNorm2d(out_channels),
            )
            for s in PYRAMID_STRIDES
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """features: 4 x (N, D, H/16, W/16) -> [(N, out, H/s, W/s) for s in (4, 8, 16, 32)]."""
        if len(features) != len(PYRAMID_STRIDES):
            raise ValueError(f"expected {len(PYRAMID_STRIDES)} feature maps, got {len(features)}")
        return [proj(rescale(f)) for f, rescale, proj in zip(features, self.rescale, self.project)]


class ViTPyramidEncoder(nn.Module):
    """Any timm ``VisionTransformer`` -> multi-level pyramid (strides 4, 8, 16, 32) from blocks ``out_indices``."""

    def __init__(self, vit: nn.Module, out_indices: Sequence[int] | None = None, out_channels: int = 256) -> None:
        super().__init__()
        depth = len(vit.blocks)
        self.out_indices = tuple(out_indices) if out_indices is not None else default_out_indices(depth)
        if len(self.out_indices) != len(PYRAMID_STRIDES) or not all(0 <= i < depth for i in self.out_indices):
            raise ValueError(f"out_indices must be {len(PYRAMID_STRIDES)} block indices in [0, {depth}), "
                             f"got {self.out_indices}")
        self.vit = vit
        self.pyramid = SimpleFeaturePyramid(vit.embed_dim, out_channels)
        self.out_channels = out_channels
        self.strides = PYRAMID_STRIDES

    def forward_vit(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, C, H, W) -> 4 x (N, D, H/16, W/16), the ViT blocks ``out_indices``."""
        return self.vit.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, C, H, W) -> [(N, out, H/s, W/s) for s in (4, 8, 16, 32)]."""
        return self.pyramid(self.forward_vit(x))
