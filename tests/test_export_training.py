"""training.export: an MAE training checkpoint becomes a hub folder that plain timm and the core load strictly."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

from arctic_vit.corpus import ContractError
from tests.test_pack import make_chip_folder
from tests.test_pretrain import CONFIGS, tiny_overrides
from training.config import load_config
from training.export import main as export_main
from training.pack import pack
from training.pretrain import pretrain
from training.shards import read_contract

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_chip_folder(root / "chips", count=8, size=40)
    pack(root / "shards", chip_dir=root / "chips", bands=["nir", "green", "red"])
    cfg = load_config(CONFIGS / "pretrain_demo.yaml", overrides=tiny_overrides(
        root / "shards", root / "run", **{"optim.epochs": 1, "optim.accum_iter": 1, "run.vis_every": 0}))
    summary = pretrain(cfg)
    return root, summary


def test_export_writes_encoder_only_with_corpus_pretrained_cfg(trained, tmp_path):
    root, summary = trained
    out = tmp_path / "hub"
    export_main([f"export.checkpoint={root / 'run'}", f"export.out_dir={out}"])

    contract = read_contract(root / "shards")
    weights = load_file(out / "model.safetensors")
    checkpoint = torch.load(summary["checkpoint"], weights_only=True)["model"]
    assert not any(k.startswith("decoder_") or k == "mask_token" for k in weights)
    for key, value in weights.items():
        assert torch.equal(value, checkpoint[key]), key

    model = timm.create_model("arctic_mae_vit_tiny_patch16_224", pretrained=True, img_size=32,
                              pretrained_cfg_overlay=dict(file=str(out)))
    cfg = model.pretrained_cfg
    assert tuple(cfg["bands"]) == ("nir", "green", "red") and cfg["bit_depth"] == 8
    assert tuple(cfg["mean"]) == contract.mean and tuple(cfg["std"]) == contract.std
    assert tuple(cfg["input_size"]) == (3, 32, 32)
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], checkpoint["blocks.0.attn.qkv.weight"])

    plain = timm.create_model(f"local-dir:{out}")  # stock timm, no arctic code needed to read the folder
    plain.load_state_dict(weights, strict=True)
    from arctic_vit.corpus import normalize_for

    normalize = normalize_for(model)
    dn = torch.full((1, 3, 32, 32), 255.0)
    expected = (1.0 - torch.tensor(contract.mean)) / torch.tensor(contract.std)
    torch.testing.assert_close(normalize(dn)[0, :, 0, 0], expected)


def test_export_names_a_missing_checkpoint_or_contract(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_main([f"export.checkpoint={tmp_path}", f"export.out_dir={tmp_path / 'out'}"])
    _, summary = trained
    state = torch.load(summary["checkpoint"], weights_only=True)
    del state["corpus"]
    torch.save(state, tmp_path / "checkpoint-00000001.pt")
    with pytest.raises(ContractError, match=r"checkpoint-00000001\.pt: no corpus contract"):
        export_main([f"export.checkpoint={tmp_path}", f"export.out_dir={tmp_path / 'out'}"])
