"""evaluation.artefact: save -> load gives the same model; tampered or incomplete folders are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arctic_vit.corpus import CorpusContract
from evaluation.artefact import (
    ArtefactError,
    build_kwargs_from_recipe,
    load_finetuned,
    save_finetuned,
)
from evaluation.backbones import build_backbone
from evaluation.datasets.card import DatasetCard
from evaluation.models import InstanceSegmentationModel, SemanticSegmentationModel

BANDS = ("blue", "green", "red", "nir")
CLASSES = ("background", "iwp")
TILE = 64


# small models on a shared 2-core machine run several times faster on one thread
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def _card() -> DatasetCard:
    return DatasetCard(name="t", format="raster_pairs", root=Path("."), classes=CLASSES, bands=BANDS, bit_depth=11)


def _cfg(task: str) -> dict:
    return {"task": task, "model": {"pyramid_channels": 32, "decoder_channels": 32, "use_latlon": False,
                                    "freeze_encoder": False,
                                    "maskrcnn": {"rpn_post_nms_top_n_test": 50, "box_detections_per_img": 20}},
            "backbone": {"arch": None, "rgb_bands": ["red", "green", "blue"]}}


def tiny_model(task: str, backbone: str = "arctic_mae_vit_tiny", seed: int = 0):
    """A random-init tiny model as finetune builds it, with the contract it normalises with."""
    torch.manual_seed(seed)
    card = _card()
    stats = {"mean": [300.0, 400.0, 350.0, 900.0], "std": [80.0, 90.0, 100.0, 200.0]}
    b = build_backbone(backbone, card, TILE, weights="none", dataset_stats=stats)
    cfg = _cfg(task)
    kwargs = build_kwargs_from_recipe(cfg, backbone)
    if task == "semantic":
        model = SemanticSegmentationModel(b, len(CLASSES), **kwargs["model_kwargs"])
    else:
        model = InstanceSegmentationModel(b, len(CLASSES), img_size=TILE, **kwargs["model_kwargs"])
    corpus = CorpusContract(bands=BANDS, bit_depth=11, gsd_m=0.5)
    return model.eval(), corpus, b, kwargs


def _save(folder: Path, task: str = "semantic", backbone: str = "arctic_mae_vit_tiny"):
    model, corpus, b, kwargs = tiny_model(task, backbone)
    save_finetuned(folder, model, task=task, classes=CLASSES, corpus=corpus, tile_size=TILE,
                   normalization=b.normalization, encoder_provenance=b.describe(), build_kwargs=kwargs)
    return model


@pytest.mark.parametrize("backbone", ["arctic_mae_vit_tiny", "random_vit_tiny"])
def test_semantic_save_load_identical_outputs(tmp_path, backbone):
    model = _save(tmp_path, "semantic", backbone)
    x = torch.randint(0, 2048, (2, 4, TILE, TILE)).float()
    loaded = load_finetuned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    meta = json.loads((tmp_path / "predictor.json").read_text())
    assert meta["corpus"]["bands"] == list(BANDS) and meta["corpus"]["bit_depth"] == 11
    assert meta["builder"] == "evaluation.models.SemanticSegmentationModel"
    assert loaded.classes == CLASSES and loaded.tile_size == TILE and loaded.task == "semantic"
    if backbone == "random_vit_tiny":  # z-score of the training split: mean 300 DN of 2047 -> 300/2047
        assert meta["corpus"]["mean"][0] == pytest.approx(300 / 2047)
        assert meta["corpus"]["std"][3] == pytest.approx(200 / 2047)


def test_instance_save_load_identical_outputs(tmp_path):
    model = _save(tmp_path, "instance")
    x = torch.randint(0, 2048, (1, 4, TILE, TILE)).float()
    loaded = load_finetuned(tmp_path)
    assert loaded.model.__class__.__name__ == "InstanceSegmentationModel"
    with torch.no_grad():
        a, b = model(x)[0], loaded.model(x)[0]
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_tampered_weights_are_refused(tmp_path):
    _save(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"sha256 .* does not match"):
        load_finetuned(tmp_path)
    weights.unlink()
    with pytest.raises(ArtefactError, match=r"model\.safetensors: missing"):
        load_finetuned(tmp_path)


@pytest.mark.parametrize("field", ["classes", "corpus", "sha256", "tile_size"])
def test_missing_field_is_named(tmp_path, field):
    _save(tmp_path)
    path = tmp_path / "predictor.json"
    meta = json.loads(path.read_text())
    del meta[field]
    path.write_text(json.dumps(meta))
    with pytest.raises(ArtefactError, match=rf"\['{field}'\] missing"):
        load_finetuned(tmp_path)


def test_missing_corpus_field_and_wrong_contract_are_named(tmp_path):
    _save(tmp_path)
    path = tmp_path / "predictor.json"
    meta = json.loads(path.read_text())
    del meta["corpus"]["bit_depth"]
    path.write_text(json.dumps(meta))
    with pytest.raises(ArtefactError, match=r"predictor.json \[corpus\]: .*\['bit_depth'\] missing"):
        load_finetuned(tmp_path)
    model, corpus, _, kwargs = tiny_model("semantic", "random_vit_tiny")
    wrong = corpus.with_stats([0.1] * 4, [0.2] * 4)
    with pytest.raises(ArtefactError, match=r"corpus mean .* differs from the mean the model normalises with"):
        save_finetuned(tmp_path / "x", model, task="semantic", classes=CLASSES, corpus=wrong, tile_size=TILE,
                       normalization="zscore", encoder_provenance={}, build_kwargs=kwargs)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ArtefactError, match=r"predictor\.json: not found"):
        load_finetuned(tmp_path)


def test_instance_heads_run_in_float32_under_autocast():
    """Under bf16 autocast (a GPU's default) the Mask R-CNN heads run in float32: boxes, scores and masks come back
    float32 and box corners are not rounded to bf16's grid (8 significant bits: up to 1 px at 224 px), while a
    float32 run is exactly what torchvision's own head classes compute; a training step under autocast works, and
    the model deep-copies into an independent model (the heads' class is swapped, not wrapped)."""
    import copy

    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    from evaluation.models import masks_to_targets

    model = tiny_model("instance")[0].eval()
    x = torch.rand(2, 4, TILE, TILE, generator=torch.Generator().manual_seed(1)) * 1500 + 200
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)
    boxes = torch.cat([out["boxes"] for out in mixed])
    assert len(boxes) > 10
    assert {out[k].dtype for out in mixed for k in ("boxes", "scores", "masks")} == {torch.float32}
    on_grid = (boxes == boxes.to(torch.bfloat16).float()).float().mean()
    assert on_grid < 0.5, f"{on_grid:.0%} of box corners on the bf16 grid: the heads ran in bf16"

    plain = copy.deepcopy(model)
    plain.detector.rpn.__class__, plain.detector.roi_heads.__class__ = RegionProposalNetwork, RoIHeads
    with torch.no_grad():
        ours, torchvisions = model(x), plain(x)
    for a, b in zip(ours, torchvisions):
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert type(model.detector.rpn) is not RegionProposalNetwork  # the copy's swap did not touch the original

    model.train()
    mask = torch.zeros(1, TILE, TILE, dtype=torch.uint8)
    mask[0, 10:30, 12:28] = 1
    target = masks_to_targets({"masks": mask, "labels": torch.tensor([1])})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(x[:1], [target])
    loss = sum(losses.values())
    assert all(v.dtype == torch.float32 for v in losses.values()) and torch.isfinite(loss)
    loss.backward()
