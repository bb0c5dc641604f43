"""Seeded generator of small synthetic VHSR scene archives (stand-in for a Maxar/Vantor Arctic archive).

Each scene is an 11-bit (DN 0..2047, nodata 0) uint16 GeoTIFF with 4 bands (blue, green, red, nir) in EPSG:3413 at
~0.5 m GSD, tiled 256 x 256, plus a Maxar-style ``.IMD`` sidecar (and an ``.XML`` one for every other scene).
Content is skewed like a real archive: most of the area is repetitive or low-information (open water, snow, cloud,
bare tundra), a minority holds the features the downstream tasks care about (ice-wedge polygon networks, thaw slumps,
trough networks, roads and buildings). Some scenes have a nodata (0) wedge along one edge.

The scene is a grid of ``zone_size`` square zones; each zone holds one land cover. Sensors, seasons and sun angles
vary per scene and change brightness, noise and the cover mix.

Two profiles: ``balanced`` (the default: every feature class in every scene, a ``feature_fraction`` of the zones) and
``arctic`` (``training.synthetic_arctic``: fixed scene-type shares over the archive, >= 70 % low-information or
near-duplicate zones, rare labelled types; its table ``ARCTIC_PROFILE`` states the basis of each share).
SCENE-TYPE TABLE: next to each ``X.tif`` a ``X.zones.json`` (``ZONES_SUFFIX``) lists the type of every zone;
``chip_scene_types(scene, windows)`` gives each chip's type (the majority of its pixels).

LABEL CONTRACT (with ``labels=True``), next to each ``X.tif`` a ``X.labels.tif``: same grid, CRS and transform,
2 bands uint16 — band 1 = class id (see ``LABEL_CLASSES``), band 2 = instance id (0 = none, unique per object within
the scene; every ice-wedge polygon is its own instance). With ``all_classes_per_scene=True`` (default) every scene
holds at least one zone of each foreground class (if it has at least 4 zones).

    python -m training.synthetic --out outputs/archive --scenes 4 --size 1024 --seed 0 --labels [--profile arctic]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window
from scipy.ndimage import gaussian_filter, label
from scipy.spatial import cKDTree

LABEL_CLASSES: dict[int, str] = {
    0: "background",
    1: "ice_wedge_polygon",
    2: "thaw_slump",
    3: "trough_network",
    4: "infrastructure",
}
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
BIT_DEPTH = 11
MAX_DN = 2**BIT_DEPTH - 1
CRS = "EPSG:3413"
GSD_M = 0.5
LABELS_SUFFIX = ".labels.tif"  # X.tif -> X.labels.tif (the LABEL CONTRACT); readers import it

# Low-information covers (most of the archive) and informative feature covers (a minority).
BACKGROUND_COVERS = ("water", "snow", "cloud", "tundra")
FEATURE_COVERS = ("ice_wedge_polygons", "thaw_slump", "trough_network", "infrastructure")
FEATURE_CLASS = {"ice_wedge_polygons": 1, "thaw_slump": 2, "trough_network": 3, "infrastructure": 4}

# Mean DN (blue, green, red, nir) at a reference sun elevation of 45 degrees.
SPECTRA: dict[str, tuple[float, float, float, float]] = {
    "water": (260, 230, 160, 90),
    "snow": (1650, 1700, 1680, 1450),
    "cloud": (1800, 1830, 1820, 1760),
    "tundra": (330, 420, 400, 1100),
    "wet_tundra": (280, 350, 300, 700),
    "trough": (230, 290, 230, 420),
    "bare_soil": (620, 700, 780, 920),
    "gravel": (900, 950, 980, 1020),
}
ROOF_SPECTRA = ((1300, 1250, 1200, 1150), (500, 520, 900, 700), (380, 520, 560, 600), (1500, 1520, 1530, 1480))
SENSORS: dict[str, float] = {"WV02": 1.0, "WV03": 1.04, "GE01": 0.95, "QB02": 0.9}  # sensor -> radiometric gain


@dataclass(frozen=True)
class SceneMeta:
    """Acquisition metadata of one synthetic scene (what the sidecars carry)."""

    scene_id: str
    sat_id: str
    cat_id: str
    first_line_time: str
    mean_sun_el: float
    mean_sun_az: float
    mean_off_nadir: float
    cloud_cover: float
    gsd_m: float
    lat: float
    lon: float


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-ish std low-frequency noise of ``shape``."""
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma, mode="wrap")
    return field / (field.std() + 1e-6)


def _paint(image: np.ndarray, mask: np.ndarray, spectrum: tuple[float, ...]) -> None:
    """image: (4, H, W) float32; mask: (H, W) bool — set masked pixels to ``spectrum``."""
    for band, value in enumerate(spectrum):
        image[band][mask] = value


def _voronoi(rng: np.random.Generator, size: int, mean_cell_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells over a (size, size) zone -> (cell index (H, W), distance to the cell edge in px (H, W))."""
    per_side = max(2, round(size / mean_cell_px))
    step = size / per_side
    grid = (np.stack(np.mgrid[0:per_side, 0:per_side], axis=-1).reshape(-1, 2) + 0.5) * step
    seeds = grid + rng.uniform(-0.35 * step, 0.35 * step, size=grid.shape)  # jittered grid: polygon-like cells
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float32)
    dist, idx = cKDTree(seeds).query(pixels, k=2)
    edge = (dist[:, 1] - dist[:, 0]) / 2.0
    return idx[:, 0].reshape(size, size), edge.reshape(size, size)


class _InstanceCounter:
    def __init__(self) -> None:
        self.next_id = 1

    def take(self, n: int = 1) -> int:
        first = self.next_id
        self.next_id += n
        if self.next_id > np.iinfo(np.uint16).max:
            raise ValueError("more than 65535 instances in one scene; use a smaller scene or larger zones")
        return first


def _zone_cover(
    cover: str, size: int, rng: np.random.Generator, counter: _InstanceCounter, centre: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One zone -> (image (4, S, S) float32 DN before illumination, class (S, S) uint16, instance (S, S) uint16).

    ``centre`` ("low" | "high") fixes the ice-wedge polygon type; None draws it (the balanced profile).
    """
    image = np.empty((4, size, size), np.float32)
    cls = np.zeros((size, size), np.uint16)
    inst = np.zeros((size, size), np.uint16)
    texture = _smooth_noise(rng, (size, size), sigma=6.0)
    if cover in ("water", "snow", "tundra"):
        _paint(image, np.ones((size, size), bool), SPECTRA[cover])
        amplitude = {"water": 0.04, "snow": 0.02, "tundra": 0.08}[cover]
        image *= 1.0 + amplitude * texture
        return image, cls, inst
    if cover == "cloud":
        density = np.clip(0.65 + 0.35 * _smooth_noise(rng, (size, size), sigma=24.0), 0.0, 1.0)
        ground = np.array(SPECTRA["tundra"], np.float32)[:, None, None]
        cloud = np.array(SPECTRA["cloud"], np.float32)[:, None, None]
        return ground * (1 - density) + cloud * density, cls, inst

    _paint(image, np.ones((size, size), bool), SPECTRA["tundra"])
    image *= 1.0 + 0.08 * texture
    if cover == "ice_wedge_polygons":
        cell, edge = _voronoi(rng, size, mean_cell_px=rng.uniform(26, 44))
        trough = edge < rng.uniform(1.5, 2.5)
        low_centre = rng.random() < 0.5 if centre is None else centre == "low"
        if low_centre:  # wet, ponded centres with raised rims
            inner = edge > 5
            image[:, inner] = image[:, inner] * 0.5 + np.array(SPECTRA["wet_tundra"], np.float32)[:, None] * 0.5
        elif centre == "high":  # degraded: wide, wet troughs around dry, bright raised centres
            trough = edge < rng.uniform(3.0, 4.5)
            inner = edge > 6
            image[:, inner] *= 1.12
        _paint(image, trough, SPECTRA["trough"])
        polygon = ~trough
        first = counter.take(int(cell.max()) + 1)
        cls[polygon] = FEATURE_CLASS[cover]
        inst[polygon] = (first + cell[polygon]).astype(np.uint16)
    elif cover == "trough_network":
        _, edge = _voronoi(rng, size, mean_cell_px=rng.uniform(90, 130))
        trough = edge < rng.uniform(3.0, 5.0)
        _paint(image, trough, SPECTRA["trough"])
        image[:, trough] *= 0.7  # water-filled, degraded troughs
        components, n_components = label(trough)
        first = counter.take(n_components)
        cls[trough] = FEATURE_CLASS[cover]
        inst[trough] = (first - 1 + components[trough]).astype(np.uint16)
    elif cover == "thaw_slump":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(0.25 * size, 0.75 * size, size=2)
            ry, rx = rng.uniform(0.12 * size, 0.3 * size, size=2)
            angle = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
            radius = np.sqrt(u**2 + v**2)
            slump = radius < 1.0 + 0.1 * texture
            headwall = slump & (radius > 0.85) & (u < 0)  # dark, steep scarp on one side
            image[:, slump] = np.array(SPECTRA["bare_soil"], np.float32)[:, None] * (1 + 0.1 * texture[slump])
            image[:, headwall] *= 0.55
            cls[slump] = FEATURE_CLASS[cover]
            inst[slump] = counter.take()
    elif cover == "infrastructure":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(0.3 * size, 0.7 * size)
        distance = (xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle) + size / 2 - offset
        road = np.abs(distance) < rng.uniform(3, 6)
        _paint(image, road, SPECTRA["gravel"])
        cls[road] = FEATURE_CLASS[cover]
        inst[road] = counter.take()
        for _ in range(int(rng.integers(3, 9))):
            h, w = rng.integers(10, 32, size=2)
            y0, x0 = rng.integers(0, size - 32, size=2)
            building = np.zeros((size, size), bool)
            building[y0 : y0 + h, x0 : x0 + w] = True
            building &= ~road
            if not building.any():
                continue
            _paint(image, building, ROOF_SPECTRA[int(rng.integers(len(ROOF_SPECTRA)))])
            cls[building] = FEATURE_CLASS[cover]
            inst[building] = counter.take()
    else:
        raise ValueError(f"unknown cover {cover!r}")
    return image, cls, inst


def _scene_meta(index: int, rng: np.random.Generator) -> tuple[SceneMeta, bool]:
    """Acquisition fields of scene ``index`` -> (metadata, is_spring)."""
    sat_id = str(rng.choice(list(SENSORS), p=[0.45, 0.25, 0.2, 0.1]))
    spring = bool(rng.random() < 0.3)
    year = int(rng.integers(2010, 2024))
    doy = int(rng.integers(95, 140) if spring else rng.integers(170, 240))
    when = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
        days=doy - 1, hours=float(rng.uniform(18, 23.5))
    )
    lat = float(rng.uniform(66.0, 74.0))
    lon = float(rng.uniform(-165.0, -95.0))
    declination = 23.44 * np.sin(2 * np.pi * (doy - 81) / 365.0)
    sun_el = float(np.clip(90.0 - lat + declination - rng.uniform(0, 12), 8.0, 60.0))
    meta = SceneMeta(
        scene_id=f"scene_{index:03d}",
        sat_id=sat_id,
        cat_id=f"10{rng.integers(1, 5)}00100{rng.integers(0, 16**8):08X}",
        first_line_time=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        mean_sun_el=round(sun_el, 1),
        mean_sun_az=round(float(rng.uniform(140, 220)), 1),
        mean_off_nadir=round(float(rng.uniform(2, 30)), 1),
        cloud_cover=0.0,  # filled in from the drawn covers
        gsd_m=round(GSD_M * float(rng.uniform(0.96, 1.08)), 3),
        lat=round(lat, 5),
        lon=round(lon, 5),
    )
    return meta, spring


def _draw_covers(n_zones: int, spring: bool, feature_fraction: float, all_classes: bool, rng) -> list[str]:
    """A skewed cover per zone: ``feature_fraction`` informative, the rest water/snow/cloud/tundra."""
    n_features = round(feature_fraction * n_zones)
    if all_classes:
        n_features = min(n_zones, max(n_features, len(FEATURE_COVERS)))
    features = list(FEATURE_COVERS[: min(n_features, len(FEATURE_COVERS))]) if all_classes else []
    features += list(rng.choice(FEATURE_COVERS, size=n_features - len(features), p=[0.5, 0.15, 0.2, 0.15]))
    weights = [0.2, 0.45, 0.15, 0.2] if spring else [0.3, 0.05, 0.2, 0.45]
    backgrounds = list(rng.choice(BACKGROUND_COVERS, size=n_zones - n_features, p=weights))
    covers = [str(c) for c in features + backgrounds]
    rng.shuffle(covers)
    return covers


def _illumination(sun_el: float) -> float:
    return float(np.clip(np.sin(np.radians(sun_el)) / np.sin(np.radians(45.0)), 0.35, 1.15))


def _nodata_wedge(size: int, rng: np.random.Generator) -> tuple[float, float, int]:
    """A straight scene-footprint edge: pixels with ``col < a + b * row`` (mirrored by ``side``) are nodata."""
    return float(rng.uniform(0.05, 0.25) * size), float(rng.uniform(-0.2, 0.2)), int(rng.integers(0, 2))


def write_imd(path: Path, meta: SceneMeta) -> None:
    """Maxar-style ``.IMD`` (ODL key = value; groups) with the acquisition fields of ``meta``."""
    generated = meta.first_line_time[:10]
    path.write_text(
        "version = \"28.4\";\n"
        f"generationTime = {generated}T23:59:59.000000Z;\n"
        f"productOrderId = \"{meta.scene_id.upper()}_01_P001\";\n"
        "bandId = \"MS1\";\n"
        "BEGIN_GROUP = IMAGE_1\n"
        f"\tsatId = \"{meta.sat_id}\";\n"
        "\tmode = \"FullSwath\";\n"
        f"\tCatId = \"{meta.cat_id}\";\n"
        f"\tfirstLineTime = {meta.first_line_time};\n"
        f"\tmeanCollectedGSD = {meta.gsd_m:.3f};\n"
        f"\tmeanSunAz = {meta.mean_sun_az:.1f};\n"
        f"\tmeanSunEl = {meta.mean_sun_el:.1f};\n"
        f"\tmeanOffNadirViewAngle = {meta.mean_off_nadir:.1f};\n"
        f"\tcloudCover = {meta.cloud_cover:.3f};\n"
        "END_GROUP = IMAGE_1\n"
        "END;\n"
    )


def write_xml(path: Path, meta: SceneMeta) -> None:
    """Maxar-style ``.XML`` (``isd/IMD/IMAGE``) with the same fields as the ``.IMD``."""
    path.write_text(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<isd>\n <IMD>\n  <BANDID>MS1</BANDID>\n  <IMAGE>\n"
        f"   <SATID>{meta.sat_id}</SATID>\n   <CATID>{meta.cat_id}</CATID>\n"
        f"   <FIRSTLINETIME>{meta.first_line_time}</FIRSTLINETIME>\n"
        f"   <MEANCOLLECTEDGSD>{meta.gsd_m:.3f}</MEANCOLLECTEDGSD>\n"
        f"   <MEANSUNAZ>{meta.mean_sun_az:.1f}</MEANSUNAZ>\n   <MEANSUNEL>{meta.mean_sun_el:.1f}</MEANSUNEL>\n"
        f"   <MEANOFFNADIRVIEWANGLE>{meta.mean_off_nadir:.1f}</MEANOFFNADIRVIEWANGLE>\n"
        f"   <CLOUDCOVER>{meta.cloud_cover:.3f}</CLOUDCOVER>\n"
        "  </IMAGE>\n </IMD>\n</isd>\n"
    )


ZONES_SUFFIX = ".zones.json"
"""Next to each ``X.tif``: ``X.zones.json``, the scene-type table (one type per zone, row-major; see
``write_zone_table``). A JSON file, so scene discovery (``*.tif``) never mistakes it for a scene."""
PROFILES = ("balanced", "arctic")


def zone_table_path(scene: Path) -> Path:
    return Path(scene).with_name(Path(scene).stem + ZONES_SUFFIX)


def write_zone_table(scene: Path, size: int, zone_size: int, types: Sequence[str], profile: str,
                     families: Sequence[int | None] | None = None) -> Path:
    """The scene-type table of ``scene``: ``types[i]`` is the type of zone ``i`` (row-major over the
    ceil(size / zone_size)² grid); ``families[i]``: the near-duplicate texture family of a low-information zone."""
    n_side = -(-size // zone_size)
    if len(types) != n_side * n_side:
        raise ValueError(f"{scene}: {len(types)} zone types for a {n_side} x {n_side} zone grid")
    table = {"profile": profile, "size": size, "zone_size": zone_size, "n_side": n_side, "types": list(types),
             "families": list(families) if families is not None else [None] * len(types)}
    path = zone_table_path(scene)
    path.write_text(json.dumps(table) + "\n")
    return path


def read_zone_table(scene: Path) -> dict:
    path = zone_table_path(scene)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no scene-type table next to {Path(scene).name} (written by "
                                "training.synthetic.generate_archive)")
    return json.loads(path.read_text())


def chip_scene_types(scene: Path, windows: Sequence[Window | tuple[int, int, int, int]]) -> list[str]:
    """The scene type of each chip of ``scene``: the type covering most of its pixels (ties: the first zone in
    row-major order). windows: rasterio ``Window`` or (row_off, col_off, height, width) in scene pixels."""
    table = read_zone_table(scene)
    zone, n_side, size = table["zone_size"], table["n_side"], table["size"]
    starts = np.arange(n_side) * zone
    ends = np.minimum(starts + zone, size)
    out = []
    for window in windows:
        if isinstance(window, Window):
            row, col, height, width = window.row_off, window.col_off, window.height, window.width
        else:
            row, col, height, width = window
        rows = np.clip(np.minimum(ends, row + height) - np.maximum(starts, row), 0, None)
        cols = np.clip(np.minimum(ends, col + width) - np.maximum(starts, col), 0, None)
        area = np.outer(rows, cols).ravel()
        if not area.any():
            raise ValueError(f"{scene}: window {window} lies outside the {size} x {size} scene")
        totals: dict[str, int] = {}
        for zone_type, pixels in zip(table["types"], area):
            totals[zone_type] = totals.get(zone_type, 0) + int(pixels)
        out.append(max(totals, key=totals.__getitem__))
    return out


ZoneContent = tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]
"""One zone: image (4, S, S) float32 DN before illumination, class (S, S), instance (S, S), nodata (S, S) bool or
None."""


def write_scene_raster(
    path: Path,
    meta: SceneMeta,
    size: int,
    zone_size: int,
    zone_content: Callable[[int], ZoneContent],
    rng: np.random.Generator,
    *,
    noise_sigma: float,
    wedge: tuple[float, float, int] | None,
    labels: bool,
) -> None:
    """Write the scene GeoTIFF (+ ``.labels.tif``) zone by zone: ``zone_content(zone_index)`` gives each zone's
    content; the scene gain (sensor x sun), sensor noise and an optional nodata ``wedge`` are applied here.
    Memory is O(zone_size²) whatever ``size``."""
    n_side = -(-size // zone_size)
    gain = SENSORS[meta.sat_id] * _illumination(meta.mean_sun_el)
    x_c, y_c = warp_transform("EPSG:4326", CRS, [meta.lon], [meta.lat])
    transform = from_origin(x_c[0] - size * meta.gsd_m / 2, y_c[0] + size * meta.gsd_m / 2, meta.gsd_m, meta.gsd_m)
    profile = dict(
        driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs=CRS, transform=transform, nodata=0,
        tiled=True, blockxsize=256, blockysize=256, compress="deflate", interleave="pixel",
    )
    label_path = path.with_name(path.stem + LABELS_SUFFIX)
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = BANDS
        dst.update_tags(BANDS=",".join(BANDS), BIT_DEPTH=str(BIT_DEPTH), SENSOR=meta.sat_id)
        label_dst = (
            rasterio.open(label_path, "w", **{**profile, "count": 2, "nodata": None}) if labels else None
        )
        try:
            if label_dst is not None:
                label_dst.descriptions = ("class_id", "instance_id")
                label_dst.update_tags(CLASSES=",".join(f"{k}:{v}" for k, v in LABEL_CLASSES.items()))
            for zone_index in range(n_side * n_side):
                row0, col0 = (zone_index // n_side) * zone_size, (zone_index % n_side) * zone_size
                height, width = min(zone_size, size - row0), min(zone_size, size - col0)
                image, cls, inst, nodata = zone_content(zone_index)
                image = image[:, :height, :width] * gain
                image += rng.normal(0.0, noise_sigma, size=image.shape).astype(np.float32)
                dn = np.clip(np.rint(image), 1, MAX_DN).astype(np.uint16)  # 0 is reserved for nodata
                cls, inst = cls[:height, :width].copy(), inst[:height, :width].copy()
                outside = np.zeros((height, width), bool) if nodata is None else nodata[:height, :width].copy()
                if wedge is not None:
                    rows, cols = np.mgrid[row0 : row0 + height, col0 : col0 + width]
                    offset, slope, side = wedge
                    cols = cols if side == 0 else size - 1 - cols
                    outside |= cols < offset + slope * rows
                dn[:, outside] = 0
                cls[outside], inst[outside] = 0, 0
                window = Window(col0, row0, width, height)
                dst.write(dn, window=window)
                if label_dst is not None:
                    label_dst.write(np.stack([cls, inst]), window=window)
        finally:
            if label_dst is not None:
                label_dst.close()


def generate_scene(
    path: Path,
    index: int,
    size: int,
    seed: int,
    *,
    labels: bool = True,
    zone_size: int = 256,
    feature_fraction: float = 0.25,
    all_classes_per_scene: bool = True,
    nodata_border: bool | None = None,
    xml: bool | None = None,
) -> SceneMeta:
    """Write scene ``index`` of the balanced archive to ``path`` (+ sidecars, + ``.labels.tif``, + zone table)
    -> its metadata."""
    rng = np.random.default_rng([seed, index])
    meta, spring = _scene_meta(index, rng)
    n_side = -(-size // zone_size)
    covers = _draw_covers(n_side * n_side, spring, feature_fraction, all_classes_per_scene, rng)
    cloud_cover = covers.count("cloud") / len(covers)
    meta = SceneMeta(**{**asdict(meta), "cloud_cover": round(cloud_cover, 3)})
    has_wedge = bool(index % 2 == 1) if nodata_border is None else nodata_border
    wedge = _nodata_wedge(size, rng)
    noise_sigma = float(rng.uniform(8, 20))
    counter = _InstanceCounter()

    def zone_content(zone_index: int) -> ZoneContent:
        return (*_zone_cover(covers[zone_index], zone_size, rng, counter), None)

    write_scene_raster(path, meta, size, zone_size, zone_content, rng, noise_sigma=noise_sigma,
                       wedge=wedge if has_wedge else None, labels=labels)
    write_zone_table(path, size, zone_size, covers, profile="balanced")
    write_imd(path.with_suffix(".IMD"), meta)
    if (index % 2 == 0) if xml is None else xml:
        write_xml(path.with_suffix(".XML"), meta)
    return meta


def generate_archive(
    out_dir: str | Path,
    n_scenes: int = 4,
    size: int = 1024,
    seed: int = 0,
    labels: bool = True,
    *,
    zone_size: int = 256,
    feature_fraction: float = 0.25,
    all_classes_per_scene: bool = True,
    catalog: bool = True,
    profile: str = "balanced",
) -> list[Path]:
    """Write ``n_scenes`` scenes of ``size`` x ``size`` px into ``out_dir`` -> sorted scene paths (``scene_NNN.tif``).

    Deterministic for ``seed``. ``profile``: "balanced" (every feature class in every scene; ``feature_fraction``:
    share of zones holding a labelled feature class) or "arctic" (``training.synthetic_arctic.ARCTIC_PROFILE``:
    fixed scene-type shares over the whole archive, near-duplicate low-information zones; ``feature_fraction`` and
    ``all_classes_per_scene`` do not apply). Every scene gets a zone table (``ZONES_SUFFIX``). Also writes
    ``catalog.csv`` (one row per scene, the sidecar fields) when ``catalog``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if size < 16 or zone_size < 64:
        raise ValueError(f"size must be >= 16 and zone_size >= 64, got {size} and {zone_size}")
    if not 0.0 <= feature_fraction <= 1.0:
        raise ValueError(f"feature_fraction must be in [0, 1], got {feature_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if profile == "arctic":
        from training.synthetic_arctic import generate_arctic_scenes

        paths, rows = generate_arctic_scenes(out, n_scenes, size, seed, labels=labels, zone_size=zone_size)
    else:
        paths, rows = [], []
        for index in range(n_scenes):
            path = out / f"scene_{index:03d}.tif"
            meta = generate_scene(
                path, index, size, seed, labels=labels, zone_size=zone_size, feature_fraction=feature_fraction,
                all_classes_per_scene=all_classes_per_scene,
            )
            paths.append(path)
            rows.append(asdict(meta))
    if catalog:
        write_catalog(out / "catalog.csv", paths, rows)
    return paths


def write_catalog(path: Path, scenes: Sequence[Path], rows: Sequence[dict]) -> None:
    """``catalog.csv``: one row per scene (``path`` = the scene's file name, then the sidecar fields)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", *rows[0].keys()] if rows else ["path"])
        writer.writeheader()
        for scene, row in zip(scenes, rows):
            writer.writerow({"path": scene.name, **row})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m training.synthetic")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024, help="scene width = height in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", action="store_true", help="also write X.labels.tif (class id, instance id)")
    parser.add_argument("--zone-size", type=int, default=256, help="side of one land-cover zone in px")
    parser.add_argument(
        "--labelled-fraction", type=float, default=0.25, help="share of zones holding a labelled feature class"
    )
    parser.add_argument(
        "--no-guarantee", action="store_true", help="do not force every feature class into every scene"
    )
    parser.add_argument(
        "--profile", choices=PROFILES, default="balanced",
        help="balanced: every feature class in every scene; arctic: the skewed archive of "
             "training.synthetic_arctic.ARCTIC_PROFILE (--labelled-fraction and --no-guarantee do not apply)",
    )
    args = parser.parse_args(argv)
    paths = generate_archive(
        args.out, args.scenes, args.size, args.seed, args.labels, zone_size=args.zone_size,
        feature_fraction=args.labelled_fraction, all_classes_per_scene=not args.no_guarantee, profile=args.profile,
    )
    print(f"wrote {len(paths)} scenes ({args.profile} profile) to {args.out}")


if __name__ == "__main__":
    main()
