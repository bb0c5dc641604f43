"""TerraTorch backbones for the arctic family, under the same names as in timm (optional extra ``terratorch``).

Importing this module (with TerraTorch installed) registers ``arctic_mae_vit_{large,base,small,tiny}_patch16_224``
(and ``arctic_mae_vit_large``) in TerraTorch's backbone registry, built the way TerraTorch builds its own plain ViTs
(Prithvi): the backbone returns the tokens of every block (class token first, the last block through the final norm),
and the neck turns them into a pyramid for a convolutional decoder::

    import arctic_vit.terratorch_backbones  # registers the family with TerraTorch
    from arctic_vit.terratorch_backbones import terratorch_necks
    from terratorch.models import EncoderDecoderFactory

    model = EncoderDecoderFactory().build_model(
        task="segmentation",
        backbone="arctic_mae_vit_large",
        backbone_bands=["BLUE", "GREEN", "RED", "NIR_NARROW"],    # TerraTorch's band names, or ours
        backbone_pretrained=True, backbone_ckpt_path="path/to/export_folder",  # local export (or one weights file)
        necks=terratorch_necks(depth=24),  # SelectIndices [5, 11, 17, 23] -> ReshapeTokensToImage -> LearnedInterp.
        decoder="UNetDecoder", decoder_channels=[512, 256, 128, 64],
        num_classes=3,
    )

In a TerraTorch YAML config the same keys go under ``model.init_args.model_args`` (``backbone_bands``,
``backbone_ckpt_path``, ``necks``); the registration needs this module imported: TerraTorch imports a package folder
``custom_modules/`` in the working directory (or the one ``terratorch fit --custom_modules_path DIR`` names), so an
``__init__.py`` there reading ``import arctic_vit.terratorch_backbones`` is enough.

Bands: a band the weights lack gets a zero kernel and the average statistics (``arctic_vit.models``), so the
pretrained function is unchanged at the start of finetuning. ``backbone_pretrained=True`` without a
``backbone_ckpt_path`` resolves the pinned hub revision (``arctic_vit.weights.resolve_weights``); it fails with the
local-loading instructions while the weights are unpublished or the hub is unreachable.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from enum import Enum
from typing import Any

import timm
import torch
from torch import nn

from .bands import CANONICAL_BANDS, validate_bands
from .models import ALIASES, ARCTIC_SIZES, STOCK_ARCHITECTURES, canonical_variant
from .pyramid import default_out_indices

__all__ = [
    "TERRATORCH_BAND_NAMES",
    "ArcticTerraTorchBackbone",
    "build_terratorch_backbone",
    "register_terratorch_backbones",
    "terratorch_necks",
]

TERRATORCH_BAND_NAMES: dict[str, str] = {
    "COASTAL_AEROSOL": "coastal",
    "BLUE": "blue",
    "GREEN": "green",
    "RED": "red",
    "RED_EDGE_1": "rededge",
    "NIR_BROAD": "nir",
    "NIR_NARROW": "nir",
}
"""TerraTorch's ``HLSBands`` names -> our canonical band names (WorldView NIR1 is 770-895 nm: TerraTorch's
Prithvi configs call the HLS NIR band NIR_NARROW, Sentinel-2 configs NIR_BROAD; both mean the one NIR band here)."""


def terratorch_bands(bands: Sequence[Any]) -> tuple[str, ...]:
    """TerraTorch band names (``HLSBands`` members or their strings) or canonical names -> canonical names."""
    names = []
    for band in bands:
        value = band.value if isinstance(band, Enum) else band
        if not isinstance(value, str):
            raise ValueError(
                f"band {band!r} is not a name: the arctic encoders select pretrained kernels by band name; valid "
                f"names: {sorted(TERRATORCH_BAND_NAMES)} or {list(CANONICAL_BANDS)}"
            )
        names.append(TERRATORCH_BAND_NAMES.get(value.upper(), value))
    return validate_bands(names)


def terratorch_necks(depth: int, levels: int = 4) -> list[dict[str, Any]]:
    """TerraTorch neck settings for a plain ViT of ``depth`` blocks: four evenly spaced blocks -> images -> pyramid."""
    return [
        {"name": "SelectIndices", "indices": list(default_out_indices(depth, levels))},
        {"name": "ReshapeTokensToImage"},
        {"name": "LearnedInterpolateToPyramidal"},
    ]


class ArcticTerraTorchBackbone(nn.Module):
    """A timm arctic ViT as a TerraTorch backbone: x (N, C, H, W) -> [(N, 1 + H/16 * W/16, D) per block in
    ``out_indices``]; ``out_channels`` = [D] * len(out_indices)."""

    def __init__(self, vit: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        depth = len(vit.blocks)
        self.vit = vit
        self.out_indices = list(out_indices) if out_indices is not None else list(range(depth))
        if not self.out_indices or not all(0 <= i < depth for i in self.out_indices):
            raise ValueError(f"out_indices must be block indices in [0, {depth}), got {self.out_indices}")
        self.out_channels = [vit.embed_dim] * len(self.out_indices)
        self.patch_size = vit.patch_embed.patch_size  # EncoderDecoderFactory pads inputs to a multiple of it
        self.model_bands = list(vit.pretrained_cfg["bands"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, C, H, W) -> [(N, 1 + h * w, D)], class token first; the last block's tokens pass the final norm."""
        taken = self.vit.forward_intermediates(
            x, indices=self.out_indices, return_prefix_tokens=True, output_fmt="NLC",
            intermediates_only=True, stop_early=True,
        )
        last = len(self.vit.blocks) - 1
        return [
            self.vit.norm(torch.cat([prefix, tokens], dim=1)) if index == last else torch.cat([prefix, tokens], dim=1)
            for index, (tokens, prefix) in zip(self.out_indices, taken)
        ]

    def freeze(self) -> None:
        """TerraTorch's ``freeze_backbone``: no gradient for the ViT."""
        self.vit.requires_grad_(False)


def build_terratorch_backbone(
    model_name: str,
    pretrained: bool = False,
    bands: Sequence[Any] | None = None,
    ckpt_path: str | None = None,
    out_indices: Sequence[int] | None = None,
    model_bands: Sequence[Any] | None = None,
    **kwargs: Any,
) -> ArcticTerraTorchBackbone:
    """The TerraTorch backbone ``model_name``; ``bands``/``model_bands`` (TerraTorch's two spellings) select the
    input bands, ``ckpt_path`` is a local export folder or weights file (encoder-only or a full MAE checkpoint)."""
    if bands is not None and model_bands is not None and list(bands) != list(model_bands):
        raise ValueError(f"bands={list(bands)} and model_bands={list(model_bands)} disagree; pass one of them")
    requested = bands if bands is not None else model_bands
    if ckpt_path is not None and not pretrained:
        raise ValueError(f"ckpt_path={ckpt_path!r} is given but pretrained=False: set backbone_pretrained=True to "
                         "load it (or drop ckpt_path for a random initialisation)")
    kwargs.pop("features_only", None)  # a TerraTorch backbone always returns its per-block features
    if requested is not None:
        kwargs["bands"] = terratorch_bands(requested)
    if ckpt_path is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(ckpt_path))
    vit = timm.create_model(canonical_variant(model_name), pretrained=pretrained, **kwargs)
    return ArcticTerraTorchBackbone(vit, out_indices)


def _backbone_entry(name: str) -> Any:
    def backbone(pretrained: bool = False, **kwargs: Any) -> ArcticTerraTorchBackbone:
        return build_terratorch_backbone(name, pretrained=pretrained, **kwargs)

    size = next(size for size in ARCTIC_SIZES if canonical_variant(name) == f"arctic_mae_vit_{size}_patch16_224")
    backbone.__name__ = backbone.__qualname__ = name  # TerraTorch's registry keys entries by __name__
    backbone.__doc__ = f"Arctic MAE ViT ({size}) as a TerraTorch backbone; see ``arctic_vit.terratorch_backbones``."
    return backbone


def register_terratorch_backbones() -> None:
    """Register the family in TerraTorch's backbone registry (done on import when TerraTorch is installed)."""
    from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY

    for name in (*STOCK_ARCHITECTURES, *ALIASES):
        if name not in TERRATORCH_BACKBONE_REGISTRY:
            TERRATORCH_BACKBONE_REGISTRY.register(_backbone_entry(name))


if importlib.util.find_spec("terratorch") is not None:  # an optional extra: without it the helpers still import
    register_terratorch_backbones()
