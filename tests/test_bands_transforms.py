"""Bands chosen by name slice the pretrained patch embedding and statistics; the multispectral normalisation."""

from __future__ import annotations

import pytest
import timm
import torch

import arctic_vit
from arctic_vit.corpus import CorpusContract, normalize_for
from arctic_vit.transforms import MultispectralNormalize

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


def test_bands_slice_and_reorder_weights_and_stats(export):
    source, folder = export
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)),
                              bands=("nir", "green", "red")).eval()
    w_src, w = source.patch_embed.proj.weight, model.patch_embed.proj.weight
    assert w.shape[1] == 3
    for i, j in enumerate((3, 1, 2)):
        assert torch.equal(w[:, i], w_src[:, j])
    cfg = model.pretrained_cfg
    assert cfg["bands"] == ("nir", "green", "red") and cfg["input_size"][0] == 3
    assert cfg["mean"] == (0.44, 0.22, 0.33) and cfg["std"] == (0.08, 0.06, 0.07)
    assert timm.data.resolve_model_data_config(model)["mean"] == (0.44, 0.22, 0.33)


def test_dropping_a_band_equals_feeding_its_mean(export):
    """A band left out contributes as if it were at its pretraining mean (normalised value 0)."""
    source, folder = export
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)),
                              bands=("red", "nir", "green")).eval()
    x = torch.randn(2, 3, 32, 32)
    full = torch.stack([torch.zeros(2, 32, 32), x[:, 2], x[:, 0], x[:, 1]], dim=1)  # blue at its mean
    torch.testing.assert_close(model(x), source(full), atol=1e-5, rtol=1e-5)


def test_band_the_weights_lack_gets_a_zero_kernel(export):
    source, folder = export
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)),
                              bands=("blue", "green", "red", "nir", "coastal")).eval()
    assert model.patch_embed.proj.weight[:, 4].abs().sum() == 0
    assert model.pretrained_cfg["mean"][4] == pytest.approx(sum(MEAN) / 4)
    x = torch.randn(1, 4, 32, 32)
    with_coastal = torch.cat([x, torch.randn(1, 1, 32, 32)], dim=1)
    torch.testing.assert_close(model(with_coastal), source(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bands, message", [
    (("red", "swir"), "valid names: coastal, blue"),
    (("red", "red"), "more than once"),
    ((), "at least one band"),
])
def test_bad_band_names_are_value_errors(bands, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model(NAME, bands=bands, img_size=32)


def test_bands_and_in_chans_must_agree():
    with pytest.raises(ValueError, match="contradicts"):
        timm.create_model(NAME, bands=("red", "green"), in_chans=4, img_size=32)


def test_bands_without_weights_set_channels_and_cfg():
    model = timm.create_model(NAME, bands="nir,red", img_size=32)
    assert model.patch_embed.proj.in_channels == 2 and model.pretrained_cfg["bands"] == ("nir", "red")


def test_normalize_for_uses_cfg_stats_and_bit_depth(export):
    _, folder = export
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder)))
    norm = normalize_for(model)
    dn = torch.randint(0, 2048, (2, 4, 8, 8), dtype=torch.int32).to(torch.uint16)
    expected = (dn.float() / 2047 - torch.tensor(MEAN).view(4, 1, 1)) / torch.tensor(STD).view(4, 1, 1)
    torch.testing.assert_close(norm(dn), expected)
    assert normalize_for(model, bit_depth=8).max_value == 255
    with pytest.raises(ValueError, match="3 bands"):
        norm(torch.zeros(3, 8, 8))


def test_normalize_rejects_bad_statistics():
    with pytest.raises(ValueError, match="positive"):
        MultispectralNormalize((0.1, 0.2), (0.1, 0.0))
    with pytest.raises(ValueError, match="bands"):
        MultispectralNormalize((0.1, 0.2), (0.1,))
