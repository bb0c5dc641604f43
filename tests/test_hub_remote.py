"""pretrained=True through a local hub stand-in (HF_ENDPOINT): pinned revisions, sha256 checks, hub down, push, smp."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

import arctic_vit
from arctic_vit import models
from arctic_vit.__main__ import main as cli
from arctic_vit.corpus import CorpusContract
from arctic_vit.hub import ChecksumError, WeightsUnavailableError, sha256_file
from arctic_vit.releases import PINS, WeightsPin

NAME = "arctic_mae_vit_tiny_patch16_224"
REPO = "arctic-vit-test/arctic_mae_vit_tiny_patch16_224.mae_arctic"
CORPUS = CorpusContract(("blue", "green", "red", "nir"), 11, (0.1, 0.2, 0.3, 0.4), (0.2, 0.25, 0.3, 0.35))


def _export(seed: int, out) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(seed)
    model = timm.create_model(NAME).eval()
    return model, arctic_vit.export_folder(NAME, model, out, corpus=CORPUS)


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory, capsys_module=None):
    """Two uploads to the stand-in: v1 (pinned) then v2 on main."""
    first, folder1 = _export(0, tmp_path_factory.mktemp("v1"))
    result1 = arctic_vit.push_folder(folder1, REPO)
    second, folder2 = _export(1, tmp_path_factory.mktemp("v2"))
    result2 = arctic_vit.push_folder(folder2, REPO)
    return dict(first=first, second=second, pin1=result1, pin2=result2, folder1=folder1)


@pytest.fixture
def pinned(published, monkeypatch):
    """Pin the registry's tiny weights to the first upload, as a release would in arctic_vit/releases.py."""
    key = f"{NAME}.mae_arctic"
    pin = published["pin1"]
    cfg = dataclasses.replace(models._PRETRAINED_CFGS[key], hf_hub_id=REPO, hf_hub_revision=pin.commit,
                              sha256=pin.sha256)
    monkeypatch.setitem(models._PRETRAINED_CFGS, key, cfg)
    monkeypatch.setitem(PINS, key, WeightsPin(REPO, pin.commit, pin.sha256))
    return pin


def test_push_creates_commits_with_the_folder(hub, published):
    repo = hub.repos[REPO]
    assert repo.branches["main"] == published["pin2"].commit
    files = repo.commits[published["pin1"].commit]
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)
    assert published["pin1"].sha256 == sha256_file(published["folder1"] / "model.safetensors")
    assert published["pin1"].commit != published["pin2"].commit


def test_push_cli_prints_commit_and_digest_to_pin(hub, published, capsys):
    assert cli(["push", "--folder", str(published["folder1"]), "--repo-id", "arctic-vit-test/cli",
                "--revision", "release"]) == 0
    out = capsys.readouterr().out
    commit = hub.repos["arctic-vit-test/cli"].branches["release"]
    assert commit in out and published["pin1"].sha256 in out and "WeightsPin(" in out


def test_pretrained_true_loads_the_pinned_revision(pinned, published):
    model = timm.create_model(NAME, pretrained=True).eval()
    x = torch.randn(1, 4, 224, 224)
    torch.testing.assert_close(model(x), published["first"](x))
    assert not torch.allclose(model(x), published["second"](x))


def test_alias_and_bands_through_the_hub(pinned, published):
    model = timm.create_model(NAME, pretrained=True, bands=("nir", "red"))
    src = published["first"].patch_embed.proj.weight
    assert torch.equal(model.patch_embed.proj.weight, src[:, [3, 2]])


def test_plain_timm_hf_hub_load_normalizes_with_the_exported_bit_depth(hub, published):
    """hf-hub: keeps only timm's keys; normalize_for fetches config.json at the same revision and reads the contract."""
    commit = published["pin1"].commit
    model = timm.create_model(f"hf-hub:{REPO}@{commit}", pretrained=True)
    assert "bit_depth" not in model.pretrained_cfg
    norm = arctic_vit.normalize_for(model)
    assert norm.max_value == 2047  # 11-bit: the old fallback gave 255
    dn = torch.full((1, 4, 1, 1), 1023, dtype=torch.int16)
    expected = (1023 / 2047 - torch.tensor(CORPUS.mean)) / torch.tensor(CORPUS.std)
    torch.testing.assert_close(norm(dn)[0, :, 0, 0], expected)
    config_requests = [p for m, p in hub.requests if p.endswith(f"/resolve/{commit}/config.json")]
    assert config_requests, hub.requests[-5:]


def test_pinned_sha256_mismatch_is_an_error(published):
    overlay = dict(hf_hub_id=REPO, hf_hub_revision=published["pin1"].commit, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="pinned"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay)


def test_hub_lfs_sha256_mismatch_is_an_error(hub, published):
    repo_id = "arctic-vit-test/tampered"
    data = (published["folder1"] / "model.safetensors").read_bytes()
    commit = hub.commit(repo_id, {"model.safetensors": data})
    hub.repos[repo_id].lfs_sha_override["model.safetensors"] = "f" * 64
    overlay = dict(hf_hub_id=repo_id, hf_hub_revision=commit, sha256=published["pin1"].sha256)
    with pytest.raises((ChecksumError, OSError), match=r"sha256|hash|checksum|etag"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay)


def test_unpublished_weights_explain_how_to_load_offline():
    with pytest.raises(WeightsUnavailableError, match="not published yet") as err:
        timm.create_model(NAME, pretrained=True)
    assert "pretrained_cfg_overlay" in str(err.value) and "local-dir:" in str(err.value)


def test_unknown_revision_is_a_clear_error(published):
    overlay = dict(hf_hub_id=REPO, hf_hub_revision="f" * 40, sha256=published["pin1"].sha256)
    with pytest.raises(WeightsUnavailableError, match="To load offline"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay)


def test_hub_down_cached_loads_and_uncached_explains(published, tmp_path):
    """With the hub unreachable: the cached pinned file still loads (verified); a fresh cache gets one clear error."""
    pin = published["pin1"]
    script = textwrap.dedent(f"""
        import timm, arctic_vit
        from arctic_vit.hub import WeightsUnavailableError
        overlay = dict(hf_hub_id={REPO!r}, hf_hub_revision={pin.commit!r}, sha256={pin.sha256!r})
        try:
            timm.create_model({NAME!r}, pretrained=True, pretrained_cfg_overlay=overlay)
            print('loaded')
        except WeightsUnavailableError as err:
            print('unavailable:', err)
    """)
    closed = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused

    def run(hf_home: str) -> str:
        env = dict(os.environ, HF_ENDPOINT=closed, HF_HOME=hf_home, HF_HUB_ETAG_TIMEOUT="2")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        return done.stdout + done.stderr[-2000:]

    arctic_vit.hub.resolve_weights(REPO, pin.commit, pin.sha256)  # fill the session cache while the hub is up
    warm = run(os.environ["HF_HOME"])
    assert "loaded" in warm, warm
    cold = run(str(tmp_path / "empty-hf-home"))
    assert "unavailable:" in cold and "To load offline" in cold, cold


def test_smp_encoder_weights_select_the_pinned_tag(pinned, published, monkeypatch):
    import segmentation_models_pytorch as smp

    from arctic_vit.smp_encoders import register_smp_encoders

    register_smp_encoders()
    try:
        model = smp.UPerNet(encoder_name=NAME, encoder_weights="mae_arctic", in_channels=4, classes=3)
    finally:
        monkeypatch.undo()
        register_smp_encoders()
    trunk = model.encoder.encoder.vit.state_dict()
    for key, value in published["first"].state_dict().items():
        assert torch.equal(trunk[key], value), key
    assert model(torch.randn(2, 4, 64, 64)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("arch", ["UPerNet", "Unet", "FPN"])
def test_smp_architectures_accept_the_encoder(arch):
    import segmentation_models_pytorch as smp

    model = getattr(smp, arch)(encoder_name="arctic_mae_vit_tiny_patch16_224", encoder_weights=None,
                               in_channels=4, classes=2)
    out = model(torch.randn(2, 4, 64, 64))
    assert out.shape == (2, 2, 64, 64) and torch.isfinite(out).all()


def test_smp_dpt_with_timm_universal_name_and_in_channels():
    import segmentation_models_pytorch as smp

    dpt = smp.DPT(encoder_name="tu-arctic_mae_vit_tiny_patch16_224", encoder_weights=None, in_channels=4, classes=2,
                  dynamic_img_size=True)
    assert dpt(torch.randn(2, 4, 64, 64)).shape == (2, 2, 64, 64)
    unet = smp.Unet(encoder_name="arctic_mae_vit_large", encoder_weights=None, in_channels=3, classes=2)
    assert unet.encoder.encoder.vit.patch_embed.proj.in_channels == 3
