"""The whole curation config checked before any tiling: unknown keys (with a suggestion) and out-of-range values.

Every error is a ``ConfigError`` (a ``ValueError``) whose one-line message starts with the config key, e.g.
``select.within: must be one of ('closest', 'random', 'farthest', 'balanced'), got 'closet'``.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import yaml

from training.curate.affinity import validate_ap_args
from training.curate.select import WITHIN

DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "curate.yaml"
FREE_FORM = ("input.band_names",)  # mappings whose keys are data (band counts), not settings


class ConfigError(ValueError):
    """A curation config key with a bad value or an unknown name; the message names the key."""


def _unknown_keys(cfg: dict, defaults: dict, prefix: str = "") -> None:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if dotted in FREE_FORM:
            continue
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{dotted}: unknown config key{hint}")
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            _unknown_keys(value, defaults[key], dotted + ".")


def _int(cfg: dict, dotted: str, low: int | None = None) -> int:
    value = _get(cfg, dotted)
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ConfigError(f"{dotted}: must be an integer{f' >= {low}' if low is not None else ''}, got {value!r}")
    return value


def _number(cfg: dict, dotted: str, low: float, high: float) -> float:
    value = _get(cfg, dotted)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{dotted}: must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"{dotted}: missing from the config")
        node = node[key]
    return node


def validate_config(cfg: dict) -> None:
    """Raise ConfigError for the first bad key of a resolved curation config (defaults + overrides merged)."""
    from arctic_vit.bands import validate_bands  # here: arctic_vit imports torch, Dask workers must not

    defaults = yaml.safe_load(DEFAULTS.read_text())
    _unknown_keys(cfg, defaults)
    inp = cfg["input"]
    if not inp.get("path"):
        raise ConfigError("input.path: not set (a folder, a file or a list of them): add input.path=DIR")
    for key in ("patterns", "exclude"):
        if not isinstance(inp.get(key) or [], list):
            raise ConfigError(f"input.{key}: must be a list of glob patterns, got {inp.get(key)!r}")
    counts = inp.get("band_counts")
    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 1 for c in counts):
        raise ConfigError(f"input.band_counts: must be a list of positive integers, got {counts!r}")
    for count, names in (inp.get("band_names") or {}).items():
        try:
            bands = validate_bands(str(names))
        except ValueError as err:
            raise ConfigError(f"input.band_names.{count}: {err}") from None
        if int(count) != len(bands):
            raise ConfigError(f"input.band_names.{count}: {len(bands)} names for {count} bands: {names!r}")
    try:
        validate_bands(str(inp.get("chip_bands")))
    except ValueError as err:
        raise ConfigError(f"input.chip_bands: {err}") from None
    if inp.get("bit_depth") not in (None, "auto"):
        _int(cfg, "input.bit_depth", 1)
        if inp["bit_depth"] > 32:
            raise ConfigError(f"input.bit_depth: must be 'auto' or 1..32, got {inp['bit_depth']}")
    _int(cfg, "input.uint16_bit_depth", 1)
    scale = inp.get("scale", "auto")
    if scale not in (None, "auto") and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                        or not math.isfinite(scale) or scale <= 0):
        raise ConfigError(f"input.scale: must be 'auto' or a positive number, got {scale!r}")
    nodata = inp.get("nodata", "auto")
    if nodata not in (None, "auto") and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))):
        raise ConfigError(f"input.nodata: must be 'auto', null or a number, got {nodata!r}")
    chip = _int(cfg, "tiling.chip_size", 8)
    _int(cfg, "tiling.stride", 1)
    _number(cfg, "tiling.min_valid_fraction", 0.0, 1.0)
    _number(cfg, "tiling.min_std", 0.0, math.inf)
    if _int(cfg, "tiling.max_read_px", 1) < chip:
        raise ConfigError(f"tiling.max_read_px: must be >= tiling.chip_size ({chip}), "
                          f"got {cfg['tiling']['max_read_px']}")
    _int(cfg, "tiling.gdal_threads", 1)
    for key in ("sample_step", "texture_step", "batch_size"):
        _int(cfg, f"descriptors.{key}", 1)
    for group in (cfg["descriptors"].get("weights") or {}):
        if group not in ("spectral", "texture", "metadata"):
            raise ConfigError(f"descriptors.weights.{group}: unknown group (spectral, texture, metadata)")
        _number(cfg, f"descriptors.weights.{group}", 0.0, math.inf)
    method = cfg["cluster"].get("method")
    if method not in ("ap", "kmeans"):
        raise ConfigError(f"cluster.method: must be 'ap' or 'kmeans', got {method!r}")
    ap = cfg["cluster"]["ap"]
    for key in ("partition_size", "max_partition_size", "max_iter", "convergence_iter", "refine_iter",
                "polish_rounds", "polish_group", "polish_fixed", "chunk_size"):
        _int(cfg, f"cluster.ap.{key}", 0 if key in ("refine_iter", "polish_rounds") else 1)
    try:
        validate_ap_args(ap["preference"], ap["quantile"], ap["damping"], ap["partition_size"],
                         ap["max_partition_size"], ap["min_reduction"], ap["target_k"], ap["max_iter"],
                         ap["convergence_iter"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    levels = cfg["cluster"]["kmeans"].get("levels")
    if levels is not None and not (isinstance(levels, list) and all(isinstance(k, int) and k >= 1 for k in levels)):
        raise ConfigError(f"cluster.kmeans.levels: must be null or a list of positive integers, got {levels!r}")
    _int(cfg, "select.budget", 0)
    if cfg["select"].get("within") not in WITHIN:
        raise ConfigError(f"select.within: must be one of {WITHIN}, got {cfg['select'].get('within')!r}")
    if not isinstance(cfg["select"].get("dedup"), bool):
        raise ConfigError(f"select.dedup: must be true or false, got {cfg['select'].get('dedup')!r}")
    if cfg["select"].get("bands") is not None:
        try:
            validate_bands(str(cfg["select"]["bands"]))
        except ValueError as err:
            raise ConfigError(f"select.bands: {err}") from None
    scheduler = cfg["dask"].get("scheduler")
    if not isinstance(scheduler, str) or not (scheduler in ("local", "synchronous", "sync", "none")
                                              or "://" in scheduler):
        raise ConfigError(f"dask.scheduler: must be 'local', 'synchronous' or an address tcp://host:8786, "
                          f"got {scheduler!r}")
    _int(cfg, "dask.n_workers", 1)
    _int(cfg, "dask.threads_per_worker", 1)
    _int(cfg, "seed", 0)
    _int(cfg, "report.mosaic_clusters", 0)
