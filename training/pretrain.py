"""``python -m training.pretrain --config ...``: MAE pretraining on chip shards, 1 process or torchrun DDP.

    python -m training.pretrain --config training/configs/pretrain_demo.yaml data.shards=outputs/shards
    torchrun --nproc-per-node 2 -m training.pretrain --config training/configs/pretrain_demo.yaml   # gloo / nccl

Exact resume: a checkpoint holds model, optimizer, scheduler, scaler, every rank's RNG states (the masking
generator's included) and the data position (epoch + samples consumed), written at optimizer-step boundaries; with
``run.resume: true`` rank 0 picks the newest checkpoint in ``<out_dir>/checkpoints`` (a folder every node must see)
and broadcasts its choice. A changed world size or effective batch is an error unless ``--allow-reshape``
(``run.allow_reshape=true``), which recomputes the data position exactly. The corpus contract is read once from the
shard folder and stored in every checkpoint; resuming onto another corpus is an error.

The loss is normalised once per optimizer step: every micro-batch of every rank contributes its sum of weighted
per-patch losses and its weight, the weights are all-reduced, and the gradient is divided by the total.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import signal
import sys
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

from arctic_vit.config import as_dict, stage_cli, validate_config, write_resolved
from arctic_vit.corpus import ContractError, CorpusContract
from training.checkpoint import (
    capture_rng_state,
    clean_stale_temps,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.mae import MaskedAutoencoder, build_mae
from training.runtime import cpu_supports_bf16
from training.schedule import scaled_lr, warmup_cosine_factor, warmup_cosine_scheduler
from training.schemas import PretrainConfig
from training.shards import AugmentConfig, ShardDataset, ShardSampler

LOG = logging.getLogger("training.pretrain")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain_demo.yaml"
NO_WEIGHT_DECAY = ()  # as official MAE: only norms and biases (ndim <= 1) skip weight decay; cls/mask tokens decay
MASK_GENERATOR = "mask"


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware has it (CUDA bf16, CPU avx512_bf16/AMX), fp16 on older GPUs, else fp32."""
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"run.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        return precision
    if device.type == "cuda":  # emulated bf16 (V100, T4) would be slow: those get fp16 + GradScaler
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
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


def reduce_sum(value: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left as is)."""
    value = value.clone()
    if ctx.world_size > 1:
        dist.all_reduce(value)
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


def build_loader(cfg: PretrainConfig, ctx: DistributedContext) -> tuple[ShardDataset, ShardSampler, DataLoader]:
    data = cfg.data
    augment_cfg = AugmentConfig(size=data.img_size, scale=tuple(data.scale), hflip=data.hflip, vflip=data.vflip,
                                rot90=data.rot90)
    dataset = ShardDataset(data.shards, augment_cfg)
    sampler = ShardSampler(dataset.shard_counts, batch_size=data.batch_size, seed=cfg.run.seed,
                           rank=ctx.rank, world_size=ctx.world_size,
                           shuffle_buffer=data.shuffle_buffer, augment=data.augment)
    workers = data.num_workers
    loader = DataLoader(
        dataset, batch_size=data.batch_size, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=ctx.device.type == "cuda", persistent_workers=workers > 0,  # no worker start-up per epoch
        worker_init_fn=_worker_init if workers else None,
        generator=torch.Generator().manual_seed(0),  # keeps the global RNG untouched by loader start-up
        prefetch_factor=data.prefetch_factor if workers else None,
    )
    return dataset, sampler, loader


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def batch_plan(cfg: PretrainConfig, ctx: DistributedContext, batches_per_rank: int) -> dict[str, int]:
    """Accumulation steps, effective batch and steps per epoch from the config and the world size."""
    batch = cfg.data.batch_size
    optim = cfg.optim
    if optim.effective_batch:
        per_step = batch * ctx.world_size
        if optim.effective_batch % per_step:
            raise ValueError(f"optim.effective_batch={optim.effective_batch} is not a multiple of "
                             f"data.batch_size x world size = {per_step}")
        accum = optim.effective_batch // per_step
    else:
        accum = optim.accum_iter
    steps_per_epoch = batches_per_rank // accum
    if steps_per_epoch == 0:
        raise ValueError(f"{batches_per_rank} batches per rank per epoch cannot fill one step of {accum} accumulations")
    return {"accum": accum, "effective_batch": batch * accum * ctx.world_size, "steps_per_epoch": steps_per_epoch}


def pretrain(cfg: PretrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) MAE pretraining as configured; return a summary (steps, last loss, checkpoint path).

    ``cfg``: a validated ``PretrainConfig``, or a merged dict, validated here once (one-line ``ConfigError``)."""
    if not isinstance(cfg, PretrainConfig):
        cfg = validate_config(PretrainConfig, cfg, "pretrain config")
    run = cfg.run
    if run.deterministic:  # GPU: bit-exact reruns at a cost (see PRETRAIN.md); CPU runs are exact anyway
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    ctx = setup_distributed(run.device)
    if run.threads:
        torch.set_num_threads(run.threads)
    out_dir = Path(run.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, out_dir)
        clean_stale_temps(ckpt_dir)
    seed = run.seed
    seed_everything(seed, ctx.rank)
    mask_gen = torch.Generator(device=ctx.device).manual_seed(mask_seed(seed, ctx.rank))

    dataset, sampler, loader = build_loader(cfg, ctx)
    contract = dataset.contract  # read once, from the shard folder's corpus.json
    plan = batch_plan(cfg, ctx, sampler.batches_per_rank)
    optim_cfg = cfg.optim
    lr = optim_cfg.lr if optim_cfg.lr else scaled_lr(optim_cfg.blr, plan["effective_batch"])
    steps_per_epoch = plan["steps_per_epoch"]
    total_steps = optim_cfg.epochs * steps_per_epoch
    warmup_steps = optim_cfg.warmup_epochs * steps_per_epoch
    stop_step = min(total_steps, run.max_steps) if run.max_steps else total_steps

    model = build_mae(cfg.model.model_dump(), contract.bands, cfg.data.img_size).to(ctx.device)
    groups = param_groups_weight_decay(model, optim_cfg.weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.betas))
    min_factor = optim_cfg.min_lr / lr if lr else 0.0
    scheduler = warmup_cosine_scheduler(optimizer, warmup_steps, total_steps, min_factor)
    precision = resolve_precision(run.precision, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "fp16")
    attention = resolve_attention(run.attention, precision, ctx.device)
    set_attention(model, attention)
    if ctx.is_main:
        LOG.info("lr = blr %.3g x effective batch %d (%d per rank x %d accumulation x %d ranks) / 256 = %.4g",
                 optim_cfg.blr, plan["effective_batch"], cfg.data.batch_size, plan["accum"],
                 ctx.world_size, lr)
        LOG.info("%d chips, %d steps/epoch, %d epochs = %d steps (warmup %g), precision %s, %s attention, device %s",
                 len(dataset), steps_per_epoch, optim_cfg.epochs, total_steps, warmup_steps, precision,
                 attention, ctx.device)

    step = 0
    resume_from = choose_checkpoint(run.resume, ckpt_dir, ctx)
    if resume_from is not None:
        step = resume(resume_from, cfg, ctx, plan, contract, model, optimizer, scheduler, scaler, mask_gen,
                      lr_factor=lambda s: warmup_cosine_factor(s, warmup_steps, total_steps, min_factor))
        if ctx.is_main:
            LOG.info("resumed from %s at step %d", resume_from, step)

    train_model: torch.nn.Module = model
    if ctx.world_size > 1:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    if run.compile:
        train_model = torch.compile(train_model)

    logger = MetricsLogger(out_dir, ctx.is_main)
    vis_batch = _fixed_batch(dataset, run.vis_count) if ctx.is_main else None
    summary: dict[str, Any] = {"lr": lr, **plan, "total_steps": total_steps, "start_step": step}
    loss_value = math.nan
    progress = _progress_bar(run.progress, ctx, step, stop_step)
    saver = CheckpointWriter(ckpt_dir, model, optimizer, scheduler, scaler, plan, cfg, ctx, contract, mask_gen,
                             keep_last=run.keep_last)
    try:
        while step < stop_step:
            epoch, start_sample = _data_position(step, steps_per_epoch, plan, cfg.data.batch_size)
            sampler.set_epoch(epoch, start_sample)
            cycles_left = steps_per_epoch - step % steps_per_epoch
            batches = iter(itertools.islice(loader, cycles_left * plan["accum"]))
            for _ in range(min(cycles_left, stop_step - step)):
                tick = time.perf_counter()
                rng_before = capture_rng_state(ctx.device, {MASK_GENERATOR: mask_gen})
                loss_value = _train_step(train_model, batches, optimizer, scaler, plan["accum"], precision, ctx,
                                         optim_cfg.clip_grad or 0.0, mask_gen)
                if not math.isfinite(loss_value):
                    good = saver.save(step, rng_override=rng_before)
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
                if step % run.log_every == 0 or step == stop_step:
                    logger.log(step, epoch=epoch, loss=loss_value, lr=optimizer.param_groups[0]["lr"],
                               img_per_s=images_per_s)
                if ctx.is_main and run.vis_every and (step % run.vis_every == 0 or step == stop_step):
                    errors = save_reconstruction_png(model, vis_batch, contract,
                                                     out_dir / "vis" / f"step_{step:08d}.png", seed)
                    logger.log(step, **errors)
                if step % run.ckpt_every_steps == 0 or step == stop_step:
                    summary["checkpoint"] = str(saver.save(step))
                if run.kill_at_step and step == run.kill_at_step and ctx.is_main:
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


def seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)


def mask_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of a rank's masking generator (its own stream: logging and visualisation cannot move it)."""
    return int(np.random.SeedSequence([seed, rank, step, 0x6D61736B]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def choose_checkpoint(resume_cfg: bool | str, ckpt_dir: Path, ctx: DistributedContext) -> Path | None:
    """Rank 0 picks the checkpoint to resume from (``run.resume``) and broadcasts it: every rank resumes from the
    same file."""
    choice = [str(path) if ctx.is_main and (path := _resume_path(resume_cfg, ckpt_dir)) is not None else None]
    if ctx.world_size > 1:
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return None
    path = Path(choice[0])
    if not path.is_file():
        raise FileNotFoundError(f"rank {ctx.rank}: checkpoint {path} chosen by rank 0 is not visible here: "
                                "run.out_dir must be one folder shared by every node")
    return path


def resume(path: Path, cfg: PretrainConfig, ctx: DistributedContext, plan: dict[str, int], contract: CorpusContract,
           model, optimizer, scheduler, scaler, mask_gen: torch.Generator, lr_factor) -> int:
    """Load ``path`` into the training state; return the optimizer step to continue from."""
    state = load_checkpoint(path)
    if "corpus" not in state:
        raise ContractError(f"{path}: no corpus contract (written by an older training.pretrain); cannot check that "
                            f"it was trained on {cfg.data.shards}")
    CorpusContract.from_dict(state["corpus"], str(path)).check_same(
        contract, f"resuming {path} onto the shards in {cfg.data.shards}")
    encoder = state.get("config", {}).get("model", {}).get("encoder")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: its model ({encoder}) does not fit this run's model.encoder="
                         f"{cfg.model.encoder}: {str(err).splitlines()[0]}") from None
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    position = state["data_position"]
    before = (int(position["world_size"]), int(position["batch_size"]) * int(position["accum"])
              * int(position["world_size"]))
    now = (ctx.world_size, plan["effective_batch"])
    if before == now:
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"][ctx.rank], ctx.device, {MASK_GENERATOR: mask_gen})
        return int(state["step"])
    if not cfg.run.allow_reshape:
        raise ValueError(f"{path}: written by {before[0]} ranks with effective batch {before[1]}, this run has "
                         f"{now[0]} ranks and effective batch {now[1]}: relaunch with the same world size and "
                         "optim.effective_batch, or pass --allow-reshape (run.allow_reshape=true)")
    # reshape: the global sample stream does not depend on the world size, so the position is the number of samples
    # of the epoch consumed by all ranks together; it must fall on a step boundary of the new plan
    consumed = int(position["samples_per_rank"]) * before[0]
    if consumed % now[1]:
        raise ValueError(f"{path}: {consumed} samples of epoch {position['epoch']} consumed, not a multiple of the "
                         f"new effective batch {now[1]}: reshape from a checkpoint where they divide")
    step = int(position["epoch"]) * plan["steps_per_epoch"] + consumed // now[1]
    for group in optimizer.param_groups:  # the new plan's lr (scaling rule) and schedule position
        group["initial_lr"] = scheduler.base_lrs[0]
        group["lr"] = group["initial_lr"] * lr_factor(step)
    scheduler.last_epoch = step
    seed = cfg.run.seed
    seed_everything(seed + step, ctx.rank)
    mask_gen.manual_seed(mask_seed(seed, ctx.rank, step))
    if ctx.is_main:
        LOG.warning("reshaped resume: %d -> %d ranks, effective batch %d -> %d; epoch %s after %d samples = step %d "
                    "(data position exact; RNG streams re-seeded)", before[0], now[0], before[1], now[1],
                    position["epoch"], consumed, step)
    return step


def _resume_path(resume_cfg: bool | str, ckpt_dir: Path) -> Path | None:
    if resume_cfg is True or resume_cfg == "auto":
        return latest_checkpoint(ckpt_dir)
    if resume_cfg:
        return Path(resume_cfg)
    return None


def _data_position(step: int, steps_per_epoch: int, plan: dict[str, int], batch_size: int) -> tuple[int, int]:
    """(epoch, samples this rank consumed in it) at optimizer step ``step``; ``batch_size`` per rank and micro-step."""
    epoch = step // steps_per_epoch
    return epoch, (step % steps_per_epoch) * plan["accum"] * batch_size


def accumulate_gradients(model, batches, accum: int, precision: str, ctx: DistributedContext,
                         mask_gen: torch.Generator, scaler: torch.amp.GradScaler | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward ``accum`` micro-batches; leave in ``.grad`` the gradient of the step's ONE loss
    sum(weighted patch losses) / sum(weights) over all micro-batches and ranks. Returns (loss sum, weight sum), both
    summed over ranks.

    Each micro-batch's sum is divided by the weight expected without nodata (so DDP's mean over ranks and the sum
    over micro-batches give sum / expected total); when nodata made the real total differ, the gradient is rescaled
    by expected / real once. Batches without nodata skip the validity mask entirely (official MAE's loss).
    """
    core = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    mae = core.module if isinstance(core, DistributedDataParallel) else core
    length = mae.grid[0] * mae.grid[1]
    masked = length - mae.num_visible(length)
    total = torch.zeros((), device=ctx.device)
    weight = torch.zeros((), device=ctx.device)
    expected = 0.0
    for micro in range(accum):
        images, valid = next(batches)
        valid = None if bool(valid.all()) else valid.to(ctx.device, non_blocking=True)  # checked on the CPU copy
        images = images.to(ctx.device, non_blocking=True)
        noise = torch.rand(images.shape[0], length, generator=mask_gen, device=ctx.device)
        per_micro = float(images.shape[0] * masked)
        expected += per_micro
        sync = micro == accum - 1 or not isinstance(core, DistributedDataParallel)
        with (nullcontext() if sync else core.no_sync()), autocast_context(precision, ctx.device):
            loss_sum, loss_weight, _, _ = model(images, valid, noise, loss_terms=True)
        scaled = loss_sum / (per_micro * accum)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss_sum.detach().float()
        weight += loss_weight.detach().float()
    sums = reduce_sum(torch.stack([total, weight]), ctx)
    expected_total = expected * ctx.world_size
    real_total = float(sums[1])
    if real_total != expected_total:  # nodata somewhere this step: one rescale to divide by the real total
        factor = expected_total / real_total if real_total > 0 else 0.0
        for param in mae.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)
    return sums[0], sums[1]


def _train_step(model, batches, optimizer, scaler, accum: int, precision: str, ctx: DistributedContext,
                clip_grad: float, mask_gen: torch.Generator) -> float:
    """One optimizer step over ``accum`` micro-batches; returns the step's loss (one normalisation over all)."""
    model.train()
    loss_sum, weight = accumulate_gradients(model, batches, accum, precision, ctx, mask_gen, scaler)
    if float(weight) == 0:
        LOG.warning("no valid masked patch in this step (all nodata): no update")
        optimizer.zero_grad(set_to_none=True)
        return 0.0
    loss_value = float(loss_sum / weight)
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


@dataclass
class CheckpointWriter:
    """Gathers every rank's RNG states and writes a checkpoint from rank 0; all ranks get its path."""

    ckpt_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    plan: dict[str, int]
    cfg: PretrainConfig
    ctx: DistributedContext
    contract: CorpusContract
    mask_gen: torch.Generator
    keep_last: int = 3

    def save(self, step: int, rng_override: dict[str, Any] | None = None) -> Path:
        ctx = self.ctx
        rng = rng_override or capture_rng_state(ctx.device, {MASK_GENERATOR: self.mask_gen})
        rngs = [rng]
        if ctx.world_size > 1:
            rngs = [None] * ctx.world_size
            dist.all_gather_object(rngs, rng)
        path = self.ckpt_dir / f"checkpoint-{step:08d}.pt"
        if ctx.is_main:
            epoch, samples = _data_position(step, self.plan["steps_per_epoch"], self.plan, self.cfg.data.batch_size)
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
                "data_position": {"epoch": epoch, "samples_per_rank": samples, "world_size": ctx.world_size,
                                  "batch_size": self.cfg.data.batch_size, "accum": self.plan["accum"]},
                "step": step,
                "config": as_dict(self.cfg),  # plain data: a checkpoint loads without this package's schemas
                "corpus": self.contract.to_dict(),  # bands, bit depth, mean/std travel with the weights
            }
            path = save_checkpoint(state, self.ckpt_dir, step, keep_last=self.keep_last)
        if ctx.world_size > 1:
            dist.barrier()
        return path


def _progress_bar(enabled: bool, ctx: DistributedContext, step: int, total: int):
    if not (ctx.is_main and enabled):
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
                            contract: CorpusContract, path: Path, seed: int) -> dict[str, float]:
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
    length = model.grid[0] * model.grid[1]  # a fixed mask from a generator of its own: no training RNG is touched
    noise = torch.rand(len(images), length, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    latent, mask, restore = model.forward_encoder(images, noise)
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
    band_mean = torch.tensor(contract.mean, device=device).view(1, -1, 1, 1)
    band_std = torch.tensor(contract.std, device=device).view(1, -1, 1, 1)
    titles = ["input", "masked", "reconstruction", "reconstruction + visible"]
    names = list(contract.bands)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--allow-reshape" in argv:  # the flag is run.allow_reshape=true
        argv = [a for a in argv if a != "--allow-reshape"] + ["run.allow_reshape=true"]
    _, cfg = stage_cli(__doc__, DEFAULT_CONFIG, argv, schema=PretrainConfig,
                       prog="python -m training.pretrain")  # validated before any work
    try:
        summary = pretrain(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
