"""Hub I/O on huggingface_hub + safetensors: checkpoint filtering, export folders, verified downloads, push.

An export folder holds ``model.safetensors``, ``config.json`` and ``README.md`` (the model card). ``config.json``
names the *stock* timm architecture (``vit_large_patch16_224`` for L) with ``model_args`` and a ``pretrained_cfg``
of standard timm keys, so the folder loads with plain timm (``local-dir:`` / ``hf-hub:``) and with
``transformers.AutoModel`` (TimmWrapper). Band names, bit depth, GSD and the weights' sha256 sit in its
``arctic_vit`` section, which ``timm.create_model('arctic_mae_vit_*', pretrained=True,
pretrained_cfg_overlay=dict(file=FOLDER))`` reads back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors.torch import load_file, save_file

from .releases import WEIGHTS_FILENAME

__all__ = [
    "ChecksumError",
    "PushResult",
    "WeightsUnavailableError",
    "export_folder",
    "filter_encoder_state_dict",
    "load_checkpoint",
    "push_folder",
    "read_folder_metadata",
    "resolve_weights",
    "sha256_file",
]

CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
METADATA_KEY = "arctic_vit"
MAE_ONLY_PREFIXES = ("decoder_", "mask_token")
WRAPPER_KEYS = ("model", "state_dict", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
OFFLINE_HELP = (
    "To load offline: (1) pre-fill the Hugging Face cache on a connected machine "
    "(`huggingface-cli download REPO --revision REV`) and set HF_HUB_OFFLINE=1; "
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


def _standard_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from .models import STANDARD_CFG_KEYS

    drop = {"file", "state_dict", "url", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag"}
    return {k: v for k, v in cfg.items() if k in STANDARD_CFG_KEYS and k not in drop and v is not None}


def export_folder(
    model_name: str,
    weights: torch.nn.Module | Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    pretrained_cfg: Mapping[str, Any] | None = None,
    card: str | None = None,
    img_size: int | None = None,
    results: Sequence[Mapping[str, Any]] | str | Path = (),
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for an arctic encoder; return ``out_dir``.

    ``weights``: a model, a state dict or a checkpoint path (MAE training checkpoints are filtered).
    ``pretrained_cfg``: overrides such as ``bands``, ``mean``, ``std``, ``bit_depth``, ``gsd_m``, ``input_size``.
    ``results``: evaluation rows (or the path of ``evaluation.compare``'s model_card.json) for the card;
    ``training``: a short summary of the pretraining run (corpus, epochs, ...) recorded in config.json and the card.
    The weights are loaded strictly into the timm model first, so a wrong layout fails here, not at load time.
    """
    import timm

    from .card import load_results, render_model_card
    from .models import STOCK_ARCHITECTURES, ArcticPretrainedCfg

    variant = _canonical_variant(model_name)
    overrides = dict(pretrained_cfg or {})
    if isinstance(weights, (str, Path)):
        weights = load_checkpoint(weights)
    state_dict = filter_encoder_state_dict(weights.state_dict() if isinstance(weights, torch.nn.Module) else weights)

    bands = tuple(overrides.get("bands", ArcticPretrainedCfg.bands))
    in_chans = state_dict["patch_embed.proj.weight"].shape[1] if "patch_embed.proj.weight" in state_dict else len(bands)
    if in_chans != len(bands):
        raise ValueError(f"weights have {in_chans} input bands but pretrained_cfg names {len(bands)}: {bands}")
    if img_size is None:
        n_patches = state_dict["pos_embed"].shape[1] - 1 if "pos_embed" in state_dict else 196
        img_size = round(n_patches**0.5) * 16
    overrides.setdefault("input_size", (in_chans, img_size, img_size))
    model = timm.create_model(
        variant, pretrained=False, in_chans=in_chans, img_size=img_size, pretrained_cfg_overlay=overrides
    )
    model.load_state_dict(state_dict, strict=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_FILENAME
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, weights_path,
              metadata={"format": "pt"})
    cfg = dict(model.pretrained_cfg)
    config = {
        "architecture": STOCK_ARCHITECTURES[variant],
        "num_classes": 0,
        "num_features": model.num_features,
        "global_pool": model.global_pool,
        "model_args": {"in_chans": in_chans, "img_size": img_size},
        "pretrained_cfg": _standard_cfg(cfg) | {"num_classes": 0, "input_size": [in_chans, img_size, img_size]},
        METADATA_KEY: {
            "variant": variant,
            "bands": list(cfg["bands"]),
            "bit_depth": cfg["bit_depth"],
            "gsd_m": cfg.get("gsd_m"),
            "weights_sha256": sha256_file(weights_path),
        },
    }
    if training:
        config[METADATA_KEY]["training"] = dict(training)
    if isinstance(results, (str, Path)):
        results = load_results(results)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=_json_default) + "\n")
    (out / CARD_NAME).write_text(card if card is not None else render_model_card(config, results))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _canonical_variant(model_name: str) -> str:
    from .models import STOCK_ARCHITECTURES

    name = model_name.split(".", 1)[0]
    name = {"arctic_mae_vit_large": "arctic_mae_vit_large_patch16_224"}.get(name, name)
    if name not in STOCK_ARCHITECTURES:
        raise ValueError(f"unknown arctic model {model_name!r}; valid names: {sorted(STOCK_ARCHITECTURES)}")
    return name


def read_folder_metadata(location: str | Path) -> dict[str, Any] | None:
    """For an export folder: the pretrained_cfg overlay it implies (weights file, bands, mean/std, ...).

    The weights' sha256 is checked against the one the folder records. Returns ``None`` for a plain file.
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
    meta = config.get(METADATA_KEY, {})
    expected = meta.get("weights_sha256")
    if expected:
        actual = sha256_file(weights_path)
        if actual != expected:
            raise ChecksumError(f"{weights_path}: sha256 {actual} does not match {expected} recorded in {config_path}")
    cfg = config.get("pretrained_cfg", {})
    overlay: dict[str, Any] = {"file": str(weights_path)}
    for key in ("mean", "std", "input_size"):
        if key in cfg:
            overlay[key] = tuple(cfg[key])
    for key in ("bands", "bit_depth", "gsd_m"):
        if meta.get(key) is not None:
            overlay[key] = tuple(meta[key]) if key == "bands" else meta[key]
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


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    commit: str
    sha256: str
    commit_url: str | None = None

    def pin_snippet(self) -> str:
        """The line to put in ``arctic_vit/releases.py`` to pin this upload."""
        return f'WeightsPin(repo_id="{self.repo_id}", revision="{self.commit}", sha256="{self.sha256}")'


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload arctic-vit encoder",
) -> PushResult:
    """Upload an export folder with ``HfApi.upload_folder``; return the commit and weights digest to pin."""
    folder = Path(folder)
    if read_folder_metadata(folder) is None:
        raise NotADirectoryError(f"{folder} is not an export folder")
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision, commit_message=commit_message)
    return PushResult(repo_id=repo_id, commit=info.oid, sha256=sha256_file(folder / WEIGHTS_FILENAME),
                      commit_url=info.commit_url)
