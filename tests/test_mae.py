"""training.mae: MAE around the registered timm encoder (any band count and size), loss semantics, key layout."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import build_sincos2d_pos_embed

from arctic_vit.hub import filter_encoder_state_dict
from training.mae import MaskedAutoencoder, build_mae

torch.set_num_threads(1)
TINY_DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def tiny_mae(bands, img_size, **kwargs) -> MaskedAutoencoder:
    return build_mae({"encoder": "arctic_mae_vit_tiny_patch16_224", **TINY_DECODER, **kwargs}, bands, img_size)


@pytest.mark.parametrize(
    ("bands", "img_size"),
    [(("nir", "green", "red"), 64), (("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2"), 96)],
)
def test_forward_shapes_mask_ratio_and_strict_encoder_load(bands, img_size):
    torch.manual_seed(0)
    mae = tiny_mae(bands, img_size)
    images = torch.randn(2, len(bands), img_size, img_size)
    loss, pred, mask = mae(images)
    patches = (img_size // 16) ** 2
    assert pred.shape == (2, patches, 16 * 16 * len(bands))
    assert mask.shape == (2, patches) and mask.sum(1).tolist() == [patches - int(patches * 0.25)] * 2
    assert torch.isfinite(loss) and loss.ndim == 0

    encoder = timm.create_model("arctic_mae_vit_tiny_patch16_224", bands=bands, img_size=img_size, num_classes=0)
    encoder.load_state_dict(filter_encoder_state_dict({"model": mae.state_dict()}), strict=True)
    assert set(mae.state_dict()) - set(encoder.state_dict()) == {
        k for k in mae.state_dict() if k.startswith("decoder_") or k == "mask_token"
    }
    # the exported encoder sees what the MAE encoder sees: same features for the same visible tokens (no masking)
    mae.mask_ratio = 0.0
    with torch.no_grad():
        latent, _, restore = mae.forward_encoder(images)
        unshuffled = torch.gather(latent[:, 1:], 1, restore[..., None].expand(-1, -1, latent.shape[-1]))
        reference = encoder.forward_features(images)
    torch.testing.assert_close(unshuffled, reference[:, 1:], atol=1e-5, rtol=1e-5)


def test_position_embeddings_are_fixed_sincos():
    mae = tiny_mae(("nir", "green", "red"), 64)
    expected = build_sincos2d_pos_embed([4, 4], dim=mae.pos_embed.shape[-1])
    torch.testing.assert_close(mae.pos_embed[0, 1:], expected)
    assert mae.pos_embed[0, 0].abs().sum() == 0
    assert not mae.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    assert mae.decoder_pos_embed.shape == (1, 17, 32)


def test_random_masking_restore_is_inverse_permutation():
    torch.manual_seed(1)
    mae = tiny_mae(("nir", "green", "red"), 64)
    tokens = torch.arange(2 * 16, dtype=torch.float32).view(2, 16, 1)
    visible, mask, restore = mae.random_masking(tokens)
    assert visible.shape == (2, 4, 1)
    for row in range(2):
        kept = set(visible[row, :, 0].long().tolist())
        assert kept == {16 * row + i for i in range(16) if mask[row, i] == 0}
    padded = torch.cat([visible, torch.full((2, 12, 1), -1.0)], dim=1)
    restored = torch.gather(padded, 1, restore[..., None])
    assert torch.equal(restored[mask == 0], tokens[mask == 0])


def test_loss_ignores_nodata_pixels_and_normalises_per_patch():
    torch.manual_seed(2)
    mae = tiny_mae(("nir", "green", "red"), 32, mask_ratio=0.5)
    images = torch.randn(1, 3, 32, 32)
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    valid[:, :16, :8] = False  # half of the top-left patch is nodata
    pred = torch.randn(1, 4, 16 * 16 * 3)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    loss = mae.forward_loss(images, pred, mask, valid)

    changed = images.clone()
    changed[:, :, :16, :8] = 1e4  # nodata values must not matter
    assert torch.equal(mae.forward_loss(changed, pred, mask, valid), loss)

    # reference: per-patch normalised target over valid pixels of the masked patches 0 and 1
    target = mae.patchify(images)
    weights = mae.patchify(valid[:, None].float().expand(-1, 3, -1, -1))
    per_patch = []
    for patch in (0, 1):
        values = target[0, patch][weights[0, patch] > 0]
        normed = (values - values.mean()) / (values.var() + 1e-6).sqrt()
        per_patch.append(((pred[0, patch][weights[0, patch] > 0] - normed) ** 2).mean())
    # each masked patch weighs its valid fraction: patch 0 is half valid
    torch.testing.assert_close(loss, (0.5 * per_patch[0] + per_patch[1]) / 1.5)
    total, weight = mae.forward_loss_terms(images, pred, mask, valid)
    assert weight == 1.5 and torch.allclose(total, 0.5 * per_patch[0] + per_patch[1])

    mostly_nodata = valid.clone()
    mostly_nodata[:, :16, :12] = False  # patch 0 a quarter valid: under min_valid_fraction 0.5, it does not count
    torch.testing.assert_close(mae.forward_loss(images, pred, mask, mostly_nodata), per_patch[1])

    all_nodata = torch.zeros_like(valid)
    assert mae.forward_loss(images, pred, mask, all_nodata) == 0


def test_loss_without_nodata_is_official_mae_loss():
    """valid=None (a batch without nodata) takes the cheap path: official MAE's forward_loss, and the same value as an
    all-valid mask."""
    torch.manual_seed(3)
    mae = tiny_mae(("nir", "green", "red"), 32)
    images, pred = torch.randn(2, 3, 32, 32), torch.randn(2, 4, 16 * 16 * 3)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    target = mae.patchify(images)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    official = (((pred - target) ** 2).mean(dim=-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(mae.forward_loss(images, pred, mask, None), official)
    torch.testing.assert_close(mae.forward_loss(images, pred, mask, torch.ones(2, 32, 32, dtype=torch.bool)), official)
    assert mae.num_visible(196) == 49 and mae.num_visible(10) == 2  # int(), as official (round would keep 3)


def test_patchify_roundtrip_non_square_channels():
    mae = tiny_mae(("blue", "green", "red", "nir"), 48)
    images = torch.randn(3, 4, 48, 48)
    assert torch.equal(mae.unpatchify(mae.patchify(images)), images)
    assert torch.equal(mae.patchify(images)[0, 0, :4], images[0, :, 0, 0])  # (p, p, C) order


def test_every_registered_arctic_size_builds_the_mae_layout():
    for name in timm.list_models("arctic_mae_vit_*_patch16_224"):
        if "large" in name or "base" in name:
            continue  # covered by the paper-config test (slow); keep this one fast
        mae = build_mae({"encoder": name, **TINY_DECODER}, ("nir", "green", "red"), 32)
        assert {"patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "mask_token",
                "decoder_pred.weight"} <= set(mae.state_dict())


def test_math_attention_matches_fused_and_auto_picks_it_for_cpu_bf16():
    from training.pretrain import resolve_attention, set_attention

    torch.manual_seed(0)
    model = tiny_mae(("blue", "green", "red", "nir"), 64).eval()
    images = torch.randn(2, 4, 64, 64)
    outputs = {}
    for attention in ("fused", "math"):
        assert set_attention(model, attention) == 12 + TINY_DECODER["decoder_depth"]  # every encoder + decoder block
        assert {m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")} == {attention == "fused"}
        torch.manual_seed(1)  # the same random mask
        outputs[attention] = model(images)[1]
    torch.testing.assert_close(outputs["math"], outputs["fused"], rtol=1e-4, atol=1e-5)
    assert resolve_attention("auto", "bf16", torch.device("cpu")) == "math"
    assert resolve_attention("auto", "fp32", torch.device("cpu")) == "fused"
    assert resolve_attention("auto", "bf16", torch.device("cuda")) == "fused"
    with pytest.raises(ValueError, match=r"run\.attention"):
        resolve_attention("flash", "bf16", torch.device("cpu"))
