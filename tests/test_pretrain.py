"""training.pretrain: logging/checkpoint outputs, exact resume after SIGKILL (1 process and torchrun x 2), NaN stop,
and the ViT-L paper recipe running 2 steps on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from arctic_vit.corpus import CorpusContract
from tests.test_pack import make_chip_folder
from training.checkpoint import list_checkpoints, load_checkpoint
from training.config import load_config
from training.mae import MaskedAutoencoder
from training.pack import pack
from training.pretrain import NonFiniteLossError, pretrain
from training.shards import read_contract

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    make_chip_folder(root / "chips", count=16, size=40)
    pack(root / "shards", chip_dir=root / "chips", bands=["nir", "green", "red"], shard_size=6)
    return root / "shards"


def tiny_overrides(shards: Path, out_dir: Path, **extra) -> list[str]:
    """A 2-epoch tiny-ViT run on 32 px crops: 16 chips / (batch 2 x accumulation 2) = 4 steps per epoch."""
    values = {
        "data.shards": shards, "data.img_size": 32, "data.batch_size": 2, "data.num_workers": 0,
        "data.shuffle_buffer": 5, "model.decoder_embed_dim": 32, "model.decoder_depth": 1,
        "model.decoder_num_heads": 2, "optim.epochs": 2, "optim.warmup_epochs": 1, "optim.lr": 1e-3,
        "optim.accum_iter": 2, "optim.clip_grad": 1.0, "run.out_dir": out_dir, "run.precision": "fp32",
        "run.threads": 1, "run.ckpt_every_steps": 3, "run.keep_last": 2, "run.log_every": 1, "run.vis_every": 4,
        "run.vis_count": 2, "run.progress": False,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def run_cli(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [*(launcher or [sys.executable]), "-m", "training.pretrain",
               "--config", str(CONFIGS / "pretrain_demo.yaml"), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def assert_same_training_state(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"]
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    for param_id, state in first["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][param_id][name]), (param_id, name)
    assert first["scheduler"] == second["scheduler"]
    assert torch.equal(first["rng"][0]["torch"], second["rng"][0]["torch"])


def test_run_writes_logs_png_and_safe_checkpoints(shards, tmp_path):
    out = tmp_path / "run"
    result = run_cli(tiny_overrides(shards, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lr = blr" in result.stderr and "effective batch 4" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 8 and summary["steps_per_epoch"] == 4 and summary["accum"] == 2
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in lines if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    vis = [m for m in lines if "vis_mse_ratio" in m]  # with each reconstruction PNG: its error against a baseline
    assert [m["step"] for m in vis] == [4, 8]
    assert all(m["vis_masked_mse"] > 0 and m["vis_baseline_mse"] > 0 for m in vis)
    assert metrics[0]["lr"] < metrics[3]["lr"]  # per-iteration warmup over the first epoch
    assert all(m["img_per_s"] > 0 for m in metrics)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["step_00000004.png", "step_00000008.png"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["checkpoint-00000006.pt",
                                                                       "checkpoint-00000008.pt"]  # keep last 2
    state = torch.load(out / "checkpoints" / "checkpoint-00000008.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "data_position", "step", "config",
                          "corpus"}
    assert CorpusContract.from_dict(state["corpus"]) == read_contract(shards)
    assert state["data_position"] == {"epoch": 2, "samples_per_rank": 0, "world_size": 1, "batch_size": 2,
                                      "accum": 2}
    assert (out / "resolved_config.yaml").is_file()


def test_sigkill_mid_epoch_then_resume_is_bit_identical(shards, tmp_path):
    straight = run_cli(tiny_overrides(shards, tmp_path / "straight", **{"data.num_workers": 1}))
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tiny_overrides(shards, tmp_path / "killed", **{"data.num_workers": 1})
    killed = run_cli([*interrupted, "run.kill_at_step=5"])
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path / "killed" / "checkpoints")] == ["checkpoint-00000003.pt"]
    resumed = run_cli(interrupted)  # resumes from step 3 (epoch 0, 12 of 16 samples) and crosses the epoch
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "checkpoint-00000008.pt",
                               tmp_path / "killed" / "checkpoints" / "checkpoint-00000008.pt")


@pytest.mark.slow
def test_torchrun_two_processes_sigkill_then_resume_is_bit_identical(shards, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    extra = {"optim.accum_iter": 1}  # 16 chips / (2 ranks x batch 2) = 4 steps per epoch
    straight = run_cli(tiny_overrides(shards, tmp_path / "straight", **extra), launcher)
    assert straight.returncode == 0, straight.stderr[-3000:]
    interrupted = tiny_overrides(shards, tmp_path / "killed", **extra)
    killed = run_cli([*interrupted, "run.kill_at_step=5"], launcher)
    assert killed.returncode != 0
    resumed = run_cli(interrupted, launcher)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = tmp_path / "killed" / "checkpoints" / "checkpoint-00000008.pt"
    assert_same_training_state(tmp_path / "straight" / "checkpoints" / "checkpoint-00000008.pt", final)
    state = load_checkpoint(final)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_non_finite_loss_stops_with_a_last_good_checkpoint(shards, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MaskedAutoencoder.forward_loss_terms

    def loss_turning_nan(self, *args):
        calls["n"] += 1
        total, weight = original(self, *args)
        return (total * float("nan") if calls["n"] == 5 else total), weight  # 3rd step (2 micro-batches each)

    monkeypatch.setattr(MaskedAutoencoder, "forward_loss_terms", loss_turning_nan)
    cfg = load_config(CONFIGS / "pretrain_demo.yaml",
                      overrides=tiny_overrides(shards, tmp_path / "nan", **{"run.ckpt_every_steps": 100}))
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*Last good checkpoint: .*checkpoint-00000002\.pt"):
        pretrain(cfg)
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / "checkpoint-00000002.pt")
    assert state["step"] == 2 and state["data_position"]["samples_per_rank"] == 8
    assert all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.slow
def test_paper_config_builds_vit_large_and_runs_two_steps(shards, tmp_path):
    cfg = load_config(
        CONFIGS / "pretrain_vit_large_paper.yaml",
        overrides=[f"data.shards={shards}", "data.batch_size=1", "data.num_workers=0", "optim.effective_batch=2",
                   "run.max_steps=2", "run.compile=false", f"run.out_dir={tmp_path / 'paper'}", "run.threads=2",
                   "run.progress=false", "run.vis_every=0"],
    )
    assert cfg["model"]["encoder"] == "arctic_mae_vit_large_patch16_224" and cfg["data"]["img_size"] == 224
    assert (cfg["optim"]["epochs"], cfg["optim"]["warmup_epochs"], cfg["optim"]["blr"]) == (800, 40, 1.5e-4)
    assert cfg["model"]["decoder_embed_dim"] == 512 and cfg["model"]["decoder_depth"] == 8
    summary = pretrain(cfg)
    assert summary["step"] == 2 and summary["accum"] == 2
    assert summary["lr"] == pytest.approx(1.5e-4 * 2 / 256)
    state = load_checkpoint(summary["checkpoint"])
    assert state["model"]["pos_embed"].shape == (1, 197, 1024) and len({k.split(".")[1] for k in state["model"]
                                                                        if k.startswith("blocks.")}) == 24


def test_reconstruction_error_counts_masked_valid_pixels_only():
    from training.pretrain import reconstruction_error

    images = torch.zeros(1, 2, 4, 4)
    mask = torch.zeros(1, 2, 4, 4)
    mask[..., :2, :] = 1  # top half masked
    valid = torch.ones(1, 4, 4)
    valid[:, 0, 0] = 0  # a nodata pixel inside the masked half
    recon = torch.zeros_like(images)
    recon[..., 2:, :] = 5.0  # wrong only where visible: no error
    recon[..., 0, 0] = 9.0  # wrong only on nodata: no error
    baseline = torch.ones_like(images)
    errors = reconstruction_error(images, valid, recon, mask, baseline)
    assert errors == {"vis_masked_mse": 0.0, "vis_baseline_mse": 1.0, "vis_mse_ratio": 0.0}
    recon[..., 1, :] = 2.0  # wrong on 4 of the 7 valid masked pixels per band
    assert reconstruction_error(images, valid, recon, mask, baseline)["vis_mse_ratio"] == pytest.approx(16 / 7)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruction_png_baseline_is_what_needs_no_learning(norm_pix_loss, tmp_path):
    """An MAE whose decoder predicts zeros reproduces the baseline exactly: with norm-pix loss each masked patch's own
    mean; with pixel loss the corpus mean, which is no better than the image's visible mean."""
    from training.mae import build_mae
    from training.pretrain import save_reconstruction_png

    torch.manual_seed(0)
    model = build_mae({"encoder": "arctic_mae_vit_tiny_patch16_224", "decoder_embed_dim": 32, "decoder_depth": 1,
                       "decoder_num_heads": 2, "norm_pix_loss": norm_pix_loss}, ("nir", "green", "red"), 32)
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)
    images = torch.randn(2, 3, 32, 32) + torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    contract = CorpusContract(("nir", "green", "red"), 8, (0.5, 0.4, 0.3), (0.1, 0.1, 0.1))
    errors = save_reconstruction_png(model, (images, torch.ones(2, 32, 32, dtype=torch.bool)), contract,
                                     tmp_path / "vis.png", seed=0)
    assert (tmp_path / "vis.png").stat().st_size > 0
    if norm_pix_loss:
        assert errors["vis_mse_ratio"] == pytest.approx(1.0)
    else:
        assert errors["vis_mse_ratio"] > 1.0
