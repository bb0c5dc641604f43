"""Training checkpoints: atomic writes, keep-last-K, RNG states as tensors (``torch.load(weights_only=True)``).

A checkpoint is one ``torch.save`` dict::

    {"model", "optimizer", "scheduler", "scaler", "rng": [per-rank states], "data_position", "step", "config",
     "corpus": CorpusContract.to_dict()}

Writes go to ``.checkpoint-<step>.pt.tmp-<pid>`` (fsync), are renamed into place and the folder is fsynced, so a
crash leaves either the old or the new checkpoint, plus at worst a temp file that the next run's
``clean_stale_temps`` removes.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOG = logging.getLogger("training.checkpoint")
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d{8})\.pt$")
TEMP_PATTERN = re.compile(r"\.checkpoint-\d{8}\.pt\.tmp-\d+$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"checkpoint-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints of ``directory`` sorted by step (temp files of interrupted writes are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def clean_stale_temps(directory: str | Path) -> list[Path]:
    """Remove temp files of checkpoint writes that never finished (call once, from rank 0, before training)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if TEMP_PATTERN.match(p.name)]
    for path in stale:
        LOG.warning("removing %s: a checkpoint write that never finished", path)
        path.unlink(missing_ok=True)
    if stale:
        fsync_dir(directory)
    return stale


def fsync_dir(directory: str | Path) -> None:
    """Make renames/unlinks in ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], directory: str | Path, step: int, keep_last: int | None = None) -> Path:
    """Write ``state`` as ``checkpoint-<step>.pt``: temp file + fsync + rename + folder fsync; prune to the last K."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if keep_last:
        for old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
    fsync_dir(directory)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (no unpickling of arbitrary objects)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def capture_rng_state(device: torch.device | None = None,
                      generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, NumPy and torch CPU states, the CUDA state of ``device`` only (the one this rank uses), and the states
    of named extra ``generators`` (e.g. the masking generator), as tensors and plain numbers."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None,
                      generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of ``capture_rng_state``: the CUDA state goes to ``device`` (whatever its index was when saved)."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    for name, gen in (generators or {}).items():
        if name not in state.get("generators", {}):
            raise KeyError(f"checkpoint RNG state has no {name!r} generator (written by an older training.pretrain)")
        gen.set_state(state["generators"][name])
    if device is not None and device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            LOG.warning("checkpoint RNG state has no CUDA state (written on CPU): CUDA RNG not restored")
