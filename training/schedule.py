"""Learning-rate rules of the MAE recipe: linear scaling by batch, per-iteration linear warmup, then cosine decay.

As official MAE (``util/lr_sched.py``): the factor at optimizer step ``s`` is ``s / warmup_steps`` during warmup (0 at
the first step) and ``min + (1 - min) * (1 + cos(pi * progress)) / 2`` after it, with ``warmup_steps`` =
``warmup_epochs x steps per epoch`` (not rounded).
"""

from __future__ import annotations

import math

import torch


def scaled_lr(blr: float, effective_batch: int) -> float:
    """lr = blr x effective batch / 256."""
    return blr * effective_batch / 256


def warmup_cosine_factor(step: int, warmup_steps: float, total_steps: int, min_factor: float = 0.0) -> float:
    """Peak-lr multiplier at optimizer step ``step`` (0-based): step / warmup, then cosine to min_factor."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1e-12, total_steps - warmup_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: float, total_steps: int,
                            min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step (its state dict holds only numbers)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_factor)
    )
