"""Chip descriptors: spectral + texture statistics of the pixels, and acquisition metadata; standardisation.

Spectral statistics use four core bands (blue, green, red, nir) looked up by name, so scenes with 3, 4 or 8 bands and
false-colour JPEG chips share one descriptor layout; a band a source lacks gives NaN, which standardisation turns
into the column mean (0). Spectral statistics use every ``sample_step``-th pixel in each direction (32 x 32 samples
of a 256 px chip by default) and texture every ``texture_step``-th (64 x 64), which keeps extraction cheaper than
the read itself.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from training.curate.metadata import KNOWN_SENSORS, AcquisitionMeta

CORE_BANDS = ("blue", "green", "red", "nir")
PERCENTILES = (5, 50, 95)
HISTOGRAM_EDGES = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 1.0001], np.float32)
SENSOR_SLOTS = (*KNOWN_SENSORS, "other")
STANDARDISE_CHUNK = 65_536  # rows per float64 pass in ``standardise`` (its memory is O(chunk x D), not O(n x D))


def spectral_names() -> list[str]:
    names = [f"{band}_{stat}" for band in CORE_BANDS for stat in ("mean", "std", *[f"p{q}" for q in PERCENTILES])]
    names += [f"hist_{i}" for i in range(len(HISTOGRAM_EDGES) - 1)]
    names += ["ndvi_mean", "ndvi_std", "ndwi_mean", "ndwi_std"]
    return names


TEXTURE_NAMES = ["edge_energy", "laplacian_energy", "orientation_coherence"]
METADATA_NAMES = [
    *[f"sensor_{s}" for s in SENSOR_SLOTS], "doy_sin", "doy_cos", "sun_elevation", "off_nadir", "cloud_cover", "gsd_m",
    "geo_x", "geo_y", "geo_z",
]
GROUPS = {"spectral": spectral_names(), "texture": TEXTURE_NAMES, "metadata": METADATA_NAMES}
DESCRIPTOR_NAMES = [name for names in GROUPS.values() for name in names]


def core_band_index(bands: list[str]) -> list[int | None]:
    """Band names of a source -> index of each core band in it (None where missing)."""
    return [bands.index(b) if b in bands else None for b in CORE_BANDS]


def pixel_descriptors(values: np.ndarray, gray: np.ndarray, core_index: list[int | None]) -> np.ndarray:
    """values: (B, C, P) float32 sampled pixels in [0, 1], gray: (B, h, w) float32 -> (B, spectral + texture) float32.

    ``values`` holds valid pixels only (a chip with nodata pixels goes through here alone, with B = 1).
    """
    B, _, n = values.shape
    out = np.full((B, len(GROUPS["spectral"]) + len(TEXTURE_NAMES)), np.nan, np.float32)
    present = [i for i in core_index if i is not None]
    core = values if present == list(range(values.shape[1])) else values[:, present]  # (B, k, P)
    ranks = [min(n - 1, round(q / 100 * (n - 1))) for q in PERCENTILES]
    stats = np.empty((B, len(present), 2 + len(PERCENTILES)), np.float32)
    stats[..., 0] = core.mean(axis=2)
    stats[..., 1] = core.std(axis=2)
    stats[..., 2:] = np.sort(core, axis=2)[..., ranks]
    slot = 0
    for position, index in enumerate(core_index):
        if index is not None:
            out[:, position * 5 : position * 5 + 5] = stats[:, slot]
            slot += 1
    base = len(CORE_BANDS) * 5
    brightness = core.mean(axis=1)  # (B, P)
    n_bins = len(HISTOGRAM_EDGES) - 1
    bins = np.minimum(np.searchsorted(HISTOGRAM_EDGES, brightness, side="right") - 1, n_bins - 1)  # values >= 0
    bins += (np.arange(B) * n_bins)[:, None]
    out[:, base : base + n_bins] = np.bincount(bins.ravel(), minlength=B * n_bins).reshape(B, n_bins) / max(n, 1)
    base += n_bins
    _, green, red, nir = (values[:, i] if i is not None else None for i in core_index)
    if nir is not None and red is not None:
        ndvi = (nir - red) / (nir + red + 1e-6)
        out[:, base], out[:, base + 1] = ndvi.mean(axis=1), ndvi.std(axis=1)
    if nir is not None and green is not None:
        ndwi = (green - nir) / (green + nir + 1e-6)
        out[:, base + 2], out[:, base + 3] = ndwi.mean(axis=1), ndwi.std(axis=1)
    base += 4
    out[:, base:] = texture_descriptors(gray)
    return out


def texture_descriptors(gray: np.ndarray) -> np.ndarray:
    """gray: (B, h, w) float32 -> (B, 3): edge energy, Laplacian energy, gradient-orientation coherence (0..1)."""
    if min(gray.shape[1:]) < 3:
        return np.zeros((len(gray), 3), np.float32)
    gx = np.diff(gray, axis=2)[:, :-1, :]
    gy = np.diff(gray, axis=1)[:, :, :-1]
    edge = np.abs(gx).mean(axis=(1, 2)) + np.abs(gy).mean(axis=(1, 2))
    lap = gray[:, 1:-1, 1:-1] * 4 - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2] - gray[:, 1:-1, 2:]
    jxx, jyy, jxy = (gx * gx).mean(axis=(1, 2)), (gy * gy).mean(axis=(1, 2)), (gx * gy).mean(axis=(1, 2))
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-12)
    return np.stack([edge, np.abs(lap).mean(axis=(1, 2)), coherence], axis=1).astype(np.float32)


def metadata_descriptor(meta: AcquisitionMeta, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Scene metadata + chip centres lat, lon: (n,) degrees (NaN unknown) -> (n, len(METADATA_NAMES)) float32."""
    n = len(lat)
    out = np.full((n, len(METADATA_NAMES)), np.nan, np.float32)
    sensors = np.zeros(len(SENSOR_SLOTS), np.float32)
    if meta.sensor is not None:
        sensors[SENSOR_SLOTS.index(meta.sensor) if meta.sensor in SENSOR_SLOTS else -1] = 1.0
    out[:, : len(SENSOR_SLOTS)] = sensors
    base = len(SENSOR_SLOTS)
    if meta.acquired is not None:
        when = dt.datetime.fromisoformat(meta.acquired.replace("Z", "+00:00"))
        angle = 2 * math.pi * (when.timetuple().tm_yday - 1) / 365.25
        out[:, base : base + 2] = math.sin(angle), math.cos(angle)
    out[:, base + 2 : base + 6] = meta.sun_elevation, meta.off_nadir, meta.cloud_cover, meta.gsd_m
    lat_r, lon_r = np.radians(lat), np.radians(lon)
    out[:, base + 6] = np.cos(lat_r) * np.cos(lon_r)
    out[:, base + 7] = np.cos(lat_r) * np.sin(lon_r)
    out[:, base + 8] = np.sin(lat_r)
    return out


def invalid_descriptor_rows(descriptors: np.ndarray) -> np.ndarray:
    """descriptors: (n, D) raw -> (n,) bool: rows that cannot be clustered (an inf anywhere, NaN texture, or no
    spectral value at all). NaN elsewhere means 'this source lacks that band / field' and is allowed."""
    spectral = len(GROUPS["spectral"])
    texture = slice(spectral, spectral + len(TEXTURE_NAMES))
    return (np.isinf(descriptors).any(axis=1) | np.isnan(descriptors[:, texture]).any(axis=1)
            | np.isnan(descriptors[:, :spectral]).all(axis=1))


def standardise(
    descriptors: np.ndarray, weights: dict[str, float] | None = None
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """descriptors: (n, D) raw (NaN = unknown) -> (n, D) float32 z-scores x group weight / sqrt(group size), stats.

    A missing value becomes the column mean (0); a constant column becomes 0. Each group's total variance is
    ``weight²`` so groups of different sizes count as configured.
    """
    weights = {"spectral": 1.0, "texture": 1.0, "metadata": 0.5, **(weights or {})}
    n, d = descriptors.shape
    chunks = [(a, min(a + STANDARDISE_CHUNK, n)) for a in range(0, n, STANDARDISE_CHUNK)]  # float64 per chunk only
    total, known = np.zeros(d), np.zeros(d)
    for a, b in chunks:
        part = descriptors[a:b].astype(np.float64)
        total += np.nansum(part, axis=0)
        known += (~np.isnan(part)).sum(axis=0)
    mean = total / np.maximum(known, 1)  # 0 for a column with no known value
    square = np.zeros(d)
    for a, b in chunks:
        part = descriptors[a:b].astype(np.float64) - mean
        square += np.where(np.isnan(part), 0.0, part * part).sum(axis=0)
    std = np.sqrt(square / n) if n else np.ones(d)
    std = np.where(std > 1e-12, std, np.inf)
    scale = np.concatenate([np.full(len(names), weights[g] / math.sqrt(len(names))) for g, names in GROUPS.items()])
    z = np.empty((n, d), np.float32)
    for a, b in chunks:
        part = descriptors[a:b].astype(np.float64) - mean
        z[a:b] = np.where(np.isnan(part), 0.0, part / std * scale)
    stats = {"names": DESCRIPTOR_NAMES, "mean": mean.tolist(), "std": np.where(np.isinf(std), 0, std).tolist(),
             "scale": scale.tolist()}
    return z, stats
