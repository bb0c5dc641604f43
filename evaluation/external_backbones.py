"""Stronger external baselines, loaded only from local files (never a download): DINOv3 ViT-L SAT, Scale-MAE ViT-L.

``dinov3_vit_large_sat``: DINOv3 ViT-L/16 distilled on SAT-493M (Simeoni et al. 2025, arXiv:2508.10104; Maxar
~0.6 m RGB), timm ``vit_large_patch16_dinov3.sat493m`` (an ``Eva``: RoPE, 4 register tokens + class token,
LayerScale). Gated "DINOv3 License": weights come from ``weights=PATH`` (a ``.safetensors``/``.pth`` file in timm's
layout or Meta's official layout, converted by timm's ``checkpoint_filter_fn``) or ``weights="hub"``, which reads
only the local Hugging Face cache (no network call; a clear error when the file is not cached). ``weights="none"``:
random init. ``arch`` names a smaller timm DINOv3 model (e.g. ``vit_small_patch16_dinov3``) for CPU tests, with
``weights='none'`` or a local file of that shape.

Input: the dataset's red, green, blue (``rgb_bands``) in that order. Native normalisation uses timm's
``pretrained_cfg`` statistics for this model (SAT-493M: mean 0.430/0.411/0.296, std 0.213/0.156/0.143, on DN /
(2**bit_depth - 1)); the headline protocol is the train-split z-score, as for every backbone.
``forward_intermediates`` of timm's ``Eva`` drops the 5 prefix tokens and returns (N, D, H/16, W/16) maps, so the
pyramid in ``arctic_vit.pyramid`` works unchanged.

``scalemae_vit_large_fmow``: Scale-MAE ViT-L/16 (Reed et al. 2023, arXiv:2212.14532) pretrained on fMoW RGB
(WorldView-2/3 and other sub-metre imagery): torchgeo's ``ScaleMAE`` with the ``scalemae_large_patch16`` settings
(torchgeo is the ``terratorch`` extra, not a core dependency: a clear error without it). Weights (CC-BY-NC 4.0 per
upstream) only from ``weights=PATH``, the ``.pth`` that torchgeo's ``ScaleMAELarge16_Weights.FMOW_RGB`` points at
(timm layout); ``weights="hub"`` is refused (it would download). Input: red, green, blue; native statistics
are torchgeo's transforms for these weights (DN / 255, then ImageNet mean/std), here on DN / (2**bit_depth - 1).
The GSD position embedding takes the card's ``gsd_m`` as torchgeo's ``res`` (metres; 1.0 when the card has none),
recomputed per input size: any ``img_size``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_pretrained_cfg
from torch import nn

from arctic_vit.weights import load_checkpoint
from evaluation.datasets.card import DatasetCard

DINOV3_SAT = "dinov3_vit_large_sat"
DINOV3_SAT_MODEL = "vit_large_patch16_dinov3.sat493m"
SCALEMAE = "scalemae_vit_large_fmow"
EXTERNAL_BACKBONES: tuple[str, ...] = (DINOV3_SAT, SCALEMAE)
HF_FILENAME = "model.safetensors"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file or a torch pickle read with ``weights_only=True``; unwraps ``model``/``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = load_checkpoint(path)
    for wrapper in ("model", "state_dict", "teacher"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"{path}: not a state dict")
    return dict(state)


def cached_hub_file(model: str) -> Path:
    """The model's weights from the local Hugging Face cache only (no network); error naming the way out."""
    from huggingface_hub import try_to_load_from_cache

    repo = get_pretrained_cfg(model).hf_hub_id
    found = try_to_load_from_cache(repo, HF_FILENAME)
    if not isinstance(found, str):
        raise FileNotFoundError(
            f"{model}: {repo}/{HF_FILENAME} is not in the local Hugging Face cache (gated licence; nothing is "
            "downloaded): accept the licence, download it yourself and pass weights=PATH"
        )
    return Path(found)


def dinov3_encoder(img_size: int, weights: str, arch: str | None = None) -> nn.Module:
    """DINOv3 SAT ViT (timm ``Eva``, ``num_classes=0``) over 3 RGB channels; ``weights`` none | hub (cache) | path."""
    if arch and weights == "hub":
        raise ValueError(f"arch={arch!r} replaces the architecture: use weights='none' or a local file")
    model = arch or DINOV3_SAT_MODEL
    encoder = timm.create_model(model, pretrained=False, num_classes=0, img_size=img_size)
    if weights != "none":
        path = cached_hub_file(DINOV3_SAT_MODEL) if weights == "hub" else Path(weights)
        from timm.models.eva import checkpoint_filter_fn

        state = checkpoint_filter_fn(read_state_dict(path), encoder)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if "rope" not in k]  # RoPE periods are fixed buffers, rebuilt by timm
        if missing or unexpected:
            raise ValueError(f"{path}: not a {DINOV3_SAT_MODEL} checkpoint (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
    native = get_pretrained_cfg(DINOV3_SAT_MODEL)
    encoder.pretrained_cfg = {**encoder.pretrained_cfg, "bands": ("red", "green", "blue"),
                              "mean": tuple(native.mean), "std": tuple(native.std), "license": native.license}
    return encoder


def scalemae_encoder(
    img_size: int, weights: str, arch_dims: dict | None = None, gsd_m: float | None = None
) -> nn.Module:
    """Scale-MAE ViT/16 (torchgeo ``ScaleMAE``, ``num_classes=0``) over RGB; ``weights`` none | a local ``.pth``.

    ``gsd_m``: the input's ground sample distance, torchgeo's ``res`` ("spatial resolution of the image in meters"),
    which scales the GSD position embedding; None keeps torchgeo's default 1.0 (said so in the backbone's notes).

    ``arch_dims`` (embed_dim, depth, num_heads) shrinks it for CPU tests; default ViT-L (1024, 24, 16).
    """
    try:
        from torchgeo.models.scale_mae import ScaleMAE
    except ImportError as error:
        raise ImportError(f"{SCALEMAE} needs torchgeo (pip install 'arctic-vit[terratorch]'): {error}") from None
    if weights == "hub":
        raise ValueError(f"{SCALEMAE}: weights='hub' would download; pass weights=PATH to the fMoW RGB .pth")
    dims = arch_dims or dict(embed_dim=1024, depth=24, num_heads=16)  # torchgeo's scalemae_large_patch16
    encoder = ScaleMAE(res=1.0 if gsd_m is None else float(gsd_m),
                       img_size=img_size, patch_size=16, mlp_ratio=4, qkv_bias=True, num_classes=0,
                       norm_layer=partial(nn.LayerNorm, eps=1e-6), **dims)
    if weights != "none":
        path = Path(weights)
        state = {k: v for k, v in read_state_dict(path).items() if k != "pos_embed"}  # recomputed from the GSD
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "pos_embed"]
        stray = [k for k in unexpected if not k.startswith(("head", "fc_norm", "decoder", "mask_token"))]
        if missing or stray:
            raise ValueError(f"{path}: not a Scale-MAE ViT checkpoint of this shape (missing {missing[:4]}, "
                             f"unexpected {stray[:4]})")
    encoder.pretrained_cfg = {"architecture": "scalemae_vit_patch16", "bands": ("red", "green", "blue"),
                              "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "license": "cc-by-nc-4.0"}
    return encoder


def _arch_dims(arch: str | None) -> dict | None:
    """A timm ViT name -> its (embed_dim, depth, num_heads), the shape a tiny Scale-MAE takes in CPU tests."""
    if not arch:
        return None
    shape = timm.create_model(arch, pretrained=False, num_classes=0)
    return dict(embed_dim=shape.embed_dim, depth=len(shape.blocks), num_heads=shape.blocks[0].attn.num_heads)


def build_external(
    name: str, card: DatasetCard, img_size: int, weights: str, normalization: str,
    dataset_stats: dict[str, Sequence[float]] | None, arch: str | None, rgb_bands: Sequence[str],
):
    """The ``evaluation.backbones.Backbone`` for an external option (dispatched from ``build_backbone``)."""
    from evaluation.backbones import _with_normalization, band_indices

    if name not in EXTERNAL_BACKBONES:
        raise ValueError(f"unknown external backbone {name!r}; valid: {', '.join(EXTERNAL_BACKBONES)}")
    indices = band_indices(card, tuple(rgb_bands), name)
    if name == DINOV3_SAT:
        encoder = dinov3_encoder(img_size, weights, arch)
        note = (f"DINOv3 SAT-493M (gated DINOv3 License); {encoder.num_prefix_tokens} prefix tokens dropped by "
                "forward_intermediates")
    else:
        encoder = scalemae_encoder(img_size, weights, _arch_dims(arch), card.gsd_m)
        res = "the card's gsd_m" if card.gsd_m is not None else "torchgeo's default (card has no gsd_m)"
        note = f"Scale-MAE fMoW RGB via torchgeo (CC-BY-NC 4.0), GSD position embedding at res={encoder.res} m ({res})"
    backbone = _with_normalization(name, encoder, indices, card, normalization, dataset_stats, weights)
    backbone.notes = (note,)
    return backbone
