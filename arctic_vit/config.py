"""One typed configuration mechanism for every stage (training and evaluation), on pydantic v2.

A stage declares a schema (``ConfigModel`` subclasses: types, constraints, defaults, one-line help per field); the
schema owns the defaults, YAML files hold only non-default settings, ``key.sub=value`` overrides come last:

    cfg = load_config("training/configs/pretrain_pack.yaml", overrides=["pack.seed=3"], schema=PackConfig)
    cfg.pack.seed  # -> 3 (an int, validated: no casts in stage code)
    write_resolved(cfg, out_dir)  # resolved_config.yaml beside the outputs

Errors are one line naming the dotted key and the source: ``pack.seed: input should be a valid integer, got 'x'
(config training/configs/pretrain_pack.yaml)``; unknown keys are refused with a did-you-mean. Without ``schema``,
``load_config`` returns the merged plain dict (the former ``training.config`` behaviour). Not imported by
``arctic_vit/__init__``: ``import arctic_vit`` stays light.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

RESOLVED_NAME = "resolved_config.yaml"

Model = TypeVar("Model", bound="ConfigModel")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming the dotted key and the source."""


class ConfigModel(BaseModel):
    """Base of every stage schema: unknown keys refused, defaults validated, assignments validated.

    Picklable (plain pydantic models), so it travels to torchrun/dask/multiprocessing workers unchanged."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)


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
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``[1, 2]``, ``null``, ``true``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.sub=value")
    dotted, raw = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {override!r} has an empty key")
    node = cfg
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """One YAML config file with its ``defaults:`` chain (a file named relative to it, merged underneath)."""
    return _read_with_defaults(Path(path), ())


def _read_with_defaults(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in chain:
        raise ConfigError(f"config {path}: 'defaults' chain loops back to itself")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at top level, got {type(data).__name__}")
    parent = data.pop("defaults", None)
    if parent:
        data = deep_merge(_read_with_defaults(path.parent / parent, (*chain, path.resolve())), data)
    return data


def load_config(*paths: str | Path, overrides: Sequence[str] = (), schema: type[Model] | None = None,
                ) -> Any:
    """Merge YAML files left to right (later wins), then overrides; validated against ``schema`` when given.

    -> ``schema`` instance, or the merged plain dict without a schema."""
    cfg: dict[str, Any] = {}
    for path in paths:
        cfg = deep_merge(cfg, read_yaml(path))
    for override in overrides:
        apply_override(cfg, override)
    if schema is None:
        return cfg
    source = ", ".join(str(p) for p in paths) or "defaults"
    if overrides:
        source += " + overrides"
    return validate_config(schema, cfg, source)


def validate_config(schema: type[Model], data: dict[str, Any], source: str = "config") -> Model:
    """``data`` validated against ``schema``; -> the model, or ``ConfigError`` with one line per problem joined."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        problems = [_describe(schema, e) for e in error.errors(include_url=False)]
        raise ConfigError(f"{'; '.join(problems)} (config {source})") from None


def _describe(schema: type[BaseModel], error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc) or "<top>"
    if error["type"] == "extra_forbidden":
        known = _fields_at(schema, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean {'.'.join([*loc[:-1], close[0]])!r}?" if close else f"; known keys: {sorted(known)}"
        return f"{dotted}: unknown key{hint}"
    message = error["msg"].removeprefix("Value error, ")  # a schema validator's own message, kept as written
    message = message[0].lower() + message[1:]
    for words, sign in (("greater than or equal to", ">="), ("less than or equal to", "<="), ("greater than", ">"),
                        ("less than", "<")):
        message = message.replace(f"input should be {words}", f"must be {sign}")
    if error["type"] == "missing":
        return f"{dotted}: required"
    if error["type"] == "value_error" and ", got " in message:  # the validator already quoted the value
        return f"{dotted}: {message}"
    return f"{dotted}: {message}, got {error.get('input')!r}"


def _fields_at(schema: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = schema
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def as_dict(cfg: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (a model dumped in JSON mode: paths as str, tuples as lists)."""
    return cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg


def write_resolved(cfg: BaseModel | dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``cfg`` as ``<out_dir>/resolved_config.yaml`` and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESOLVED_NAME
    path.write_text(yaml.safe_dump(as_dict(cfg), sort_keys=False))
    return path


def describe_schema(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """``dotted.key: type = default  # help`` for every leaf of ``schema`` (for ``--show-config`` and docs)."""
    lines = []
    for name, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += describe_schema(annotation, f"{prefix}{name}.")
        else:
            kind = getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
            lines.append(f"{prefix}{name}: {kind} = {field.get_default(call_default_factory=True)!r}"
                         f"  # {field.description or ''}")
    return lines


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | Path | None = None) -> None:
    """Add ``--config`` (repeatable), ``--show-config`` and trailing ``key.sub=value`` overrides to a parser."""
    parser.add_argument(
        "--config", action="append", default=None,
        help=f"YAML config (repeatable; later files win). Default: {default_config}",
    )
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved, validated config as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, parsed as YAML")
    parser.set_defaults(_default_config=default_config)


def config_from_args(args: argparse.Namespace, schema: type[Model] | None = None) -> Any:
    """Resolve the config named by ``add_config_arguments`` options (validated when ``schema`` is given)."""
    paths = args.config or ([args._default_config] if args._default_config else [])
    return load_config(*paths, overrides=args.overrides, schema=schema)


def stage_cli(doc: str | None, default_config: str | Path | None, argv: Sequence[str] | None = None,
              schema: type[Model] | None = None, prog: str | None = None) -> tuple[argparse.ArgumentParser, Any]:
    """The shared start of a stage's ``main``: parser, resolved + validated config (a ``ConfigError`` becomes a
    one-line ``parser.error``), ``--show-config`` printed and exit, INFO logging. ``prog``: the command as typed,
    e.g. ``python -m training.pack`` (argparse would otherwise name the file, ``pack.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    add_config_arguments(parser, default_config)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, schema)
    except ConfigError as error:
        parser.error(str(error))
    if args.show_config:
        print(yaml.safe_dump(as_dict(cfg), sort_keys=False), end="")
        parser.exit(0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return parser, cfg
