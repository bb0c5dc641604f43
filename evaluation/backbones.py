"""Every compared encoder behind one interface: a timm ViT/16, the dataset bands it eats, and its normalisation.

    backbone = build_backbone("arctic_mae_vit_large", card, img_size=224, weights="outputs/export")
    tokens = backbone.encoder.forward_features(backbone.prepare(batch["image"]))   # raw DN in, normalised inside

Names (``BACKBONES``):
- ``arctic_mae_vit_{tiny,small,base,large}``: ours (``import arctic_vit``), asked for the dataset's bands by name.
- ``imagenet_mae_vit_large`` (timm ``vit_large_patch16_224.mae``, the ViTDet initialisation) and
  ``imagenet_supervised_vit_large`` (``vit_large_patch16_224.augreg_in21k_ft_in1k``): fed natively, the dataset's
  red, green, blue (``rgb_bands``) with the model's ImageNet statistics. ``imagenet_all_bands=True`` instead feeds
  every band with timm's RGB-kernel tiling (off by default: torchgeo-bench measured it regressing 16 of 17 cells).
- ``prithvi_eo2_300m``: Prithvi-EO-2.0-300M from its official checkpoint (``evaluation.prithvi``).
- ``random_vit_{tiny,small,base,large}``: the arctic architecture, random init.
- ``dinov3_vit_large_sat`` (DINOv3 ViT-L SAT-493M, Maxar RGB) and ``scalemae_vit_large_fmow`` (torchgeo Scale-MAE
  ViT-L/16, fMoW RGB): optional stronger baselines from local weights only (``evaluation.external_backbones``).

Weights (``weights=``): ``"hub"`` (the pinned published weights; the only option that may download), ``"none"``
(random init of the same architecture: what the tests use), or a local path (an export folder, a checkpoint file, or
for Prithvi the official ``.pt``).

Normalisation (``normalization=``): ``"zscore"`` (the headline protocol of ``evaluation.finetune``): per-band
statistics of the training split (``dataset_stats``), the same transform for every backbone; ``"native"``
(secondary): each model's own pretraining statistics applied to DN / (2**bit_depth - 1). Random init has no
pretraining statistics, so it always uses the training-split z-score. ``Backbone.normalization`` says what was used.
Prithvi expects HLS reflectance: with ``options.toa_from: imd`` the card's scene ``.IMD`` gives per-band
top-of-atmosphere reflectance (``evaluation.toa``); else ``options.reflectance_per_dn`` is one scalar for every band;
else DN / (2**bit_depth - 1) stands in for reflectance in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import arctic_vit  # noqa: F401  (registers the arctic_mae_vit_* models with timm)
from arctic_vit.transforms import MultispectralNormalize
from evaluation.datasets.card import DatasetCard
from evaluation.external_backbones import EXTERNAL_BACKBONES, build_external
from evaluation.toa import ToaCoefficients, card_toa, reflectance_normalize

SIZES = ("tiny", "small", "base", "large")
ZSCORE = "train-split z-score"
"""The name of the headline preprocessing in every table and metrics.json."""
IMAGENET_MODELS = {
    "imagenet_mae_vit_large": "vit_large_patch16_224.mae",
    "imagenet_supervised_vit_large": "vit_large_patch16_224.augreg_in21k_ft_in1k",
}
PRITHVI_HUB = ("ibm-nasa-geospatial/Prithvi-EO-2.0-300M", "Prithvi_EO_V2_300M.pt")
BACKBONES: tuple[str, ...] = (
    *(f"arctic_mae_vit_{s}" for s in SIZES), *IMAGENET_MODELS, "prithvi_eo2_300m", *(f"random_vit_{s}" for s in SIZES),
    *EXTERNAL_BACKBONES,
)


@dataclass
class Backbone:
    name: str
    encoder: VisionTransformer
    band_indices: tuple[int, ...]
    input_bands: tuple[str, ...]
    normalize: nn.Module
    normalization: str
    weights: str
    notes: tuple[str, ...] = ()

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """image: (N, C_dataset, H, W) raw DN -> (N, C_encoder, H, W) normalised float32."""
        return self.normalize(image[:, list(self.band_indices)])

    @property
    def out_indices(self) -> tuple[int, ...]:
        """Blocks feeding the pyramid: ViT-L 5, 11, 17, 23; other depths proportionally."""
        depth = len(self.encoder.blocks)
        return tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))

    def describe(self) -> dict:
        return {
            "backbone": self.name, "weights": self.weights, "input_bands": list(self.input_bands),
            "normalization": self.normalization, "embed_dim": self.encoder.embed_dim,
            "depth": len(self.encoder.blocks), "out_indices": list(self.out_indices), "notes": list(self.notes),
        }


def band_indices(card: DatasetCard, wanted: Sequence[str], backbone: str) -> tuple[int, ...]:
    """Indices of ``wanted`` in the card's bands; ``ValueError`` naming both when the dataset lacks one."""
    missing = [b for b in wanted if b not in card.bands]
    if missing:
        raise ValueError(
            f"backbone {backbone!r} needs band(s) {missing} but dataset {card.name!r} has {card.bands}; "
            "choose a backbone that fits or map bands explicitly (e.g. backbone option rgb_bands)"
        )
    return tuple(card.bands.index(b) for b in wanted)


def zscore(stats: dict | None, indices: Sequence[int], max_value: float) -> MultispectralNormalize:
    """Per-dataset normalisation from training-split statistics (``mean``/``std`` per card band, in DN)."""
    if stats is None:
        raise ValueError("z-score normalisation needs dataset_stats (per-band mean/std of the training split)")
    mean = [stats["mean"][i] / max_value for i in indices]
    std = [max(stats["std"][i], 1e-6) / max_value for i in indices]
    return MultispectralNormalize(mean, std, max_value=max_value)


def build_backbone(
    name: str,
    card: DatasetCard,
    img_size: int,
    weights: str | Path | None = "hub",
    normalization: str = "native",
    dataset_stats: dict[str, Sequence[float]] | None = None,
    arch: str | None = None,
    rgb_bands: Sequence[str] = ("red", "green", "blue"),
    imagenet_all_bands: bool = False,
    prithvi_num_heads: int = 16,
) -> Backbone:
    """The backbone ``name`` for ``card``'s data at ``img_size`` (see module doc for ``weights``/``normalization``).

    ``arch`` replaces the timm architecture of an ImageNet or random backbone (e.g. ``vit_tiny_patch16_224`` in
    CPU tests; for Prithvi with ``weights='none'`` the random checkpoint takes that shape); it cannot be combined
    with published weights.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    if normalization not in ("native", "zscore"):
        raise ValueError(f"normalization must be 'native' or 'zscore', got {normalization!r}")
    weights = "none" if weights is None else str(weights)
    if name in EXTERNAL_BACKBONES:
        return build_external(name, card, img_size, weights, normalization, dataset_stats, arch, rgb_bands)
    if name.startswith("random_vit_"):
        return _random(name, card, img_size, dataset_stats, arch)
    if name.startswith("arctic_mae_vit_"):
        encoder, indices = _arctic(name, card, img_size, weights), tuple(range(len(card.bands)))
        backbone = _with_normalization(name, encoder, indices, card, normalization, dataset_stats, weights)
        backbone.notes = _new_band_notes(f"{name}_patch16_224", card, weights)
        return backbone
    if name in IMAGENET_MODELS:
        wanted = tuple(card.bands) if imagenet_all_bands else tuple(rgb_bands)
        indices = band_indices(card, wanted, name)
        encoder = _imagenet(name, wanted, img_size, weights, arch)
        return _with_normalization(name, encoder, indices, card, normalization, dataset_stats, weights)
    encoder = _prithvi(card, img_size, weights, arch, prithvi_num_heads)
    indices = band_indices(card, encoder.pretrained_cfg["bands"], name)
    toa = card_toa(card, encoder.pretrained_cfg["bands"]) if normalization == "native" else None
    reflectance_per_dn = card.options.get("reflectance_per_dn")
    max_value = 1.0 / float(reflectance_per_dn) if reflectance_per_dn else None
    return _with_normalization(name, encoder, indices, card, normalization, dataset_stats, weights, max_value, toa)


def _create(model: str, weights: str, **kwargs) -> VisionTransformer:
    """timm model with ``weights`` none (random init) | hub (published, cached) | a local file or folder."""
    if weights == "none":
        return timm.create_model(model, pretrained=False, **kwargs)
    if weights == "hub":
        return timm.create_model(model, pretrained=True, **kwargs)
    return timm.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)


def _random(name: str, card: DatasetCard, img_size: int, stats: dict | None, arch: str | None) -> Backbone:
    if arch:
        encoder = timm.create_model(arch, pretrained=False, in_chans=len(card.bands), img_size=img_size,
                                    num_classes=0)
    else:
        model = f"arctic_mae_vit_{name.rsplit('_', 1)[1]}_patch16_224"
        encoder = timm.create_model(model, pretrained=False, bands=card.bands, img_size=img_size)
    indices = tuple(range(len(card.bands)))
    return Backbone(name, encoder, indices, card.bands, zscore(stats, indices, float(card.max_value)),
                    ZSCORE, "random init")


def _arctic(name: str, card: DatasetCard, img_size: int, weights: str) -> VisionTransformer:
    """Ours, asked for the card's bands by name (the core slices the patch embedding and statistics)."""
    return _create(f"{name}_patch16_224", weights, bands=card.bands, img_size=img_size)


def _new_band_notes(model: str, card: DatasetCard, weights: str) -> tuple[str, ...]:
    if weights == "none":
        return ()
    source = _arctic_weight_bands(model, weights)
    new = [b for b in card.bands if b not in source]
    if not new:
        return ()
    return (f"band(s) {new} have no pretrained patch-embedding weights (pretrained on {source}); they start at "
            "zero (arctic_vit.bands.NEW_BAND_INIT)",)


def _imagenet(name: str, bands: tuple[str, ...], img_size: int, weights: str, arch: str | None) -> VisionTransformer:
    """An ImageNet ViT over ``bands`` with the named model's own statistics (also when ``arch`` shrinks it)."""
    if arch and weights != "none" and not Path(weights).exists():
        raise ValueError(f"arch={arch!r} replaces the architecture: use weights='none' or a local file")
    encoder = _create(arch or IMAGENET_MODELS[name], weights, num_classes=0, img_size=img_size, in_chans=len(bands))
    # ImageNet statistics belong to input positions R, G, B; timm tiles RGB kernels the same way (i % 3) when
    # imagenet_all_bands asks for more channels.
    native = get_pretrained_cfg(IMAGENET_MODELS[name])
    encoder.pretrained_cfg = {**encoder.pretrained_cfg, "bands": bands,
                              "mean": tuple(native.mean[i % 3] for i in range(len(bands))),
                              "std": tuple(native.std[i % 3] for i in range(len(bands)))}
    return encoder


def _prithvi(card: DatasetCard, img_size: int, weights: str, arch: str | None, num_heads: int) -> VisionTransformer:
    """Prithvi-EO-2.0 from its official checkpoint; ``weights='none'``: a random one in the same layout (``arch``,
    a timm ViT name, shrinks it for CPU tests)."""
    from evaluation.prithvi import load_prithvi_checkpoint, prithvi_to_timm, random_prithvi_checkpoint

    if weights == "none":
        dims = dict(embed_dim=1024, depth=24, num_heads=num_heads)
        if arch:
            shape = timm.create_model(arch, pretrained=False, num_classes=0)
            dims = dict(embed_dim=shape.embed_dim, depth=len(shape.blocks), num_heads=shape.blocks[0].attn.num_heads)
        return prithvi_to_timm(random_prithvi_checkpoint(decoder_depth=1, **dims), card.bands, img_size=img_size,
                               num_heads=dims["num_heads"])
    if weights == "hub":
        from huggingface_hub import hf_hub_download

        weights = hf_hub_download(*PRITHVI_HUB)
    return prithvi_to_timm(load_prithvi_checkpoint(weights), card.bands, img_size=img_size, num_heads=num_heads)


def _arctic_weight_bands(model: str, weights: str) -> tuple[str, ...]:
    """Bands the arctic weights were pretrained on: the export folder's, else the registered default's."""
    from arctic_vit.hub import read_folder_metadata

    meta = read_folder_metadata(weights) if weights != "hub" else None
    if meta and meta.get("bands"):
        return tuple(meta["bands"])
    return tuple(get_pretrained_cfg(model).bands)


def _with_normalization(
    name: str, encoder: VisionTransformer, indices: tuple[int, ...], card: DatasetCard, normalization: str,
    dataset_stats: dict | None, weights: str, max_value: float | None = None, toa: ToaCoefficients | None = None,
) -> Backbone:
    bands = tuple(card.bands[i] for i in indices)
    max_value = float(card.max_value) if max_value is None else max_value
    weights_note = "random init (weights=none)" if weights == "none" else str(weights)
    if normalization == "zscore":
        return Backbone(name, encoder, indices, bands, zscore(dataset_stats, indices, float(card.max_value)),
                        ZSCORE, weights_note)
    cfg = encoder.pretrained_cfg
    if toa is not None:  # per-band DN -> TOA reflectance from the vendor calibration, then the model's statistics
        normalize = reflectance_normalize(toa, cfg["mean"], cfg["std"], max_value)
        per_band = ", ".join(f"{b}: DN*{s:.4e}{o:+.4e}" for b, s, o in zip(toa.bands, toa.scale, toa.offset))
        return Backbone(name, encoder, indices, bands, normalize, f"model-native: pretraining mean/std of "
                        f"{toa.describe()}", weights_note, (f"reflectance per band: {per_band}",))
    normalize = MultispectralNormalize(cfg["mean"], cfg["std"], max_value=max_value)
    note = f"model-native: pretraining mean/std of DN / {max_value:g}"
    return Backbone(name, encoder, indices, bands, normalize, note, weights_note)
