"""External baselines (evaluation.external_backbones): DINOv3 SAT built tiny, RGB order, native statistics,
local-file round trips in timm's and Meta's official key layouts, and no network call."""

from __future__ import annotations

import pytest
import torch

from evaluation.backbones import BACKBONES, build_backbone
from evaluation.datasets.card import card_from_dict
from evaluation.models import SemanticSegmentationModel, param_groups

TINY = "vit_small_patch16_dinov3"  # the DINOv3 family at ViT-S size: CPU-sized, same code path
STATS = {"mean": [300.0, 400.0, 500.0, 600.0], "std": [50.0, 60.0, 70.0, 80.0]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _card(bands=("blue", "green", "red", "nir"), bit_depth=11):
    return card_from_dict({"name": "t", "format": "raster_pairs", "root": "/nonexistent", "bit_depth": bit_depth,
                           "classes": ["background", "a", "b"], "bands": list(bands)})


def _meta_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm Eva keys -> Meta's official DINOv3 layout (storage_tokens, ls1.gamma, fused qkv.bias with zero k bias,
    mask_token, rope periods, bias_mask)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(".attn.q_bias"):
            v_bias = state[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.zeros_like(v), v_bias])
            out[k.replace("q_bias", "qkv.bias_mask")] = torch.ones(3 * v.numel())
            continue
        if k.endswith(".attn.v_bias") or "rope" in k:
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[k] = v
    dim = state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.rand(dim // 16)
    return out


def test_dinov3_is_registered_fed_rgb_in_order_with_its_own_statistics():
    assert "dinov3_vit_large_sat" in BACKBONES
    backbone = build_backbone("dinov3_vit_large_sat", _card(), 32, weights="none", arch=TINY)
    assert backbone.input_bands == ("red", "green", "blue") and backbone.band_indices == (2, 1, 0)
    dn = torch.tensor([2047.0, 1023.5, 0.0, 7.0]).view(1, 4, 1, 1).expand(1, 4, 32, 32)
    # timm's pretrained_cfg of vit_large_patch16_dinov3.sat493m, typed here as the oracle
    expected = (torch.tensor([0.0, 0.5, 1.0]) - torch.tensor([0.43, 0.411, 0.296])) / torch.tensor(
        [0.213, 0.156, 0.143])
    torch.testing.assert_close(backbone.prepare(dn)[0, :, 0, 0], expected)
    z = build_backbone("dinov3_vit_large_sat", _card(), 32, weights="none", arch=TINY, normalization="zscore",
                       dataset_stats=STATS)
    torch.testing.assert_close(z.prepare(dn)[0, :, 0, 0], torch.tensor([(0 - 500) / 70, (1023.5 - 400) / 60,
                                                                        (2047 - 300) / 50]))


def test_dinov3_feeds_the_pyramid_head_without_prefix_tokens():
    backbone = build_backbone("dinov3_vit_large_sat", _card(), 32, weights="none", arch=TINY)
    assert backbone.encoder.num_prefix_tokens == 5  # class + 4 registers
    model = SemanticSegmentationModel(backbone, num_classes=3, pyramid_channels=16, decoder_channels=16)
    logits = model(backbone.prepare(torch.rand(2, 4, 32, 32) * 2047))
    assert logits.shape == (2, 3, 32, 32)
    groups = param_groups(model, backbone.encoder, weight_decay=0.05, layer_decay=0.75)  # what finetune trains
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(backbone.encoder.reg_token) in no_decay and id(backbone.encoder.cls_token) in no_decay
    scales = {g["lr_scale"] for g in groups}
    assert min(scales) == pytest.approx(0.75 ** (len(backbone.encoder.blocks) + 1))  # patch embed: deepest decay


@pytest.mark.parametrize("layout", ["timm", "meta"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_dinov3_local_file_round_trip(tmp_path, layout, suffix):
    source = build_backbone("dinov3_vit_large_sat", _card(), 32, weights="none", arch=TINY).encoder
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not the init: a load that silently fails cannot pass
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state = _meta_layout(state) if layout == "meta" else state
    path = tmp_path / f"dinov3{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)
    target = build_backbone("dinov3_vit_large_sat", _card(), 32, weights=str(path), arch=TINY).encoder
    x = torch.randn(1, 3, 32, 32)
    source.eval(), target.eval()
    torch.testing.assert_close(target.forward_features(x), source.forward_features(x))


def test_dinov3_missing_file_and_uncached_hub_are_clear_errors_without_network(tmp_path, monkeypatch):
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        build_backbone("dinov3_vit_large_sat", _card(), 32, weights=str(missing))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        build_backbone("dinov3_vit_large_sat", _card(), 32, weights="hub")
    with pytest.raises(ValueError, match="needs band"):
        build_backbone("dinov3_vit_large_sat", _card(("nir", "green", "red")), 32, weights="none", arch=TINY)


def test_scalemae_is_fed_rgb_with_imagenet_statistics_and_feeds_the_head():
    pytest.importorskip("torchgeo")
    assert "scalemae_vit_large_fmow" in BACKBONES
    backbone = build_backbone("scalemae_vit_large_fmow", _card(), 32, weights="none", arch="vit_tiny_patch16_224")
    assert backbone.input_bands == ("red", "green", "blue") and backbone.band_indices == (2, 1, 0)
    dn = torch.tensor([2047.0, 1023.5, 0.0, 7.0]).view(1, 4, 1, 1).expand(1, 4, 32, 32)
    # torchgeo's FMOW_RGB transforms: /255 then ImageNet mean/std (here on DN / 2047)
    expected = (torch.tensor([0.0, 0.5, 1.0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    torch.testing.assert_close(backbone.prepare(dn)[0, :, 0, 0], expected)
    model = SemanticSegmentationModel(backbone, num_classes=3, pyramid_channels=16, decoder_channels=16)
    assert model(backbone.prepare(torch.rand(2, 4, 32, 32) * 2047)).shape == (2, 3, 32, 32)


def test_scalemae_local_file_round_trip_and_no_hub(tmp_path):
    pytest.importorskip("torchgeo")
    source = build_backbone("scalemae_vit_large_fmow", _card(), 32, weights="none", arch="vit_tiny_patch16_224").encoder
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "vit_large_patch16_224_fmow_rgb_scalemae.pth"
    torch.save({k: v.clone() for k, v in source.state_dict().items()}, path)  # torchgeo's file: a flat timm dict
    target = build_backbone("scalemae_vit_large_fmow", _card(), 32, weights=str(path),
                            arch="vit_tiny_patch16_224").encoder
    x = torch.randn(1, 3, 32, 32)
    source.eval(), target.eval()
    torch.testing.assert_close(target.forward_features(x), source.forward_features(x))
    with pytest.raises(ValueError, match="would download"):
        build_backbone("scalemae_vit_large_fmow", _card(), 32, weights="hub")
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        build_backbone("scalemae_vit_large_fmow", _card(), 32, weights=str(tmp_path / "absent.pth"))


def test_scalemae_position_embedding_takes_the_card_gsd():
    """torchgeo's ``res`` is the input GSD in metres: a 0.5 m card gives res 0.5 and a different embedding than 1 m."""
    pytest.importorskip("torchgeo")
    half = card_from_dict({"name": "t", "format": "raster_pairs", "root": "/nonexistent", "bit_depth": 11,
                           "classes": ["background", "a"], "bands": ["blue", "green", "red"], "gsd_m": 0.5})
    coarse = build_backbone("scalemae_vit_large_fmow", half, 32, weights="none", arch="vit_tiny_patch16_224")
    default = build_backbone("scalemae_vit_large_fmow", _card(), 32, weights="none", arch="vit_tiny_patch16_224")
    assert coarse.encoder.res == 0.5 and default.encoder.res == 1.0
    assert "res=0.5 m" in coarse.notes[0] and "no gsd_m" in default.notes[0]
    tokens = torch.zeros(1, 4, coarse.encoder.embed_dim)
    with torch.no_grad():
        coarse.encoder.cls_token.zero_(), default.encoder.cls_token.zero_()
        assert not torch.allclose(coarse.encoder._pos_embed(tokens), default.encoder._pos_embed(tokens))
