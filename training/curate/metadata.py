"""Acquisition metadata: Maxar/Vantor-style ``.IMD`` and ``.XML`` sidecars, and catalog tables (CSV/Parquet); the
``.IMD``'s per-band radiometric calibration (``parse_imd_calibration``, for ``evaluation.toa``).

Every field may be missing; what is missing or unparsable is recorded in ``issues`` (never a crash, never silent).
Precedence: ``.IMD`` > ``.XML`` > catalog row (the catalog fills only the fields the sidecars lack).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

FIELDS = ("sensor", "acquired", "sun_elevation", "sun_azimuth", "off_nadir", "cloud_cover", "gsd_m", "lat", "lon")
NUMERIC_FIELDS = ("sun_elevation", "sun_azimuth", "off_nadir", "cloud_cover", "gsd_m", "lat", "lon")
KNOWN_SENSORS = ("WV01", "WV02", "WV03", "WV04", "GE01", "QB02", "IK01")

# vendor key (IMD, case-insensitive; XML tags are the same names upper-cased) -> our field
_VENDOR_KEYS = {
    "satid": "sensor",
    "firstlinetime": "acquired",
    "meansunel": "sun_elevation",
    "meansunaz": "sun_azimuth",
    "meanoffnadirviewangle": "off_nadir",
    "cloudcover": "cloud_cover",
    "meancollectedgsd": "gsd_m",
}
# catalog column aliases -> our field
_CATALOG_KEYS = {
    **_VENDOR_KEYS,
    "sat_id": "sensor", "sensor": "sensor", "platform": "sensor",
    "acquired": "acquired", "acquisition_time": "acquired", "first_line_time": "acquired", "datetime": "acquired",
    "sun_elevation": "sun_elevation", "mean_sun_el": "sun_elevation",
    "sun_azimuth": "sun_azimuth", "mean_sun_az": "sun_azimuth",
    "off_nadir": "off_nadir", "mean_off_nadir": "off_nadir",
    "cloud_cover": "cloud_cover", "gsd_m": "gsd_m", "gsd": "gsd_m", "lat": "lat", "lon": "lon",
}
# Cloud cover by each field's documented unit, never guessed from the value: Maxar IMD/XML ``cloudCover`` and our
# catalog column ``cloud_cover`` are fractions 0-1; these catalog columns are percent 0-100 (STAC ``eo:cloud_cover``).
PERCENT_CATALOG_KEYS = ("cloud_cover_pct", "cloud_cover_percent", "eo:cloud_cover")
# Maxar tiled deliveries: ``<product>_R1C1.TIF``, ``<product>_R1C2.TIF`` ... share ``<product>.IMD`` / ``.XML``
_TILE_SUFFIX = re.compile(r"^(?P<product>.+)_R\d+C\d+$", re.IGNORECASE)
_IMD_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*;?\s*$")


@dataclass
class AcquisitionMeta:
    sensor: str | None = None
    acquired: str | None = None  # ISO 8601, UTC
    sun_elevation: float = math.nan
    sun_azimuth: float = math.nan
    off_nadir: float = math.nan
    cloud_cover: float = math.nan  # fraction 0..1
    gsd_m: float = math.nan
    lat: float = math.nan
    lon: float = math.nan
    issues: list[str] = field(default_factory=list)

    def fill_from(self, values: dict[str, object], source: str) -> None:
        """Set the fields still missing from ``values`` (already mapped to our names), recording parse failures."""
        for name, raw in values.items():
            if _is_set(getattr(self, name)):
                continue
            try:
                setattr(self, name, _parse_field(name, raw))
            except OutOfRange:
                self.issues.append(f"{source}_out_of_range:{name}")
            except (TypeError, ValueError):
                self.issues.append(f"{source}_unparsable:{name}")


class OutOfRange(ValueError):
    """A value that parses but lies outside its field's documented range (e.g. a cloud-cover fraction of 35)."""


def _is_set(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _parse_field(name: str, raw: object) -> object:
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None if name in ("sensor", "acquired") else math.nan
    text = str(raw).strip().strip('"').strip()
    if name == "sensor":
        if not re.fullmatch(r"[A-Za-z0-9_-]{2,16}", text):
            raise ValueError(text)
        return text.upper()
    if name == "acquired":
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    if name == "cloud_cover" and not 0.0 <= value <= 1.0:  # a fraction by the field's documented unit
        raise OutOfRange(text)
    return value


def parse_imd(path: Path) -> dict[str, str]:
    """``.IMD`` (ODL ``key = value;``) -> {our field: raw text}. Keys of the first IMAGE group win."""
    found: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = _IMD_LINE.match(line)
        if not match:
            continue
        key = _VENDOR_KEYS.get(match.group(1).lower())
        if key and key not in found:
            found[key] = match.group(2)
    return found


# Maxar/Vantor ``.IMD`` band groups -> canonical band names. The names are owned by ``arctic_vit.bands.CANONICAL_BANDS``
# (written out here because ``arctic_vit`` imports torch and every Dask worker imports this module; a test keeps them
# canonical). NIR1 is ``BAND_N``; the panchromatic ``BAND_P`` is not a multispectral band and is kept apart.
MAXAR_BAND_GROUPS: dict[str, str] = {
    "BAND_C": "coastal", "BAND_B": "blue", "BAND_G": "green", "BAND_Y": "yellow",
    "BAND_R": "red", "BAND_RE": "rededge", "BAND_N": "nir", "BAND_N2": "nir2",
}
PAN_GROUP = "BAND_P"


@dataclass(frozen=True)
class BandCalibration:
    """One band's absolute calibration from the ``.IMD``: radiance L = DN * abs_cal_factor / effective_bandwidth."""

    abs_cal_factor: float  # band-integrated radiance per DN, W m-2 sr-1 count-1
    effective_bandwidth: float  # um


@dataclass
class ImdCalibration:
    """Radiometric calibration of one ``.IMD``: per canonical band, plus what TOA reflectance needs (time, sun).

    A band group without a valid ``absCalFactor``/``effectiveBandwidth`` is absent from ``bands`` and named in
    ``issues``; nothing is guessed.
    """

    path: Path
    sensor: str | None = None
    acquired: str | None = None  # ISO 8601 UTC: ``firstLineTime``, else ``earliestAcqTime``
    sun_elevation: float = math.nan  # degrees, ``meanSunEl``
    bands: dict[str, BandCalibration] = field(default_factory=dict)  # canonical band name -> calibration
    pan: BandCalibration | None = None
    issues: list[str] = field(default_factory=list)


def parse_imd_calibration(path: Path) -> ImdCalibration:
    """``.IMD`` -> per-band ``absCalFactor``/``effectiveBandwidth`` (band groups ``BEGIN_GROUP = BAND_*``), the sensor,
    acquisition time and mean sun elevation. Missing or garbled values are recorded in ``issues``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IMD not found: {path}")
    cal = ImdCalibration(path=path)
    groups: list[str] = []
    raw_bands: dict[str, dict[str, str]] = {}
    scene: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = _IMD_LINE.match(line)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2).strip().strip('"')
        if key == "begin_group":
            groups.append(value.upper())
        elif key == "end_group":
            if groups:
                groups.pop()
        elif groups and groups[-1].startswith("BAND_"):
            if key in ("abscalfactor", "effectivebandwidth"):
                raw_bands.setdefault(groups[-1], {}).setdefault(key, value)
            else:
                raw_bands.setdefault(groups[-1], {})
        elif key in ("satid", "firstlinetime", "earliestacqtime", "meansunel"):
            scene.setdefault(key, value)
    for name, raw in (("sensor", scene.get("satid")), ("sun_elevation", scene.get("meansunel")),
                      ("acquired", scene.get("firstlinetime") or scene.get("earliestacqtime"))):
        if raw is None:
            cal.issues.append(f"missing:{name}")
            continue
        try:
            setattr(cal, name, _parse_field(name, raw))
        except (TypeError, ValueError):
            cal.issues.append(f"imd_unparsable:{name}")
    for group, raw in raw_bands.items():
        band = MAXAR_BAND_GROUPS.get(group, "pan" if group == PAN_GROUP else None)
        if band is None:
            cal.issues.append(f"imd_unmapped_band:{group}")
            continue
        try:
            factor, width = float(raw["abscalfactor"]), float(raw["effectivebandwidth"])
            if not (math.isfinite(factor) and math.isfinite(width) and factor > 0 and width > 0):
                raise ValueError(raw)
        except (KeyError, ValueError):
            cal.issues.append(f"imd_uncalibrated:{band}")
            continue
        if group == PAN_GROUP:
            cal.pan = BandCalibration(factor, width)
        else:
            cal.bands[band] = BandCalibration(factor, width)
    return cal


def parse_xml(path: Path) -> dict[str, str]:
    """Maxar ``.XML`` (``isd/IMD/IMAGE/*``) -> {our field: raw text}."""
    root = ET.parse(path).getroot()
    found: dict[str, str] = {}
    for element in root.iter():
        key = _VENDOR_KEYS.get(element.tag.lower())
        if key and key not in found and element.text is not None:
            found[key] = element.text
    return found


def vendor_sidecar(path: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The scene's own sidecar, else (a tile ``<product>_R<r>C<c>``) the product's shared one."""
    stems = [path.stem]
    tile = _TILE_SUFFIX.match(path.stem)
    if tile:
        stems.append(tile.group("product"))
    for stem in stems:
        for suffix in suffixes:
            candidate = path.with_name(stem + suffix)
            if candidate.is_file():
                return candidate
    return None


def _catalog_values(row: dict[str, object]) -> dict[str, object]:
    """Catalog row -> {our field: value}; percent columns become fractions (by their documented unit)."""
    out: dict[str, object] = {}
    for key, value in row.items():
        lower = str(key).lower()
        if lower in PERCENT_CATALOG_KEYS:
            try:
                out["cloud_cover"] = float(value) / 100.0
            except (TypeError, ValueError):
                out["cloud_cover"] = value  # recorded as unparsable by fill_from
        elif lower in _CATALOG_KEYS:
            out[_CATALOG_KEYS[lower]] = value
    return out


def read_acquisition(path: Path, catalog_row: dict[str, object] | None = None) -> AcquisitionMeta:
    """Metadata of the scene at ``path`` from its sidecars and an optional catalog row."""
    meta = AcquisitionMeta()
    imd = vendor_sidecar(path, (".IMD", ".imd"))
    if imd is not None:
        try:
            values = parse_imd(imd)
            if not values:
                meta.issues.append("imd_no_fields")
            meta.fill_from(values, "imd")
        except (OSError, UnicodeError) as err:
            meta.issues.append(f"imd_unreadable:{type(err).__name__}")
    xml = vendor_sidecar(path, (".XML", ".xml"))
    if xml is not None:
        try:
            meta.fill_from(parse_xml(xml), "xml")
        except (OSError, ET.ParseError) as err:
            meta.issues.append(f"xml_unreadable:{type(err).__name__}")
    if catalog_row:
        meta.fill_from(_catalog_values(catalog_row), "catalog")
    if imd is None and xml is None and not catalog_row:
        meta.issues.append("no_metadata")
    else:
        required = ("sensor", "acquired", "sun_elevation", "off_nadir")
        meta.issues.extend(f"missing:{name}" for name in required if not _is_set(getattr(meta, name)))
    return meta


def load_catalog(path: str | Path | None) -> dict[str, dict[str, object]]:
    """Catalog CSV/Parquet -> {key: row}, keyed by file name and by stem (columns ``path``/``scene``/``scene_id``)."""
    if not path:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog not found: {path}")
    table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    key_column = next((c for c in ("path", "scene", "scene_id", "file", "filename") if c in table.columns), None)
    if key_column is None:
        raise ValueError(f"catalog {path} needs a 'path', 'scene' or 'scene_id' column; has {list(table.columns)}")
    rows: dict[str, dict[str, object]] = {}
    for row in table.to_dict(orient="records"):
        key = Path(str(row[key_column]))
        rows.setdefault(key.name, row)
        rows.setdefault(key.stem, row)
    return rows


def catalog_row_for(catalog: dict[str, dict[str, object]], path: Path) -> dict[str, object] | None:
    return catalog.get(path.name) or catalog.get(path.stem)
