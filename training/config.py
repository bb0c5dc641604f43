"""Compatibility shim: the configuration mechanism lives in ``arctic_vit.config`` (shared with ``evaluation``).

    cfg = load_config("training/configs/curate.yaml", overrides=["select.budget=500", "dask.n_workers=2"])
    write_resolved(cfg, out_dir)
"""

from arctic_vit.config import (
    RESOLVED_NAME,
    ConfigError,
    ConfigModel,
    add_config_arguments,
    apply_override,
    as_dict,
    config_from_args,
    deep_merge,
    load_config,
    stage_cli,
    validate_config,
    write_resolved,
)

__all__ = [
    "RESOLVED_NAME", "ConfigError", "ConfigModel", "add_config_arguments", "apply_override", "as_dict",
    "config_from_args", "deep_merge", "load_config", "stage_cli", "validate_config", "write_resolved",
]
