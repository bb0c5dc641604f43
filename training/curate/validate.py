"""The whole curation config checked before any tiling: ``training.schemas.CurateConfig`` (types, ranges, choices,
band names, unknown keys with a did-you-mean), then the checks between keys that a field type cannot express.

Every error is a ``ConfigError`` (a ``ValueError``) whose one-line message starts with the dotted key, e.g.
``select.within: input should be 'closest', 'random', 'farthest' or 'balanced', got 'closet'``.
Imports ``arctic_vit`` (and so torch): ``training.curate.pipeline``, which every Dask worker imports, imports this
module only inside ``run_curation``.
"""

from __future__ import annotations

from typing import Any

from arctic_vit.config import ConfigError
from arctic_vit.config import validate_config as validate_schema
from training.curate.affinity import validate_ap_args
from training.schemas import CurateConfig

__all__ = ["ConfigError", "CurateConfig", "validate_config"]


def validate_config(cfg: dict[str, Any] | CurateConfig, source: str = "curation config") -> dict[str, Any]:
    """A curation config (merged dict, or a ``CurateConfig``) -> the validated config as a plain dict with every key
    present (schema defaults filled in): what the pipeline and its Dask tasks read (a dict, so that unpickling it on
    a worker imports neither this module nor torch). Raises ``ConfigError`` naming the first bad key."""
    model = cfg if isinstance(cfg, CurateConfig) else validate_schema(CurateConfig, cfg, source)
    try:
        _cross_checks(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return model.model_dump()


def _cross_checks(cfg: CurateConfig) -> None:
    """Checks between keys (``cfg``: a validated ``CurateConfig``); ValueError naming the key."""
    if not cfg.input.path:
        raise ValueError("input.path: not set (a folder, a file or a list of them): add input.path=DIR")
    for count, names in cfg.input.band_names.items():
        if len(names.split(",")) != count:
            raise ValueError(f"input.band_names.{count}: {len(names.split(','))} names for {count} bands: {names!r}")
    if cfg.tiling.max_read_px < cfg.tiling.chip_size:
        raise ValueError(f"tiling.max_read_px: must be >= tiling.chip_size ({cfg.tiling.chip_size}), "
                         f"got {cfg.tiling.max_read_px}")
    ap = cfg.cluster.ap
    validate_ap_args(ap.preference, ap.quantile, ap.damping, ap.partition_size, ap.max_partition_size,
                     ap.min_reduction, ap.target_k, ap.max_iter, ap.convergence_iter)
