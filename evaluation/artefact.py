"""A finetuned model as a self-contained folder that a predictor loads without the recipe.

    save_finetuned("outputs/iwp_model", model, task="semantic", classes=card.classes, corpus=contract,
                   tile_size=224, normalization=backbone.normalization, encoder_provenance=backbone.describe(),
                   build_kwargs=build_kwargs_from_recipe(cfg, "arctic_mae_vit_tiny"))
    predictor = load_finetuned("outputs/iwp_model", device="cpu")   # .model (eval), .corpus, .classes, .task

The folder holds ``model.safetensors`` (encoder + pyramid + head) and ``predictor.json``:
``format``/``version``, ``task`` (semantic | instance), ``classes``, ``corpus`` (the corpus contract *of the model's
input*: the bands the encoder eats, by canonical name and in input order, the bit depth, and the mean/std its
normaliser applies, in contract units of DN / (2**bit_depth - 1)), ``tile_size``, ``normalization`` (how those
statistics were chosen), ``encoder_provenance``, ``builder`` + ``build_kwargs`` and the weights' ``sha256``.

The normaliser's statistics are not model weights (timm/our normaliser keeps them as non-persistent buffers): the
contract is their one owner. ``save_finetuned`` reads them from the model itself and refuses a ``corpus`` that
disagrees; ``load_finetuned`` rebuilds the architecture through the ``evaluation.models`` constructors (random init,
nothing downloaded), loads the weights strictly after checking their sha256, and installs ``corpus.normalizer()``.
Both files are written atomically (temp + fsync + rename), the weights first: a folder with ``predictor.json`` is
complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from arctic_vit.corpus import ContractError, CorpusContract
from arctic_vit.hub import sha256_file
from arctic_vit.transforms import MultispectralNormalize

FORMAT = "arctic-vit-finetuned"
VERSION = 1
WEIGHTS_NAME = "model.safetensors"
PREDICTOR_NAME = "predictor.json"
TASKS = ("semantic", "instance")
BUILDERS = {"semantic": "SemanticSegmentationModel", "instance": "InstanceSegmentationModel"}
REQUIRED = ("format", "version", "task", "classes", "corpus", "tile_size", "normalization", "encoder_provenance",
            "builder", "build_kwargs", "sha256")
BACKBONE_KWARGS = ("arch", "rgb_bands", "imagenet_all_bands", "prithvi_num_heads")


class ArtefactError(ValueError):
    """A finetuned model folder is missing, incomplete, tampered with, or inconsistent."""


@dataclass
class Predictor:
    """A loaded finetuned model: ``model`` (eval mode) eats raw DN of ``corpus.bands`` in that order."""

    model: nn.Module
    task: str
    classes: tuple[str, ...]
    corpus: CorpusContract
    tile_size: int
    normalization: str
    encoder_provenance: dict[str, Any]
    sha256: str
    folder: Path

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, T, T) raw DN of ``corpus.bands`` -> (N, K, T, T) class logits (semantic models)."""
        if self.task != "semantic":
            raise ArtefactError(f"{self.folder}: logits() is for semantic models; this one is {self.task!r}")
        return self.model(x)


def build_kwargs_from_recipe(cfg: Mapping[str, Any], backbone: str) -> dict[str, Any]:
    """The ``build_kwargs`` of a finetuning recipe (resolved config) for ``backbone``."""
    m, b = cfg["model"], cfg["backbone"]
    model_kwargs = dict(pyramid_channels=int(m["pyramid_channels"]), use_latlon=bool(m["use_latlon"]),
                        freeze_encoder=bool(m["freeze_encoder"]))
    if cfg["task"] == "semantic":
        model_kwargs["decoder_channels"] = int(m["decoder_channels"])
    else:
        model_kwargs.update(m.get("maskrcnn") or {})
    return {"backbone": backbone, "backbone_kwargs": {k: b.get(k) for k in BACKBONE_KWARGS if b.get(k) is not None},
            "model_kwargs": model_kwargs}


def _features(model: nn.Module) -> nn.Module:
    """The LocationAwarePyramid of a semantic or instance model."""
    if hasattr(model, "features"):
        return model.features
    return model.detector.backbone.features


def _input_indices(model: nn.Module) -> list[int]:
    return list(model.band_indices) if hasattr(model, "detector") else list(model.features.band_indices)


def _model_contract(model: nn.Module, corpus: CorpusContract) -> CorpusContract:
    """The contract of the model's input: the selected bands and its normaliser's statistics in contract units."""
    normalize = _features(model).prepare
    if not isinstance(normalize, MultispectralNormalize):
        raise ArtefactError(f"the model's normaliser is a {type(normalize).__name__}, not a MultispectralNormalize: "
                            "its statistics cannot be written as a corpus contract")
    indices = _input_indices(model)
    if max(indices) >= len(corpus.bands):
        raise ArtefactError(f"the model selects input channels {indices} but the corpus has bands {corpus.bands}")
    scale = normalize.max_value / corpus.max_value  # (x/mv - m)/s == (x/M - m·mv/M)/(s·mv/M)
    mean = (normalize.mean.flatten().double() * scale).tolist()
    std = (normalize.std.flatten().double() * scale).tolist()
    contract = dataclasses.replace(corpus, bands=tuple(corpus.bands[i] for i in indices), mean=tuple(mean),
                                   std=tuple(std))
    if corpus.has_stats and indices == list(range(len(corpus.bands))):
        for key in ("mean", "std"):
            given, used = getattr(corpus, key), getattr(contract, key)
            if any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(given, used)):
                raise ArtefactError(f"corpus {key} {list(given)} differs from the {key} the model normalises with "
                                    f"{[round(v, 6) for v in used]}: pass the contract the model was trained with")
    return contract


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_finetuned(folder: str | Path, model: nn.Module, *, task: str, classes: Sequence[str],
                   corpus: CorpusContract, tile_size: int, normalization: str,
                   encoder_provenance: Mapping[str, Any], build_kwargs: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``predictor.json`` into ``folder`` (atomically) -> the folder."""
    if task not in TASKS:
        raise ArtefactError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(corpus, CorpusContract):
        raise ArtefactError(f"corpus must be an arctic_vit.corpus.CorpusContract, got {type(corpus).__name__}")
    for key in ("backbone", "model_kwargs"):
        if key not in build_kwargs:
            raise ArtefactError(f"build_kwargs needs {key!r} (see build_kwargs_from_recipe); got "
                                f"{sorted(build_kwargs)}")
    contract = _model_contract(model, corpus)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights = folder / WEIGHTS_NAME
    _atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT, "version": VERSION, "task": task, "classes": list(classes), "corpus": contract.to_dict(),
        "tile_size": int(tile_size), "normalization": str(normalization),
        "encoder_provenance": json.loads(json.dumps(dict(encoder_provenance), default=str)),
        "builder": f"evaluation.models.{BUILDERS[task]}", "build_kwargs": json.loads(json.dumps(dict(build_kwargs))),
        "sha256": sha256_file(weights),
    }

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")

    _atomic_write(folder / PREDICTOR_NAME, write_json)
    return folder


def read_predictor_json(folder: str | Path) -> dict[str, Any]:
    """``predictor.json`` of ``folder``, with every required field present (``ArtefactError`` naming the field)."""
    path = Path(folder) / PREDICTOR_NAME
    if not path.is_file():
        raise ArtefactError(f"{path}: not found; {folder} is not a finetuned model folder (save_finetuned writes it)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtefactError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ArtefactError(f"{path}: field(s) {missing} missing")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise ArtefactError(f"{path}: format {meta['format']!r} v{meta['version']}, this code reads {FORMAT!r} "
                            f"v{VERSION}")
    if meta["task"] not in TASKS:
        raise ArtefactError(f"{path}: task {meta['task']!r} is not one of {TASKS}")
    return meta


def _card(meta: dict[str, Any], corpus: CorpusContract):
    from evaluation.datasets.card import DatasetCard

    return DatasetCard(name=f"predictor:{meta['build_kwargs']['backbone']}", format="raster_pairs", root=Path("."),
                       classes=tuple(meta["classes"]), bands=corpus.bands, bit_depth=corpus.bit_depth,
                       gsd_m=corpus.gsd_m)


def build_from_meta(meta: dict[str, Any], corpus: CorpusContract) -> nn.Module:
    """A random-init model of the recorded architecture (nothing downloaded), normalising with ``corpus``."""
    from evaluation.backbones import build_backbone
    from evaluation.models import InstanceSegmentationModel, SemanticSegmentationModel

    kwargs = meta["build_kwargs"]
    card = _card(meta, corpus)
    stats = {"mean": [0.0] * len(corpus.bands), "std": [1.0] * len(corpus.bands)}  # replaced below
    backbone = build_backbone(kwargs["backbone"], card, int(meta["tile_size"]), weights="none",
                              normalization="native", dataset_stats=stats, **kwargs.get("backbone_kwargs", {}))
    model_kwargs = dict(kwargs["model_kwargs"])
    if meta["task"] == "semantic":
        model: nn.Module = SemanticSegmentationModel(backbone, len(meta["classes"]), **model_kwargs)
    else:
        model = InstanceSegmentationModel(backbone, len(meta["classes"]), img_size=int(meta["tile_size"]),
                                          **model_kwargs)
    if _input_indices(model) != list(range(len(corpus.bands))):
        raise ArtefactError(f"rebuilt {kwargs['backbone']!r} selects channels {_input_indices(model)} of the model "
                            f"bands {corpus.bands}: the artefact's corpus must list exactly the bands it eats")
    _features(model).prepare = corpus.normalizer()
    return model


def load_finetuned(folder: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """Rebuild the model of a ``save_finetuned`` folder, sha256-verified, in eval mode on ``device``."""
    folder = Path(folder)
    meta = read_predictor_json(folder)
    try:
        corpus = CorpusContract.from_dict(meta["corpus"], f"{folder / PREDICTOR_NAME} [corpus]")
    except ContractError as err:
        raise ArtefactError(str(err)) from None
    if not corpus.has_stats:
        raise ArtefactError(f"{folder / PREDICTOR_NAME}: corpus has no mean/std (the model's normalisation)")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ArtefactError(f"{weights}: missing; the folder is incomplete (re-run save_finetuned)")
    digest = sha256_file(weights)
    if digest != meta["sha256"]:
        raise ArtefactError(f"{weights}: sha256 {digest} does not match predictor.json ({meta['sha256']}): the "
                            "weights were modified or truncated; re-export the model")
    model = build_from_meta(meta, corpus)
    model.load_state_dict(load_file(weights), strict=True)
    model.to(device).eval()
    return Predictor(model, meta["task"], tuple(meta["classes"]), corpus, int(meta["tile_size"]),
                     meta["normalization"], meta["encoder_provenance"], digest, folder)
