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


def assert_same_training_state(a: Path, b: Path, global_rng: bool = True) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"]
    for key, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][key]), key
    for param_id, state in first["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][param_id][name]), (param_id, name)
    assert first["scheduler"] == second["scheduler"]
    assert torch.equal(first["rng"][0]["generators"]["mask"], second["rng"][0]["generators"]["mask"])
    if global_rng:
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


# --- one loss normalisation, RNG isolation, robust resume -------------------------------------------------------------

def _mixed_nodata_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 images of 32 px (4 patches): two without nodata, one with two half-valid patches, one all nodata."""
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    valid = torch.ones(4, 32, 32, dtype=torch.bool)
    valid[2, :, :8] = False
    valid[3] = False
    return images, valid


def _tiny_model():
    from training.mae import build_mae

    torch.manual_seed(0)
    return build_mae({"encoder": "arctic_mae_vit_tiny_patch16_224", "decoder_embed_dim": 32, "decoder_depth": 1,
                      "decoder_num_heads": 2}, ("nir", "green", "red"), 32)


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _full_batch_reference(seeds: list[int], per_rank: int) -> tuple[dict[str, torch.Tensor], float, float]:
    """Gradient, loss and patch weight of the whole batch in one forward: each rank's masking noise, concatenated."""
    images, valid = _mixed_nodata_batch()
    noise = torch.cat([torch.rand(per_rank, 4, generator=torch.Generator().manual_seed(s)) for s in seeds])
    model = _tiny_model()
    loss, _, mask = model(images, valid, noise)
    loss.backward()
    fraction = valid.float().view(4, 2, 16, 2, 16).mean((2, 4)).flatten(1)  # (N, L) valid fraction per patch
    return _grads(model), float(loss.detach()), float((mask * fraction).sum())


def test_accumulated_gradient_equals_full_batch_gradient_with_mixed_nodata():
    from training.pretrain import DistributedContext, accumulate_gradients

    reference, reference_loss, reference_weight = _full_batch_reference([11], per_rank=4)
    images, valid = _mixed_nodata_batch()
    micro = iter([(images[:2], valid[:2]), (images[2:], valid[2:])])  # no nodata | half + all nodata
    model = _tiny_model()
    total, weight = accumulate_gradients(model, micro, 2, "fp32", DistributedContext(),
                                         torch.Generator().manual_seed(11))
    assert float(weight) == reference_weight and float(weight) % 1 == 0.5  # half-valid patches weigh 0.5
    assert float(total / weight) == pytest.approx(reference_loss, rel=1e-6)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-7, msg=name)
    # the former rule (each micro-batch normalised alone, then averaged) weights the nodata-heavy half up
    old = _tiny_model()
    noise = torch.rand(4, 4, generator=torch.Generator().manual_seed(11))
    for part in (slice(0, 2), slice(2, 4)):
        (old(images[part], valid[part], noise[part])[0] / 2).backward()
    assert not torch.allclose(_grads(old)["decoder_pred.weight"], reference["decoder_pred.weight"], rtol=1e-3)


def _gloo_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.pretrain import DistributedContext, accumulate_gradients, choose_checkpoint

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = DistributedContext(rank=rank, world_size=world)
        images, valid = _mixed_nodata_batch()
        mine = slice(2 * rank, 2 * rank + 2)  # rank 0: no nodata; rank 1: half + all nodata
        micro = iter([(images[mine][i : i + 1], valid[mine][i : i + 1]) for i in range(2)])  # 2 micro-batches of 1
        model = DistributedDataParallel(_tiny_model())
        total, weight = accumulate_gradients(model, micro, 2, "fp32", ctx, torch.Generator().manual_seed(20 + rank))
        # rank 0 picks the checkpoint, every rank resumes from it, whatever its own config says
        ckpts = Path(out).parent / "ckpts"
        chosen = choose_checkpoint(True if rank == 0 else str(ckpts / "other.pt"), ckpts, ctx)
        if rank == 0:
            torch.save({"grads": _grads(model.module), "loss": float(total / weight), "chosen": str(chosen)}, out)
        else:
            dist.barrier()
            return
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~25 s: two spawned processes import torch and timm
def test_two_gloo_ranks_give_the_full_batch_gradient_and_one_checkpoint_choice(tmp_path):
    import torch.multiprocessing as mp

    from training.checkpoint import save_checkpoint

    for step in (1, 2):
        save_checkpoint({"step": step}, tmp_path / "ckpts", step)
    out = tmp_path / "rank0.pt"
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    reference, reference_loss, _ = _full_batch_reference([20, 21], per_rank=2)
    assert result["loss"] == pytest.approx(reference_loss, rel=1e-6)
    for name, grad in result["grads"].items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-5, atol=1e-7, msg=name)
    assert result["chosen"] == str(tmp_path / "ckpts" / "checkpoint-00000002.pt")


def _tiny_cfg(shards: Path, out: Path, **extra):
    return load_config(CONFIGS / "pretrain_demo.yaml", overrides=tiny_overrides(shards, out, **{
        "optim.epochs": 1, "run.vis_every": 0, "run.log_every": 1, **extra}))


def _metrics(out: Path) -> list[dict]:
    return [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m]


def test_reconstruction_pngs_do_not_move_training_rng(shards, tmp_path, monkeypatch):
    import training.pretrain as engine

    quiet = pretrain(_tiny_cfg(shards, tmp_path / "quiet"))
    png = engine.save_reconstruction_png

    def png_using_global_rng(*args, **kwargs):  # logging that draws from the global RNGs must not change training
        torch.rand(1000)
        return png(*args, **kwargs)

    monkeypatch.setattr(engine, "save_reconstruction_png", png_using_global_rng)
    logged = pretrain(_tiny_cfg(shards, tmp_path / "logged", **{"run.vis_every": 1}))
    assert len(list((tmp_path / "logged" / "vis").glob("*.png"))) == 4
    assert [m["loss"] for m in _metrics(tmp_path / "quiet")] == [m["loss"] for m in _metrics(tmp_path / "logged")]
    assert_same_training_state(Path(quiet["checkpoint"]), Path(logged["checkpoint"]), global_rng=False)
    state = load_checkpoint(logged["checkpoint"])
    assert set(state["rng"][0]) >= {"torch", "generators"} and "cuda" not in state["rng"][0]  # CPU run: no CUDA


def test_resume_refuses_another_batch_corpus_or_model_unless_reshaped(shards, tmp_path):
    from arctic_vit.corpus import ContractError

    out = tmp_path / "run"
    pretrain(_tiny_cfg(shards, out, **{"run.max_steps": 3}))  # checkpoint at step 3: 12 samples of epoch 0
    stale = out / "checkpoints" / ".checkpoint-00000004.pt.tmp-12345"
    stale.write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint-00000003\.pt: written by 1 ranks with effective batch 4, .*"
                                         r"effective batch 2: .*--allow-reshape"):
        pretrain(_tiny_cfg(shards, out, **{"optim.accum_iter": 1}))
    assert not stale.exists()  # a killed write's temp file is cleaned at start

    other = tmp_path / "other_shards"
    make_chip_folder(tmp_path / "other_chips", count=16, size=40, seed=5)
    pack(other, chip_dir=tmp_path / "other_chips", bands=["nir", "green", "red"], shard_size=6)
    with pytest.raises(ContractError, match=r"resuming .*checkpoint-00000003\.pt onto the shards in .*other_shards: "
                                            r"corpus mean"):
        pretrain(_tiny_cfg(other, out))
    with pytest.raises(ValueError, match=r"checkpoint-00000003\.pt: its model \(arctic_mae_vit_tiny_patch16_224\) "
                                         r"does not fit .*arctic_mae_vit_small"):
        pretrain(_tiny_cfg(shards, out, **{"model.encoder": "arctic_mae_vit_small_patch16_224"}))

    # reshaped: 12 samples of epoch 0 at effective batch 2 = step 6 of the new 8-step epoch, lr from the new schedule
    summary = pretrain(_tiny_cfg(shards, out, **{"optim.accum_iter": 1, "run.allow_reshape": True}))
    assert summary["start_step"] == 6 and summary["step"] == 8 and summary["steps_per_epoch"] == 8
    first = _metrics(out)[-2]
    assert first["step"] == 7 and first["lr"] == pytest.approx(1e-3 * 7 / 8)  # warmup: 1 epoch = 8 new steps


def test_checkpoint_write_fsyncs_the_file_then_the_folder(tmp_path, monkeypatch):
    import stat

    from training.checkpoint import save_checkpoint

    synced: list[bool] = []  # True: a directory
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = save_checkpoint({"step": torch.tensor(1)}, tmp_path, 1)
    assert synced == [False, True] and path.name == "checkpoint-00000001.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000001.pt"]  # no temp file left
