"""Arctic MAE ViT: timm Vision Transformers pretrained with a masked autoencoder on curated Arctic VHSR imagery.

Paper: Perera et al. (2026), an Arctic foundation model for very-high-resolution (0.3–0.5 m) Maxar/Vantor imagery:
~3M chips selected by scalable affinity propagation, MAE-pretrained ViT-L/16, evaluated on infrastructure,
ice-wedge polygons, retrogressive thaw slumps and tundra trough networks.

The encoder is timm's own ``VisionTransformer``; this file adds only what timm has no place for:
- ``bands=('nir', 'green', 'red')``: the pretrained patch embedding and mean/std are sliced and reordered by band
  name (a band the weights lack gets a zero kernel, see ``arctic_vit.bands.NEW_BAND_INIT``);
- ``pretrained=True`` resolves the pinned hub revision and verifies the weights' sha256 before loading
  (``arctic_vit.hub.resolve_weights``);
- ``pretrained_cfg_overlay=dict(file=FOLDER)`` loads a folder written by ``arctic_vit.hub.export_folder``,
  including its corpus bands and statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._pretrained import PretrainedCfg
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn

from .bands import FOUR_BAND, validate_bands
from .releases import PINS
from .weights import filter_encoder_state_dict, read_folder_metadata, resolve_weights

__all__ = ["ARCTIC_SIZES", "STOCK_ARCHITECTURES", "ArcticPretrainedCfg", "canonical_variant", "select_band_weights"]

PAPER = "Perera et al. 2026: an Arctic-specific foundation model for very-high-resolution satellite imagery"
NEUTRAL_MEAN = 0.5
NEUTRAL_STD = 0.25

ARCTIC_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}
"""Encoder sizes (patch 16): timm's ViT-Ti, ViT-S, ViT-B and ViT-L."""

STOCK_ARCHITECTURES: dict[str, str] = {
    f"arctic_mae_vit_{size}_patch16_224": f"vit_{size}_patch16_224" for size in ARCTIC_SIZES
}
"""Stock timm architecture of each arctic variant: exports name it so that plain timm loads them."""

ALIASES: dict[str, str] = {"arctic_mae_vit_large": "arctic_mae_vit_large_patch16_224"}
"""Short names registered with timm (and smp) for a variant."""


def canonical_variant(model_name: str) -> str:
    """``arctic_mae_vit_large`` / ``arctic_mae_vit_tiny_patch16_224.mae_arctic`` -> the variant's full name."""
    name = model_name.split(".", 1)[0]
    name = ALIASES.get(name, name)
    if name not in STOCK_ARCHITECTURES:
        raise ValueError(f"unknown arctic model {model_name!r}; valid names: {sorted(STOCK_ARCHITECTURES)}")
    return name


@dataclass
class ArcticPretrainedCfg(PretrainedCfg):
    """timm's ``PretrainedCfg`` plus what multispectral weights need: band names, bit depth, GSD and the weights pin."""

    bands: tuple[str, ...] = FOUR_BAND
    bit_depth: int = 11
    gsd_m: float | None = None
    hf_hub_revision: str | None = None
    sha256: str | None = None

    @property
    def has_weights(self) -> bool:
        """Weights exist when a file/url/state dict is given or the hub repository is pinned (revision + sha256):
        ``timm.list_pretrained('arctic*')`` lists only tags that load, not unpublished ones."""
        return bool(self.file or self.url or self.state_dict is not None
                    or (self.hf_hub_id and self.hf_hub_revision and self.sha256))


STANDARD_CFG_KEYS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))
ARCTIC_CFG_KEYS = frozenset(f.name for f in dataclasses.fields(ArcticPretrainedCfg)) - STANDARD_CFG_KEYS


def _cfg(arch: str, tag: str = "mae_arctic", **kwargs: Any) -> ArcticPretrainedCfg:
    pin = PINS[f"{arch}.{tag}"]
    n_bands = len(FOUR_BAND)
    return ArcticPretrainedCfg(
        hf_hub_id=pin.repo_id,
        hf_hub_revision=pin.revision,
        sha256=pin.sha256,
        input_size=(n_bands, 224, 224),
        fixed_input_size=False,  # dynamic_img_size: any multiple of the 16-px patch
        mean=(NEUTRAL_MEAN,) * n_bands,
        std=(NEUTRAL_STD,) * n_bands,
        crop_pct=1.0,
        interpolation="bicubic",
        num_classes=0,
        first_conv="patch_embed.proj",
        classifier="head",
        bands=FOUR_BAND,
        bit_depth=11,
        gsd_m=0.5,
        license="cc-by-4.0",
        paper_name=PAPER,
        origin_url="https://github.com/arctic-vit/arctic-vit",
        notes=(
            "Inputs: 11-bit DN scaled to [0, 1] by 1/2047, then (x - mean) / std per band.",
            "mean/std here are neutral until weights are published; an export carries its corpus statistics.",
        ),
        **kwargs,
    )


_PRETRAINED_CFGS: dict[str, ArcticPretrainedCfg] = {f"{arch}.mae_arctic": _cfg(arch) for arch in STOCK_ARCHITECTURES}
default_cfgs = generate_default_cfgs(
    _PRETRAINED_CFGS | {f"{alias}.mae_arctic": _cfg(arch) for alias, arch in ALIASES.items()}
)


def select_band_weights(
    weight: torch.Tensor, source_bands: tuple[str, ...], target_bands: tuple[str, ...]
) -> torch.Tensor:
    """weight: (D, len(source_bands), P, P) -> (D, len(target_bands), P, P); bands missing in source get zeros."""
    if weight.shape[1] != len(source_bands):
        raise ValueError(
            f"patch embedding has {weight.shape[1]} input channels but the weights' bands are {source_bands}"
        )
    out = weight.new_zeros((weight.shape[0], len(target_bands), *weight.shape[2:]))
    for i, band in enumerate(target_bands):
        if band in source_bands:
            out[:, i] = weight[:, source_bands.index(band)]
    return out


def _band_stats(cfg: ArcticPretrainedCfg, target: tuple[str, ...]) -> dict[str, tuple[float, ...]]:
    """Per-band mean/std for ``target`` taken from ``cfg``; a band it lacks gets the average of the others."""
    source = tuple(cfg.bands)
    out = {}
    for key in ("mean", "std"):
        values = tuple(float(v) for v in getattr(cfg, key))
        fallback = sum(values) / len(values)
        out[key] = tuple(values[source.index(b)] if b in source else fallback for b in target)
    return out


def _resolve_cfg(variant: str, pretrained_cfg: Any, overlay: dict[str, Any] | None) -> ArcticPretrainedCfg:
    if isinstance(pretrained_cfg, ArcticPretrainedCfg):
        cfg = dataclasses.replace(pretrained_cfg)
    elif isinstance(pretrained_cfg, dict):
        cfg = _cfg_from_dict(pretrained_cfg)
    else:
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else "mae_arctic"
        key = f"{variant}.{tag}"
        if key not in _PRETRAINED_CFGS:
            valid = sorted(k.split(".", 1)[1] for k in _PRETRAINED_CFGS if k.startswith(variant + "."))
            raise ValueError(f"unknown pretrained tag {tag!r} for {variant}; valid tags: {valid}")
        cfg = dataclasses.replace(_PRETRAINED_CFGS[key], tag=tag)
    overlay = dict(overlay or {})
    folder_meta = read_folder_metadata(overlay["file"]) if overlay.get("file") else None
    if folder_meta is not None:
        overlay = {**folder_meta, **{k: v for k, v in overlay.items() if k != "file"}}
    unknown = set(overlay) - STANDARD_CFG_KEYS - ARCTIC_CFG_KEYS
    if unknown:
        raise ValueError(f"unknown pretrained_cfg key(s) {sorted(unknown)}")
    if "bands" in overlay:
        overlay["bands"] = validate_bands(overlay["bands"])
    return dataclasses.replace(cfg, architecture=cfg.architecture or variant, **overlay)


def _cfg_from_dict(values: dict[str, Any]) -> ArcticPretrainedCfg:
    unknown = set(values) - STANDARD_CFG_KEYS - ARCTIC_CFG_KEYS
    if unknown:
        raise ValueError(f"unknown pretrained_cfg key(s) {sorted(unknown)}")
    return ArcticPretrainedCfg(**values)


def _create_arctic_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    bands = kwargs.pop("bands", None)
    cfg = _resolve_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    if pretrained and not (cfg.file or cfg.state_dict is not None or cfg.url):
        cfg = dataclasses.replace(cfg, file=str(resolve_weights(cfg.hf_hub_id, cfg.hf_hub_revision, cfg.sha256)))

    if pretrained:  # the weights' own resolution is the default (224 for the registry; an export may differ)
        kwargs.setdefault("img_size", tuple(cfg.input_size[1:]))
    source_bands = tuple(cfg.bands)
    target_bands = validate_bands(bands) if bands is not None else source_bands
    if "in_chans" in kwargs and bands is not None and kwargs["in_chans"] != len(target_bands):
        raise ValueError(f"in_chans={kwargs['in_chans']} contradicts bands={target_bands}")
    if target_bands != source_bands:
        cfg = dataclasses.replace(
            cfg,
            bands=target_bands,
            input_size=(len(target_bands), *cfg.input_size[1:]),
            **_band_stats(cfg, target_bands),
        )
        kwargs["in_chans"] = len(target_bands)

    def filter_fn(state_dict: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
        state_dict = filter_encoder_state_dict(state_dict)
        if target_bands != source_bands and "patch_embed.proj.weight" in state_dict:
            state_dict["patch_embed.proj.weight"] = select_band_weights(
                state_dict["patch_embed.proj.weight"], source_bands, target_bands
            )
        return vit_checkpoint_filter_fn(state_dict, model)

    out_indices = kwargs.pop("out_indices", 3)
    kwargs.setdefault("num_classes", 0)
    kwargs.setdefault("dynamic_img_size", True)  # any input size that is a multiple of the patch (dense mapping)
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_cfg=cfg,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _create_sized(size: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    model_args = dict(patch_size=16, **ARCTIC_SIZES[size])
    return _create_arctic_vit(f"arctic_mae_vit_{size}_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def arctic_mae_vit_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Arctic MAE ViT-L/16 (1024-d, 24 blocks, 16 heads): the released encoder; 4 bands (BGRN), 11-bit."""
    return _create_sized("large", pretrained, **kwargs)


@register_model
def arctic_mae_vit_large(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Alias of ``arctic_mae_vit_large_patch16_224``."""
    return _create_sized("large", pretrained, **kwargs)


@register_model
def arctic_mae_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Arctic MAE ViT-B/16 (768-d, 12 blocks, 12 heads), for research."""
    return _create_sized("base", pretrained, **kwargs)


@register_model
def arctic_mae_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Arctic MAE ViT-S/16 (384-d, 12 blocks, 6 heads), for research and CPU experiments."""
    return _create_sized("small", pretrained, **kwargs)


@register_model
def arctic_mae_vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Arctic MAE ViT-Ti/16 (192-d, 12 blocks, 3 heads), for CPU tests and the demo."""
    return _create_sized("tiny", pretrained, **kwargs)
