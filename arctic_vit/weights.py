"""Weights I/O: checkpoint reading and filtering, export-folder reading, verified downloads at a pinned revision.

Imports no model, card or export code (``arctic_vit.models`` and ``arctic_vit.hub`` build on it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors.torch import load_file

from .corpus import CONFIG_NAME, CORPUS_KEY, ContractError, CorpusContract
from .releases import WEIGHTS_FILENAME

__all__ = [
    "ChecksumError",
    "WeightsUnavailableError",
    "filter_encoder_state_dict",
    "load_checkpoint",
    "read_folder_contract",
    "read_folder_metadata",
    "resolve_weights",
    "sha256_file",
]

METADATA_KEY = "arctic_vit"
MAE_ONLY_PREFIXES = ("decoder_", "mask_token")
WRAPPER_KEYS = ("model", "state_dict", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
OFFLINE_HELP = (
    "To load offline: (1) pre-fill the Hugging Face cache on a connected machine "
    "(`hf download REPO --revision REV`) and set HF_HUB_OFFLINE=1; "
    "(2) pass a local export folder or file: timm.create_model(NAME, pretrained=True, "
    "pretrained_cfg_overlay=dict(file='path/to/export_folder_or_model.safetensors')); "
    "(3) plain timm: timm.create_model('local-dir:path/to/export_folder')."
)


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights cannot be obtained (not published, hub unreachable and not cached)."""


class ChecksumError(RuntimeError):
    """Downloaded or local weights do not match the pinned sha256."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.safetensors`` file, or a ``torch.load(weights_only=True)``-safe checkpoint; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    try:
        # argparse.Namespace: the official facebookresearch/mae training checkpoints store their args in one.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError (and others) for anything beyond plain tensors/containers
        raise ValueError(
            f"{path} cannot be read with torch.load(weights_only=True) (it may contain pickled objects): {err}"
        ) from err


def filter_encoder_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap ``model`` / ``state_dict`` / ``module.`` and drop MAE-only keys (``decoder_*``, ``mask_token``).

    What remains is the encoder in timm's key layout, to be loaded strictly: a key that does not belong to the
    encoder is kept so that the strict load names it.
    """
    unwrapped: Any = state_dict
    while isinstance(unwrapped, Mapping):
        inner = next((unwrapped[k] for k in WRAPPER_KEYS if isinstance(unwrapped.get(k), Mapping)), None)
        if inner is None:
            break
        unwrapped = inner
    out: dict[str, torch.Tensor] = {}
    for key, value in unwrapped.items():
        for prefix in WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(MAE_ONLY_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    if not out:
        raise ValueError("checkpoint holds no encoder tensors after filtering")
    return out


def read_folder_contract(config: Mapping[str, Any], config_path: str | Path) -> CorpusContract:
    """The corpus contract of an export's ``config.json``, strictly: a missing field names it and the file."""
    if CORPUS_KEY not in config:
        raise ContractError(f"{config_path}: no '{CORPUS_KEY}' section (the corpus contract: bands, bit_depth, mean, "
                            "std); re-export the weights with arctic_vit.export_folder(..., corpus=...)")
    contract = CorpusContract.from_dict(config[CORPUS_KEY], f"{config_path} ['{CORPUS_KEY}']")
    if not contract.has_stats:
        raise ContractError(f"{config_path} ['{CORPUS_KEY}']: corpus contract field(s) ['mean', 'std'] missing")
    cfg = config.get("pretrained_cfg", {})
    for key in ("mean", "std"):
        if key in cfg and tuple(float(v) for v in cfg[key]) != getattr(contract, key):
            raise ContractError(f"{config_path}: pretrained_cfg.{key} {cfg[key]} disagrees with the corpus "
                                f"contract's {list(getattr(contract, key))}")
    return contract


def read_folder_metadata(location: str | Path) -> dict[str, Any] | None:
    """For an export folder: the pretrained_cfg overlay it implies (weights file, bands, mean/std, ...).

    The corpus contract is read strictly (``ContractError`` naming the missing field and the file) and the weights'
    sha256 is checked against the one the folder records. Returns ``None`` for a plain file.
    """
    folder = Path(location)
    if not folder.is_dir():
        if not folder.exists():
            raise FileNotFoundError(f"pretrained weights not found: {folder}")
        return None
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_FILENAME
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"{folder} is not an arctic-vit export folder: {required.name} is missing")
    config = json.loads(config_path.read_text())
    contract = read_folder_contract(config, config_path)
    expected = config.get(METADATA_KEY, {}).get("weights_sha256")
    if not expected:
        raise ValueError(f"{config_path}: field '{METADATA_KEY}.weights_sha256' missing")
    actual = sha256_file(weights_path)
    if actual != expected:
        raise ChecksumError(f"{weights_path}: sha256 {actual} does not match {expected} recorded in {config_path}")
    overlay: dict[str, Any] = {"file": str(weights_path), **contract.pretrained_cfg_fields()}
    input_size = config.get("pretrained_cfg", {}).get("input_size")
    if input_size is not None:
        overlay["input_size"] = tuple(input_size)
    return overlay


def resolve_weights(repo_id: str | None, revision: str | None, sha256: str | None,
                    filename: str = WEIGHTS_FILENAME) -> Path:
    """Download (or find in the cache) ``filename`` at a pinned revision and verify its sha256; return its path.

    Verified against the pinned digest and, when the hub answers, the hub's own LFS sha256 of that revision.
    """
    if not repo_id:
        raise WeightsUnavailableError("this pretrained config names no hub repository. " + OFFLINE_HELP)
    if not revision or not sha256:
        raise WeightsUnavailableError(
            f"weights for {repo_id} are not published yet: no pinned revision and sha256 in arctic_vit/releases.py. "
            "Produce them with training/ (see README: curate -> pack -> pretrain -> export). " + OFFLINE_HELP
        )
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision))
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled, OSError) as err:
        raise WeightsUnavailableError(
            f"cannot get {filename} of {repo_id}@{revision} from the hub or the local cache ({err.__class__.__name__}: "
            f"{err}). " + OFFLINE_HELP
        ) from err
    actual = sha256_file(path)
    if actual != sha256:
        raise ChecksumError(f"{repo_id}@{revision}/{filename}: sha256 {actual} does not match the pinned {sha256}")
    hub_sha = _hub_lfs_sha256(repo_id, filename, revision)
    if hub_sha is not None and hub_sha != actual:
        raise ChecksumError(f"{repo_id}@{revision}/{filename}: sha256 {actual} does not match the hub's {hub_sha}")
    return path


def _hub_lfs_sha256(repo_id: str, filename: str, revision: str) -> str | None:
    """The hub's LFS sha256 for a file (its X-Linked-Etag), or None when offline or not an LFS file."""
    try:
        etag = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision)).etag
    except Exception:  # unreachable hub (connection errors come from the HTTP client, not OSError): pin check only
        return None
    etag = (etag or "").strip('"')
    return etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None
