"""Export and push: the one ``config.json`` builder, export folders, and upload to the Hugging Face Hub.

An export folder holds ``model.safetensors``, ``config.json`` and ``README.md`` (the model card). ``config.json``
names the *stock* timm architecture (``vit_large_patch16_224`` for L) with ``model_args`` and a ``pretrained_cfg``
of standard timm keys, so the folder loads with plain timm (``local-dir:`` / ``hf-hub:``) and with
``transformers.AutoModel`` (TimmWrapper). The corpus contract (bands, bit depth, mean/std, GSD, nodata) sits once
in its ``corpus`` section and the weights' sha256 in its ``arctic_vit`` section; ``timm.create_model(
'arctic_mae_vit_*', pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER))`` and
``arctic_vit.normalize_for(model)`` (also on a plain-timm load) read them back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file
from timm.models import get_pretrained_cfg

from .card import load_results, render_model_card
from .corpus import CONFIG_NAME, CORPUS_KEY, ContractError, CorpusContract
from .models import STANDARD_CFG_KEYS, STOCK_ARCHITECTURES, canonical_variant
from .releases import WEIGHTS_FILENAME
from .weights import (
    METADATA_KEY,
    OFFLINE_HELP,
    ChecksumError,
    WeightsUnavailableError,
    filter_encoder_state_dict,
    load_checkpoint,
    read_folder_contract,
    read_folder_metadata,
    resolve_weights,
    sha256_file,
)

__all__ = [  # weights I/O names are re-exported from arctic_vit.weights for existing callers
    "METADATA_KEY",
    "OFFLINE_HELP",
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
PROCESSOR_CODE_NAME = "image_processing_arctic.py"
PROCESSOR_CLASS = "ArcticImageProcessor"


def _standard_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
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
    # transformers' AutoImageProcessor reads a timm folder's config.json: auto_map points it (trust_remote_code=True)
    # at image_processing_arctic.py, which takes bands, bit depth and statistics from "corpus" below
    if training:
        meta["training"] = dict(training)
    return {
        "architecture": STOCK_ARCHITECTURES[variant],
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": global_pool,
        # dynamic_img_size: plain timm and transformers accept any multiple of the patch, as the arctic models do
        "model_args": {"in_chans": in_chans, "img_size": img_size, "dynamic_img_size": True},
        "pretrained_cfg": pretrained_cfg,
        CORPUS_KEY: contract.to_dict(),
        METADATA_KEY: meta,
        "auto_map": {"AutoImageProcessor": f"{Path(PROCESSOR_CODE_NAME).stem}.{PROCESSOR_CLASS}"},
    }


def _contract_from_overrides(variant: str, overrides: Mapping[str, Any]) -> CorpusContract:
    """Deprecated ``pretrained_cfg=`` path: contract fields from ``overrides``, the rest from the registry tag."""
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
    variant = canonical_variant(model_name)
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
    (out / PROCESSOR_CODE_NAME).write_text(resources.files(__package__).joinpath("hf_processor.py").read_text())
    (out / CARD_NAME).write_text(card if card is not None else render_model_card(config, results))
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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
