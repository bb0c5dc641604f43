"""CLI: ``python -m training.curate --config training/configs/curate.yaml input.path=DIR out=DIR [--scheduler tcp://...]``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

from arctic_vit.config import add_config_arguments, config_from_args
from training.curate.pipeline import run_curation
from training.curate.validate import validate_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "curate.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.curate", description=__doc__)
    add_config_arguments(parser, DEFAULT_CONFIG)
    parser.add_argument("--scheduler", default=None,
                        help="Dask scheduler: 'local' (LocalCluster), 'synchronous', or an address tcp://host:8786")
    args = parser.parse_args(argv)
    if args.scheduler:
        args.overrides = [*args.overrides, f"dask.scheduler={args.scheduler}"]
    try:  # the schema, then the checks between keys: every key before any work
        cfg = validate_config(config_from_args(args), source=", ".join(map(str, args.config or [DEFAULT_CONFIG])))
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    if args.show_config:  # the resolved, validated config, then exit
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = run_curation(cfg)
    except (ValueError, FileNotFoundError) as err:  # inputs, band names, the corpus contract
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(manifest)


if __name__ == "__main__":
    main()
