"""segmentation-models-pytorch conventions, as its users rely on them: encoder_depth 3-5, any input size, TorchScript
refused with a message, encoder_weights errors that say what to do, a local export loaded into the encoder."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

import arctic_vit
from arctic_vit.corpus import CorpusContract
from arctic_vit.weights import WeightsUnavailableError

smp = pytest.importorskip("segmentation_models_pytorch")

ENCODER = "arctic_mae_vit_tiny_patch16_224"
STRIDES = [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("depth", [3, 4, 5])
def test_encoder_depth_gives_depth_plus_one_maps_at_smp_strides(depth):
    encoder = smp.encoders.get_encoder(ENCODER, in_channels=4, depth=depth, weights=None).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 4, 64, 96))
    assert [64 // f.shape[2] for f in features] == STRIDES[: depth + 1]
    assert [96 // f.shape[3] for f in features] == STRIDES[: depth + 1]
    assert [f.shape[1] for f in features] == encoder.out_channels and encoder.output_stride == 2**depth
    if depth == 3:  # the shallowest depth smp models expose drives a model end to end
        unet = smp.Unet(encoder_name=ENCODER, encoder_weights=None, in_channels=4, classes=3, encoder_depth=3,
                        decoder_channels=(64, 32, 16)).eval()
        with torch.no_grad():
            assert unet(torch.randn(2, 4, 64, 96)).shape == (2, 3, 64, 96)


def test_depth_outside_1_to_5_and_dilation_are_refused():
    with pytest.raises(ValueError, match=r"encoder_depth 1\.\.5"):
        smp.encoders.get_encoder(ENCODER, depth=6, weights=None)
    with pytest.raises(ValueError, match="dilated"):
        smp.encoders.get_encoder(ENCODER, output_stride=16, weights=None)


def test_any_input_size_pads_inside_and_crops_back():
    """67x71: every map is ceil(size / stride) and equals the map of the input zero-padded by hand to 96x96
    (a multiple of 32), cropped; smp.Unet (which declares any resolution) returns 67x71."""
    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder(ENCODER, in_channels=4, depth=5, weights=None).eval()
    x = torch.randn(1, 4, 67, 71)
    with torch.no_grad():
        features = encoder(x)
        by_hand = encoder.encoder(F.pad(x, (0, 96 - 71, 0, 96 - 67)))
    for level, stride in zip(features[2:], STRIDES[2:]):
        assert level.shape[-2:] == (-(-67 // stride), -(-71 // stride))
    for level, full in zip(features[2:], by_hand):
        torch.testing.assert_close(level, full[..., : level.shape[2], : level.shape[3]])
    unet = smp.Unet(encoder_name=ENCODER, encoder_weights=None, in_channels=4, classes=2).eval()
    with torch.no_grad():
        assert unet(x).shape == (1, 2, 67, 71)


def test_torchscript_is_refused_with_a_message_and_torch_export_works():
    model = smp.UPerNet(encoder_name=ENCODER, encoder_weights=None, in_channels=4, classes=2).eval()
    with pytest.raises(RuntimeError, match=r"cannot be TorchScripted.*torch\.export"):
        torch.jit.script(model)
    x = torch.randn(2, 4, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), atol=1e-4, rtol=1e-4)


def test_encoder_weights_errors_say_not_published_and_how_to_load_locally():
    with pytest.raises(WeightsUnavailableError, match="not published yet") as err:
        smp.UPerNet(encoder_name=ENCODER, encoder_weights="mae_arctic", in_channels=4, classes=2)
    assert "encoder_weights=None" in str(err.value) and "load_state_dict" in str(err.value)
    with pytest.raises(ValueError, match=r"'imagenet' is not a pretrained tag.*\['mae_arctic'\]"):
        smp.Unet(encoder_name=ENCODER, encoder_weights="imagenet", in_channels=4, classes=2)


def test_the_documented_local_export_recipe_loads_the_trunk_strictly(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model(ENCODER).eval()
    corpus = CorpusContract(("blue", "green", "red", "nir"), 11, (0.1,) * 4, (0.2,) * 4)
    folder = arctic_vit.export_folder(ENCODER, source, tmp_path / "export", corpus=corpus)
    model = smp.UPerNet(encoder_name=ENCODER, encoder_weights=None, in_channels=4, classes=2)
    model.encoder.load_state_dict(load_file(folder / "model.safetensors"))
    trunk = model.encoder.encoder.vit.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(trunk[key], value), key
