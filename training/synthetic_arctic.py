"""The "arctic" profile of the synthetic archive: a skewed, repetitive archive like a real sub-metre Arctic one.

    python -m training.synthetic --profile arctic --out outputs/archive --scenes 12 --size 1024 --labels

Most of a real Maxar/Vantor Arctic archive is low-information or near-duplicate (open water, snow and ice, uniform
tundra, haze and thin cloud, nodata collars around strip footprints); the terrain downstream tasks care about
(ice-wedge polygon fields, trough networks, thaw slumps, infrastructure) is rare. ``ARCTIC_PROFILE`` fixes the share
of each scene type, with its reasoning, in one table; ``profile_markdown()`` renders it for reports.

The shares were fixed from the published statistics and reasoning in the table BEFORE any probe or finetuning score
on this profile existed (``PROFILE_FIXED``); they must not be tuned towards a result afterwards.

How the archive is drawn:
- quotas, not draws: the archive's ``n_scenes x zones`` zones get exactly ``round(share x n)`` zones of each type
  (largest remainder), so frequencies hold for any seed and any size;
- placement follows the acquisition: snow/ice goes preferentially to spring scenes, water to coastal ones,
  infrastructure to developed ones, thaw slumps to hilly ones, nodata collars to the scene border;
- low-information zones are near-duplicates: each type has ``NEAR_DUPLICATE_FAMILIES`` texture families per
  archive; a zone is its family's texture, rotated/flipped, with a small gain jitter (``FAMILY_JITTER``) and fresh
  sensor noise; the rare types are drawn afresh per zone (labelled, as in the balanced profile);
- acquisition variety: sensors WV02/WV03 (and GE01/QB02), spring/summer/autumn, sun elevation from latitude and
  day of year, off-nadir 0-35 degrees (GSD grows with it), in the ``.IMD``/``.XML`` sidecars and the catalog.
Each scene's zone table (``training.synthetic.ZONES_SUFFIX``) records the type and family of every zone;
``training.synthetic.chip_scene_types`` gives a chip's type (the majority of its pixels).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.synthetic import (
    GSD_M,
    SPECTRA,
    SceneMeta,
    ZoneContent,
    _InstanceCounter,
    _smooth_noise,
    _zone_cover,
    write_imd,
    write_scene_raster,
    write_xml,
    write_zone_table,
)

log = logging.getLogger(__name__)
PROFILE_FIXED = "in commit 03ac314, 2026-12-05 00:45 UTC, before any probe or finetuning score on this profile existed"
LOW_INFORMATION = "low_information"
RARE = "rare"


@dataclass(frozen=True)
class SceneType:
    """One row of the profile: share of the archive's zones, group, label class (0 = background), reasoning."""

    share: float
    group: str
    label_class: int
    basis: str


ARCTIC_PROFILE: dict[str, SceneType] = {
    "open_water": SceneType(0.22, LOW_INFORMATION, 0,
                            "lakes and ponds cover roughly 15-40 % of Arctic coastal lowlands (thermokarst-lake "
                            "mapping, e.g. Grosse et al. 2013) and coastal strips add sea"),
    "snow_ice": SceneType(0.14, LOW_INFORMATION, 0,
                          "spring (pre-melt) acquisitions are a sizeable part of the sub-metre archive because "
                          "tasking runs as soon as the sun is high enough; lake and sea ice linger into June"),
    "uniform_tundra": SceneType(0.25, LOW_INFORMATION, 0,
                                "most vegetated tundra at 0.5 m shows no pattern beyond fine texture"),
    "haze_thin_cloud": SceneType(0.10, LOW_INFORMATION, 0,
                                 "Arctic summer cloud fraction is ~70-80 % in satellite climatologies; archives keep "
                                 "low-cloud scenes, so residual haze and thin cloud remain in about a tenth"),
    "nodata_collar": SceneType(0.05, LOW_INFORMATION, 0,
                               "strip footprints are oblique; a rectangular tiling leaves edge tiles partly empty"),
    "low_centre_polygons": SceneType(0.07, RARE, 1,
                                     "ice-wedge polygons underlie much of the continuous-permafrost lowlands "
                                     "(about a billion mapped pan-Arctic by Witharana et al.), but clearly "
                                     "resolved polygon fields fill a minority of any strip; low-centred ones are "
                                     "the common, undegraded form"),
    "high_centre_polygons": SceneType(0.05, RARE, 1,
                                      "high-centred polygons are the degraded form (ice-wedge melt), less frequent "
                                      "than low-centred ones"),
    "trough_network": SceneType(0.05, RARE, 3,
                                "water-filled troughs of degrading ice wedges: regionally common, locally patchy"),
    "thaw_slump": SceneType(0.03, RARE, 2,
                            "retrogressive thaw slumps cover far below 1 % of the landscape and cluster on ice-rich "
                            "slopes; raised to 3 % so that a demo-size archive holds several"),
    "infrastructure": SceneType(0.04, RARE, 4,
                                "roads, pads and settlements cover well below 1 % of the Arctic; tasking over "
                                "towns and oil fields raises their share of an archive; raised to 4 % like slumps"),
}
"""Scene type -> share of the archive's zones (sums to 1), fixed before any score was seen (``PROFILE_FIXED``).
The rare shares are above their true areal share (a demo-size archive must hold several zones of each), so the
archive is about 3:1 low-information to rare rather than the ~100:1 of a real one: curation's advantage here is,
if anything, understated."""

NEAR_DUPLICATE_FAMILIES = 3
"""Texture families per low-information type and archive: zones of one family are near-duplicates."""
FAMILY_JITTER = 0.02
"""Std of a near-duplicate zone's gain jitter around its family (a fraction of DN)."""
SENSOR_SHARES = {"WV02": 0.50, "WV03": 0.30, "GE01": 0.12, "QB02": 0.08}
"""The polar archive is dominated by WorldView-2/3 strips; GeoEye-1 and QuickBird-2 fill the early years."""
SEASONS = {"spring": (0.25, 100, 155), "summer": (0.60, 156, 235), "autumn": (0.15, 236, 270)}
"""Season -> (share of scenes, first and last day of year)."""
PLACEMENT = {
    "snow_ice": {"spring": 8.0, "autumn": 2.0, "summer": 0.3},
    "open_water": {"coastal": 3.0},
    "infrastructure": {"developed": 10.0},
    "thaw_slump": {"hilly": 6.0},
    "trough_network": {"lowland": 2.0},
    "low_centre_polygons": {"lowland": 3.0},
    "high_centre_polygons": {"lowland": 3.0},
}
"""Scene type -> scene trait -> placement weight (1 otherwise): where the quota of a type preferably goes."""
TRAIT_SHARES = {"coastal": 0.4, "developed": 0.25, "hilly": 0.3, "lowland": 0.6}

_RARE_COVERS = {
    "low_centre_polygons": ("ice_wedge_polygons", "low"),
    "high_centre_polygons": ("ice_wedge_polygons", "high"),
    "trough_network": ("trough_network", None),
    "thaw_slump": ("thaw_slump", None),
    "infrastructure": ("infrastructure", None),
}
_FAMILY_SEED = 7919  # salts of the archive-level random streams (families, layout)
_LAYOUT_SEED = 7907


def low_information_types() -> tuple[str, ...]:
    return tuple(name for name, row in ARCTIC_PROFILE.items() if row.group == LOW_INFORMATION)


def rare_types() -> tuple[str, ...]:
    return tuple(name for name, row in ARCTIC_PROFILE.items() if row.group == RARE)


def profile_markdown() -> str:
    """The profile as a Markdown table (share, group, label class, reasoning), for reports and the README."""
    low = sum(row.share for row in ARCTIC_PROFILE.values() if row.group == LOW_INFORMATION)
    lines = [f"Scene-type shares of the `arctic` profile (fixed {PROFILE_FIXED}); low-information or near-duplicate: "
             f"{low:.0%}.", "", "| scene type | share | group | label class | basis |", "|---|---|---|---|---|"]
    for name, row in ARCTIC_PROFILE.items():
        lines.append(f"| {name} | {row.share:.0%} | {row.group} | {row.label_class} | {row.basis} |")
    return "\n".join(lines)


def zone_quotas(n_zones: int) -> dict[str, int]:
    """Exact zone counts per type for an archive of ``n_zones`` zones (largest-remainder rounding of the shares)."""
    raw = {name: row.share * n_zones for name, row in ARCTIC_PROFILE.items()}
    counts = {name: int(np.floor(v)) for name, v in raw.items()}
    by_remainder = sorted(raw, key=lambda name: (-(raw[name] - counts[name]), list(raw).index(name)))
    for name in by_remainder[: n_zones - sum(counts.values())]:
        counts[name] += 1
    return counts


@dataclass(frozen=True)
class ArcticScene:
    meta: SceneMeta
    season: str
    traits: frozenset[str]


def draw_scene(index: int, rng: np.random.Generator) -> ArcticScene:
    """Acquisition of scene ``index``: sensor, season, sun elevation from latitude and day of year, off-nadir."""
    sat_id = str(rng.choice(list(SENSOR_SHARES), p=list(SENSOR_SHARES.values())))
    season = str(rng.choice(list(SEASONS), p=[s[0] for s in SEASONS.values()]))
    _, first_day, last_day = SEASONS[season]
    doy = int(rng.integers(first_day, last_day + 1))
    year = int(rng.integers(2009, 2025))
    when = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=doy - 1,
                                                                           hours=float(rng.uniform(19, 23.5)))
    lat = float(rng.uniform(64.0, 76.0))
    lon = float(rng.uniform(-170.0, -60.0))
    declination = 23.44 * np.sin(2 * np.pi * (doy - 81) / 365.0)
    sun_el = float(np.clip(90.0 - lat + declination - rng.uniform(0, 15), 5.0, 55.0))
    off_nadir = float(min(35.0, abs(rng.normal(0.0, 14.0))))
    traits = frozenset(t for t, share in TRAIT_SHARES.items() if rng.random() < share)
    meta = SceneMeta(
        scene_id=f"scene_{index:03d}",
        sat_id=sat_id,
        cat_id=f"10{rng.integers(1, 5)}00100{rng.integers(0, 16**8):08X}",
        first_line_time=when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        mean_sun_el=round(sun_el, 1),
        mean_sun_az=round(float(rng.uniform(140, 220)), 1),
        mean_off_nadir=round(off_nadir, 1),
        cloud_cover=0.0,  # filled in from the placed zones
        gsd_m=round(GSD_M / np.cos(np.radians(off_nadir)) ** 1.5, 3),  # ground sampling coarsens off nadir
        lat=round(lat, 5),
        lon=round(lon, 5),
    )
    return ArcticScene(meta, season, traits)


def _placement_weight(zone_type: str, scene: ArcticScene, on_border: bool) -> float:
    if zone_type == "nodata_collar":
        return 1.0 if on_border else 1e-3
    weights = PLACEMENT.get(zone_type, {})
    return float(np.prod([weights.get(scene.season, 1.0), *(weights.get(t, 1.0) for t in scene.traits)]))


def plan_layout(scenes: list[ArcticScene], n_side: int, rng: np.random.Generator) -> list[list[str]]:
    """The type of every zone of every scene: exact quotas, placed by weighted draws without replacement."""
    n_zones = n_side * n_side
    slots = [(s, z) for s in range(len(scenes)) for z in range(n_zones)]
    border = np.array([z // n_side in (0, n_side - 1) or z % n_side in (0, n_side - 1) for _, z in slots])
    pending = [t for t, count in zone_quotas(len(slots)).items() for _ in range(count)]
    order = ["nodata_collar"] + [t for t in ARCTIC_PROFILE if t != "nodata_collar"]  # collars take the border first
    pending.sort(key=order.index)
    weights = {t: np.array([_placement_weight(t, scenes[s], bool(b)) for (s, _), b in zip(slots, border)])
               for t in ARCTIC_PROFILE}
    free = np.ones(len(slots), bool)
    layout = [[""] * n_zones for _ in scenes]
    for zone_type in pending:
        w = weights[zone_type] * free
        pick = int(rng.choice(len(slots), p=w / w.sum()))
        free[pick] = False
        s, z = slots[pick]
        layout[s][z] = zone_type
    return layout


def _family_textures(seed: int, zone_size: int) -> dict[str, list[dict]]:
    """Archive-level texture families of the low-information types (zones of a family are near-duplicates)."""
    families: dict[str, list[dict]] = {}
    for t_index, zone_type in enumerate(low_information_types()):
        families[zone_type] = []
        for k in range(NEAR_DUPLICATE_FAMILIES):
            rng = np.random.default_rng([seed, _FAMILY_SEED, t_index, k])
            families[zone_type].append({
                "texture": _smooth_noise(rng, (zone_size, zone_size), sigma=float(rng.uniform(4.0, 9.0))),
                "density": _smooth_noise(rng, (zone_size, zone_size), sigma=24.0),
                "scale": (rng.uniform(0.88, 1.12) * rng.uniform(0.98, 1.02, size=4)).astype(np.float32),
            })
    return families


def _spectrum(name: str) -> np.ndarray:
    return np.array(SPECTRA[name], np.float32)[:, None, None]


def _low_information_zone(zone_type: str, family: dict, zone_size: int, rng: np.random.Generator,
                          border_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A near-duplicate of ``family`` -> (image (4, S, S) float32 DN before illumination, nodata (S, S) or None)."""
    turn = int(rng.integers(0, 4))
    texture = np.rot90(family["texture"], turn)
    texture = texture[:, ::-1] if rng.random() < 0.5 else texture
    gain = family["scale"][:, None, None] * np.float32(1.0 + FAMILY_JITTER * rng.standard_normal())
    nodata = None
    if zone_type == "open_water":
        image = _spectrum("water") * (1.0 + 0.04 * texture)
    elif zone_type == "snow_ice":
        image = _spectrum("snow") * (1.0 + 0.03 * texture)
    elif zone_type == "uniform_tundra":
        image = _spectrum("tundra") * (1.0 + 0.08 * texture)
    elif zone_type == "haze_thin_cloud":
        density = np.clip(0.25 + 0.12 * np.rot90(family["density"], turn), 0.05, 0.5)
        image = _spectrum("tundra") * (1.0 + 0.08 * texture) * (1 - density) + _spectrum("cloud") * density
    elif zone_type == "nodata_collar":  # the strip edge: a straight line leaving 55-95 % of the zone empty
        image = _spectrum("tundra") * (1.0 + 0.08 * texture)
        rows, cols = np.mgrid[0:zone_size, 0:zone_size].astype(np.float32) / zone_size
        inward = [cols, rows, 1 - cols, 1 - rows][border_side]  # 0 at the scene edge the zone faces
        across = [rows, cols, rows, cols][border_side]
        nodata = inward + rng.uniform(-0.15, 0.15) * (across - 0.5) < rng.uniform(0.55, 0.95)
    else:
        raise ValueError(f"not a low-information scene type: {zone_type!r}")
    return (image * gain).astype(np.float32), nodata


def _border_side(zone: int, n_side: int) -> int:
    """Which scene edge a zone faces (0 left, 1 top, 2 right, 3 bottom; the nearest for interior zones)."""
    row, col = divmod(zone, n_side)
    distances = [col, row, n_side - 1 - col, n_side - 1 - row]
    return int(np.argmin(distances))


def generate_arctic_scenes(out: Path, n_scenes: int, size: int, seed: int, *, labels: bool = True,
                           zone_size: int = 256) -> tuple[list[Path], list[dict]]:
    """Write the arctic-profile archive's scenes into ``out`` -> (scene paths, catalog rows)."""
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    n_side = -(-size // zone_size)
    scenes = [draw_scene(i, np.random.default_rng([seed, i])) for i in range(n_scenes)]
    layout = plan_layout(scenes, n_side, np.random.default_rng([seed, _LAYOUT_SEED]))
    families = _family_textures(seed, zone_size)
    paths, rows = [], []
    for index, (scene, types) in enumerate(zip(scenes, layout)):
        rng = np.random.default_rng([seed, index, 1])
        cloud = sum(t == "haze_thin_cloud" for t in types) / len(types)
        meta = SceneMeta(**{**asdict(scene.meta), "cloud_cover": round(cloud, 3)})
        family_of = [int(rng.integers(NEAR_DUPLICATE_FAMILIES)) if t in families else None for t in types]
        counter = _InstanceCounter()

        def zone_content(zone: int, types=types, family_of=family_of, rng=rng, counter=counter) -> ZoneContent:
            zone_type = types[zone]
            if zone_type in families:
                image, nodata = _low_information_zone(zone_type, families[zone_type][family_of[zone]], zone_size,
                                                      rng, _border_side(zone, n_side))
                empty = np.zeros((zone_size, zone_size), np.uint16)
                return image, empty, empty.copy(), nodata
            cover, centre = _RARE_COVERS[zone_type]
            return (*_zone_cover(cover, zone_size, rng, counter, centre=centre), None)

        path = out / f"scene_{index:03d}.tif"
        write_scene_raster(path, meta, size, zone_size, zone_content, rng, noise_sigma=float(rng.uniform(8, 16)),
                           wedge=None, labels=labels)
        write_zone_table(path, size, zone_size, types, profile="arctic", families=family_of)
        write_imd(path.with_suffix(".IMD"), meta)
        if index % 2 == 0:
            write_xml(path.with_suffix(".XML"), meta)
        paths.append(path)
        rows.append({**asdict(meta), "season": scene.season, "traits": ";".join(sorted(scene.traits)),
                     "profile": "arctic"})
        log.info("arctic scene %d/%d written: %s (%s)", index + 1, n_scenes, path.name, scene.season)
    return paths, rows
