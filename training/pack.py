"""``python -m training.pack``: curated chips -> fixed-size memory-mapped shards + per-band corpus statistics.

Input is either the curation ``manifest.parquet`` (only ``selected`` rows; windows read with rasterio) or a plain
folder of chips (JPEG/PNG/TIF). Output layout: see ``training.shards``. Shards are written in parallel (one process
per shard), each atomically (temp file + rename); ``stats.json`` holds per-band mean/std in [0, 1] units
(DN / (2**bit_depth - 1)) over valid (non-nodata) pixels: the values that go into the exported ``pretrained_cfg``.

    python -m training.pack --config training/configs/pretrain_pack.yaml \
        pack.chip_dir=../shared/data/maple_iwp/unlabelled pack.out_dir=outputs/maple_shards
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from training.config import stage_cli, write_resolved
from training.shards import INDEX_NAME, SHARD_FORMAT, STATS_NAME

LOG = logging.getLogger("training.pack")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain_pack.yaml"
CHIP_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MANIFEST_COLUMNS = ("chip_id", "source_path", "row_off", "col_off", "height", "width", "band_count", "bands",
                    "bit_depth", "selected")
METADATA_COLUMNS = ("chip_id", "source_path", "row_off", "col_off", "lat", "lon", "acquired", "sensor")


@dataclass
class ChipSource:
    """One chip to read: a whole image file (``height is None``) or a window of a raster."""

    chip_id: str
    source_path: str
    row_off: int = 0
    col_off: int = 0
    height: int | None = None
    width: int | None = None
    lat: float = math.nan
    lon: float = math.nan
    acquired: str = ""
    sensor: str = ""


@dataclass
class ShardJob:
    name: str
    chips: list[ChipSource]
    out_dir: str
    chip_shape: tuple[int, int, int]
    dtype: str
    bit_depth: int
    nodata: float | None
    resize: bool


def read_chip(chip: ChipSource) -> np.ndarray:
    """Read one chip as (C, H, W) in its stored dtype; errors name the file."""
    path = Path(chip.source_path)
    try:
        if chip.height is None and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
            return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(path) as src:
            if chip.height is None:
                return src.read()
            window = Window(chip.col_off, chip.row_off, chip.width, chip.height)
            array = src.read(window=window, boundless=False)
    except Exception as error:  # any reader failure: say which file
        raise ValueError(f"cannot read chip {chip.chip_id!r} from {path}: {error}") from error
    if array.shape[-2:] != (chip.height, chip.width):
        raise ValueError(f"chip {chip.chip_id!r}: window {chip.row_off, chip.col_off, chip.height, chip.width} "
                         f"lies partly outside {path} (read {array.shape[-2:]})")
    return array


def fit_chip(array: np.ndarray, chip: ChipSource, shape: tuple[int, int, int], dtype: np.dtype,
             bit_depth: int, resize: bool) -> np.ndarray:
    """Check bands/range/size of a (C, H, W) chip; with ``resize``, resize it to ``shape`` (antialiased bilinear)."""
    if array.shape[0] != shape[0]:
        raise ValueError(f"{chip.source_path}: {array.shape[0]} bands, the corpus has {shape[0]}")
    max_value = 2**bit_depth - 1
    if array.max(initial=0) > max_value:
        raise ValueError(f"{chip.source_path}: value {array.max()} exceeds the {bit_depth}-bit range (max {max_value})")
    if array.shape[1:] != shape[1:]:
        if not resize:
            raise ValueError(f"{chip.source_path}: chip is {array.shape[1:]} px, the corpus {shape[1:]} px; "
                             "set pack.chip_size to resize every chip")
        resized = F.interpolate(torch.from_numpy(array.astype(np.float32))[None], size=shape[1:], mode="bilinear",
                                antialias=True, align_corners=False)[0]
        array = resized.round().clamp(0, max_value).numpy()
    return array.astype(dtype, copy=False)


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Write ``<name>.npy`` (N, C, H, W) and ``<name>.parquet``; return count and per-band sums in [0, 1] units."""
    out_dir = Path(job.out_dir)
    channels = job.chip_shape[0]
    scale = 1.0 / (2**job.bit_depth - 1)
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    pixels = 0
    tmp_array = out_dir / f".{job.name}.npy.tmp"
    array = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=job.dtype, shape=(len(job.chips), *job.chip_shape))
    for i, chip in enumerate(job.chips):
        data = fit_chip(read_chip(chip), chip, job.chip_shape, np.dtype(job.dtype), job.bit_depth, job.resize)
        array[i] = data
        values = data.reshape(channels, -1).astype(np.float64) * scale
        if job.nodata is not None:
            values = values[:, (data.reshape(channels, -1) != job.nodata).any(axis=0)]
        total += values.sum(axis=1)
        total_sq += np.square(values).sum(axis=1)
        pixels += values.shape[1]
    array.flush()
    del array
    metadata = pd.DataFrame([{name: getattr(chip, name) for name in METADATA_COLUMNS} for chip in job.chips])
    tmp_table = out_dir / f".{job.name}.parquet.tmp"
    metadata.to_parquet(tmp_table, index=False)
    os.replace(tmp_array, out_dir / f"{job.name}.npy")
    os.replace(tmp_table, out_dir / f"{job.name}.parquet")
    return {"name": job.name, "count": len(job.chips), "sum": total.tolist(), "sum_sq": total_sq.tolist(),
            "pixels": pixels}


def chips_from_manifest(path: str | Path) -> tuple[list[ChipSource], list[str], int]:
    """Selected rows of a curation manifest -> chips, band names, bit depth (all selected rows must agree)."""
    table = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}")
    table = table[table["selected"].astype(bool)]
    if table.empty:
        raise ValueError(f"manifest {path} has no selected rows")
    for column in ("bands", "bit_depth", "height", "width"):
        if table[column].nunique() != 1:
            raise ValueError(f"manifest {path}: selected rows differ in {column!r}: {sorted(table[column].unique())}; "
                             "pack each group separately")
    chips = []
    for row in table.itertuples(index=False):
        chips.append(ChipSource(
            chip_id=str(row.chip_id), source_path=str(row.source_path), row_off=int(row.row_off),
            col_off=int(row.col_off), height=int(row.height), width=int(row.width),
            lat=float(getattr(row, "lat", math.nan)), lon=float(getattr(row, "lon", math.nan)),
            acquired=str(getattr(row, "acquired", "") or ""), sensor=str(getattr(row, "sensor", "") or ""),
        ))
    bands = [b.strip() for b in str(table["bands"].iloc[0]).split(",")]
    return chips, bands, int(table["bit_depth"].iloc[0])


def chips_from_folder(folder: str | Path) -> list[ChipSource]:
    """Every JPEG/PNG/TIF file of ``folder`` (sorted by name) as a whole-image chip."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"chip folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CHIP_SUFFIXES)
    if not files:
        raise ValueError(f"no {'/'.join(CHIP_SUFFIXES)} chips in {folder}")
    return [ChipSource(chip_id=p.stem, source_path=str(p.resolve())) for p in files]


def pack(
    out_dir: str | Path,
    *,
    manifest: str | Path | None = None,
    chip_dir: str | Path | None = None,
    bands: Sequence[str] | None = None,
    bit_depth: int | None = None,
    chip_size: int | None = None,
    shard_size: int = 1024,
    nodata: float | None = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Pack a manifest's selected chips or a chip folder into shards; return the index (also written to disk)."""
    if (manifest is None) == (chip_dir is None):
        raise ValueError("give exactly one of manifest or chip_dir")
    if manifest is not None:
        chips, manifest_bands, manifest_bit_depth = chips_from_manifest(manifest)
        if bands is not None and list(bands) != manifest_bands:
            raise ValueError(f"manifest {manifest} has bands {manifest_bands}, config asks for {list(bands)}")
        bands, bit_depth = manifest_bands, bit_depth or manifest_bit_depth
    else:
        chips = chips_from_folder(chip_dir)
    first = read_chip(chips[0])
    if bit_depth is None:
        bit_depth = 8 if first.dtype == np.uint8 else 16
    if bands is None:
        raise ValueError("pack.bands must name the chips' bands in order (e.g. [nir, green, red])")
    bands = list(bands)
    if len(bands) != first.shape[0]:
        raise ValueError(f"{chips[0].source_path}: {first.shape[0]} bands but pack.bands names {len(bands)}: {bands}")
    size = (chip_size, chip_size) if chip_size else first.shape[1:]
    chip_shape = (len(bands), int(size[0]), int(size[1]))
    dtype = "uint8" if bit_depth <= 8 else "uint16"

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        ShardJob(name=f"shard-{i:05d}", chips=chips[start : start + shard_size], out_dir=str(out),
                 chip_shape=chip_shape, dtype=dtype, bit_depth=bit_depth, nodata=nodata, resize=bool(chip_size))
        for i, start in enumerate(range(0, len(chips), shard_size))
    ]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(write_shard, jobs))
    else:
        results = [write_shard(job) for job in jobs]

    pixels = sum(r["pixels"] for r in results)
    if pixels == 0:
        raise ValueError(f"every pixel of the {len(chips)} chips equals nodata={nodata}")
    mean = np.sum([r["sum"] for r in results], axis=0) / pixels
    var = np.sum([r["sum_sq"] for r in results], axis=0) / pixels - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    stats = {"bands": bands, "bit_depth": bit_depth, "mean": mean.round(6).tolist(), "std": std.round(6).tolist(),
             "count": len(chips), "pixels": int(pixels)}
    index = {"format": SHARD_FORMAT, "bands": bands, "bit_depth": bit_depth, "dtype": dtype,
             "chip_shape": list(chip_shape), "nodata": nodata,
             "shards": [{"name": r["name"], "count": r["count"]} for r in results]}
    _write_json_atomic(out / STATS_NAME, stats)
    _write_json_atomic(out / INDEX_NAME, index)
    LOG.info("packed %d chips %s into %d shards at %s; mean %s std %s", len(chips), chip_shape, len(jobs), out,
             stats["mean"], stats["std"])
    return index


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    _, cfg = stage_cli(__doc__, DEFAULT_CONFIG, argv)
    options = dict(cfg["pack"])
    out_dir = options.pop("out_dir")
    if options.get("manifest"):  # `bands` names a chip folder's band order; a manifest names its own
        options.pop("bands", None)
    pack(out_dir, **options)
    write_resolved(cfg, out_dir)


if __name__ == "__main__":
    main()
