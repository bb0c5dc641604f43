"""Hub I/O on huggingface_hub + safetensors: checkpoint filtering, export folders, verified downloads, push.

An export folder holds ``model.safetensors``, ``config.json`` and ``README.md`` (the model card). ``config.json``
names the *stock* timm architecture (``vit_large_patch16_224`` for L) with ``model_args`` and a ``pretrained_cfg``
of standard timm keys, so the folder loads with plain timm (``local-dir:`` / ``hf-hub:``) and with
``transformers.AutoModel`` (TimmWrapper). The corpus contract (bands, bit depth, mean/std, GSD, nodata) sits once
in its ``corpus`` section and the weights' sha256 in its ``arctic_vit`` section; ``timm.create_model(
'arctic_mae_vit_*', pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER))`` and
``arctic_vit.normalize_for(model)`` (also on a plain-timm load) read them back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors.torch import load_file, save_file

from .corpus import CONFIG_NAME, CORPUS_KEY, ContractError, CorpusContract
from .releases import WEIGHTS_FILENAME

__all__ = [
    "ChecksumError",
    "PushResult",
    "WeightsUnavailableError",
    "build_config",
    "export_folder",
    "filter_encoder_state_dict",
    "load_checkpoint",
    "push_folder",
    "read_folder_contract",
    "read_folder_metadata",
    "resolve_weights",
    "sha256_file",
]

CARD_NAME = "README.md"
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


def _standard_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from .models import STANDARD_CFG_KEYS

    drop = {"file", "state_dict", "url", "hf_hub_id", "hf_hub_filename", "source", "architecture", "tag"}
    return {k: v for k, v in cfg.items() if k in STANDARD_CFG_KEYS and k not in drop and v is not None}


def contract_notes(contract: CorpusContract) -> tuple[str, ...]:
    """The ``pretrained_cfg['notes']`` of an export: how to feed it, stated from the contract it carries."""
    return (
        f"Inputs: {contract.bit_depth}-bit DN of bands {', '.join(contract.bands)} scaled to [0, 1] by "
        f"1/{contract.max_value:g}, then (x - mean) / std per band.",
        "mean/std are the per-band statistics of the corpus contract in config.json ('corpus'); "
        "arctic_vit.normalize_for(model) builds this normalisation.",
    )


def build_config(
    variant: str,
    contract: CorpusContract,
    standard_cfg: Mapping[str, Any],
    *,
    img_size: int,
    num_features: int,
    global_pool: str,
    weights_sha256: str,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one ``config.json`` builder: stock timm architecture + model_args + standard pretrained_cfg, the corpus
    contract once (``"corpus"``), and the ``arctic_vit`` section (variant, weights sha256, training summary)."""
    from .models import STOCK_ARCHITECTURES

    in_chans = len(contract.bands)
    pretrained_cfg = dict(_standard_cfg(standard_cfg))
    pretrained_cfg.update(
        num_classes=0,
        input_size=[in_chans, img_size, img_size],
        mean=list(contract.pretrained_cfg_fields()["mean"]),
        std=list(contract.pretrained_cfg_fields()["std"]),
        notes=list(contract_notes(contract)),
    )
    meta: dict[str, Any] = {"variant": variant, "weights_sha256": weights_sha256}
    if training:
        meta["training"] = dict(training)
    return {
        "architecture": STOCK_ARCHITECTURES[variant],
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": global_pool,
        "model_args": {"in_chans": in_chans, "img_size": img_size},
        "pretrained_cfg": pretrained_cfg,
        CORPUS_KEY: contract.to_dict(),
        METADATA_KEY: meta,
    }


def _contract_from_overrides(variant: str, overrides: Mapping[str, Any]) -> CorpusContract:
    """Deprecated ``pretrained_cfg=`` path: contract fields from ``overrides``, the rest from the registry tag."""
    from timm.models import get_pretrained_cfg

    unknown = sorted(set(overrides) - {"bands", "bit_depth", "mean", "std", "gsd_m", "nodata", "input_size"})
    if unknown:
        raise ValueError(f"export_folder(pretrained_cfg=...): unsupported key(s) {unknown}; "
                         "pass corpus=CorpusContract(...)")
    base = get_pretrained_cfg(f"{variant}.mae_arctic").to_dict()
    fields = {k: base.get(k) for k in ("bands", "bit_depth", "mean", "std", "gsd_m")}
    fields.update({k: v for k, v in overrides.items() if k != "input_size"})
    if "bands" in overrides and ("mean" not in overrides or "std" not in overrides):
        n = len(tuple(overrides["bands"]))  # registry statistics belong to the registry's bands
        if len(fields["mean"]) != n:
            raise ValueError(f"weights need mean/std for the {n} bands {tuple(overrides['bands'])}: "
                             f"pass corpus=CorpusContract(...) with their statistics")
    return CorpusContract(**fields)


def export_folder(
    model_name: str,
    weights: torch.nn.Module | Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    corpus: CorpusContract | None = None,
    img_size: int | None = None,
    results: Sequence[Mapping[str, Any]] | str | Path = (),
    training: Mapping[str, Any] | None = None,
    card: str | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` for an arctic encoder; return ``out_dir``.

    ``weights``: a model, a state dict or a checkpoint path (MAE training checkpoints are filtered).
    ``corpus``: the corpus contract of the pretraining data (bands, bit depth, measured mean/std, GSD); written once
    into ``config.json['corpus']``, and ``pretrained_cfg`` mean/std are filled from it.
    ``img_size``: the weights' resolution (default: from the position embedding).
    ``results``: evaluation rows (or the path of ``evaluation.compare``'s model_card.json) for the card;
    ``training``: a short summary of the pretraining run (corpus, epochs, ...) recorded in config.json and the card.
    ``pretrained_cfg``: deprecated (bands / mean / std / bit_depth / gsd_m / input_size overrides of the registry
    tag); use ``corpus``.
    The weights are loaded strictly into the timm model first, so a wrong layout fails here, not at load time.
    """
    import timm

    from .card import load_results, render_model_card

    variant = _canonical_variant(model_name)
    if corpus is None:
        if pretrained_cfg is None:
            raise TypeError("export_folder needs corpus=CorpusContract(bands, bit_depth, mean, std, ...): "
                            "the corpus the weights were pretrained on")
        warnings.warn("export_folder(pretrained_cfg=...) is deprecated: pass corpus=CorpusContract(...)",
                      DeprecationWarning, stacklevel=2)
        if img_size is None and pretrained_cfg.get("input_size") is not None:
            img_size = int(pretrained_cfg["input_size"][-1])
        corpus = _contract_from_overrides(variant, pretrained_cfg)
    elif pretrained_cfg is not None:
        raise TypeError("export_folder: pass corpus= or the deprecated pretrained_cfg=, not both")
    if not isinstance(corpus, CorpusContract):
        raise TypeError(f"corpus must be a CorpusContract, got {type(corpus).__name__}")
    if not corpus.has_stats:
        raise ContractError(f"corpus contract for bands {corpus.bands} has no mean/std: an export needs the "
                            "measured statistics (training.pack writes them)")
    if isinstance(weights, (str, Path)):
        weights = load_checkpoint(weights)
    state_dict = filter_encoder_state_dict(weights.state_dict() if isinstance(weights, torch.nn.Module) else weights)

    bands = corpus.bands
    in_chans = state_dict["patch_embed.proj.weight"].shape[1] if "patch_embed.proj.weight" in state_dict else len(bands)
    if in_chans != len(bands):
        raise ValueError(f"weights have {in_chans} input bands but the corpus contract names {len(bands)}: {bands}")
    if img_size is None:
        n_patches = state_dict["pos_embed"].shape[1] - 1 if "pos_embed" in state_dict else 196
        img_size = round(n_patches**0.5) * 16
    overlay = {**corpus.pretrained_cfg_fields(), "input_size": (in_chans, img_size, img_size)}
    model = timm.create_model(
        variant, pretrained=False, in_chans=in_chans, img_size=img_size, pretrained_cfg_overlay=overlay
    )
    model.load_state_dict(state_dict, strict=True)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_FILENAME
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, weights_path,
              metadata={"format": "pt"})
    config = build_config(variant, corpus, dict(model.pretrained_cfg), img_size=img_size,
                          num_features=model.num_features, global_pool=model.global_pool,
                          weights_sha256=sha256_file(weights_path), training=training)
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
