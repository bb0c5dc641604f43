"""``python -m training.pack``: curated chips -> fixed-size memory-mapped shards + the corpus contract with statistics.

Input is either the curation ``manifest.parquet`` (only ``selected`` rows; windows read with rasterio; the corpus
contract -- bands, bit depth, GSD, nodata -- from the ``corpus.json`` curation writes beside it) or a plain folder of
chips (JPEG/PNG/TIF; the contract from ``pack.bands`` + ``pack.bit_depth``, 8-bit image files needing no bit depth).
Chips are written in a seeded global permutation (``pack.seed``), so every stretch of every shard mixes scenes.
Output layout: see ``training.shards``. Shards are written in parallel (one process per shard), each atomically
(temp file + rename); ``corpus.json`` gets the per-band mean/std in [0, 1] units (DN / (2**bit_depth - 1)) over
valid (non-nodata) pixels: the values that go into the exported ``pretrained_cfg``.

    python -m training.pack --config training/configs/pretrain_pack.yaml \
        pack.chip_dir=../shared/data/maple_iwp/unlabelled pack.bands=[nir,green,red] pack.out_dir=outputs/maple_shards
"""

from __future__ import annotations

import dataclasses
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

from arctic_vit.config import stage_cli, write_resolved
from arctic_vit.corpus import CONTRACT_FILENAME, ContractError, CorpusContract
from training.schemas import PackConfig
from training.shards import (
    INDEX_NAME,
    LEGACY_STATS_NAME,
    SHARD_FORMAT,
    SHARD_STAMP_KEY,
    resize_with_validity,
    shard_stamp,
)

LOG = logging.getLogger("training.pack")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "pretrain_pack.yaml"
CHIP_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MANIFEST_COLUMNS = ("chip_id", "source_path", "row_off", "col_off", "height", "width", "selected")
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
    contract: CorpusContract
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
             contract: CorpusContract, resize: bool) -> np.ndarray:
    """Check bands/range/size of a (C, H, W) chip; with ``resize``, resize it to ``shape`` (antialiased bilinear).

    Resizing is nodata-aware: an output pixel any nodata input pixel contributed to becomes nodata (all bands).
    """
    if array.shape[0] != shape[0]:
        raise ValueError(f"{chip.source_path}: {array.shape[0]} bands, the corpus has {shape[0]} {contract.bands}")
    if array.max(initial=0) > contract.max_value:
        raise ValueError(f"{chip.source_path}: value {array.max()} exceeds the {contract.bit_depth}-bit range "
                         f"(max {contract.max_value:.0f}); set the corpus bit depth right")
    if array.shape[1:] != shape[1:]:
        if not resize:
            raise ValueError(f"{chip.source_path}: chip is {array.shape[1:]} px, the corpus {shape[1:]} px; "
                             "set pack.chip_size to resize every chip")
        data = torch.from_numpy(array.astype(np.float32))
        valid = None if contract.nodata is None else (data != contract.nodata).any(dim=0)
        resized, valid = resize_with_validity(data, valid, tuple(shape[1:]))
        resized = resized.round().clamp(0, contract.max_value)
        if contract.nodata is not None:
            resized[:, ~valid] = contract.nodata
        array = resized.numpy()
    return array.astype(dtype, copy=False)


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Write ``<name>.npy`` (N, C, H, W) and ``<name>.parquet``; return count and per-band sums in [0, 1] units."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(job.out_dir)
    channels = job.chip_shape[0]
    nodata = job.contract.nodata
    scale = 1.0 / job.contract.max_value
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    pixels = 0
    tmp_array = out_dir / f".{job.name}.npy.tmp"
    array = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=job.dtype, shape=(len(job.chips), *job.chip_shape))
    for i, chip in enumerate(job.chips):
        data = fit_chip(read_chip(chip), chip, job.chip_shape, np.dtype(job.dtype), job.contract, job.resize)
        array[i] = data
        values = data.reshape(channels, -1).astype(np.float64) * scale
        if nodata is not None:
            values = values[:, (data.reshape(channels, -1) != nodata).any(axis=0)]
        total += values.sum(axis=1)
        total_sq += np.square(values).sum(axis=1)
        pixels += values.shape[1]
    array.flush()
    del array
    metadata = pd.DataFrame([{name: getattr(chip, name) for name in METADATA_COLUMNS} for chip in job.chips])
    table = pa.Table.from_pandas(metadata, preserve_index=False)
    stamp = json.dumps(shard_stamp(job.contract, job.dtype)).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), SHARD_STAMP_KEY: stamp})
    tmp_table = out_dir / f".{job.name}.parquet.tmp"
    pq.write_table(table, tmp_table)
    os.replace(tmp_array, out_dir / f"{job.name}.npy")
    os.replace(tmp_table, out_dir / f"{job.name}.parquet")
    return {"name": job.name, "count": len(job.chips), "sum": total.tolist(), "sum_sq": total_sq.tolist(),
            "pixels": pixels}


def chips_from_manifest(path: str | Path) -> tuple[list[ChipSource], pd.DataFrame]:
    """Selected rows of a curation manifest -> chips (and the selected rows, to check against the contract)."""
    table = pd.read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}")
    table = table[table["selected"].astype(bool)]
    if table.empty:
        raise ValueError(f"manifest {path} has no selected rows")
    for column in ("height", "width"):
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
    return chips, table


def manifest_contract(manifest: Path, rows: pd.DataFrame, bands: Sequence[str] | None,
                      bit_depth: int | None) -> CorpusContract:
    """The contract curation wrote beside the manifest; config values may only repeat it, manifest columns agree."""
    path = manifest.parent / CONTRACT_FILENAME
    if path.is_file():
        contract = CorpusContract.read(path)
        if bands is not None and tuple(bands) != contract.bands:
            raise ContractError(f"pack.bands {list(bands)} disagrees with bands {list(contract.bands)} of {path}")
        if bit_depth is not None and int(bit_depth) != contract.bit_depth:
            raise ContractError(f"pack.bit_depth {bit_depth} disagrees with bit_depth {contract.bit_depth} of {path}")
    elif bands is not None and bit_depth is not None:
        contract = CorpusContract(tuple(bands), int(bit_depth))
    else:
        raise ContractError(f"{path}: corpus contract not found beside manifest {manifest} (training.curate writes "
                            "it); or give both pack.bands and pack.bit_depth")
    if "bands" in rows.columns:  # older manifests repeat the bands per row: they must say the same
        for value in rows["bands"].unique():
            if tuple(b.strip() for b in str(value).split(",")) != contract.bands:
                raise ContractError(f"manifest {manifest}: selected rows have bands {value!r}, the corpus contract "
                                    f"{list(contract.bands)}")
    if "bit_depth" in rows.columns and set(rows["bit_depth"].astype(int)) != {contract.bit_depth}:
        found = sorted(set(rows["bit_depth"].astype(int)))
        raise ContractError(f"manifest {manifest}: selected rows have bit depths {found}, the corpus contract "
                            f"{contract.bit_depth}")
    return contract


def chips_from_folder(folder: str | Path) -> list[ChipSource]:
    """Every JPEG/PNG/TIF file of ``folder`` (sorted by name) as a whole-image chip."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"chip folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CHIP_SUFFIXES)
    if not files:
        raise ValueError(f"no {'/'.join(CHIP_SUFFIXES)} chips in {folder}")
    return [ChipSource(chip_id=p.stem, source_path=str(p.resolve())) for p in files]


def folder_contract(chip_dir: Path, first: np.ndarray, bands: Sequence[str] | None, bit_depth: int | None,
                    gsd_m: float | None) -> CorpusContract:
    """A chip folder's contract from the config: 8-bit image files are 8-bit; anything else names its bit depth."""
    if bands is None:
        raise ContractError(f"pack.bands must name the bands of the chips in {chip_dir} in stored order "
                            "(e.g. [nir, green, red])")
    if bit_depth is None:
        if first.dtype != np.uint8:
            raise ContractError(f"pack.bit_depth is required for the {first.dtype} chips in {chip_dir} "
                                "(e.g. 11 for 11-bit DNs stored as uint16)")
        bit_depth = 8
    return CorpusContract(tuple(bands), int(bit_depth), gsd_m=gsd_m)


def pack(
    out_dir: str | Path,
    *,
    manifest: str | Path | None = None,
    chip_dir: str | Path | None = None,
    bands: Sequence[str] | None = None,
    bit_depth: int | None = None,
    gsd_m: float | None = None,
    chip_size: int | None = None,
    shard_size: int = 1024,
    nodata: float | None = 0,
    seed: int = 0,
    workers: int = 1,
) -> dict[str, Any]:
    """Pack a manifest's selected chips or a chip folder into shards; return the index (also written to disk).

    ``nodata`` fills in the contract's nodata when curation left it unset; a different value is an error.
    """
    if (manifest is None) == (chip_dir is None):
        raise ValueError("give exactly one of pack.manifest or pack.chip_dir")
    if manifest is not None:
        manifest = Path(manifest)
        chips, rows = chips_from_manifest(manifest)
        contract = manifest_contract(manifest, rows, bands, bit_depth)
        if gsd_m is not None and contract.gsd_m is not None and float(gsd_m) != contract.gsd_m:
            raise ContractError(f"pack.gsd_m {gsd_m} disagrees with gsd_m {contract.gsd_m} of "
                                f"{manifest.parent / CONTRACT_FILENAME}")
        first = read_chip(chips[0])
    else:
        chips = chips_from_folder(chip_dir)
        first = read_chip(chips[0])
        contract = folder_contract(Path(chip_dir), first, bands, bit_depth, gsd_m)
    if contract.gsd_m is None and gsd_m is not None:
        contract = dataclasses.replace(contract, gsd_m=float(gsd_m))
    if contract.nodata is None and nodata is not None:
        contract = dataclasses.replace(contract, nodata=float(nodata))
    elif nodata is not None and float(nodata) != contract.nodata:
        raise ContractError(f"pack.nodata {nodata} disagrees with nodata {contract.nodata} of the corpus contract")
    if len(contract.bands) != first.shape[0]:
        raise ContractError(f"{chips[0].source_path}: {first.shape[0]} bands but the corpus contract names "
                            f"{len(contract.bands)}: {list(contract.bands)}")
    size = (chip_size, chip_size) if chip_size else first.shape[1:]
    chip_shape = (len(contract.bands), int(size[0]), int(size[1]))
    dtype = "uint8" if contract.bit_depth <= 8 else "uint16"

    order = np.random.default_rng(seed).permutation(len(chips))  # global permutation: shards mix scenes
    chips = [chips[i] for i in order]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / LEGACY_STATS_NAME).unlink(missing_ok=True)
    jobs = [
        ShardJob(name=f"shard-{i:05d}", chips=chips[start : start + shard_size], out_dir=str(out),
                 chip_shape=chip_shape, dtype=dtype, contract=contract, resize=bool(chip_size))
        for i, start in enumerate(range(0, len(chips), shard_size))
    ]
    LOG.info("packing %d chips %s into %d shards at %s with %d workers", len(chips), chip_shape, len(jobs), out,
             workers)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for done, result in enumerate(pool.map(write_shard, jobs), 1):
                results.append(result)
                LOG.info("shard %d/%d written", done, len(jobs))
    else:
        results = []
        for done, job in enumerate(jobs, 1):
            results.append(write_shard(job))
            LOG.info("shard %d/%d written", done, len(jobs))

    pixels = sum(r["pixels"] for r in results)
    if pixels == 0:
        raise ValueError(f"every pixel of the {len(chips)} chips equals nodata={contract.nodata}")
    mean = np.sum([r["sum"] for r in results], axis=0) / pixels
    var = np.sum([r["sum_sq"] for r in results], axis=0) / pixels - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    flat = [band for band, value in zip(contract.bands, std.round(6)) if value <= 0]
    if flat:
        raise ContractError(f"{out}: band(s) {flat} are constant over the valid pixels of all {len(chips)} chips "
                            "(zero std): wrong nodata value or an empty band?")
    contract = contract.with_stats(mean.round(6).tolist(), std.round(6).tolist())
    index = {"format": SHARD_FORMAT, "dtype": dtype, "chip_shape": list(chip_shape), "count": len(chips),
             "pixels": int(pixels), "seed": seed, "shards": [{"name": r["name"], "count": r["count"]} for r in results]}
    contract.write(out / CONTRACT_FILENAME)
    _write_json_atomic(out / INDEX_NAME, index)
    LOG.info("packed %d chips %s into %d shards at %s; mean %s std %s", len(chips), chip_shape, len(jobs), out,
             contract.mean, contract.std)
    return index


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> None:
    _, cfg = stage_cli(__doc__, DEFAULT_CONFIG, argv, schema=PackConfig,
                       prog="python -m training.pack")
    options = cfg.pack.model_dump()
    out_dir = options.pop("out_dir")
    pack(out_dir, **options)
    write_resolved(cfg, out_dir)


if __name__ == "__main__":
    main()
