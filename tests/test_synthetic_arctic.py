"""The arctic profile of the synthetic archive: fixed frequencies, near-duplicates, labels only for rare types,
scene types per chip, determinism; and the balanced profile left unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from training.synthetic import chip_scene_types, generate_archive, zone_table_path
from training.synthetic_arctic import (
    ARCTIC_PROFILE,
    LOW_INFORMATION,
    profile_markdown,
    zone_quotas,
)

REPO = Path(__file__).resolve().parents[1]
ZONE = 128
SIZE = 512  # 4 x 4 zones per scene
N_SCENES = 8


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> list[Path]:
    return generate_archive(tmp_path_factory.mktemp("arctic"), n_scenes=N_SCENES, size=SIZE, seed=11, labels=True,
                            zone_size=ZONE, profile="arctic")


def _tables(paths: list[Path]) -> list[dict]:
    return [json.loads(zone_table_path(p).read_text()) for p in paths]


def _zone(array: np.ndarray, zone: int, n_side: int = SIZE // ZONE) -> np.ndarray:
    row, col = divmod(zone, n_side)
    return array[..., row * ZONE : (row + 1) * ZONE, col * ZONE : (col + 1) * ZONE]


def test_profile_is_a_distribution_with_a_low_information_majority():
    assert sum(row.share for row in ARCTIC_PROFILE.values()) == pytest.approx(1.0)
    low = sum(row.share for row in ARCTIC_PROFILE.values() if row.group == LOW_INFORMATION)
    assert low >= 0.70
    assert all(row.label_class == 0 for row in ARCTIC_PROFILE.values() if row.group == LOW_INFORMATION)
    assert all(row.label_class > 0 for row in ARCTIC_PROFILE.values() if row.group != LOW_INFORMATION)
    table = profile_markdown()
    assert all(f"| {name} | {row.share:.0%} |" in table for name, row in ARCTIC_PROFILE.items())


@pytest.mark.parametrize("n_zones", [1, 7, 64, 1000])
def test_quotas_are_exact_and_within_one_zone_of_the_shares(n_zones):
    quotas = zone_quotas(n_zones)
    assert sum(quotas.values()) == n_zones
    for name, count in quotas.items():
        assert abs(count - ARCTIC_PROFILE[name].share * n_zones) < 1.0


def test_archive_frequencies_match_the_profile(archive):
    types = [t for table in _tables(archive) for t in table["types"]]
    n = len(types)
    assert n == N_SCENES * (SIZE // ZONE) ** 2
    for name, row in ARCTIC_PROFILE.items():
        assert abs(types.count(name) / n - row.share) <= 1.0 / n + 1e-9, name
    low = sum(ARCTIC_PROFILE[t].group == LOW_INFORMATION for t in types) / n
    assert low >= 0.70


def test_labels_only_for_rare_types_and_collars_are_nodata(archive):
    for path, table in zip(archive, _tables(archive)):
        with rasterio.open(path) as src, rasterio.open(path.with_name(path.stem + ".labels.tif")) as lab:
            nodata = (src.read() == 0).all(axis=0)
            cls = lab.read(1)
        for zone, zone_type in enumerate(table["types"]):
            classes = set(np.unique(_zone(cls, zone)).tolist())
            expected = ARCTIC_PROFILE[zone_type].label_class
            if expected == 0:
                assert classes == {0}, (path.name, zone, zone_type)
            else:
                assert expected in classes and classes <= {0, expected}, (path.name, zone, zone_type)
            empty = _zone(nodata, zone).mean()
            if zone_type == "nodata_collar":
                assert 0.4 < empty < 1.0, (path.name, zone, empty)
            else:
                assert empty == 0.0, (path.name, zone, zone_type)


def test_near_duplicates_share_their_family_texture(archive):
    """Zones of one family are the same texture up to a dihedral transform, gain jitter and noise: their best
    correlation over the 8 transforms is high; zones of different families are unrelated."""

    def best_correlation(a: np.ndarray, b: np.ndarray) -> float:
        a = (a - a.mean()) / a.std()
        variants = [np.rot90(b, k) for k in range(4)]
        variants += [v[:, ::-1] for v in variants]
        return max(float(np.mean(a * (v - v.mean()) / v.std())) for v in variants)

    same, different = [], []
    for path, table in zip(archive, _tables(archive)):
        with rasterio.open(path) as src:
            nir = src.read(4).astype(np.float64)
        zones = [(z, f) for z, (t, f) in enumerate(zip(table["types"], table["families"])) if t == "uniform_tundra"]
        for i, (za, fa) in enumerate(zones):
            for zb, fb in zones[i + 1 :]:
                (same if fa == fb else different).append(best_correlation(_zone(nir, za), _zone(nir, zb)))
    assert len(same) >= 3 and len(different) >= 3
    assert min(same) > 0.5, same
    assert max(different) < 0.3, different


def test_acquisition_variety_in_sidecars_and_catalog(archive):
    rows = list(csv.DictReader((archive[0].parent / "catalog.csv").open()))
    assert len(rows) == N_SCENES
    assert {r["sat_id"] for r in rows} <= {"WV02", "WV03", "GE01", "QB02"} and len({r["sat_id"] for r in rows}) >= 2
    assert len({r["season"] for r in rows}) >= 2
    sun = [float(r["mean_sun_el"]) for r in rows]
    off_nadir = [float(r["mean_off_nadir"]) for r in rows]
    assert max(sun) - min(sun) > 5 and max(off_nadir) - min(off_nadir) > 5
    for path, row in zip(archive, rows):
        imd = path.with_suffix(".IMD").read_text()
        assert f'satId = "{row["sat_id"]}"' in imd and f"meanSunEl = {float(row['mean_sun_el']):.1f};" in imd
        haze = _tables([path])[0]["types"].count("haze_thin_cloud") / (SIZE // ZONE) ** 2
        assert float(row["cloud_cover"]) == pytest.approx(haze, abs=1e-3)


def test_chip_scene_types_is_the_majority_zone(archive):
    table = _tables(archive)[0]
    types = table["types"]
    inside = [Window(col, row, 64, 64) for row in (0, 200) for col in (0, 300)]
    expected = [types[(row // ZONE) * 4 + col // ZONE] for row in (0, 200) for col in (0, 300)]
    assert chip_scene_types(archive[0], inside) == expected
    # a chip over zones 0 (3/4 of its pixels) and 1 (1/4): zone 0 wins; shifted to 1/4 + 3/4: zone 1 wins
    assert chip_scene_types(archive[0], [(0, ZONE - 96, 64, 128)]) == [types[0]]
    assert chip_scene_types(archive[0], [(0, ZONE - 32, 64, 128)]) == [types[1]]
    with pytest.raises(ValueError, match="outside"):
        chip_scene_types(archive[0], [(SIZE, 0, 64, 64)])


def test_arctic_archive_is_deterministic_for_a_seed(tmp_path):
    def content(paths: list[Path]) -> str:
        digest = hashlib.sha256()
        for p in paths:
            with rasterio.open(p) as src:
                digest.update(src.read().tobytes())
            digest.update(zone_table_path(p).read_bytes())
        return digest.hexdigest()

    kwargs = dict(n_scenes=2, size=256, labels=False, zone_size=ZONE, profile="arctic")
    first = content(generate_archive(tmp_path / "a", seed=3, **kwargs))
    assert content(generate_archive(tmp_path / "b", seed=3, **kwargs)) == first
    assert content(generate_archive(tmp_path / "c", seed=4, **kwargs)) != first


def test_balanced_profile_is_unchanged(tmp_path):
    """Pixel, label, sidecar and catalog content of a balanced archive, digest recorded with the generator as it was
    before profiles existed (commit 142307a): the default profile must not move."""
    paths = generate_archive(tmp_path, n_scenes=2, size=384, seed=5, labels=True, zone_size=128)
    digest = hashlib.sha256()
    for p in paths:
        for f in (p, p.with_name(p.stem + ".labels.tif")):
            with rasterio.open(f) as src:
                digest.update(np.ascontiguousarray(src.read()).tobytes())
        digest.update(p.with_suffix(".IMD").read_bytes())
    digest.update((tmp_path / "catalog.csv").read_bytes())
    assert digest.hexdigest() == "5bfed337ee87f49e0a886bb0378a5ac8df32bfd0bd5dca7f5c8068228a196b4b"
    assert json.loads(zone_table_path(paths[0]).read_text())["profile"] == "balanced"


def test_unknown_profile_is_refused(tmp_path):
    with pytest.raises(ValueError, match="profile must be one of"):
        generate_archive(tmp_path, n_scenes=1, size=256, profile="tropical")


def test_cli_profile(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training.synthetic", "--out", str(tmp_path), "--scenes", "1", "--size", "256",
         "--zone-size", "128", "--seed", "1", "--labels", "--profile", "arctic"],
        check=True, cwd=REPO, capture_output=True, text=True,
    )
    assert "arctic profile" in result.stdout
    assert json.loads(zone_table_path(tmp_path / "scene_000.tif").read_text())["profile"] == "arctic"
