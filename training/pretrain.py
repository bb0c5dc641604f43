"""``python -m training.pretrain --config ...``: MAE pretraining on chip shards, 1 process or torchrun DDP.

    python -m training.pretrain --config training/configs/pretrain_demo.yaml data.shards=outputs/shards
    torchrun --nproc-per-node 2 -m training.pretrain --config training/configs/pretrain_demo.yaml   # gloo / nccl

Exact resume: a checkpoint holds model, optimizer, scheduler, scaler, every rank's RNG states and the data position
(epoch + samples consumed), written at optimizer-step boundaries; with ``run.resume: true`` the newest checkpoint in
``<out_dir>/checkpoints`` is picked up and training continues as if never stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import param_groups_weight_decay
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from training.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.config import stage_cli, write_resolved
from training.mae import MaskedAutoencoder, build_mae
from training.schedule import scaled_lr, warmup_cosine_scheduler
from training.shards import AugmentConfig, ShardDataset, ShardSampler, read_stats

LOG = logging.getLogger("training.pretrain")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain_demo.yaml"
NO_WEIGHT_DECAY = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the last good checkpoint."""


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str = "auto") -> DistributedContext:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware has it (CUDA bf16, CPU avx512_bf16/AMX), fp16 on older GPUs, else fp32."""
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"run.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def resolve_attention(attention: str, precision: str, device: torch.device) -> str:
    """'auto' -> 'math' for bf16 on CPU (PyTorch's CPU flash-attention backward is slow in bf16: 3.6x its fp32 time
    in a ViT-S MAE step), else 'fused' (``F.scaled_dot_product_attention``)."""
    if attention not in ("auto", "fused", "math"):
        raise ValueError(f"run.attention must be auto, fused or math, got {attention!r}")
    if attention != "auto":
        return attention
    return "math" if device.type == "cpu" and precision == "bf16" else "fused"


def set_attention(model: torch.nn.Module, attention: str) -> int:
    """Switch every timm attention layer of ``model`` to fused SDPA or the explicit softmax(q k^T) v -> layers set."""
    layers = [module for module in model.modules() if hasattr(module, "fused_attn")]
    for module in layers:
        module.fused_attn = attention == "fused"
    return len(layers)


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def reduce_mean(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value


class MetricsLogger:
    """JSONL + TensorBoard on the main rank."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_loader(cfg: dict[str, Any], ctx: DistributedContext) -> tuple[ShardDataset, ShardSampler, DataLoader]:
    data = cfg["data"]
    augment_cfg = AugmentConfig(size=int(data["img_size"]), scale=tuple(data.get("scale", (0.2, 1.0))),
                                hflip=data.get("hflip", True), vflip=data.get("vflip", True),
                                rot90=data.get("rot90", True))
    dataset = ShardDataset(data["shards"], augment_cfg)
    sampler = ShardSampler(dataset.shard_counts, batch_size=int(data["batch_size"]), seed=int(cfg["run"]["seed"]),
                           rank=ctx.rank, world_size=ctx.world_size,
                           shuffle_buffer=int(data.get("shuffle_buffer", 1024)), augment=data.get("augment", True))
    workers = int(data.get("num_workers", 0))
    loader = DataLoader(
        dataset, batch_size=int(data["batch_size"]), sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,  # no worker start-up per epoch
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator().manual_seed(0),  # keeps the global RNG untouched by loader start-up
        prefetch_factor=data.get("prefetch_factor", 2) if workers else None,
    )
    return dataset, sampler, loader


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_plan(cfg: dict[str, Any], ctx: DistributedContext, batches_per_rank: int) -> dict[str, int]:
    """Accumulation steps, effective batch and steps per epoch from the config and the world size."""
    batch = int(cfg["data"]["batch_size"])
    optim = cfg["optim"]
    if optim.get("effective_batch"):
        per_step = batch * ctx.world_size
        if int(optim["effective_batch"]) % per_step:
            raise ValueError(f"optim.effective_batch={optim['effective_batch']} is not a multiple of "
                             f"data.batch_size x world size = {per_step}")
        accum = int(optim["effective_batch"]) // per_step
    else:
        accum = int(optim.get("accum_iter", 1))
    steps_per_epoch = batches_per_rank // accum
    if steps_per_epoch == 0:
        raise ValueError(f"{batches_per_rank} batches per rank per epoch cannot fill one step of {accum} accumulations")
    return {"accum": accum, "effective_batch": batch * accum * ctx.world_size, "steps_per_epoch": steps_per_epoch}


def pretrain(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) MAE pretraining as configured; return a summary (steps, last loss, checkpoint path)."""
    run = cfg["run"]
    ctx = setup_distributed(run.get("device", "auto"))
    if run.get("threads"):
        torch.set_num_threads(int(run["threads"]))
    out_dir = Path(run["out_dir"])
    ckpt_dir = out_dir / "checkpoints"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, out_dir)
    seed = int(run["seed"])
    torch.manual_seed(seed + ctx.rank)
    random.seed(seed + ctx.rank)
    np.random.seed(seed + ctx.rank)

    dataset, sampler, loader = build_loader(cfg, ctx)
    stats = read_stats(cfg["data"]["shards"])
    plan = batch_plan(cfg, ctx, sampler.batches_per_rank)
    optim_cfg = cfg["optim"]
    lr = float(optim_cfg["lr"]) if optim_cfg.get("lr") else scaled_lr(float(optim_cfg["blr"]), plan["effective_batch"])
    steps_per_epoch = plan["steps_per_epoch"]
    total_steps = int(optim_cfg["epochs"]) * steps_per_epoch
    warmup_steps = max(1, round(float(optim_cfg["warmup_epochs"]) * steps_per_epoch))
    stop_step = min(total_steps, int(run["max_steps"])) if run.get("max_steps") else total_steps

    model = build_mae(cfg["model"], dataset.index["bands"], int(cfg["data"]["img_size"])).to(ctx.device)
    groups = param_groups_weight_decay(model, float(optim_cfg["weight_decay"]), no_weight_decay_list=NO_WEIGHT_DECAY)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.get("betas", (0.9, 0.95))))
    min_factor = float(optim_cfg.get("min_lr", 0.0)) / lr if lr else 0.0
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps, total_steps, min_factor)
    precision = resolve_precision(run.get("precision", "auto"), ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "fp16")
    attention = resolve_attention(run.get("attention", "auto"), precision, ctx.device)
    set_attention(model, attention)
    if ctx.is_main:
        LOG.info("lr = blr %.3g x effective batch %d (%d per rank x %d accumulation x %d ranks) / 256 = %.4g",
                 float(optim_cfg["blr"]), plan["effective_batch"], int(cfg["data"]["batch_size"]), plan["accum"],
                 ctx.world_size, lr)
        LOG.info("%d chips, %d steps/epoch, %d epochs = %d steps (warmup %d), precision %s, %s attention, device %s",
                 len(dataset), steps_per_epoch, int(optim_cfg["epochs"]), total_steps, warmup_steps, precision,
                 attention, ctx.device)

    step = 0
    resume_from = _resume_path(run, ckpt_dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        rng = state["rng"]
        if len(rng) == ctx.world_size:
            restore_rng_state(rng[ctx.rank])
        elif ctx.is_main:
            LOG.warning("checkpoint has %d ranks' RNG states, this run has %d: not bit-exact", len(rng),
                        ctx.world_size)
        position = state["data_position"]
        if (position["epoch"], position["samples_per_rank"]) != _data_position(step, steps_per_epoch, plan, cfg):
            LOG.warning("data position %s of %s does not match this run's batch plan", position, resume_from)
        if ctx.is_main:
            LOG.info("resumed from %s at step %d", resume_from, step)

    train_model: torch.nn.Module = model
    if ctx.world_size > 1:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    if run.get("compile"):
        train_model = torch.compile(train_model)

    logger = MetricsLogger(out_dir, ctx.is_main)
    vis_batch = _fixed_batch(dataset, int(run.get("vis_count", 4))) if ctx.is_main else None
    summary: dict[str, Any] = {"lr": lr, **plan, "total_steps": total_steps, "start_step": step}
    loss_value = math.nan
    progress = _progress_bar(run, ctx, step, stop_step)
    try:
        while step < stop_step:
            epoch, start_sample = _data_position(step, steps_per_epoch, plan, cfg)
            sampler.set_epoch(epoch, start_sample)
            cycles_left = steps_per_epoch - step % steps_per_epoch
            batches = iter(itertools.islice(loader, cycles_left * plan["accum"]))
            for _ in range(min(cycles_left, stop_step - step)):
                tick = time.perf_counter()
                rng_before = capture_rng_state()
                loss_value = _train_step(train_model, batches, optimizer, scaler, plan["accum"], precision, ctx,
                                         float(optim_cfg.get("clip_grad") or 0.0))
                if not math.isfinite(loss_value):
                    good = _save(ckpt_dir, model, optimizer, scheduler, scaler, step, plan, cfg, ctx, run,
                                 rng_override=rng_before)
                    raise NonFiniteLossError(
                        f"loss is {loss_value} at step {step + 1} (epoch {epoch}); stopped without applying it. "
                        f"Last good checkpoint: {good} (lower optim.blr, set optim.clip_grad, or check the data)"
                    )
                scheduler.step()
                step += 1
                images_per_s = plan["effective_batch"] / (time.perf_counter() - tick)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{images_per_s:.1f}")
                if step % int(run.get("log_every", 10)) == 0 or step == stop_step:
                    logger.log(step, epoch=epoch, loss=loss_value, lr=optimizer.param_groups[0]["lr"],
                               img_per_s=images_per_s)
                if ctx.is_main and run.get("vis_every") and (step % int(run["vis_every"]) == 0 or step == stop_step):
                    errors = save_reconstruction_png(model, vis_batch, stats, out_dir / "vis" / f"step_{step:08d}.png",
                                                     seed)
                    logger.log(step, **errors)
                if step % int(run.get("ckpt_every_steps", 1000)) == 0 or step == stop_step:
                    summary["checkpoint"] = str(_save(ckpt_dir, model, optimizer, scheduler, scaler, step, plan, cfg,
                                                      ctx, run))
                if run.get("kill_at_step") and step == int(run["kill_at_step"]) and ctx.is_main:
                    os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the exact-resume tests
    finally:
        logger.close()
        if progress is not None:
            progress.close()
    summary.update(step=step, loss=loss_value)
    if ctx.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if dist.is_initialized():
        dist.barrier()
    return summary


def _resume_path(run: dict[str, Any], ckpt_dir: Path) -> Path | None:
    resume = run.get("resume", True)
    if resume is True or resume == "auto":
        return latest_checkpoint(ckpt_dir)
    if resume:
        return Path(resume)
    return None


def _data_position(step: int, steps_per_epoch: int, plan: dict[str, int], cfg: dict[str, Any]) -> tuple[int, int]:
    """(epoch, samples this rank consumed in it) at optimizer step ``step``."""
    epoch = step // steps_per_epoch
    return epoch, (step % steps_per_epoch) * plan["accum"] * int(cfg["data"]["batch_size"])


def _train_step(model, batches, optimizer, scaler, accum: int, precision: str, ctx: DistributedContext,
                clip_grad: float) -> float:
    """One optimizer step over ``accum`` micro-batches; returns the mean loss over micro-batches and ranks."""
    model.train()
    ddp = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    total = torch.zeros((), device=ctx.device)
    for micro in range(accum):
        images, valid = next(batches)
        images = images.to(ctx.device, non_blocking=True)
        valid = valid.to(ctx.device, non_blocking=True)
        sync = micro == accum - 1 or not isinstance(ddp, DistributedDataParallel)
        with (nullcontext() if sync else ddp.no_sync()), autocast_context(precision, ctx.device):
            loss, _, _ = model(images, valid)
        scaler.scale(loss / accum).backward()
        total += loss.detach().float() / accum
    loss_value = float(reduce_mean(total, ctx))
    if not math.isfinite(loss_value):
        optimizer.zero_grad(set_to_none=True)
        return loss_value
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_value


def _save(ckpt_dir, model, optimizer, scheduler, scaler, step, plan, cfg, ctx, run, rng_override=None) -> Path:
    """Gather every rank's RNG state and write a checkpoint from rank 0; all ranks return its path."""
    rng = rng_override or capture_rng_state()
    rngs = [rng]
    if ctx.world_size > 1:
        rngs = [None] * ctx.world_size
        dist.all_gather_object(rngs, rng)
    path = ckpt_dir / f"checkpoint-{step:08d}.pt"
    if ctx.is_main:
        epoch, samples = _data_position(step, plan["steps_per_epoch"], plan, cfg)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rngs,
            "data_position": {"epoch": epoch, "samples_per_rank": samples, "world_size": ctx.world_size,
                              "batch_size": int(cfg["data"]["batch_size"]), "accum": plan["accum"]},
            "step": step,
            "config": cfg,
            "stats": read_stats(cfg["data"]["shards"]),  # corpus bands/mean/std travel with the weights
        }
        path = save_checkpoint(state, ckpt_dir, step, keep_last=int(run.get("keep_last", 3)))
    if ctx.world_size > 1:
        dist.barrier()
    return path


def _progress_bar(run: dict[str, Any], ctx: DistributedContext, step: int, total: int):
    if not (ctx.is_main and run.get("progress", True)):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=step, desc="pretrain", unit="step", dynamic_ncols=True)


def _fixed_batch(dataset: ShardDataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` chips, resized but not augmented: the same images in every reconstruction PNG."""
    items = [dataset[(i, -1)] for i in range(min(count, len(dataset)))]
    return torch.stack([x for x, _ in items]), torch.stack([v for _, v in items])


def reconstruction_error(images: torch.Tensor, valid: torch.Tensor, recon: torch.Tensor, mask_pixels: torch.Tensor,
                         baseline: torch.Tensor) -> dict[str, float]:
    """images, recon, baseline: (N, C, H, W), valid: (N, H, W), mask_pixels: (N, C, H, W) 1 = masked -> errors.

    Mean squared error over the masked, valid pixels (normalised units) of the reconstruction and of a baseline
    that learned nothing spatial; ``vis_mse_ratio`` < 1 means the reconstruction is closer to the input.
    """
    weight = mask_pixels * valid[:, None]
    total = weight.sum().clamp_min(1.0)
    recon_mse = float((((recon - images) ** 2) * weight).sum() / total)
    baseline_mse = float((((baseline - images) ** 2) * weight).sum() / total)
    return {"vis_masked_mse": recon_mse, "vis_baseline_mse": baseline_mse,
            "vis_mse_ratio": recon_mse / max(baseline_mse, 1e-12)}


@torch.no_grad()
def save_reconstruction_png(model: MaskedAutoencoder, batch: tuple[torch.Tensor, torch.Tensor],
                            stats: dict[str, Any], path: Path, seed: int) -> dict[str, float]:
    """Rows of input | masked input | reconstruction | reconstruction with visible patches pasted, first 3 bands.

    Returns :func:`reconstruction_error` of the masked patches. Baseline: with ``norm_pix_loss`` each masked patch
    filled with its own true mean (the part of the picture the reconstruction takes from the target, not the model);
    without it, with the image's mean over its visible pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = next(model.parameters()).device
    images, valid = (t.to(device) for t in batch)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):  # a fixed mask that leaves the training RNG untouched
        torch.manual_seed(seed)
        latent, mask, restore = model.forward_encoder(images)
    pred = model.forward_decoder(latent, restore).float()
    model.train(was_training)
    _, _, mean, std = model.target_patches(images, valid)
    recon = model.unpatchify(pred * std + mean)
    mask_pixels = model.unpatchify(mask[..., None].expand(-1, -1, model.patch_size**2 * model.in_chans))
    if model.norm_pix_loss:
        baseline = model.unpatchify(mean.expand_as(pred))
    else:
        seen = (1 - mask_pixels) * valid[:, None]
        baseline = ((images * seen).sum((2, 3), keepdim=True) / seen.sum((2, 3), keepdim=True).clamp_min(1.0))
        baseline = baseline.expand_as(images)
    errors = reconstruction_error(images, valid.float(), recon, mask_pixels, baseline)
    panels = [images, images * (1 - mask_pixels), recon, images * (1 - mask_pixels) + recon * mask_pixels]
    band_mean = torch.tensor(stats["mean"], device=device).view(1, -1, 1, 1)
    band_std = torch.tensor(stats["std"], device=device).view(1, -1, 1, 1)
    titles = ["input", "masked", "reconstruction", "reconstruction + visible"]
    names = list(stats.get("bands", []))
    shown_bands = ([names.index(b) for b in ("red", "green", "blue")] if {"red", "green", "blue"} <= set(names)
                   else list(range(min(3, images.shape[1]))))  # true colour when possible, else the first bands
    # one 2-98 % stretch per input over its shown bands (colour balance kept), at least 0.1 wide, applied to all its
    # panels: 11-bit DNs sit low in [0, 1] and would look black, and a flat chip must not become noise
    reference = (images * band_std + band_mean)[:, shown_bands].flatten(1)
    low = torch.quantile(reference, 0.02, dim=1).view(-1, 1, 1, 1)
    high = torch.maximum(torch.quantile(reference, 0.98, dim=1).view(-1, 1, 1, 1), low + 0.1)
    fig, axes = plt.subplots(len(images), 4, figsize=(12, 3 * len(images)), squeeze=False)
    for col, panel in enumerate(panels):
        shown = (((panel * band_std + band_mean)[:, shown_bands] - low) / (high - low)).clamp(0, 1)
        shown = shown if shown.shape[1] == 3 else shown[:, :1].expand(-1, 3, -1, -1)
        for row in range(len(images)):
            axes[row, col].imshow(shown[row].permute(1, 2, 0).cpu().numpy())
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(titles[col])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return errors


def main(argv: Sequence[str] | None = None) -> None:
    _, cfg = stage_cli(__doc__, DEFAULT_CONFIG, argv)
    try:
        summary = pretrain(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
