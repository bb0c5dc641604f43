"""Inputs -> candidate chips: discovery, windows, windowed reads, valid-fraction and low-information filters.

``process_scene`` is one pure Dask task: one source raster (a GeoTIFF scene or a JPEG/PNG chip image) in, its
manifest rows and descriptors out. A scene is read one strip of chips at a time (``chip_size`` rows by at most
``max_read_px`` columns), never whole. Problems become recorded rejects:
the whole source (``reject_reason`` on one row with an empty window) when it cannot be opened or has a band count
that is not allowed, or single chips (``nodata``, ``low_information``, ``read_error: ...``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from training.curate.descriptors import DESCRIPTOR_NAMES, core_band_index, metadata_descriptor, pixel_descriptors
from training.curate.metadata import AcquisitionMeta, read_acquisition

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_BAND_NAMES = {
    1: "pan",
    3: "red,green,blue",
    4: "blue,green,red,nir",
    8: "coastal,blue,green,yellow,red,rededge,nir,nir2",
}
CANONICAL = ("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2")


@dataclass(frozen=True)
class Source:
    path: str  # absolute
    scene_id: str  # unique, derived from the path relative to its input root


@dataclass
class SceneResult:
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # manifest rows (candidates + source rejects), columnar
    descriptors: np.ndarray | None = None  # (n_accepted, D) for rows with reject_reason None, in row order


def discover(inputs: list[str], patterns: list[str], exclude: list[str]) -> list[Source]:
    """Folders (recursive) and files -> sorted sources; ``exclude`` globs (e.g. ``*.labels.tif``) are skipped."""
    sources: list[Source] = []
    for root_index, raw in enumerate(inputs):
        root = Path(raw).expanduser().resolve()
        if not root.exists():
            raise FileNotFoundError(f"input path not found: {root}")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            name = path.name.lower()
            if not any(fnmatch.fnmatch(name, pat.lower()) for pat in patterns):
                continue
            if any(fnmatch.fnmatch(name, pat.lower()) for pat in exclude):
                continue
            rel = path.name if root.is_file() else path.relative_to(root).as_posix()
            stem = rel.rsplit(".", 1)[0]
            scene_id = stem if len(inputs) == 1 else f"{root_index}/{stem}"
            sources.append(Source(str(path), scene_id))
    ids = [s.scene_id for s in sources]
    if len(set(ids)) != len(ids):  # e.g. a.tif and a.png side by side: keep the suffix
        sources = [Source(s.path, s.scene_id + Path(s.path).suffix.lower()) for s in sources]
    return sources


def chip_windows(height: int, width: int, chip_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left (row_off, col_off) of every full chip of a (height, width) raster."""
    rows = range(0, height - chip_size + 1, stride)
    cols = range(0, width - chip_size + 1, stride)
    return [(r, c) for r in rows for c in cols]


def _band_names(src, is_image: bool, cfg: dict) -> list[str]:
    if is_image:
        names = str(cfg["input"]["chip_bands"]).split(",")
        if len(names) == src.count:
            return names
    descriptions = [str(d).lower() if d else "" for d in src.descriptions]
    if all(d in CANONICAL for d in descriptions):
        return descriptions
    table = {int(k): v for k, v in (cfg["input"].get("band_names") or DEFAULT_BAND_NAMES).items()}
    return str(table.get(src.count, ",".join(f"b{i + 1}" for i in range(src.count)))).split(",")


def _bit_depth(src, is_image: bool, cfg: dict) -> int:
    """Configured, else 8 for uint8, the file's BIT_DEPTH/NBITS tag, 0 (unknown) for float rasters, else
    ``input.uint16_bit_depth``."""
    configured = cfg["input"]["bit_depth"]
    if configured not in (None, "auto"):
        return int(configured)
    if src.dtypes[0] == "uint8":
        return 8
    tag = src.tags().get("BIT_DEPTH") or src.tags().get("NBITS") or src.tags(1, "IMAGE_STRUCTURE").get("NBITS")
    if tag and str(tag).isdigit():
        return int(tag)
    return 0 if np.dtype(src.dtypes[0]).kind == "f" else int(cfg["input"].get("uint16_bit_depth", 11))


def pixel_scale(cfg: dict, floating: bool, bit_depth: int) -> float:
    """``input.scale``: 'auto' -> ``2**bit_depth - 1`` when the bit depth is known (integer DNs, a float raster
    with a BIT_DEPTH tag or a configured ``input.bit_depth``), 1.0 for a float raster without one (0-1 reflectance,
    never rescaled as if it were 11-bit DNs); a positive number -> pixel values are divided by it."""
    configured = cfg["input"]["scale"]
    if configured not in (None, "auto"):
        return float(configured)
    return 1.0 if floating and bit_depth == 0 else float(2**bit_depth - 1)


def _source_reject(source: Source, reason: str, **extra) -> SceneResult:
    row = empty_row(source)
    row.update(extra)
    row["reject_reason"] = reason
    empty = np.zeros((0, len(DESCRIPTOR_NAMES)), np.float32)
    return SceneResult(rows=pd.DataFrame.from_records([row]), descriptors=empty)


def empty_row(source: Source) -> dict:
    return dict(
        chip_id=f"{source.scene_id}:source", source_path=source.path, scene_id=source.scene_id, row_off=0, col_off=0,
        height=0, width=0, band_count=0, bands="", bit_depth=0, crs=None, center_x=math.nan, center_y=math.nan,
        lat=math.nan, lon=math.nan, sensor=None, acquired=None, sun_elevation=math.nan, off_nadir=math.nan,
        cloud_cover=math.nan, gsd_m=math.nan, nodata=math.nan, valid_fraction=math.nan, content_hash=None,
        metadata_issues="", reject_reason=None,
    )


def process_scene(source: Source, cfg: dict, catalog_row: dict | None = None) -> SceneResult:
    """One source raster -> its candidate chips (rows) and the descriptors of the accepted ones.

    ``tiling.gdal_threads`` > 1 lets GDAL decode the blocks of one strip read in parallel (GDAL_NUM_THREADS).
    """
    threads = int(cfg["tiling"]["gdal_threads"])
    with rasterio.Env(GDAL_NUM_THREADS=str(threads)) if threads > 1 else contextlib.nullcontext():
        return _process_scene(source, cfg, catalog_row)


def _process_scene(source: Source, cfg: dict, catalog_row: dict | None) -> SceneResult:
    import warnings

    tiling = cfg["tiling"]
    chip_size, stride = int(tiling["chip_size"]), int(tiling["stride"])
    is_image = Path(source.path).suffix.lower() in IMAGE_SUFFIXES
    meta = AcquisitionMeta() if is_image else read_acquisition(Path(source.path), catalog_row)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(source.path)
    except (RasterioError, OSError) as err:
        return _source_reject(source, f"unreadable: {_short(err)}")
    with src:
        allowed = [int(c) for c in cfg["input"]["band_counts"]]
        if src.count not in allowed:
            return _source_reject(source, f"band_count: {src.count} not in {allowed}", band_count=src.count)
        if src.height < chip_size or src.width < chip_size:
            return _source_reject(source, f"smaller_than_chip: {src.height}x{src.width} < {chip_size}",
                                  band_count=src.count)
        bands = _band_names(src, is_image, cfg)  # validated on the client (pipeline.check_band_names)
        bit_depth = _bit_depth(src, is_image, cfg)
        crs = src.crs.to_string() if src.crs else None
        issues = list(meta.issues)
        if crs is None and not is_image:
            issues.append("no_georeferencing")
        if not is_image and math.isnan(meta.gsd_m) and crs is not None and src.crs.is_projected:
            meta.gsd_m = float(abs(src.transform.a))
        nodata_cfg = cfg["input"]["nodata"]
        nodata = src.nodata if nodata_cfg in (None, "auto") else float(nodata_cfg)
        windows = chip_windows(src.height, src.width, chip_size, stride)
        centres = _chip_centres(src, windows, chip_size)
        lat, lon = _lat_lon(src.crs, centres) if crs else (np.full(len(windows), np.nan),) * 2
        if np.isfinite(meta.lat) and not np.isfinite(lat).any():  # no georeferencing, but the catalog knows
            lat, lon = np.full(len(windows), meta.lat), np.full(len(windows), meta.lon)
        meta_desc = metadata_descriptor(meta, lat, lon)
        base = dict(
            source_path=source.path, scene_id=source.scene_id, height=chip_size, width=chip_size,
            band_count=src.count, bands=",".join(bands), bit_depth=bit_depth, crs=crs, sensor=meta.sensor,
            acquired=meta.acquired, sun_elevation=meta.sun_elevation, off_nadir=meta.off_nadir,
            cloud_cover=meta.cloud_cover, gsd_m=meta.gsd_m, metadata_issues=";".join(issues),
            nodata=math.nan if nodata is None else float(nodata),
        )
        core_index = core_band_index(bands)
        if all(i is None for i in core_index):
            core_index = [None, None, None, None]
            core_index[1] = 0  # unknown band names: treat the first band as 'green' (brightness only)
        rows, descs, pending = [], [], []
        scale = pixel_scale(cfg, np.dtype(src.dtypes[0]).kind == "f", bit_depth)
        steps = (
            max(1, int(cfg["descriptors"]["sample_step"])),
            max(1, int(cfg["descriptors"]["texture_step"])),
        )
        batch_size = int(cfg["descriptors"]["batch_size"])
        chips = _iter_chips(src, windows, chip_size, int(tiling["max_read_px"]))
        for index, (row_off, col_off), chip in chips:
            row = dict(base, chip_id=f"{source.scene_id}:{row_off}:{col_off}", row_off=row_off, col_off=col_off,
                       center_x=float(centres[index, 0]), center_y=float(centres[index, 1]), lat=float(lat[index]),
                       lon=float(lon[index]), valid_fraction=math.nan, content_hash=None, reject_reason=None)
            rows.append(row)
            if isinstance(chip, Exception):
                row["reject_reason"] = f"read_error: {_short(chip)}"
                continue
            pending.append((row, chip, meta_desc[index]))
            if len(pending) >= batch_size:
                descs.extend(_describe_batch(pending, nodata, scale, steps, core_index, tiling))
                pending = []
        if pending:
            descs.extend(_describe_batch(pending, nodata, scale, steps, core_index, tiling))
    empty = np.zeros((0, len(DESCRIPTOR_NAMES)), np.float32)
    # one scene's rows become columns here, on the worker: the client never holds per-row Python objects
    return SceneResult(rows=pd.DataFrame.from_records(rows), descriptors=np.stack(descs).astype(np.float32) if descs
                       else empty)


def _describe_batch(pending, nodata, scale, steps, core_index, tiling) -> list[np.ndarray]:
    """pending: [(row, chip (C, S, S) raw, metadata descriptor)] -> descriptors of the accepted chips, in order.

    Sets ``valid_fraction``, ``content_hash`` and ``reject_reason`` of each row.
    """
    step, texture_step = steps
    chips = [chip for _, chip, _ in pending]
    fine = np.stack([c[:, ::texture_step, ::texture_step] for c in chips])  # (B, C, h2, w2) for texture and hash
    if step % texture_step == 0:
        ratio = step // texture_step
        sample = fine[:, :, ::ratio, ::ratio]  # (B, C, h, w) for the spectral statistics
    else:
        sample = np.stack([c[:, ::step, ::step] for c in chips])
    floating = sample.dtype.kind == "f"
    invalid = np.zeros((len(chips), *sample.shape[2:]), bool)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        invalid |= (sample == nodata).all(axis=1)
    if floating:
        invalid |= ~np.isfinite(sample).all(axis=1)
    valid_fraction = 1.0 - invalid.mean(axis=(1, 2))
    present = [i for i in core_index if i is not None]
    inv_scale = np.float32(1.0 / scale)
    all_bands = present == list(range(sample.shape[1]))
    gray = (fine if all_bands else fine[:, present]).mean(axis=1, dtype=np.float32)
    if floating:
        gray = np.nan_to_num(gray)
    gray *= inv_scale
    values = sample.reshape(*sample.shape[:2], -1).astype(np.float32)
    if floating:
        values = np.nan_to_num(values)
    values *= inv_scale
    brightness_std = (values if all_bands else values[:, present]).mean(axis=1).std(axis=1)  # exact if all valid
    out: list[np.ndarray | None] = [None] * len(chips)
    full = []
    for b, (row, _, _) in enumerate(pending):
        row["valid_fraction"] = float(valid_fraction[b])
        if valid_fraction[b] < float(tiling["min_valid_fraction"]):
            row["reject_reason"] = "nodata" if valid_fraction[b] == 0 else f"valid_fraction: {valid_fraction[b]:.2f}"
            continue
        chip_values = values[b]
        if valid_fraction[b] < 1.0:
            chip_values = values[b][:, ~invalid[b].ravel()]
            brightness_std[b] = chip_values[present].mean(axis=0).std()
        if brightness_std[b] < float(tiling["min_std"]):
            row["reject_reason"] = f"low_information: std {brightness_std[b]:.4f}"
            continue
        row["content_hash"] = f"{zlib.crc32(fine[b]):08x}"
        if valid_fraction[b] == 1.0:
            full.append(b)
        else:
            out[b] = pixel_descriptors(chip_values[None], gray[b : b + 1], core_index)[0]
    if full:
        for b, desc in zip(full, pixel_descriptors(values[full], gray[full], core_index)):
            out[b] = desc
    return [np.concatenate([desc, pending[b][2]]) for b, desc in enumerate(out) if desc is not None]


def _iter_chips(src, windows: list[tuple[int, int]], chip_size: int, max_read_px: int):
    """Yield (index, (row_off, col_off), chip (C, S, S) or the read exception), reading strips of chips.

    A strip that fails to read is retried chip by chip, so one damaged block rejects only the chips on it.
    """
    by_row: dict[int, list[int]] = {}
    for index, (row_off, _) in enumerate(windows):
        by_row.setdefault(row_off, []).append(index)
    limit = max(max_read_px, chip_size)
    for row_off, indices in by_row.items():
        start = 0
        while start < len(indices):
            first_col = windows[indices[start]][1]
            group = [i for i in indices[start:] if windows[i][1] + chip_size - first_col <= limit]
            last_col = windows[group[-1]][1] + chip_size
            start += len(group)
            try:
                strip = src.read(window=Window(first_col, row_off, last_col - first_col, chip_size))
            except (RasterioError, OSError, ValueError):
                strip = None
            for i in group:
                col = windows[i][1]
                if strip is not None:
                    yield i, windows[i], strip[:, :, col - first_col : col - first_col + chip_size]
                    continue
                try:
                    yield i, windows[i], src.read(window=Window(col, row_off, chip_size, chip_size))
                except (RasterioError, OSError, ValueError) as err:
                    yield i, windows[i], err


def _chip_centres(src, windows: list[tuple[int, int]], chip_size: int) -> np.ndarray:
    """-> (n, 2) chip centre (x, y) in the raster's CRS (pixel coordinates when it has none)."""
    if not windows:
        return np.zeros((0, 2))
    rc = np.asarray(windows, np.float64) + chip_size / 2.0
    t = src.transform
    xs = t.a * rc[:, 1] + t.b * rc[:, 0] + t.c
    ys = t.d * rc[:, 1] + t.e * rc[:, 0] + t.f
    return np.stack([xs, ys], axis=1)


def _lat_lon(crs, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(centres) == 0:
        return np.zeros(0), np.zeros(0)
    try:
        lon, lat = warp_transform(crs, "EPSG:4326", centres[:, 0].tolist(), centres[:, 1].tolist())
    except (RasterioError, ValueError):
        return np.full(len(centres), np.nan), np.full(len(centres), np.nan)
    return np.asarray(lat, np.float64), np.asarray(lon, np.float64)


def _short(err: Exception, limit: int = 300) -> str:
    """One line: the exception and its causes (rasterio's 'Read failed' chains the GDAL message as the cause)."""
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(f"{type(err).__name__}: {err}".replace("\n", " "))
        err = err.__cause__ or err.__context__
    return " <- ".join(parts)[:limit]
