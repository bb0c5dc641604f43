"""Prithvi-EO-2.0 checkpoint -> timm ViT, checked against an independent straightforward encoder forward."""

from __future__ import annotations

import math

import pytest
import torch

from evaluation.prithvi import (
    HLS_BANDS,
    PRITHVI_MEAN,
    PRITHVI_STD,
    load_prithvi_checkpoint,
    prithvi_to_timm,
    random_prithvi_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_pos_embed(dim: int, frames: int, rows: int, cols: int) -> torch.Tensor:
    """Written from the paper's description, loop by loop: (1 + T*H*W, D), features [w 6/16 | h 6/16 | t 4/16]."""
    def one_axis(size: int, position: int) -> list[float]:
        half = size // 2
        freqs = [1.0 / 10000 ** (k / half) for k in range(half)]
        return [math.sin(position * f) for f in freqs] + [math.cos(position * f) for f in freqs]

    unit = dim // 16
    rows_out = [[0.0] * dim]
    for t in range(frames):
        for h in range(rows):
            for w in range(cols):
                rows_out.append(one_axis(6 * unit, w) + one_axis(6 * unit, h) + one_axis(4 * unit, t))
    return torch.tensor(rows_out, dtype=torch.float64).float()


def reference_prithvi_encoder(state: dict, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The official encoder on one frame, by hand. x: (N, 6, 1, H, W) normalised HLS -> (N, 1 + L, D), mask ratio 0."""
    kernel = state["encoder.patch_embed.proj.weight"]
    dim, patch = kernel.shape[0], kernel.shape[-1]
    tokens = torch.nn.functional.conv3d(x, kernel, state["encoder.patch_embed.proj.bias"], stride=(1, patch, patch))
    n, _, frames, rows, cols = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = reference_pos_embed(dim, frames, rows, cols).unsqueeze(0)
    tokens = tokens + pos[:, 1:]
    cls = state["encoder.cls_token"] + pos[:, :1]
    h = torch.cat([cls.expand(n, -1, -1), tokens], dim=1)
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks."))

    def layer_norm(v, prefix):
        mean = v.mean(-1, keepdim=True)
        var = ((v - mean) ** 2).mean(-1, keepdim=True)
        return (v - mean) / torch.sqrt(var + 1e-5) * state[f"{prefix}.weight"] + state[f"{prefix}.bias"]

    for i in range(depth):
        p = f"encoder.blocks.{i}"
        y = layer_norm(h, f"{p}.norm1")
        qkv = y @ state[f"{p}.attn.qkv.weight"].T + state[f"{p}.attn.qkv.bias"]
        q, k, v = qkv.reshape(n, -1, 3, num_heads, dim // num_heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // num_heads), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(n, -1, dim)
        h = h + y @ state[f"{p}.attn.proj.weight"].T + state[f"{p}.attn.proj.bias"]
        y = layer_norm(h, f"{p}.norm2")
        y = y @ state[f"{p}.mlp.fc1.weight"].T + state[f"{p}.mlp.fc1.bias"]
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
        h = h + y @ state[f"{p}.mlp.fc2.weight"].T + state[f"{p}.mlp.fc2.bias"]
    return layer_norm(h, "encoder.norm")


def hls_input_with_missing_at_mean(reflectance: torch.Tensor, present: list[int]) -> torch.Tensor:
    """reflectance (N, len(present), H, W) x 10,000 -> (N, 6, 1, H, W) normalised, absent bands at their mean."""
    full = torch.tensor(PRITHVI_MEAN).view(1, 6, 1, 1).repeat(reflectance.shape[0], 1, *reflectance.shape[-2:])
    full[:, present] = reflectance
    normed = (full - torch.tensor(PRITHVI_MEAN).view(1, 6, 1, 1)) / torch.tensor(PRITHVI_STD).view(1, 6, 1, 1)
    return normed.unsqueeze(2)


@pytest.mark.parametrize("bands", [("blue", "green", "red", "nir"), ("nir", "green", "red")])
def test_converted_encoder_matches_reference(tmp_path, bands):
    # Small model in the exact official layout, pretrained on a 64 px grid with 4 frames.
    state = random_prithvi_checkpoint(embed_dim=64, depth=2, num_heads=4, img_size=64, decoder_embed_dim=32,
                                      decoder_depth=1, seed=1)
    path = tmp_path / "Prithvi_EO_V2_tiny.pt"
    torch.save(state, path)
    loaded = load_prithvi_checkpoint(path)
    model = prithvi_to_timm(loaded, bands, img_size=64, num_heads=4, pretrain_img_size=64).eval()
    assert model.pretrained_cfg["bands"] == bands
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}  # Prithvi's, not timm's

    dn = torch.rand(2, len(bands), 64, 64) * 2047  # 11-bit digital numbers
    reflectance = dn / 2047 * 10_000  # the documented DN -> reflectance mapping of the evaluation protocol
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        ours = model.forward_features((dn / 2047 - mean) / std)
        present = [HLS_BANDS.index({"blue": "BLUE", "green": "GREEN", "red": "RED", "nir": "NIR_NARROW"}[b])
                   for b in bands]
        expected = reference_prithvi_encoder(loaded, hls_input_with_missing_at_mean(reflectance, present), 4)
    assert ours.shape == expected.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


def test_zero_filled_bands_are_not_what_the_conversion_computes():
    state = random_prithvi_checkpoint(embed_dim=32, depth=1, num_heads=2, img_size=32, decoder_embed_dim=16,
                                      decoder_depth=1)
    model = prithvi_to_timm(state, ("blue", "green", "red", "nir"), img_size=32, num_heads=2,
                            pretrain_img_size=32).eval()
    reflectance = torch.rand(1, 4, 32, 32) * 5000
    with torch.no_grad():
        at_mean = reference_prithvi_encoder(state, hls_input_with_missing_at_mean(reflectance, [0, 1, 2, 3]), 2)
        zero_raw = torch.cat([reflectance, torch.zeros(1, 2, 32, 32)], 1)
        zero_raw = (zero_raw - torch.tensor(PRITHVI_MEAN).view(1, 6, 1, 1)) / torch.tensor(PRITHVI_STD).view(1, 6, 1, 1)
        zero_filled = reference_prithvi_encoder(state, zero_raw.unsqueeze(2), 2)
        normed = (reflectance / 10_000 - torch.tensor(model.pretrained_cfg["mean"]).view(1, 4, 1, 1)) / torch.tensor(
            model.pretrained_cfg["std"]).view(1, 4, 1, 1)
        ours = model.forward_features(normed)
    torch.testing.assert_close(ours, at_mean, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(ours, zero_filled, atol=1e-3)


def test_other_input_size_uses_official_bicubic_resize():
    state = random_prithvi_checkpoint(embed_dim=32, depth=1, num_heads=2, img_size=64, decoder_depth=1,
                                      decoder_embed_dim=16)
    model = prithvi_to_timm(state, ("red",), img_size=96, num_heads=2, pretrain_img_size=64)
    grid = reference_pos_embed(32, 1, 4, 4)[1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=True)
    torch.testing.assert_close(model.pos_embed[0, 1:], resized.permute(0, 2, 3, 1).reshape(36, 32))
    assert not model.pos_embed.requires_grad


def test_bad_checkpoints_and_bands_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="Prithvi checkpoint not found"):
        load_prithvi_checkpoint(tmp_path / "missing.pt")
    torch.save({"blocks.0.norm1.weight": torch.ones(4)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"not a Prithvi-EO-2\.0 checkpoint"):
        load_prithvi_checkpoint(tmp_path / "other.pt")
    state = random_prithvi_checkpoint(embed_dim=32, depth=1, img_size=32, decoder_depth=1, decoder_embed_dim=16)
    with pytest.raises(ValueError, match="maps onto a Prithvi HLS band"):
        prithvi_to_timm(state, ("coastal", "yellow"), img_size=32, num_heads=2, pretrain_img_size=32)


@pytest.mark.slow
def test_vit_large_shaped_checkpoint_converts():
    state = random_prithvi_checkpoint(decoder_depth=1)  # official 300M encoder shapes, a shallow decoder
    assert state["encoder.patch_embed.proj.weight"].shape == (1024, 6, 1, 16, 16)
    assert state["encoder.pos_embed"].shape == (1, 785, 1024)
    model = prithvi_to_timm(state, ("blue", "green", "red", "nir"), img_size=224).eval()
    assert sum(p.numel() for p in model.parameters()) > 300e6
    x = torch.randn(1, 4, 224, 224)
    with torch.no_grad():
        ours = model.forward_features(x)
        full = torch.zeros(1, 6, 1, 224, 224)
        full[:, :4, 0] = x
        expected = reference_prithvi_encoder(state, full, 16)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
