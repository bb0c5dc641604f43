"""Prithvi-EO-2.0 (NASA/IBM; Szwarcman et al. 2024, arXiv:2412.02732) read from its official checkpoint into a timm
``VisionTransformer`` for one time step.

Official layout (``Prithvi_EO_V2_300M.pt`` in ``ibm-nasa-geospatial/Prithvi-EO-2.0-300M``): a flat state dict with
``encoder.*`` and ``decoder.*`` keys; ``encoder.patch_embed.proj.weight`` is a Conv3d kernel (D, 6, 1, 16, 16) over
the HLS bands BLUE, GREEN, RED, NIR_NARROW, SWIR_1, SWIR_2; ``encoder.pos_embed`` (1, 1 + 4*14*14, D) is a fixed 3-D
sin-cos embedding (feature split width 6/16 | height 6/16 | time 4/16, zero for the class token); the blocks are timm
``Block``s with ``qkv_bias=True`` and ``nn.LayerNorm`` (eps 1e-5, not timm's ViT default 1e-6); the final norm is
applied to all tokens. Inputs are HLS surface reflectance x 10,000, normalised with ``PRITHVI_MEAN``/``PRITHVI_STD``.

What the conversion preserves, numerically: the tubelet-1 Conv3d is a Conv2d on one frame; the official encoder
recomputes its position embedding for a single frame (time position 0) and resizes it to the input grid by bicubic
interpolation with ``align_corners=True`` - done here once for the fixed ``img_size``; LayerNorm eps 1e-5.
Band selection keeps only the patch-embedding slices of the HLS bands the data has (TerraTorch's approach), which is
exactly equivalent to feeding the missing bands at their pretraining mean (normalised value 0) and never feeds
zero-filled raw values (which land far from the mean and distort results, as torchgeo-bench found).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from arctic_vit.weights import load_checkpoint

HLS_BANDS: tuple[str, ...] = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
PRITHVI_MEAN: tuple[float, ...] = (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0)
PRITHVI_STD: tuple[float, ...] = (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0)
REFLECTANCE_SCALE = 10_000.0
VHSR_TO_HLS: dict[str, str] = {"blue": "BLUE", "green": "GREEN", "red": "RED", "nir": "NIR_NARROW"}
"""Canonical VHSR band -> HLS band of the same spectral region (WorldView NIR1 770-895 nm ~ HLS NIR_NARROW)."""
PRETRAIN_IMG_SIZE = 224
LAYER_NORM_EPS = 1e-5


def load_prithvi_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official Prithvi-EO-2.0 ``.pt`` (tensors only: ``weights_only=True``) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prithvi checkpoint not found: {path}")
    state = load_checkpoint(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError(f"{path}: no 'encoder.*' keys - not a Prithvi-EO-2.0 checkpoint (keys: {list(state)[:5]}...)")
    return dict(state)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """positions: (M,) -> (M, dim): [sin(p * w_k) | cos(p * w_k)], w_k = 10000^(-2k/dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(embed_dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    """grid (T, H, W) -> (1 + T*H*W, D) with a zero class-token row; features [width 6/16 | height 6/16 | time 4/16]."""
    if embed_dim % 16:
        raise ValueError(f"embed_dim must be divisible by 16, got {embed_dim}")
    frames, rows, cols = grid
    t, h, w = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    unit = embed_dim // 16
    table = np.concatenate(
        [sincos_1d(6 * unit, w.ravel()), sincos_1d(6 * unit, h.ravel()), sincos_1d(4 * unit, t.ravel())], axis=1
    )
    return np.concatenate([np.zeros((1, embed_dim)), table], axis=0)


def single_frame_pos_embed(embed_dim: int, grid_hw: tuple[int, int], pretrain_grid: int) -> torch.Tensor:
    """-> (1, 1 + h*w, D): the official single-frame embedding (time 0 on the pretraining grid, bicubic resize
    with ``align_corners=True`` to ``grid_hw``), float32 like the official buffer."""
    table = torch.from_numpy(sincos_3d(embed_dim, (1, pretrain_grid, pretrain_grid))).float().unsqueeze(0)
    cls_row, patches = table[:, :1], table[:, 1:]
    patches = patches.reshape(1, pretrain_grid, pretrain_grid, embed_dim).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid_hw, mode="bicubic", align_corners=True)
    return torch.cat([cls_row, patches.permute(0, 2, 3, 1).reshape(1, -1, embed_dim)], dim=1)


def hls_band_indices(bands: Sequence[str]) -> tuple[list[int], list[str]]:
    """Data band names -> (HLS indices of the usable ones, in data order; the data bands used)."""
    used = [b for b in bands if b in VHSR_TO_HLS]
    if not used:
        raise ValueError(
            f"none of the data bands {tuple(bands)} maps onto a Prithvi HLS band (mappable: {dict(VHSR_TO_HLS)})"
        )
    return [HLS_BANDS.index(VHSR_TO_HLS[b]) for b in used], used


def prithvi_to_timm(
    state_dict: Mapping[str, torch.Tensor],
    bands: Sequence[str],
    img_size: int = PRETRAIN_IMG_SIZE,
    num_heads: int = 16,
    pretrain_img_size: int = PRETRAIN_IMG_SIZE,
) -> VisionTransformer:
    """Official Prithvi-EO-2.0 state dict -> timm ViT (``num_classes=0``) over the data ``bands`` it can use.

    Size-generic: embed dim, depth, MLP ratio, patch size and channel count come from the weights; ``num_heads``
    cannot (16 for the 300M and 600M models). The model's ``pretrained_cfg`` carries the bands it consumes and the
    Prithvi statistics in [0, 1] reflectance units.
    """
    encoder = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    coords = [k for k in encoder if k.startswith(("temporal_", "location_"))]
    if coords:
        raise ValueError(f"checkpoint has temporal/location encoders ({coords[:2]}...): convert a base model")
    kernel = encoder["patch_embed.proj.weight"]
    if kernel.ndim != 5 or kernel.shape[2] != 1 or kernel.shape[1] != len(HLS_BANDS):
        raise ValueError(f"patch embedding {tuple(kernel.shape)} is not (D, 6, 1, P, P) as in Prithvi-EO-2.0")
    embed_dim, patch = kernel.shape[0], kernel.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in encoder if (m := re.match(r"blocks\.(\d+)\.", k)))
    mlp_ratio = encoder["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    pretrain_grid = pretrain_img_size // patch
    frames, rest = divmod(encoder["pos_embed"].shape[1] - 1, pretrain_grid**2)
    if rest or frames < 1:
        raise ValueError(f"pos_embed {tuple(encoder['pos_embed'].shape)} does not fit a {pretrain_grid}^2 grid")
    if img_size % patch:
        raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch}")
    indices, used = hls_band_indices(bands)

    model = VisionTransformer(
        img_size=img_size, patch_size=patch, in_chans=len(used), num_classes=0, embed_dim=embed_dim, depth=depth,
        num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, class_token=True, global_pool="token",
        norm_layer=nn.LayerNorm,  # eps 1e-5 as in Prithvi (timm's ViT default is 1e-6)
    )
    converted = {k: v for k, v in encoder.items() if k.startswith(("blocks.", "norm.", "cls_token"))}
    converted["patch_embed.proj.weight"] = kernel[:, indices, 0].contiguous()
    converted["patch_embed.proj.bias"] = encoder["patch_embed.proj.bias"]
    converted["pos_embed"] = single_frame_pos_embed(embed_dim, (img_size // patch,) * 2, pretrain_grid)
    model.load_state_dict(converted, strict=True)
    model.pos_embed.requires_grad_(False)  # a fixed buffer in Prithvi: keep it fixed when finetuning
    hls = [HLS_BANDS[i] for i in indices]
    model.pretrained_cfg = {
        "architecture": "prithvi_eo_v2", "input_size": (len(used), img_size, img_size),
        "bands": tuple(used), "hls_bands": tuple(hls),
        "mean": tuple(PRITHVI_MEAN[i] / REFLECTANCE_SCALE for i in indices),
        "std": tuple(PRITHVI_STD[i] / REFLECTANCE_SCALE for i in indices),
        "num_frames_pretrained": frames, "license": "apache-2.0",
    }
    return model


def random_prithvi_checkpoint(
    embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0, num_frames: int = 4,
    img_size: int = PRETRAIN_IMG_SIZE, patch_size: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random-init state dict in exactly the official Prithvi-EO-2.0 layout (for tests and demos; no download).

    Weights are random but not degenerate (LayerNorm gains and biases vary) so conversion tests can fail.
    """
    del num_heads  # not stored in the weights, like the official file
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.02, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=gen)

    def block(prefix: str, dim: int) -> dict[str, torch.Tensor]:
        hidden = int(dim * mlp_ratio)
        return {
            f"{prefix}.norm1.weight": rand(dim, scale=0.1, offset=1.0), f"{prefix}.norm1.bias": rand(dim),
            f"{prefix}.attn.qkv.weight": rand(3 * dim, dim, scale=dim**-0.5), f"{prefix}.attn.qkv.bias": rand(3 * dim),
            f"{prefix}.attn.proj.weight": rand(dim, dim, scale=dim**-0.5), f"{prefix}.attn.proj.bias": rand(dim),
            f"{prefix}.norm2.weight": rand(dim, scale=0.1, offset=1.0), f"{prefix}.norm2.bias": rand(dim),
            f"{prefix}.mlp.fc1.weight": rand(hidden, dim, scale=dim**-0.5), f"{prefix}.mlp.fc1.bias": rand(hidden),
            f"{prefix}.mlp.fc2.weight": rand(dim, hidden, scale=hidden**-0.5), f"{prefix}.mlp.fc2.bias": rand(dim),
        }

    grid = img_size // patch_size
    channels = len(HLS_BANDS)
    state = {
        "encoder.cls_token": rand(1, 1, embed_dim),
        "encoder.pos_embed": torch.from_numpy(sincos_3d(embed_dim, (num_frames, grid, grid))).float().unsqueeze(0),
        "encoder.patch_embed.proj.weight": rand(embed_dim, channels, 1, patch_size, patch_size,
                                                scale=1 / math.sqrt(channels * patch_size**2)),
        "encoder.patch_embed.proj.bias": rand(embed_dim),
    }
    for i in range(depth):
        state.update(block(f"encoder.blocks.{i}", embed_dim))
    state["encoder.norm.weight"] = rand(embed_dim, scale=0.1, offset=1.0)
    state["encoder.norm.bias"] = rand(embed_dim)
    state["decoder.decoder_embed.weight"] = rand(decoder_embed_dim, embed_dim)
    state["decoder.decoder_embed.bias"] = rand(decoder_embed_dim)
    state["decoder.mask_token"] = rand(1, 1, decoder_embed_dim)
    state["decoder.decoder_pos_embed"] = torch.from_numpy(
        sincos_3d(decoder_embed_dim, (num_frames, grid, grid))).float().unsqueeze(0)
    for i in range(decoder_depth):
        state.update(block(f"decoder.decoder_blocks.{i}", decoder_embed_dim))
    state["decoder.decoder_norm.weight"] = rand(decoder_embed_dim, scale=0.1, offset=1.0)
    state["decoder.decoder_norm.bias"] = rand(decoder_embed_dim)
    state["decoder.decoder_pred.weight"] = rand(patch_size**2 * channels, decoder_embed_dim)
    state["decoder.decoder_pred.bias"] = rand(patch_size**2 * channels)
    return state
