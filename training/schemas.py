"""Typed configuration schemas of the training stages (``arctic_vit.config``): the schemas own the defaults.

YAML files under ``training/configs/`` hold only settings that differ from these defaults;
``python -m training.<stage> --show-config`` prints the resolved, validated result.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from arctic_vit.config import ConfigModel

PositiveInt = Annotated[int, Field(gt=0)]


class PackOptions(ConfigModel):
    out_dir: str = Field("outputs/shards", description="folder the shards and index are written to")
    manifest: str | None = Field(None, description="curation manifest.parquet (selected rows; corpus.json beside it)")
    chip_dir: str | None = Field(None, description="or a folder of JPEG/PNG/TIF chips")
    bands: list[str] | None = Field(None, description="chip folder: band names in stored order, e.g. [nir, green, red]")
    bit_depth: Annotated[int, Field(ge=1, le=32)] | None = Field(
        None, description="chip folder: required unless the chips are 8-bit image files")
    gsd_m: Annotated[float, Field(gt=0)] | None = Field(None, description="ground sample distance in metres")
    chip_size: PositiveInt | None = Field(None, description="null: native size (all must agree); N: resize to N x N")
    shard_size: PositiveInt = Field(1024, description="chips per shard")
    nodata: float | None = Field(0, description="pixel value (all bands) excluded from stats and loss; null: none")
    seed: int = Field(0, description="seed of the global permutation the chips are written in")
    workers: PositiveInt = Field(1, description="shards written in parallel processes")


class PackConfig(ConfigModel):
    pack: PackOptions = Field(default_factory=PackOptions, description="python -m training.pack")


class ExportOptions(ConfigModel):
    checkpoint: str | None = Field(None, description="a checkpoint file, or a folder (its newest checkpoint-*.pt)")
    out_dir: str = Field("outputs/export", description="hub folder written")
    model_name: str | None = Field(None, description="null: the checkpoint's model.encoder")


class ExportConfig(ConfigModel):
    export: ExportOptions = Field(default_factory=ExportOptions, description="python -m training.export")
