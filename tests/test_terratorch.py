"""The arctic family as a TerraTorch backbone (optional extra ``terratorch``; skipped when it is absent).

The model is built the documented TerraTorch way (``EncoderDecoderFactory`` with ``backbone_*`` keys and the plain-ViT
necks); weights come from a local export written in the test, never from the hub.
"""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

pytest.importorskip("terratorch")

from terratorch.datasets.utils import HLSBands
from terratorch.models import EncoderDecoderFactory
from terratorch.registry import BACKBONE_REGISTRY

import arctic_vit
from arctic_vit.corpus import CorpusContract
from arctic_vit.terratorch_backbones import ArcticTerraTorchBackbone, terratorch_necks

NAME = "arctic_mae_vit_tiny_patch16_224"
MEAN = (0.11, 0.22, 0.33, 0.44)
STD = (0.05, 0.06, 0.07, 0.08)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    source = timm.create_model(NAME, img_size=32).eval()
    folder = arctic_vit.export_folder(NAME, source, tmp_path_factory.mktemp("export"),
                                      corpus=CorpusContract(("blue", "green", "red", "nir"), 11, MEAN, STD))
    return source, folder


def test_registered_in_terratorch_before_timm():
    for name in (NAME, "arctic_mae_vit_large"):
        assert BACKBONE_REGISTRY.find_registry(name) is BACKBONE_REGISTRY._sources["terratorch"]
    assert isinstance(BACKBONE_REGISTRY.build(NAME, bands=["BLUE", "GREEN", "RED", "NIR_NARROW"]),
                      ArcticTerraTorchBackbone)


def test_encoder_decoder_factory_segmentation_forward(export):
    source, folder = export
    model = EncoderDecoderFactory().build_model(
        task="segmentation", backbone=NAME,
        backbone_bands=[HLSBands.BLUE, HLSBands.GREEN, HLSBands.RED, HLSBands.NIR_NARROW],
        backbone_pretrained=True, backbone_ckpt_path=str(folder),
        necks=terratorch_necks(depth=12), decoder="UNetDecoder", decoder_channels=[64, 32, 16, 8], num_classes=3,
    ).eval()
    assert model.encoder.vit.pretrained_cfg["mean"] == MEAN  # the export's corpus statistics, not the registry's
    for a, b in zip(model.encoder.vit.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        for size in ((64, 80), (72, 72)):  # 72: the factory pads to the patch multiple and crops back
            out = model(torch.randn(2, 4, *size)).output
            assert out.shape == (2, 3, *size) and torch.isfinite(out).all()


def test_backbone_tokens_are_timms_features(export):
    """Every block's tokens (class token first) as timm computes them; the last one through the final norm."""
    source, folder = export
    backbone = BACKBONE_REGISTRY.build(NAME, pretrained=True, ckpt_path=str(folder)).eval()
    assert backbone.out_channels == [192] * 12 and backbone.model_bands == ["blue", "green", "red", "nir"]
    x = torch.randn(1, 4, 48, 32)
    with torch.no_grad():
        tokens = backbone(x)
        maps = source.forward_intermediates(x, indices=[2, 5], intermediates_only=True)  # NCHW, no class token
        final = source.forward_features(x)
    assert len(tokens) == 12 and tokens[0].shape == (1, 1 + 3 * 2, 192)
    torch.testing.assert_close(tokens[-1], final)
    for index, fmap in zip((2, 5), maps):
        torch.testing.assert_close(tokens[index][:, 1:].reshape(1, 3, 2, 192).permute(0, 3, 1, 2), fmap)


def test_bands_select_pretrained_kernels_by_name(tmp_path, export):
    """TerraTorch band names pick the matching kernels of a full MAE checkpoint (decoder keys dropped)."""
    source, _ = export
    checkpoint = {**source.state_dict(), "mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.ones(3)}
    save_file(checkpoint, tmp_path / "mae_full.safetensors")
    backbone = BACKBONE_REGISTRY.build(NAME, pretrained=True, ckpt_path=str(tmp_path / "mae_full.safetensors"),
                                       bands=["NIR_BROAD", "RED", "COASTAL_AEROSOL"])
    weight = backbone.vit.patch_embed.proj.weight
    src = source.patch_embed.proj.weight
    assert torch.equal(weight[:, 0], src[:, 3]) and torch.equal(weight[:, 1], src[:, 2])
    assert not weight[:, 2].any()  # coastal is not among the weights' bands: zero kernel
    assert backbone.model_bands == ["nir", "red", "coastal"]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(bands=["BLUE", "SWIR_1"]), "unknown band name"),
    (dict(bands=[0, 1, 2, 3]), "is not a name"),
    (dict(bands=["BLUE"], model_bands=["RED"]), "disagree"),
    (dict(ckpt_path="weights.safetensors"), "pretrained=False"),
    (dict(out_indices=[12]), r"in \[0, 12\)"),
])
def test_bad_backbone_arguments_fail_with_a_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BACKBONE_REGISTRY.build(NAME, **kwargs)
