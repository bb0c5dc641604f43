"""One config mechanism for every stage: a defaults YAML, optional override YAMLs, then ``key.sub=value`` CLI overrides.

The resolved config is written next to the stage's outputs (``resolved_config.yaml``) so every run can be repeated.

    cfg = load_config("training/configs/curate.yaml", overrides=["select.budget=500", "dask.n_workers=2"])
    write_resolved(cfg, out_dir)
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

RESOLVED_NAME = "resolved_config.yaml"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``update`` (neither input is modified)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(cfg: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``1e-4``, ``[1, 2]``, ``null``)."""
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key.sub=value")
    dotted, raw = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ValueError(f"override {override!r} has an empty key")
    node = cfg
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(
    *paths: str | Path,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Merge YAML files left to right (later wins, a file may name a ``defaults:`` file beside it), then overrides."""
    cfg: dict[str, Any] = {}
    for path in paths:
        cfg = deep_merge(cfg, _read_with_defaults(Path(path)))
    for override in overrides:
        apply_override(cfg, override)
    return cfg


def _read_with_defaults(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping at top level, got {type(data).__name__}")
    parent = data.pop("defaults", None)
    if parent:
        data = deep_merge(_read_with_defaults(path.parent / parent), data)
    return data


def write_resolved(cfg: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``cfg`` as ``<out_dir>/resolved_config.yaml`` and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESOLVED_NAME
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | Path | None = None) -> None:
    """Add ``--config`` (repeatable) and trailing ``key.sub=value`` overrides to a stage's argument parser."""
    parser.add_argument(
        "--config", action="append", default=None,
        help=f"YAML config (repeatable; later files win). Default: {default_config}",
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, parsed as YAML")
    parser.set_defaults(_default_config=default_config)


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the config named by ``add_config_arguments`` options."""
    paths = args.config or ([args._default_config] if args._default_config else [])
    return load_config(*paths, overrides=args.overrides)


def stage_cli(doc: str | None, default_config: str | Path, argv: Sequence[str] | None = None,
              ) -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    """The shared start of a stage's ``main``: parser (``--config`` + overrides), resolved config, INFO logging."""
    import logging

    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    add_config_arguments(parser, default_config)
    cfg = config_from_args(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return parser, cfg
