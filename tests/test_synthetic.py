"""The synthetic archive generator: format, label contract, determinism, skewed content."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from training.synthetic import BANDS, LABEL_CLASSES, MAX_DN, generate_archive

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> list[Path]:
    return generate_archive(tmp_path_factory.mktemp("archive"), n_scenes=3, size=512, seed=7, labels=True)


def test_scene_format(archive):
    assert [p.name for p in archive] == ["scene_000.tif", "scene_001.tif", "scene_002.tif"]
    for path in archive:
        with rasterio.open(path) as src:
            assert src.count == 4 and src.dtypes == ("uint16",) * 4
            assert src.crs.to_epsg() == 3413 and src.nodata == 0
            assert 0.45 <= src.res[0] <= 0.55
            assert src.block_shapes[0] == (256, 256)
            assert src.descriptions == BANDS
            data = src.read()
        assert data.max() <= MAX_DN
        valid = (data > 0).all(axis=0)
        assert ((data == 0).all(axis=0) | valid).all(), "nodata is all bands or none"
    with rasterio.open(archive[1]) as src:
        assert (src.read(1) == 0).mean() > 0.01, "odd scenes have a nodata border"


def test_sidecars_and_catalog(archive):
    imd = archive[0].with_suffix(".IMD").read_text()
    for key in ("satId", "firstLineTime", "meanSunEl", "meanSunAz", "meanOffNadirViewAngle", "cloudCover"):
        assert key in imd
    assert archive[0].with_suffix(".XML").exists() and not archive[1].with_suffix(".XML").exists()
    rows = (archive[0].parent / "catalog.csv").read_text().splitlines()
    assert len(rows) == 1 + len(archive) and rows[0].startswith("path,scene_id,sat_id")


def test_label_contract(archive):
    for path in archive:
        label_path = path.with_name(path.stem + ".labels.tif")
        with rasterio.open(path) as src, rasterio.open(label_path) as lab:
            assert lab.count == 2 and lab.dtypes == ("uint16", "uint16")
            assert lab.transform == src.transform and lab.crs == src.crs and lab.shape == src.shape
            cls, inst = lab.read()
            nodata = (src.read() == 0).all(axis=0)
        assert set(np.unique(cls)) <= set(LABEL_CLASSES)
        assert set(np.unique(cls)) == set(LABEL_CLASSES), "every class in every scene (guarantee mode)"
        assert ((cls == 0) == (inst == 0)).all()
        assert not cls[nodata].any()
        for instance_id in np.unique(inst[inst > 0]):
            assert len(np.unique(cls[inst == instance_id])) == 1, "an instance belongs to one class"
        assert len(np.unique(inst[cls == 1])) > 20, "each ice-wedge polygon is its own instance"


def test_skewed_content(archive):
    foreground = []
    for path in archive:
        with rasterio.open(path.with_name(path.stem + ".labels.tif")) as lab:
            foreground.append((lab.read(1) > 0).mean())
    assert 0.0 < float(np.mean(foreground)) < 0.3, "informative features are a minority of the area"


def test_deterministic_and_seeded(tmp_path):
    def digest(paths):
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]

    first = generate_archive(tmp_path / "a", n_scenes=1, size=256, seed=3, labels=False)
    again = generate_archive(tmp_path / "b", n_scenes=1, size=256, seed=3, labels=False)
    other = generate_archive(tmp_path / "c", n_scenes=1, size=256, seed=4, labels=False)
    with rasterio.open(first[0]) as a, rasterio.open(again[0]) as b, rasterio.open(other[0]) as c:
        assert np.array_equal(a.read(), b.read())
        assert not np.array_equal(a.read(), c.read())
    assert not first[0].with_name("scene_000.labels.tif").exists()


def test_cli(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "training.synthetic", "--out", str(tmp_path), "--scenes", "1", "--size", "256",
         "--seed", "1", "--labels"],
        check=True, cwd=REPO, capture_output=True,
    )
    assert (tmp_path / "scene_000.tif").exists() and (tmp_path / "scene_000.labels.tif").exists()
