"""The corpus contract: the facts that make a pretrained encoder correct on new imagery, owned in one place.

A ``CorpusContract`` holds the bands (canonical names, in input order), the bit depth of the digital numbers, the
per-band mean/std (in [0, 1] units, i.e. of ``DN / (2**bit_depth - 1)``), the ground sample distance and the nodata
value. It is created and validated once (curation knows bands and bit depth; pack adds the statistics), written
once per artefact as ``corpus.json`` (or under the ``"corpus"`` key of a larger JSON), and read back unchanged by
every consumer: shards, checkpoints, the export's ``pretrained_cfg`` / ``config.json``, finetuned model folders.

Nothing here guesses: a missing field is an error naming the file and the field, never a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from torch import nn

from .bands import validate_bands
from .transforms import MultispectralNormalize

__all__ = [
    "CONFIG_NAME",
    "CONTRACT_FILENAME",
    "CONTRACT_VERSION",
    "CORPUS_KEY",
    "ContractError",
    "CorpusContract",
    "contract_for",
    "normalize_for",
]

CONTRACT_FILENAME = "corpus.json"
CONFIG_NAME = "config.json"
"""An export folder's config; it holds the contract under ``CORPUS_KEY``."""
CORPUS_KEY = "corpus"
CONTRACT_VERSION = 1
MAX_BIT_DEPTH = 16
REQUIRED_FIELDS = ("bands", "bit_depth")
OPTIONAL_FIELDS = ("mean", "std", "gsd_m", "nodata")


class ContractError(ValueError):
    """A corpus contract is missing, incomplete, invalid, or disagrees with another one."""


@dataclass(frozen=True)
class CorpusContract:
    """bands (C,), bit_depth, mean/std (C,) of DN / (2**bit_depth - 1); ``mean``/``std`` are None until measured."""

    bands: tuple[str, ...]
    bit_depth: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    gsd_m: float | None = None
    nodata: float | None = None

    def __post_init__(self) -> None:
        try:
            bands = validate_bands(self.bands)
        except ValueError as err:
            raise ContractError(f"bands: {err}") from None
        object.__setattr__(self, "bands", bands)
        if isinstance(self.bit_depth, bool) or not isinstance(self.bit_depth, (int, float)) or (
            int(self.bit_depth) != self.bit_depth or not 1 <= int(self.bit_depth) <= MAX_BIT_DEPTH
        ):
            raise ContractError(f"bit_depth must be an integer in 1..{MAX_BIT_DEPTH}, got {self.bit_depth!r}")
        object.__setattr__(self, "bit_depth", int(self.bit_depth))
        if (self.mean is None) != (self.std is None):
            raise ContractError("mean and std are measured together: one is missing")
        if self.mean is not None:
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
            for key, values in (("mean", mean), ("std", std)):
                if len(values) != len(bands):
                    raise ContractError(f"{key} has {len(values)} values for {len(bands)} bands {bands}")
                if not all(math.isfinite(v) for v in values):
                    raise ContractError(f"{key} has a non-finite value: {values}")
            if any(v <= 0 for v in std):
                raise ContractError(f"std must be positive, got {std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
        if self.gsd_m is not None:
            if not (math.isfinite(float(self.gsd_m)) and float(self.gsd_m) > 0):
                raise ContractError(f"gsd_m must be a positive number of metres, got {self.gsd_m!r}")
            object.__setattr__(self, "gsd_m", float(self.gsd_m))
        if self.nodata is not None:
            object.__setattr__(self, "nodata", float(self.nodata))

    @property
    def max_value(self) -> float:
        """The largest digital number: ``2**bit_depth - 1``."""
        return float(2**self.bit_depth - 1)

    @property
    def has_stats(self) -> bool:
        return self.mean is not None

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> CorpusContract:
        """The same contract with measured per-band statistics."""
        return dataclasses.replace(self, mean=tuple(mean), std=tuple(std))

    def normalizer(self) -> MultispectralNormalize:
        """Raw DN (..., C, H, W) -> float32 ``(DN / max_value - mean) / std``: the one normaliser factory."""
        if not self.has_stats:
            raise ContractError(f"corpus contract for bands {self.bands} has no mean/std yet (measured by pack)")
        return MultispectralNormalize(self.mean, self.std, max_value=self.max_value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, not tuples), with the contract version."""
        out: dict[str, Any] = {"version": CONTRACT_VERSION, "bands": list(self.bands), "bit_depth": self.bit_depth}
        for key in OPTIONAL_FIELDS:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "corpus contract") -> CorpusContract:
        """Strict inverse of ``to_dict``: a missing required field or an unknown field names ``source``."""
        if not isinstance(data, Mapping):
            raise ContractError(f"{source}: expected a mapping with {REQUIRED_FIELDS}, got {type(data).__name__}")
        missing = [k for k in REQUIRED_FIELDS if data.get(k) is None]
        if missing:
            raise ContractError(f"{source}: corpus contract field(s) {missing} missing")
        unknown = sorted(set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS) - {"version"})
        if unknown:
            raise ContractError(f"{source}: unknown corpus contract field(s) {unknown}")
        version = data.get("version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ContractError(f"{source}: corpus contract version {version}, this code reads {CONTRACT_VERSION}")
        try:
            return cls(
                bands=tuple(data["bands"]) if not isinstance(data["bands"], str) else data["bands"],
                bit_depth=data["bit_depth"],
                mean=None if data.get("mean") is None else tuple(data["mean"]),
                std=None if data.get("std") is None else tuple(data["std"]),
                gsd_m=data.get("gsd_m"),
                nodata=data.get("nodata"),
            )
        except ContractError as err:
            raise ContractError(f"{source}: {err}") from None

    @classmethod
    def from_pretrained_cfg(cls, cfg: Mapping[str, Any], source: str = "pretrained_cfg") -> CorpusContract:
        """Read the contract a timm ``pretrained_cfg`` carries (top-level bands, bit_depth, mean, std, gsd_m)."""
        values = {k: cfg.get(k) for k in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if cfg.get(k) is not None}
        return cls.from_dict(values, source)

    def pretrained_cfg_fields(self) -> dict[str, Any]:
        """The contract as ``pretrained_cfg`` entries (tuples, as timm keeps them); mean/std must be measured."""
        if not self.has_stats:
            raise ContractError("a pretrained_cfg needs the measured mean/std of the corpus")
        fields: dict[str, Any] = {"bands": self.bands, "bit_depth": self.bit_depth, "mean": self.mean, "std": self.std}
        if self.gsd_m is not None:
            fields["gsd_m"] = self.gsd_m
        return fields

    def check_same(self, other: CorpusContract, what: str) -> None:
        """Raise naming ``what`` when ``other`` differs in any field (e.g. two shards of one corpus)."""
        for f in dataclasses.fields(self):
            if getattr(self, f.name) != getattr(other, f.name):
                raise ContractError(
                    f"{what}: corpus {f.name} {getattr(other, f.name)!r} differs from {getattr(self, f.name)!r}"
                )

    def write(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON atomically (temp file in the same folder + fsync + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.to_dict(), indent=2) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def read(cls, path: str | Path) -> CorpusContract:
        """Read a contract from ``corpus.json`` (or a folder holding one, or a JSON with a ``"corpus"`` key)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONTRACT_FILENAME
        if not path.is_file():
            raise ContractError(f"{path}: corpus contract file not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ContractError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, Mapping) and CORPUS_KEY in data:
            data = data[CORPUS_KEY]
        return cls.from_dict(data, str(path))


def _model_cfg(model_or_cfg: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    cfg = model_or_cfg if isinstance(model_or_cfg, Mapping) else getattr(model_or_cfg, "pretrained_cfg", None)
    return dict(cfg or {})


def _export_config_path(cfg: Mapping[str, Any]) -> Path | None:
    """The ``config.json`` of the export a model was loaded from: plain timm keeps the folder (``local-dir:``) in
    ``file`` and the repository (``hf-hub:REPO[@REV]``) in ``hf_hub_id``; None for anything else."""
    if cfg.get("file"):
        location = Path(cfg["file"])
        folder = location if location.is_dir() else location.parent
        return folder / CONFIG_NAME if (folder / CONFIG_NAME).is_file() else None
    if cfg.get("source") == "hf-hub" and cfg.get("hf_hub_id"):
        repo_id, _, revision = str(cfg["hf_hub_id"]).partition("@")
        try:
            return Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision or None))
        except Exception as err:  # offline and not cached, gone, ...: say where it was looked for
            raise ContractError(
                f"cannot read the corpus contract from {repo_id}/{CONFIG_NAME} ({err.__class__.__name__}: {err}); "
                "pass normalize_for(model, bit_depth=...) or load the export folder with local-dir:"
            ) from err
    return None


def contract_for(model_or_cfg: nn.Module | Mapping[str, Any]) -> CorpusContract:
    """The corpus contract of a model: from its ``pretrained_cfg`` (an arctic load), else from the ``config.json``
    of the export it was loaded from (a plain-timm ``local-dir:`` / ``hf-hub:`` load)."""
    cfg = _model_cfg(model_or_cfg)
    if cfg.get("bands") is not None and cfg.get("bit_depth") is not None:
        return CorpusContract.from_pretrained_cfg(cfg)
    path = _export_config_path(cfg)
    if path is None:
        raise ContractError("the model carries no corpus contract: its pretrained_cfg has no bands/bit_depth and it "
                            "was not loaded from an arctic-vit export (local-dir: / hf-hub: / file=FOLDER)")
    data = json.loads(path.read_text())
    if not isinstance(data, Mapping) or CORPUS_KEY not in data:
        raise ContractError(f"{path}: no '{CORPUS_KEY}' section (the corpus contract): not an arctic-vit export, or "
                            "one written before the contract; re-export it with arctic_vit.export_folder(corpus=...)")
    return CorpusContract.from_dict(data[CORPUS_KEY], f"{path} ['{CORPUS_KEY}']")


def normalize_for(model_or_cfg: nn.Module | Mapping[str, Any], bit_depth: int | None = None) -> MultispectralNormalize:
    """The normalisation a model expects, from its corpus contract: DN (..., C, H, W) -> float32.

    The contract comes from the model's ``pretrained_cfg`` (an arctic load) or, for a model loaded with plain timm
    (``local-dir:`` / ``hf-hub:``), from the export's ``config.json``. The bit depth is never guessed: without a
    contract, ``bit_depth`` must be given (then the ``pretrained_cfg`` mean/std are used, e.g. for a stock timm
    model); an explicit ``bit_depth`` also overrides the contract's (e.g. 8-bit renderings of 11-bit imagery).
    """
    cfg = _model_cfg(model_or_cfg)
    if bit_depth is None:
        return contract_for(cfg).normalizer()
    if cfg.get("mean") is None or cfg.get("std") is None:
        raise ContractError("no pretrained_cfg with mean/std to build a normalisation from")
    cfg["bit_depth"] = int(bit_depth)
    if cfg.get("bands") is None:  # a stock timm cfg names no bands: scale and standardise only
        return MultispectralNormalize(cfg["mean"], cfg["std"], max_value=float(2 ** int(cfg["bit_depth"]) - 1))
    return CorpusContract.from_pretrained_cfg(cfg).normalizer()
