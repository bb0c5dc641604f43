"""Where a finetuning run computes: ``--device auto|cpu|cuda[:N]`` and the matching mixed precision.

    device = resolve_device("auto")               # CUDA when present, else the CPU
    precision = Precision.for_device(device)       # bf16 autocast on CUDA (fp16 + GradScaler without native bf16)
    with precision.autocast():
        loss = ...
    precision.backward_step(loss, optimizer)

The CPU path runs in float32 without autocast, exactly as before devices existed. ``cuda`` without CUDA, or an index
past the visible GPUs, raises naming the option: nothing falls back silently. ``meta`` is accepted too: it runs the
code path with shapes only, which is how the tests prove that every tensor follows the device without a GPU.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def resolve_device(spec: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """``auto`` -> cuda:0 when CUDA is available, else cpu; ``cpu``; ``cuda`` / ``cuda:N``; ``meta`` (tests).

    ``ValueError`` naming ``option`` for an unknown spec, ``cuda`` without CUDA, or a GPU index that is not visible.
    """
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec in ("cpu", "meta"):
        return torch.device(spec)
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise ValueError(f"{option} {spec!r} is not a device; use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ValueError(f"{option} {spec!r}: CUDA is not available here (torch.cuda.is_available() is False, torch "
                         f"{torch.__version__}); use {option} cpu or auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"{option} {spec!r}: only {torch.cuda.device_count()} GPU(s) are visible "
                         "(CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", index)


def run_devices(spec: str | None = "auto", option: str = "--device") -> list[str]:
    """Devices ``compare`` spreads independent runs over: every visible GPU for ``auto``/``cuda`` with several GPUs,
    else the one device ``spec`` resolves to."""
    device = resolve_device(spec, option)
    plain = (spec or "auto").strip().lower() in ("auto", "cuda")
    if device.type == "cuda" and plain and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(device)]


@dataclass(frozen=True)
class Precision:
    """Mixed precision of one device: ``dtype`` None means float32 without autocast (CPU, meta)."""

    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        """bf16 on a CUDA device with native bf16, fp16 (with loss scaling) on older GPUs, none elsewhere."""
        if device.type != "cuda":
            return cls(device.type, None)
        with torch.cuda.device(device):
            native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return cls("cuda", torch.bfloat16 if native_bf16 else torch.float16)

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else f"{str(self.dtype).removeprefix('torch.')} autocast"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 (bf16 and float32 need none)."""
        return torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None


def backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """zero_grad -> backward -> step, through ``scaler`` when fp16 needs loss scaling."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a stacked batch (``evaluation.tiling.stack``) to ``device``: tensors and instance targets alike."""
    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(move(v) for v in value)
        return value

    return {k: move(v) for k, v in batch.items()}


@contextlib.contextmanager
def cuda_device(device: torch.device) -> Iterator[None]:
    """Make ``device`` the current CUDA device for the block (torchvision ops allocate on the current device)."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield
