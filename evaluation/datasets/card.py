"""Dataset cards: one YAML per dataset naming its format, classes, bands, bit depth and deterministic splits.

    name: maple_iwp
    format: via_json                 # via_json | raster_pairs | vector
    root: ../shared/data/maple_iwp/labelled   # relative: see "Relative paths" below
    classes: [background, lowcenter, highcenter]   # index = class id; 0 is background
    bands: [nir, green, red]         # channel order of the files, canonical names (arctic_vit.bands)
    bit_depth: 8
    gsd_m: 0.5
    latlon: null                     # [lat, lon] when every chip shares one known location, else null
    splits: {group: {regex: 'FID_(\\d+)', bin: 25}, fractions: {train: 0.6, val: 0.2, test: 0.2}}
    options: {annotations: via_region_data.json, class_attribute: object_name}

``splits`` (folders, a list, a group key, fractions): see ``evaluation.datasets.splits``.

Relative paths (``root``, ``generate.scenes_dir``; ``splits.folders`` / ``splits.list`` are relative to ``root``)
resolve against where they were written:

- in a card file: the card file's folder, except the cards shipped in ``evaluation/datasets/cards/``, which are
  written relative to the folder that holds ``evaluation/`` (the repository root in a checkout);
- in ``overrides`` (a recipe's ``dataset.card_overrides``, a command line) or a mapping given to
  ``card_from_dict``: the caller's folder, ``base``, by default the current directory, so that an installed
  package never resolves a user's path into its own environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from arctic_vit.config import deep_merge
from evaluation.datasets.splits import SplitSpec, parse_splits

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CARDS = Path(__file__).resolve().parent / "cards"
FORMATS = ("via_json", "raster_pairs", "vector")
IGNORE_INDEX = 255
"""Mask value of pixels that are not scored (nodata, padding)."""


@dataclass(frozen=True)
class DatasetCard:
    name: str
    format: str
    root: Path
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    bit_depth: int
    gsd_m: float | None = None
    latlon: tuple[float, float] | None = None
    splits: SplitSpec = field(default_factory=lambda: SplitSpec({"train": 0.7, "val": 0.3}))
    options: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] | None = None
    source: Path | None = None

    @property
    def max_value(self) -> int:
        return 2**self.bit_depth - 1

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def foreground_classes(self) -> tuple[str, ...]:
        return self.classes[1:]

    def class_id(self, name: str, where: str) -> int:
        """Class id of ``name``; ``ValueError`` naming ``where`` (file, region) and the card's classes if unknown."""
        if name not in self.classes:
            raise ValueError(
                f"{where}: class {name!r} is not in dataset card {self.name!r} (classes: {list(self.classes)}); "
                "add it to the card or fix the label"
            )
        return self.classes.index(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "format": self.format, "root": str(self.root), "classes": list(self.classes),
            "bands": list(self.bands), "bit_depth": self.bit_depth, "gsd_m": self.gsd_m,
            "latlon": list(self.latlon) if self.latlon else None,
            "splits": {"seed": self.splits.seed, "fractions": dict(self.splits.fractions),
                       "folders": {k: str(v) for k, v in self.splits.folders.items()},
                       "list": str(self.splits.list_file) if self.splits.list_file else None,
                       "group": ({"regex": self.splits.group, "bin": self.splits.group_bin}
                                 if self.splits.group else None)},
            "options": dict(self.options), "generate": self.generate,
        }


def resolve_path(path: str | Path, base: Path = REPO_ROOT) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def card_base(path: Path) -> Path:
    """The folder the relative paths of the card file ``path`` resolve against (see the module docstring)."""
    path = path.resolve()
    return SHIPPED_CARDS.parents[2] if path.parent == SHIPPED_CARDS else path.parent


def _absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of a card mapping (or overrides) with ``root`` and ``generate.scenes_dir`` made absolute against
    ``base``; anything else unchanged."""
    data = dict(data)
    if isinstance(data.get("root"), (str, Path)):
        data["root"] = str(resolve_path(data["root"], base))
    generate = data.get("generate")
    if isinstance(generate, dict) and isinstance(generate.get("scenes_dir"), (str, Path)):
        data["generate"] = {**generate, "scenes_dir": str(resolve_path(generate["scenes_dir"], base))}
    return data


def card_from_dict(data: dict[str, Any], source: Path | None = None, base: Path | None = None) -> DatasetCard:
    """Validate a card mapping -> ``DatasetCard``; ``ValueError`` naming ``source`` and the field on bad input.

    Relative paths resolve against ``base`` (default: the current directory)."""
    where = str(source) if source else "dataset card"
    data = _absolute_paths(data, Path.cwd() if base is None else base)
    missing = [k for k in ("name", "format", "root", "classes", "bands", "bit_depth") if data.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    if data["format"] not in FORMATS:
        raise ValueError(f"{where}: format {data['format']!r} is not one of {FORMATS}")
    classes = tuple(str(c) for c in data["classes"])
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"{where}: classes must list background plus >= 1 foreground class, unique: {classes}")
    from arctic_vit.bands import validate_bands  # the canonical band names live in the core

    bands = validate_bands(data["bands"])
    root = resolve_path(data["root"])
    splits = parse_splits({k: v for k, v in (data.get("splits") or {}).items() if v is not None}, root, where)
    latlon = data.get("latlon")
    return DatasetCard(
        name=str(data["name"]), format=str(data["format"]), root=root, classes=classes,
        bands=bands, bit_depth=int(data["bit_depth"]), gsd_m=data.get("gsd_m"),
        latlon=(float(latlon[0]), float(latlon[1])) if latlon else None,
        splits=splits, options=dict(data.get("options") or {}),
        generate=data.get("generate"), source=source,
    )


def load_card(path: str | Path, overrides: dict[str, Any] | None = None, base: Path | None = None) -> DatasetCard:
    """Read a card YAML; ``overrides`` merge into it (``{"root": "/data/iwp"}``, ``{"splits": {"folders": {"test":
    "/data/iwp/test"}}}``: nested mappings merge, anything else replaces; ``splits.fractions`` replaces as a whole).

    The card's relative paths resolve against ``card_base(path)``, those of ``overrides`` against ``base`` (the
    caller's folder; default: the current directory)."""
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset card not found: {path}")
    overrides = _absolute_paths(overrides or {}, Path.cwd() if base is None else base)
    data = deep_merge(_absolute_paths(yaml.safe_load(path.read_text()) or {}, card_base(path)), overrides)
    if (overrides.get("splits") or {}).get("fractions"):  # shares replace, never merge (they must sum to 1)
        data["splits"]["fractions"] = dict(overrides["splits"]["fractions"])
    return card_from_dict(data, source=path)
