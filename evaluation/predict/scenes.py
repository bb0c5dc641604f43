"""Scenes to map: discovery (a GeoTIFF, a folder, a catalog CSV), band names from the scene's metadata, and the
checks that run before any inference (CRS, bands the model needs, bit depth).

Bit depth, first found wins: the ``NBITS`` (or ``BIT_DEPTH``) tag; uint8 data; the vendor sidecar's
``bitsPerPixel`` (``vendor_bit_depth``); else the model's, with a warning in the summary.

Band names, first found wins: the GeoTIFF band descriptions; the ``BEGIN_GROUP = BAND_x`` groups of a Maxar ``.IMD``
sidecar (``BAND_C, BAND_B, ..., BAND_N2``, in file order); a ``bands`` column of the catalog row; ``--bands``.
Common spellings (``NIR1``, ``Near-IR``, ``red edge``, ``coastal blue``) map to the canonical names of
``arctic_vit.bands``. Nothing is guessed from the band count: a scene without names is an error naming the sources.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from arctic_vit.bands import CANONICAL_BANDS
from training.curate.metadata import MAXAR_BAND_GROUPS, read_acquisition, vendor_sidecar
from training.synthetic import LABELS_SUFFIX

SCENE_SUFFIXES = (".tif", ".tiff")
BAND_ALIASES = {
    "coastal": "coastal", "coastal blue": "coastal", "coastal_blue": "coastal", "c": "coastal",
    "blue": "blue", "b": "blue", "green": "green", "g": "green", "yellow": "yellow", "y": "yellow",
    "red": "red", "r": "red", "rededge": "rededge", "red edge": "rededge", "red_edge": "rededge", "re": "rededge",
    "nir": "nir", "nir1": "nir", "nir_1": "nir", "near-ir": "nir", "near-ir1": "nir", "near infrared": "nir",
    "n": "nir", "nir2": "nir2", "nir_2": "nir2", "near-ir2": "nir2", "n2": "nir2",
}
# Dynamic range of the multispectral (VNIR) digital numbers per sensor (Maxar/DigitalGlobe product guides): a
# 16-bit delivery (IMD ``bitsPerPixel = 16``) holds these in a 16-bit container; an 8-bit one (DRA) holds 8 bits.
SENSOR_DN_BITS = {"WV01": 11, "WV02": 11, "WV03": 11, "WV04": 11, "GE01": 11, "QB02": 11, "IK01": 11}
_IMD_BITS = re.compile(r"^\s*bitsPerPixel\s*=\s*(\d+)\s*;?\s*$", re.IGNORECASE | re.MULTILINE)
_XML_BITS = re.compile(r"<BITSPERPIXEL>\s*(\d+)\s*</BITSPERPIXEL>", re.IGNORECASE)
_IMD_BAND_GROUP = re.compile(r"^\s*BEGIN_GROUP\s*=\s*BAND_([A-Z0-9]+)\s*$", re.IGNORECASE | re.MULTILINE)


class SceneError(ValueError):
    """A scene cannot be mapped by this model (bands, CRS, bit depth): the message names the scene and the fix."""


@dataclass
class Scene:
    path: Path
    scene_id: str
    catalog_row: dict | None = None
    bands: tuple[str, ...] = ()
    band_indexes: tuple[int, ...] = ()  # 1-based rasterio indexes of the model's bands, in model order
    acquired: str | None = None
    height: int = 0
    width: int = 0
    crs: str | None = None
    warnings: list[str] = field(default_factory=list)


def canonical_band(name: str) -> str | None:
    key = str(name or "").strip().lower()
    if key in CANONICAL_BANDS:
        return key
    return BAND_ALIASES.get(key) or BAND_ALIASES.get(key.replace("-", " "))


def imd_band_names(path: Path) -> tuple[str, ...]:
    """Bands of a Maxar ``.IMD`` sidecar (``BAND_B``, ``BAND_N2``, ...) in file order; () when absent."""
    for suffix in (".IMD", ".imd"):
        imd = path.with_suffix(suffix)
        if imd.is_file():
            groups = _IMD_BAND_GROUP.findall(imd.read_text(errors="replace"))
            return tuple(MAXAR_BAND_GROUPS.get(f"BAND_{g.upper()}") or f"?{g}" for g in groups)
    return ()


def vendor_bit_depth(path: Path, sensor: str | None) -> tuple[int | None, str]:
    """DN bit depth from the vendor sidecar (``.IMD`` / ``.XML`` ``bitsPerPixel``) -> (bits or None, how it was read).

    ``bitsPerPixel`` is the product's container: 8 -> 8-bit DNs; 16 -> the sensor's dynamic range
    (``SENSOR_DN_BITS``: 11 for WorldView / GeoEye / QuickBird / IKONOS VNIR), None for a sensor not in the table."""
    for suffixes, pattern in (((".IMD", ".imd"), _IMD_BITS), ((".XML", ".xml"), _XML_BITS)):
        sidecar = vendor_sidecar(path, suffixes)
        match = pattern.search(sidecar.read_text(errors="replace")) if sidecar is not None else None
        if match is None:
            continue
        container = int(match.group(1))
        if container <= 8:
            return container, f"{sidecar.name} bitsPerPixel = {container}"
        bits = SENSOR_DN_BITS.get(str(sensor or "").upper())
        if bits is None:
            return None, f"{sidecar.name} bitsPerPixel = {container} of an unknown sensor {sensor!r}"
        return bits, f"{sidecar.name} bitsPerPixel = {container} of a {sensor} scene"
    return None, "no vendor sidecar with bitsPerPixel"


def scene_band_names(src, path: Path, catalog_row: dict | None, override: tuple[str, ...] | None) -> tuple[str, ...]:
    """The scene's bands by canonical name (see module doc); SceneError naming the sources when none work."""
    tried = []
    descriptions = tuple(canonical_band(d) for d in src.descriptions)
    if all(descriptions):
        return descriptions
    tried.append(f"band descriptions {list(src.descriptions)}")
    imd = imd_band_names(path)
    if imd and len(imd) == src.count and all(not b.startswith("?") for b in imd):
        return imd
    tried.append(f".IMD bands {list(imd)}" if imd else "no .IMD sidecar")
    if catalog_row and catalog_row.get("bands"):
        names = tuple(canonical_band(b) for b in str(catalog_row["bands"]).split(","))
        if all(names) and len(names) == src.count:
            return names
        tried.append(f"catalog bands {catalog_row['bands']!r}")
    if override:
        if len(override) != src.count:
            raise SceneError(f"{path}: --bands names {len(override)} bands {list(override)} but the scene has "
                             f"{src.count}")
        return override
    raise SceneError(f"{path}: no band names for its {src.count} bands ({'; '.join(tried)}); set the GeoTIFF band "
                     "descriptions, add the .IMD sidecar or a catalog 'bands' column, or pass --bands b1,b2,...")


def match_bands(scene_bands: tuple[str, ...], model_bands: tuple[str, ...], path: Path) -> tuple[int, ...]:
    """1-based indexes of ``model_bands`` in ``scene_bands``; SceneError naming both lists when one is missing."""
    missing = [b for b in model_bands if b not in scene_bands]
    if missing:
        raise SceneError(f"{path}: the model needs bands {list(model_bands)} but the scene has {list(scene_bands)} "
                         f"(missing {missing})")
    return tuple(scene_bands.index(b) + 1 for b in model_bands)


def discover(input_path: str | Path) -> list[Scene]:
    """A GeoTIFF, a folder of them (recursive, sorted; label rasters ``X.labels.tif`` skipped) or a catalog
    CSV/Parquet with a ``path`` column."""
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: not found")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SCENE_SUFFIXES and p.is_file()
                       and not p.name.lower().endswith(LABELS_SUFFIX))
        if not files:
            raise FileNotFoundError(f"--input {path}: no .tif/.tiff scenes in the folder (label rasters "
                                    f"*{LABELS_SUFFIX} are not scenes)")
        return _with_ids([Scene(f, f.stem) for f in files])
    if path.suffix.lower() in SCENE_SUFFIXES:
        return [Scene(path, path.stem)]
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        table = pd.read_parquet(path) if path.suffix.lower() != ".csv" else pd.read_csv(path)
        column = next((c for c in ("path", "scene", "file", "filename") if c in table.columns), None)
        if column is None:
            raise ValueError(f"catalog {path} needs a 'path' column; has {list(table.columns)}")
        scenes = []
        for row in table.to_dict(orient="records"):
            scene_path = Path(str(row[column]))
            scene_path = scene_path if scene_path.is_absolute() else path.parent / scene_path
            scene_id = str(row.get("scene_id") or scene_path.stem)
            scenes.append(Scene(scene_path, scene_id, {k: v for k, v in row.items() if pd.notna(v)}))
        return _with_ids(scenes)
    raise ValueError(f"--input {path}: expected a .tif scene, a folder or a catalog .csv/.parquet")


def _with_ids(scenes: list[Scene]) -> list[Scene]:
    seen: dict[str, int] = {}
    for scene in scenes:
        if scene.scene_id in seen:
            raise ValueError(f"scene id {scene.scene_id!r} is used by two inputs ({scene.path}); rename one")
        seen[scene.scene_id] = 1
    return scenes


def inspect(scene: Scene, model_bands: tuple[str, ...], bit_depth: int, allow_ungeoreferenced: bool,
            band_override: tuple[str, ...] | None = None) -> Scene:
    """Open the header: bands matched, CRS and bit depth checked (SceneError), acquisition date read.

    A file GDAL cannot open raises ``RasterioError`` (the caller records the scene as failed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(scene.path) as src:
            scene.bands = scene_band_names(src, scene.path, scene.catalog_row, band_override)
            scene.band_indexes = match_bands(scene.bands, model_bands, scene.path)
            scene.height, scene.width = src.height, src.width
            if src.crs is None:
                if not allow_ungeoreferenced:
                    raise SceneError(f"{scene.path}: no CRS; georeference it, or pass --allow-ungeoreferenced to map "
                                     "it in pixel coordinates")
                scene.warnings.append("no CRS: outputs are in pixel coordinates, areas are NaN")
            else:
                scene.crs = src.crs.to_string()
            dtype = src.dtypes[scene.band_indexes[0] - 1]
            tag = src.tags(scene.band_indexes[0], "IMAGE_STRUCTURE").get("NBITS") or src.tags().get("BIT_DEPTH")
    acquisition = read_acquisition(scene.path, scene.catalog_row)
    scene.acquired = acquisition.acquired
    if tag and str(tag).isdigit():
        scene_bits, source = int(tag), "NBITS tag"
    elif dtype == "uint8":
        scene_bits, source = 8, "uint8 data"
    else:  # uint16 without an NBITS / BIT_DEPTH tag: the vendor sidecar, else a warning (never silent)
        scene_bits, source = vendor_bit_depth(scene.path, acquisition.sensor)
    if scene_bits is not None and scene_bits != bit_depth:
        raise SceneError(f"{scene.path}: {scene_bits}-bit digital numbers ({source}) but the model expects "
                         f"{bit_depth}-bit (its corpus contract); rescale the scene first")
    if scene_bits is None:
        scene.warnings.append(f"{dtype} scene records no bit depth (no NBITS tag; {source}); read as the model's "
                              f"{bit_depth}-bit digital numbers")
    return scene


__all__ = ["RasterioError", "Scene", "SceneError", "discover", "inspect", "match_bands", "scene_band_names",
           "vendor_bit_depth"]
