"""Outputs of one scene: the class and probability rasters (written strip by strip into pre-created GeoTIFFs, then
converted to Cloud-Optimised GeoTIFFs with GDAL's COG driver) and the polygons (GeoPackage + GeoParquet).

Work in progress lives in ``<scene>/.partial/``: ``class.tif`` / ``prob.tif`` are uncompressed tiled GeoTIFFs whose
blocks are allocated at creation, so a rewritten strip overwrites its blocks in place and a killed run leaves a file
a resumed run can reopen; ``state.npz`` + ``progress.json`` are the checkpoint (written atomically).

Class raster: uint8 class ids, ``NODATA_CLASS`` (255) where the scene has no data. Probability raster: one uint8
band per class, ``round(255 · p)``, 0 where the scene has no data. Both carry the scene's CRS and transform.

Polygons (semantic): connected regions (4-connectivity) of each foreground class (id >= 1), vectorised with
``rasterio.features.shapes`` block by block of rows; regions cut by a block boundary are re-joined (pieces of one
class sharing an edge across the boundary). ``score``: mean probability of the class over the region.
Instance models: one polygon per merged instance (``evaluation.overlap.merge_instances``), ``score`` its score.
Columns: scene_id, class_id, class, score, area_m2 (in the scene CRS when projected, else EPSG:6931 equal-area;
NaN without a CRS), acquired, geometry; reprojected to the target CRS (EPSG:3413 by default).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage

from evaluation.metrics import strict_json
from evaluation.overlap import TileInstance, connected_groups

NODATA_CLASS = 255
EQUAL_AREA_CRS = "EPSG:6931"  # NSIDC EASE-Grid 2.0 North (Lambert azimuthal equal-area)
GDAL_ENV = {"GDAL_CACHEMAX": 64 * 2**20}  # bytes (rasterio passes an int to GDALSetCacheMax64): a bounded block
# cache, which would otherwise grow with the scene while writing; large enough to hold a strip of blocks


def atomic_json(path: Path, data: dict) -> None:
    """Strict JSON (NaN -> null) written atomically: temp file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(strict_json(data), indent=2, default=str, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _profile(src_profile: dict, count: int, nodata: int | None) -> dict:
    profile = {k: src_profile[k] for k in ("width", "height", "crs", "transform") if k in src_profile}
    profile.update(driver="GTiff", dtype="uint8", count=count, nodata=nodata, tiled=True, blockxsize=256,
                   blockysize=256, compress="none", bigtiff="IF_SAFER", sparse_ok=False)
    return profile


class PartialRasters:
    """The pre-created class / probability GeoTIFFs of a scene in ``.partial``; ``write`` rows, ``close`` flushes."""

    def __init__(self, partial: Path, src_profile: dict, num_classes: int, resume: bool) -> None:
        self.paths = {"class": partial / "class.tif", "prob": partial / "prob.tif"}
        self.profiles = {"class": _profile(src_profile, 1, NODATA_CLASS), "prob": _profile(src_profile, num_classes,
                                                                                            None)}
        if not resume or not all(p.is_file() for p in self.paths.values()):
            for key, path in self.paths.items():
                with rasterio.open(path, "w", **self.profiles[key]):
                    pass
        self.open()

    def open(self) -> None:
        self.datasets = {k: rasterio.open(p, "r+") for k, p in self.paths.items()}

    def close(self) -> None:
        for ds in self.datasets.values():
            ds.close()

    def write(self, row0: int, classes: np.ndarray, probs: np.ndarray) -> None:
        """classes: (h, W) uint8, probs: (K, h, W) uint8 for scene rows [row0, row0 + h)."""
        window = Window(0, row0, classes.shape[1], classes.shape[0])
        self.datasets["class"].write(classes[None], window=window)
        self.datasets["prob"].write(probs, window=window)


def semantic_strip(probs: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probs: (K, h, W) float -> class ids (h, W) uint8 (NODATA_CLASS where invalid), probs (K, h, W) uint8."""
    classes = np.where(valid, probs.argmax(0), NODATA_CLASS).astype(np.uint8)
    return classes, np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)


def instance_strip(instances: list[TileInstance], row0: int, row1: int, width: int, valid: np.ndarray,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Merged instances -> class ids (h, W) (highest score on top) and per-class max score (K, h, W) uint8."""
    h = row1 - row0
    classes = np.zeros((h, width), dtype=np.uint8)
    probs = np.zeros((num_classes, h, width), dtype=np.uint8)
    for inst in sorted((i for i in instances if i.row < row1 and i.box[2] > row0), key=lambda i: i.score):
        a, b = max(inst.row, row0), min(inst.box[2], row1)
        mask = inst.mask[a - inst.row : b - inst.row]
        view = (slice(a - row0, b - row0), slice(inst.col, inst.box[3]))
        classes[view][mask] = inst.label
        score = np.uint8(round(255 * inst.score))
        probs[inst.label][view][mask] = np.maximum(probs[inst.label][view][mask], score)
    classes[~valid] = NODATA_CLASS
    probs[:, ~valid] = 0
    probs[0][(classes == 0) & valid] = 255
    return classes, probs


def to_cog(partial: Path, final: Path, resampling: str) -> None:
    """Copy a partial GeoTIFF to a COG (deflate, overviews) atomically; blocks are compressed on every core (GDAL's
    ``NUM_THREADS``: the same bytes, since each block is compressed on its own)."""
    tmp = final.with_name(f".{final.name}.tmp.tif")
    with rasterio.Env(**GDAL_ENV):
        rasterio.shutil.copy(partial, tmp, driver="COG", compress="DEFLATE", overview_resampling=resampling,
                             blocksize=512, bigtiff="IF_SAFER", num_threads="ALL_CPUS")
    os.replace(tmp, final)


def _block_polygons(classes: np.ndarray, probs: np.ndarray, transform, row0: int, first: bool, last: bool):
    """Regions of one block of rows -> [(class, geometry dict, sum of prob, pixels, open_top, open_bottom)]."""
    out = []
    block_transform = transform @ Affine.translation(0, row0)
    for k in range(1, probs.shape[0]):
        labels, n = ndimage.label(classes == k)  # 4-connectivity, as shapes() below
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        sums = ndimage.sum_labels(probs[k], labels, index) / 255.0  # float64 sums, no float copy of the block
        counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        top = set(np.unique(labels[0])) if not first else set()
        bottom = set(np.unique(labels[-1])) if not last else set()
        for geom, value in shapes(labels.astype(np.int32, copy=False), mask=labels > 0, connectivity=4,
                                  transform=block_transform):
            v = int(value)
            out.append((k, geom, float(sums[v - 1]), float(counts[v - 1]), v in top, v in bottom))
    return out


BLOCK_PIXELS = 4 * 1024 * 1024  # pixels per block of rows when vectorising: memory flat in the scene's width


def semantic_polygons(class_path: Path, prob_path: Path, block_rows: int | None = None) -> list[dict]:
    """Foreground regions of the class raster, read block by block of rows (default: ``BLOCK_PIXELS`` per block,
    at least 64 rows), joined across block boundaries."""
    from shapely.geometry import shape
    from shapely.ops import unary_union

    pieces = []
    with rasterio.open(class_path) as cls_src, rasterio.open(prob_path) as prob_src:
        height, width, transform = cls_src.height, cls_src.width, cls_src.transform
        block_rows = block_rows or max(64, BLOCK_PIXELS // width)
        for row0 in range(0, height, block_rows):
            h = min(block_rows, height - row0)
            window = Window(0, row0, width, h)
            block = _block_polygons(cls_src.read(1, window=window), prob_src.read(window=window), transform, row0,
                                    row0 == 0, row0 + h >= height)
            for k, geom, total, count, open_top, open_bottom in block:
                pieces.append({"class_id": k, "geometry": shape(geom), "sum": total, "pixels": count,
                               "block": row0, "open_top": open_top, "open_bottom": open_bottom})
    # re-join regions cut at block boundaries: same class, sharing an edge (not just a corner)
    touching: list[tuple[int, int]] = []
    bottoms: dict[int, list[int]] = {}
    for i, p in enumerate(pieces):
        if p["open_bottom"]:
            bottoms.setdefault(p["block"] + block_rows, []).append(i)
    for j, p in enumerate(pieces):
        if not p["open_top"]:
            continue
        for i in bottoms.get(p["block"], []):
            q = pieces[i]
            if q["class_id"] == p["class_id"] and q["geometry"].intersection(p["geometry"]).length > 0:
                touching.append((i, j))
    out = []
    for group in ([pieces[k] for k in members] for members in connected_groups(len(pieces), touching)):
        geometry = group[0]["geometry"] if len(group) == 1 else unary_union([g["geometry"] for g in group])
        pixels = sum(g["pixels"] for g in group)
        out.append({"class_id": group[0]["class_id"], "score": sum(g["sum"] for g in group) / pixels,
                    "pixels": pixels, "geometry": geometry})
    return sorted(out, key=lambda p: (p["geometry"].bounds[1], p["geometry"].bounds[0], p["class_id"]))


def instance_polygons(instances: list[TileInstance], transform) -> list[dict]:
    """One polygon per merged instance (its largest part when a mask is split)."""
    from shapely.geometry import shape
    from shapely.ops import unary_union

    out = []
    for inst in instances:
        t = transform @ Affine.translation(inst.col, inst.row)
        parts = [shape(g) for g, v in shapes(inst.mask.astype(np.uint8), mask=inst.mask, transform=t) if v]
        if parts:
            out.append({"class_id": inst.label, "score": inst.score, "pixels": int(inst.mask.sum()),
                        "geometry": unary_union(parts)})
    return out


def write_polygons(records: list[dict], classes: tuple[str, ...], scene_id: str, acquired: str | None, crs,
                   target_crs: str | None, folder: Path) -> int:
    """GeoPackage + GeoParquet of ``records`` (see module doc) written atomically -> number of polygons."""
    import geopandas as gpd

    frame = gpd.GeoDataFrame(
        {"scene_id": [scene_id] * len(records), "class_id": [int(r["class_id"]) for r in records],
         "class": [classes[int(r["class_id"])] for r in records], "score": [float(r["score"]) for r in records],
         "acquired": [acquired] * len(records)},
        geometry=[r["geometry"] for r in records], crs=crs,
    )
    if crs is None:
        frame["area_m2"] = np.nan
    elif frame.crs.is_projected and frame.crs.axis_info[0].unit_name in ("metre", "meter"):
        frame["area_m2"] = frame.geometry.area
    else:
        frame["area_m2"] = frame.to_crs(EQUAL_AREA_CRS).geometry.area
    if crs is not None and target_crs:
        frame = frame.to_crs(target_crs)
    frame = frame[["scene_id", "class_id", "class", "score", "area_m2", "acquired", "geometry"]]
    for name, write in (("polygons.gpkg", lambda p: frame.to_file(p, driver="GPKG", layer="polygons",
                                                                   engine="pyogrio")),
                        ("polygons.parquet", lambda p: frame.to_parquet(p))):
        final = folder / name
        tmp = folder / f".tmp.{name}"
        tmp.unlink(missing_ok=True)
        write(tmp)
        os.replace(tmp, final)
    return len(frame)
