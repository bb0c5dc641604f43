"""Export folders: plain timm (no arctic_vit import), transformers AutoModel, MAE checkpoints, bad checkpoints."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file

import arctic_vit
from arctic_vit.__main__ import main as cli
from arctic_vit.corpus import ContractError, CorpusContract
from arctic_vit.hub import ChecksumError, filter_encoder_state_dict
from arctic_vit.models import STANDARD_CFG_KEYS

NAME = "arctic_mae_vit_tiny_patch16_224"
CORPUS = CorpusContract(("blue", "green", "red", "nir"), 11, (0.1, 0.2, 0.3, 0.4), (0.2,) * 4, gsd_m=0.5)


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    return timm.create_model(NAME, img_size=64).eval()


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory):
    return arctic_vit.export_folder(NAME, source, tmp_path_factory.mktemp("export"),
                                    corpus=CORPUS)


def _mae_checkpoint(encoder: torch.nn.Module) -> dict:
    """Random-init checkpoint in the official facebookresearch/mae layout (decoder 64-d x 2 blocks)."""
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    dim, dec = encoder.embed_dim, 64
    state["mask_token"] = torch.randn(1, 1, dec)
    state["decoder_embed.weight"], state["decoder_embed.bias"] = torch.randn(dec, dim), torch.randn(dec)
    state["decoder_pos_embed"] = torch.randn(1, encoder.pos_embed.shape[1], dec)
    for i in range(2):
        state[f"decoder_blocks.{i}.norm1.weight"] = torch.ones(dec)
        state[f"decoder_blocks.{i}.attn.qkv.weight"] = torch.randn(3 * dec, dec)
    state["decoder_norm.weight"] = torch.ones(dec)
    state["decoder_pred.weight"] = torch.randn(16 * 16 * 4, dec)
    return {"model": state, "epoch": 799, "args": argparse.Namespace(model="mae_vit_tiny", mask_ratio=0.75)}


def test_folder_layout_and_config(folder, source):
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md",
                                                  "image_processing_arctic.py"}
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert "num_classes" not in config["model_args"]
    assert config["model_args"] == {"in_chans": 4, "img_size": 64, "dynamic_img_size": True}
    assert config["pretrained_cfg"]["fixed_input_size"] is False
    assert set(config["pretrained_cfg"]) <= STANDARD_CFG_KEYS
    assert config["corpus"] == CORPUS.to_dict()  # the contract, once
    assert set(config["arctic_vit"]) == {"variant", "weights_sha256"}  # no second copy of bands / bit depth / GSD
    assert config["pretrained_cfg"]["mean"] == [0.1, 0.2, 0.3, 0.4] and config["pretrained_cfg"]["std"] == [0.2] * 4
    assert not any("neutral" in note for note in config["pretrained_cfg"]["notes"])
    assert "11-bit" in config["pretrained_cfg"]["notes"][0]
    assert config["arctic_vit"]["weights_sha256"] == arctic_vit.hub.sha256_file(folder / "model.safetensors")


def test_plain_timm_loads_the_folder_without_arctic_vit(folder, source, tmp_path):
    x = torch.randn(2, 4, 64, 64)
    torch.save({"x": x, "y": source(x).detach()}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, timm, torch
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        model = timm.create_model('local-dir:{folder}', pretrained=True).eval()
        assert 'arctic_vit' not in sys.modules, 'arctic_vit was imported'
        assert tuple(model.pretrained_cfg['mean']) == (0.1, 0.2, 0.3, 0.4), model.pretrained_cfg['mean']
        torch.testing.assert_close(model(io['x']), io['y'], atol=1e-5, rtol=1e-5)
        print('plain-timm-ok')
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "plain-timm-ok" in done.stdout, done.stderr[-3000:]


def test_transformers_automodel_loads_the_folder(folder, source):
    from transformers import AutoModel, TimmWrapperModel

    model = AutoModel.from_pretrained(str(folder)).eval()
    assert isinstance(model, TimmWrapperModel)
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).pooler_output, source(x), atol=1e-5, rtol=1e-5)


def test_arctic_reload_through_folder(folder, source):
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(folder))).eval()
    x = torch.randn(1, 4, 64, 64)
    torch.testing.assert_close(model(x), source(x))
    assert model.pretrained_cfg["mean"] == (0.1, 0.2, 0.3, 0.4)


def test_tampered_weights_fail_the_recorded_sha256(folder, tmp_path):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "copy")
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(copy)))


def test_official_mae_checkpoint_exports_via_cli_and_loads_strictly(source, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint-799.pth"
    torch.save(_mae_checkpoint(source), ckpt)
    contract = CorpusContract(("blue", "green", "red", "nir"), 11, (0.1,) * 4, (0.3,) * 4).write(tmp_path / "c.json")
    assert cli(["export", f"export.checkpoint={ckpt}", f"export.out_dir={tmp_path / 'hub'}",
                f"export.model_name={NAME}", f"export.corpus={contract}", "export.gsd_m=0.5"]) == 0
    assert "exported" in capsys.readouterr().out
    model = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True)  # strict load
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert CorpusContract.read(tmp_path / "hub" / "config.json").gsd_m == 0.5


@pytest.mark.parametrize(("args", "message"), [
    (["export.checkpoint=x.pth", "export.color=red"], "unknown key 'export.color'"),
    (["export.checkpoint=x.pth"], "missing required key"),
    (["export.checkpoint=x.pth", "export.out_dir=o", "export.model_name=arctic_mae_vit_large",
      "export.corpus=/nonexistent/corpus.json"], "corpus.json: corpus contract file not found"),
])
def test_export_cli_validates_keys_and_contract_before_reading(args, message, capsys):
    with pytest.raises(SystemExit):
        cli(["export", *args])
    assert message in capsys.readouterr().err


def test_module_prefix_and_safetensors_checkpoint(source, tmp_path):
    state = {f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "ddp.safetensors")
    out = arctic_vit.export_folder(NAME, tmp_path / "ddp.safetensors", tmp_path / "hub", corpus=CORPUS)
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    assert torch.equal(model.cls_token, source.cls_token)


def test_a_foreign_key_fails_the_strict_load(source):
    state = dict(source.state_dict())
    state["head.weight"] = torch.zeros(3, 192)
    with pytest.raises(RuntimeError, match=r"head\.weight"):
        arctic_vit.export_folder(NAME, state, "/nonexistent/should-not-be-written", corpus=CORPUS)


class Payload:
    """An arbitrary pickled class: torch.load(weights_only=True) must refuse it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {}, "obj": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        arctic_vit.hub.load_checkpoint(tmp_path / "evil.pth")


def test_filter_drops_mae_only_keys(source):
    filtered = filter_encoder_state_dict(_mae_checkpoint(source))
    assert set(filtered) == set(source.state_dict())
    with pytest.raises(ValueError, match="no encoder tensors"):
        filter_encoder_state_dict({"model": {"mask_token": torch.zeros(1)}})


def test_export_needs_matching_band_count(source, tmp_path):
    rgb = CorpusContract(("red", "green", "blue"), 11, (0.1,) * 3, (0.2,) * 3)
    with pytest.raises(ValueError, match="4 input bands"):
        arctic_vit.export_folder(NAME, source, tmp_path, corpus=rgb)


def test_plain_timm_load_normalizes_with_the_exported_bit_depth(folder):
    """local-dir: keeps only timm's keys in pretrained_cfg; normalize_for reads the contract from the folder (11-bit:
    DN 2047 -> (1 - mean) / std), not an 8-bit default."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert "bit_depth" not in model.pretrained_cfg
    norm = arctic_vit.normalize_for(model)
    assert norm.max_value == 2047
    dn = torch.full((1, 4, 2, 2), 2047, dtype=torch.int32)
    expected = (1 - torch.tensor([0.1, 0.2, 0.3, 0.4])) / 0.2
    torch.testing.assert_close(norm(dn)[0, :, 0, 0], expected)
    assert arctic_vit.corpus.contract_for(model) == CORPUS


def test_export_without_contract_fails_naming_field_and_file(folder, tmp_path):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    del config["corpus"]["bit_depth"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ContractError, match=r"config\.json.*\['bit_depth'\] missing"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(copy)))
    with pytest.raises(ContractError, match=r"config\.json.*bit_depth"):
        arctic_vit.normalize_for(timm.create_model(f"local-dir:{copy}", pretrained=True))
    del config["corpus"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ContractError, match=r"config\.json: no 'corpus' section"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(copy)))


def test_export_needs_a_measured_contract(source, tmp_path):
    with pytest.raises(TypeError, match="corpus=CorpusContract"):
        arctic_vit.export_folder(NAME, source, tmp_path)
    with pytest.raises(ContractError, match="no mean/std"):
        arctic_vit.export_folder(NAME, source, tmp_path, corpus=CorpusContract(CORPUS.bands, 11))


def test_deprecated_pretrained_cfg_keyword_still_exports(source, tmp_path):
    with pytest.warns(DeprecationWarning, match="corpus="):
        out = arctic_vit.export_folder(NAME, source, tmp_path, pretrained_cfg=dict(
            mean=(0.1, 0.2, 0.3, 0.4), std=(0.2,) * 4, bit_depth=8, input_size=(4, 64, 64)))
    contract = CorpusContract.read(out / "config.json")
    assert contract.bit_depth == 8 and contract.bands == ("blue", "green", "red", "nir")


def test_full_mae_checkpoint_loads_as_an_encoder_through_the_file_overlay(source, tmp_path):
    """An official-layout MAE training checkpoint (encoder + decoder_* + mask_token + args) is filtered, then loaded
    strictly: into an arctic model through pretrained_cfg_overlay=dict(file=...), into a stock timm ViT (an
    ImageNet-style baseline) through dict(state_dict=filter_encoder_state_dict(load_checkpoint(...)))."""
    ckpt = tmp_path / "checkpoint-799.pth"
    torch.save(_mae_checkpoint(source), ckpt)
    model = timm.create_model(NAME, pretrained=True, img_size=64, pretrained_cfg_overlay=dict(file=str(ckpt)))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    state = filter_encoder_state_dict(arctic_vit.hub.load_checkpoint(ckpt))
    stock = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, in_chans=4, img_size=64,
                              pretrained_cfg_overlay=dict(state_dict=state))
    x = torch.randn(1, 4, 64, 64)
    torch.testing.assert_close(stock.eval()(x), source(x))
