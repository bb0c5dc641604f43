"""Top-of-atmosphere (TOA) reflectance of Maxar/Vantor digital numbers from the product's ``.IMD`` calibration.

Per band b (DigitalGlobe/Maxar technical notes "Radiometric Use of WorldView-2 Imagery", Updike & Comp 2010, and
"Radiometric Use of WorldView-3 Imagery", Kuester 2016):

    L_b   = gain_b * DN * absCalFactor_b / effectiveBandwidth_b + offset_b      (W m-2 sr-1 um-1)
    rho_b = L_b * d^2 * pi / (Esun_b * cos(theta_s)),    theta_s = 90 deg - meanSunEl

so ``rho_b = DN * scale_b + offset'_b`` with one (scale, offset) per band: an affine per-band transform.
``gain``/``offset`` default to 1 and 0 (the radiance of the ``.IMD`` factors as delivered). Maxar publishes
per-sensor corrections in yearly calibration releases; they are not built in here because which release applies
depends on the product, and we do not carry the tables verbatim: a card may give them (``options.toa_gain_offset``).

``d`` is the Earth-Sun distance in AU on the acquisition date by the U.S. Naval Observatory's low-precision formula
("Approximate Solar Coordinates", Astronomical Almanac; the formula the WorldView-2 note uses), good to ~1e-4 AU:
``g = 357.529 + 0.98560028 * (JD - 2451545.0)`` degrees, ``d = 1.00014 - 0.01671 cos g - 0.00014 cos 2g``.

``Esun`` is the band-averaged exo-atmospheric solar irradiance (W m-2 um-1 at 1 AU) from the Thuillier 2003 solar
spectrum as Maxar tabulates it: WorldView-3 from the 2016 WorldView-3 technical note (table 3, Thuillier column);
WorldView-2, GeoEye-1 and QuickBird-2 from Maxar's absolute radiometric calibration release (2016v0), which uses the
same solar curve. A sensor or band not listed is an error, never a guess. The bands are canonical names
(``arctic_vit.bands``); NIR1 is ``nir``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from arctic_vit.transforms import MultispectralNormalize
from training.curate.metadata import ImdCalibration, parse_imd_calibration, vendor_sidecar

ESUN_THUILLIER_2003: dict[str, dict[str, float]] = {
    "WV02": {"coastal": 1773.81, "blue": 2007.27, "green": 1829.62, "yellow": 1701.85, "red": 1538.85,
             "rededge": 1346.09, "nir": 1053.21, "nir2": 856.599},
    "WV03": {"coastal": 1757.89, "blue": 2004.61, "green": 1830.18, "yellow": 1712.07, "red": 1535.33,
             "rededge": 1348.08, "nir": 1055.94, "nir2": 858.77},
    "GE01": {"blue": 1993.18, "green": 1828.83, "red": 1491.49, "nir": 1022.58},
    "QB02": {"blue": 1949.59, "green": 1823.64, "red": 1553.78, "nir": 1102.85},
}
"""Sensor -> canonical band -> Esun (W m-2 um-1), Thuillier 2003 solar curve, as published by Maxar."""
TOA_SOURCES = ("imd",)
"""Values of the dataset-card option ``toa_from``."""
_J2000 = 2451545.0
_UNIX_EPOCH_JD = 2440587.5


def julian_date(when: dt.datetime) -> float:
    """UTC datetime (naive = UTC) -> Julian date."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp() / 86400.0 + _UNIX_EPOCH_JD


def earth_sun_distance(when: dt.datetime | str) -> float:
    """Earth-Sun distance in AU at ``when`` (UTC; ISO 8601 text accepted), USNO low-precision formula."""
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    g = math.radians(357.529 + 0.98560028 * (julian_date(when) - _J2000))
    return 1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)


@dataclass(frozen=True)
class ToaCoefficients:
    """reflectance (0..1) = DN * scale[i] + offset[i] for ``bands[i]``."""

    bands: tuple[str, ...]
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    source: Path
    sensor: str
    acquired: str
    sun_elevation: float
    earth_sun_distance: float
    gain_offset: bool = False

    def describe(self) -> str:
        radiance = "gain/offset-corrected radiance" if self.gain_offset else "radiance = DN*absCalFactor/effBW"
        return (f"TOA reflectance from {self.source.name} ({self.sensor} {self.acquired[:10]}, sun el "
                f"{self.sun_elevation:.2f} deg, d {self.earth_sun_distance:.5f} AU, {radiance}, Esun Thuillier 2003)")


def toa_coefficients(
    imd: Path | ImdCalibration,
    bands: Sequence[str],
    gain_offset: Mapping[str, Sequence[float]] | None = None,
) -> ToaCoefficients:
    """Per-band (scale, offset) turning DN of ``bands`` into TOA reflectance, from an ``.IMD`` (path or parsed).

    ``gain_offset``: band -> (gain, offset) of Maxar's radiance correction (absent: 1, 0). ``ValueError`` naming the
    file when a band, the sensor's Esun, the time or the sun elevation is missing.
    """
    cal = imd if isinstance(imd, ImdCalibration) else parse_imd_calibration(Path(imd))
    where = str(cal.path)
    missing = [b for b in bands if b not in cal.bands]
    if missing:
        raise ValueError(f"{where}: no radiometric calibration (absCalFactor/effectiveBandwidth) for band(s) "
                         f"{missing}; calibrated: {sorted(cal.bands)}; issues: {cal.issues}")
    if cal.sensor not in ESUN_THUILLIER_2003:
        raise ValueError(f"{where}: no published Esun table for sensor {cal.sensor!r}; known: "
                         f"{sorted(ESUN_THUILLIER_2003)}")
    esun = ESUN_THUILLIER_2003[cal.sensor]
    no_esun = [b for b in bands if b not in esun]
    if no_esun:
        raise ValueError(f"{where}: sensor {cal.sensor} has no Esun for band(s) {no_esun} (known: {sorted(esun)})")
    if cal.acquired is None:
        raise ValueError(f"{where}: no acquisition time (firstLineTime / earliestAcqTime) for the Earth-Sun distance")
    if not 0.0 < cal.sun_elevation <= 90.0:
        raise ValueError(f"{where}: meanSunEl {cal.sun_elevation} is not in (0, 90] degrees: TOA reflectance is "
                         "undefined for a sun at or below the horizon")
    gain_offset = dict(gain_offset or {})
    unknown = sorted(set(gain_offset) - set(bands))
    if unknown:
        raise ValueError(f"toa_gain_offset names band(s) {unknown} that are not converted here ({list(bands)})")
    d = earth_sun_distance(cal.acquired)
    cos_zenith = math.cos(math.radians(90.0 - cal.sun_elevation))
    scale, offset = [], []
    for band in bands:
        gain, radiance_offset = (float(v) for v in gain_offset.get(band, (1.0, 0.0)))
        per_radiance = d * d * math.pi / (esun[band] * cos_zenith)
        band_cal = cal.bands[band]
        scale.append(gain * band_cal.abs_cal_factor / band_cal.effective_bandwidth * per_radiance)
        offset.append(radiance_offset * per_radiance)
    return ToaCoefficients(tuple(bands), tuple(scale), tuple(offset), cal.path, cal.sensor, cal.acquired,
                           cal.sun_elevation, d, bool(gain_offset))


def toa_for_image(path: Path, bands: Sequence[str], gain_offset: Mapping[str, Sequence[float]] | None = None,
                  ) -> ToaCoefficients:
    """Coefficients for the image at ``path`` from its own ``.IMD`` sidecar (or its tiled product's)."""
    imd = vendor_sidecar(Path(path), (".IMD", ".imd"))
    if imd is None:
        raise ValueError(f"{path}: no .IMD sidecar (the scene's own or its product's) for TOA reflectance")
    return toa_coefficients(imd, bands, gain_offset)


def card_toa(card, bands: Sequence[str]) -> ToaCoefficients | None:  # card: evaluation.datasets.card.DatasetCard
    """The coefficients a dataset card points at (``options.toa_from: imd``), else ``None``.

    The ``.IMD`` is ``options.toa_imd`` (relative to the card's ``root``), else the one ``.IMD`` under ``root``.
    One set of coefficients serves the whole dataset, so its chips must come from that one scene; chips of several
    scenes need per-chip coefficients, which the sample interface does not carry yet.
    """
    where = f"{card.source or 'dataset card'} options"
    source = card.options.get("toa_from")
    if not source:
        return None
    if source not in TOA_SOURCES:
        raise ValueError(f"{where}.toa_from: {source!r} is not one of {TOA_SOURCES}")
    if card.options.get("reflectance_per_dn"):
        raise ValueError(f"{where}: give either toa_from or reflectance_per_dn, not both")
    named = card.options.get("toa_imd")
    if named:
        imd = Path(named).expanduser()
        imd = imd if imd.is_absolute() else Path(card.root) / imd
        if not imd.is_file():
            raise FileNotFoundError(f"{where}.toa_imd: {imd} not found")
    else:
        found = list(islice((p for p in Path(card.root).rglob("*") if p.suffix.lower() == ".imd"), 2))
        if len(found) != 1:
            what = "no .IMD" if not found else f"several .IMD files ({found[0]}, {found[1]}, ...)"
            raise ValueError(f"{where}.toa_from: {what} under {card.root}; name the scene's file in "
                             "options.toa_imd (one IMD serves the whole dataset)")
        imd = found[0]
    gain_offset = card.options.get("toa_gain_offset") or None
    if gain_offset is not None and not (isinstance(gain_offset, Mapping) and all(
            isinstance(v, Sequence) and len(v) == 2 for v in gain_offset.values())):
        raise ValueError(f"{where}.toa_gain_offset: expected {{band: [gain, offset]}}, got {gain_offset!r}")
    return toa_coefficients(imd, bands, gain_offset)


def reflectance_normalize(toa: ToaCoefficients, mean: Sequence[float], std: Sequence[float],
                          max_value: float) -> MultispectralNormalize:
    """``(DN * scale + offset - mean) / std`` per band (``mean``/``std`` in reflectance 0..1) as a
    ``MultispectralNormalize`` over DN / ``max_value``: mean' = (mean - offset) / (scale * max_value),
    std' = std / (scale * max_value). Input (..., C, H, W) DN in ``toa.bands`` order."""
    if not len(mean) == len(std) == len(toa.bands):
        raise ValueError(f"{len(toa.bands)} TOA bands {toa.bands} but {len(mean)} means / {len(std)} stds")
    units = [s * max_value for s in toa.scale]
    return MultispectralNormalize([(m - o) / u for m, o, u in zip(mean, toa.offset, units)],
                                  [s / u for s, u in zip(std, units)], max_value=max_value)
