"""Backbone interface: bands and normalisation per family, local weights, the location-aware models, lr groups."""

from __future__ import annotations

import pytest
import timm
import torch

from arctic_vit.hub import export_folder
from evaluation.backbones import Backbone, build_backbone
from evaluation.datasets.card import card_from_dict
from evaluation.models import (
    InstanceSegmentationModel,
    SemanticSegmentationModel,
    cosine_lr,
    masks_to_targets,
    param_groups,
)
from evaluation.prithvi import PRITHVI_MEAN, random_prithvi_checkpoint

STATS = {"mean": [300.0, 400.0, 500.0, 600.0], "std": [50.0, 60.0, 70.0, 80.0]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _card(bands=("blue", "green", "red", "nir"), bit_depth=11):
    return card_from_dict({"name": "t", "format": "raster_pairs", "root": "/nonexistent", "bit_depth": bit_depth,
                           "classes": ["background", "a", "b"], "bands": list(bands)})


def test_imagenet_backbone_is_fed_rgb_with_its_own_statistics():
    backbone = build_backbone("imagenet_mae_vit_large", _card(), 64, weights="none", arch="vit_tiny_patch16_224")
    assert backbone.input_bands == ("red", "green", "blue") and backbone.band_indices == (2, 1, 0)
    assert backbone.encoder.patch_embed.proj.in_channels == 3
    dn = torch.full((1, 4, 64, 64), 2047.0)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(backbone.prepare(dn)[0, :, 0, 0], expected)
    assert backbone.normalization.startswith("model-native")


def test_imagenet_backbone_without_blue_needs_an_explicit_band_mapping():
    card = _card(("nir", "green", "red"), bit_depth=8)
    with pytest.raises(ValueError, match=r"needs band\(s\) \['blue'\] but dataset 't' has"):
        build_backbone("imagenet_supervised_vit_large", card, 64, weights="none", arch="vit_tiny_patch16_224")
    mapped = build_backbone("imagenet_mae_vit_large", card, 64, weights="none", arch="vit_tiny_patch16_224",
                            rgb_bands=("nir", "green", "red"))
    assert mapped.band_indices == (0, 1, 2)
    assert mapped.encoder.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)  # statistics follow the R, G, B slots
    tiled = build_backbone("imagenet_supervised_vit_large", _card(), 64, weights="none",
                           arch="vit_tiny_patch16_224", imagenet_all_bands=True)
    assert tiled.encoder.patch_embed.proj.in_channels == 4


def test_arctic_backbone_loads_an_export_folder_with_its_bands_and_statistics(tmp_path):
    source = timm.create_model("arctic_mae_vit_tiny_patch16_224", pretrained=False, img_size=64)
    folder = export_folder("arctic_mae_vit_tiny_patch16_224", source, tmp_path / "export",
                           pretrained_cfg={"mean": (0.1, 0.2, 0.3, 0.4), "std": (0.5, 0.5, 0.5, 0.5)})
    card = _card(("nir", "green", "red"))
    backbone = build_backbone("arctic_mae_vit_tiny", card, 64, weights=str(folder))
    assert backbone.input_bands == ("nir", "green", "red")
    torch.testing.assert_close(backbone.encoder.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    nir = source.patch_embed.proj.weight[:, 3]
    torch.testing.assert_close(backbone.encoder.patch_embed.proj.weight[:, 0], nir)  # sliced by band name
    out = backbone.prepare(torch.zeros(1, 3, 64, 64))
    torch.testing.assert_close(out[0, :, 0, 0], -torch.tensor([0.4, 0.2, 0.3]) / 0.5)
    assert backbone.notes == ()
    extra = build_backbone("arctic_mae_vit_tiny", _card(("coastal", "red")), 64, weights=str(folder))
    assert "['coastal'] have no pretrained patch-embedding weights" in extra.describe()["notes"][0]
    assert torch.count_nonzero(extra.encoder.patch_embed.proj.weight[:, 0]) == 0


def test_random_backbone_uses_training_split_zscore_and_requires_stats():
    with pytest.raises(ValueError, match="dataset_stats"):
        build_backbone("random_vit_tiny", _card(), 64)
    backbone = build_backbone("random_vit_tiny", _card(), 64, dataset_stats=STATS)
    x = torch.tensor(STATS["mean"]).view(1, 4, 1, 1).expand(1, 4, 64, 64)
    assert backbone.prepare(x).abs().max() < 1e-5
    assert "z-score" in backbone.normalization
    zscored = build_backbone("imagenet_mae_vit_large", _card(), 64, weights="none", arch="vit_tiny_patch16_224",
                             normalization="zscore", dataset_stats=STATS)
    assert zscored.normalization == "train-split z-score" == backbone.normalization


def test_prithvi_backbone_from_official_file_uses_hls_statistics(tmp_path):
    path = tmp_path / "Prithvi_EO_V2_300M.pt"
    torch.save(random_prithvi_checkpoint(embed_dim=64, depth=4, img_size=224, decoder_depth=1,
                                         decoder_embed_dim=32), path)
    backbone = build_backbone("prithvi_eo2_300m", _card(("coastal", "blue", "green", "red", "nir")), 64,
                              weights=str(path), prithvi_num_heads=4)
    assert backbone.input_bands == ("blue", "green", "red", "nir") and backbone.band_indices == (1, 2, 3, 4)
    dn = torch.full((1, 5, 64, 64), 2047.0 * PRITHVI_MEAN[3] / 10_000)
    assert backbone.prepare(dn)[0, 3].abs().max() < 1e-4  # reflectance at the NIR mean -> 0


def test_out_indices_follow_depth():
    vit = timm.create_model("vit_tiny_patch16_224", depth=24, num_classes=0, img_size=32)
    assert Backbone("x", vit, (0,), ("red",), torch.nn.Identity(), "", "").out_indices == (5, 11, 17, 23)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    assert Backbone("x", vit, (0,), ("red",), torch.nn.Identity(), "", "").out_indices == (2, 5, 8, 11)


def _tiny(card=None):
    return build_backbone("random_vit_tiny", card or _card(), 64, dataset_stats=STATS)


def test_semantic_model_shapes_and_latlon_embedding():
    torch.manual_seed(0)
    model = SemanticSegmentationModel(_tiny(), 3, pyramid_channels=32, decoder_channels=32, use_latlon=True).eval()
    x = torch.rand(2, 4, 64, 64) * 2047
    nan = torch.full((2, 2), float("nan"))
    with torch.no_grad():
        unknown = model(x, nan)
        known = model(x, torch.tensor([[70.0, -150.0], [68.0, 30.0]]))
        model.features.latlon = None
        plain = model(x, None)
    assert unknown.shape == (2, 3, 64, 64)
    torch.testing.assert_close(unknown, plain)  # an unknown location adds exactly nothing
    assert not torch.allclose(known, plain)


def test_frozen_encoder_trains_only_pyramid_and_head():
    model = SemanticSegmentationModel(_tiny(), 3, pyramid_channels=32, decoder_channels=32, freeze_encoder=True)
    vit = model.features.encoder.vit
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    head_before = model.head[0].weight.clone()
    groups = param_groups(model, vit, weight_decay=0.05, layer_decay=0.75)
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    model.train()
    assert not vit.training
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 4, 64, 64) * 2047), torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert not torch.equal(head_before, model.head[0].weight)


def test_layer_decay_groups_scale_blocks_and_skip_decay_on_norms():
    model = SemanticSegmentationModel(_tiny(), 3, pyramid_channels=32, decoder_channels=32)
    vit = model.features.encoder.vit
    groups = param_groups(model, vit, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale_of[id(vit.blocks[0].mlp.fc1.weight)] < scale_of[id(vit.blocks[11].mlp.fc1.weight)] < 1.0
    assert scale_of[id(model.head[0].weight)] == 1.0
    assert decay_of[id(vit.pos_embed)] == 0.0 and decay_of[id(vit.blocks[0].norm1.weight)] == 0.0
    assert len(scale_of) == sum(p.requires_grad for p in model.parameters())
    assert cosine_lr(0, 100, 10) == pytest.approx(0.1) and cosine_lr(100, 100, 10) == pytest.approx(0.0)


def test_mask_rcnn_on_the_pyramid_trains_and_predicts():
    torch.manual_seed(0)
    model = InstanceSegmentationModel(_tiny(), 3, img_size=64, pyramid_channels=32, use_latlon=True,
                                      rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=20,
                                      box_batch_size_per_image=32, box_detections_per_img=10)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 5:20, 5:25] = 1
    masks[1, 40:60, 30:50] = 1
    target = masks_to_targets({"masks": masks, "labels": torch.tensor([1, 2])})
    assert target["boxes"].tolist() == [[5, 5, 25, 20], [30, 40, 50, 60]]
    x = torch.rand(1, 4, 64, 64) * 2047
    model.train()
    losses = model(x, [target], torch.tensor([[70.0, -150.0]]))
    assert {"loss_classifier", "loss_mask", "loss_objectness"} <= set(losses)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model(x, None, torch.tensor([[float("nan")] * 2]))
    assert out["masks"].shape[1:] == (1, 64, 64) and len(out["scores"]) <= 10
