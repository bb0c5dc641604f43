"""Sidecar and catalog metadata: parsed fields, and recorded issues for missing or garbled input."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from training.curate.metadata import (
    MAXAR_BAND_GROUPS,
    catalog_row_for,
    load_catalog,
    parse_imd_calibration,
    read_acquisition,
)
from training.synthetic import generate_archive


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return generate_archive(tmp_path_factory.mktemp("meta"), n_scenes=2, size=256, seed=5, labels=False)


def test_imd_and_xml_fields(scenes):
    catalog = pd.read_csv(scenes[0].parent / "catalog.csv")
    for path in scenes:
        meta = read_acquisition(path)
        expected = catalog[catalog.path == path.name].iloc[0]
        assert meta.sensor == expected.sat_id
        assert meta.acquired.startswith(expected.first_line_time[:19]) and meta.acquired.endswith("Z")
        assert meta.sun_elevation == pytest.approx(expected.mean_sun_el)
        assert meta.off_nadir == pytest.approx(expected.mean_off_nadir)
        assert meta.cloud_cover == pytest.approx(expected.cloud_cover)
        assert meta.issues == []
    path = scenes[0]  # scene 0 has both; the XML alone gives the same fields
    path.with_suffix(".IMD").rename(path.with_suffix(".imd.bak"))
    try:
        assert read_acquisition(path).sensor == catalog.sat_id[0]
    finally:
        path.with_suffix(".imd.bak").rename(path.with_suffix(".IMD"))


def test_garbled_and_missing_metadata_are_recorded(tmp_path):
    scene = tmp_path / "x.tif"
    assert read_acquisition(scene).issues == ["no_metadata"]
    scene.with_suffix(".IMD").write_bytes(b"\x00\xff garbage \x89PNG\r\n")
    meta = read_acquisition(scene)
    assert "imd_no_fields" in meta.issues and "missing:sensor" in meta.issues
    scene.with_suffix(".IMD").write_text('satId = "WV02";\nmeanSunEl = high;\ncloudCover = 35;\nfirstLineTime = bad;\n')
    meta = read_acquisition(scene)
    assert meta.sensor == "WV02" and math.isnan(meta.sun_elevation)
    assert {"imd_unparsable:sun_elevation", "imd_unparsable:acquired"} <= set(meta.issues)
    # IMD cloudCover is documented as a fraction 0-1: 35 is out of range, recorded, never rescaled by a guess
    assert math.isnan(meta.cloud_cover) and "imd_out_of_range:cloud_cover" in meta.issues
    scene.with_suffix(".XML").write_text("<isd><IMD><IMAGE><MEANSUNEL>33.5</MEANSUNEL>")  # truncated XML
    meta = read_acquisition(scene)
    assert any(issue.startswith("xml_unreadable") for issue in meta.issues)


def test_catalog_fills_missing_fields(tmp_path):
    table = tmp_path / "catalog.parquet"
    pd.DataFrame({"scene_id": ["x"], "sensor": ["GE01"], "acquired": ["2020-07-01T12:00:00"],
                  "sun_elevation": [40.0], "off_nadir": [10.0], "lat": [70.0], "lon": [-150.0]}).to_parquet(table)
    catalog = load_catalog(table)
    scene = tmp_path / "x.tif"
    scene.with_suffix(".IMD").write_text('satId = "WV03";\n')
    meta = read_acquisition(scene, catalog_row_for(catalog, scene))
    assert meta.sensor == "WV03", "the sidecar wins over the catalog"
    assert meta.sun_elevation == 40.0 and meta.acquired == "2020-07-01T12:00:00Z" and meta.lat == 70.0
    with pytest.raises(ValueError, match="scene_id"):
        pd.DataFrame({"name": ["x"]}).to_csv(tmp_path / "bad.csv")
        load_catalog(tmp_path / "bad.csv")


def test_cloud_cover_unit_follows_the_field_not_the_value(tmp_path):
    scene = tmp_path / "x.tif"
    scene.with_suffix(".IMD").write_text('satId = "WV02";\ncloudCover = 0.5;\n')
    assert read_acquisition(scene).cloud_cover == 0.5, "an IMD fraction stays a fraction"
    scene.with_suffix(".IMD").unlink()
    # a percent column below 1 (0.8 %) is still percent: 0.008, not 0.8
    assert read_acquisition(scene, {"cloud_cover_pct": 0.8}).cloud_cover == pytest.approx(0.008)
    assert read_acquisition(scene, {"eo:cloud_cover": 35}).cloud_cover == pytest.approx(0.35)
    assert read_acquisition(scene, {"cloud_cover": 0.8}).cloud_cover == pytest.approx(0.8)
    meta = read_acquisition(scene, {"cloud_cover": 35})
    assert math.isnan(meta.cloud_cover) and "catalog_out_of_range:cloud_cover" in meta.issues


def test_maxar_tiled_delivery_shares_one_imd(tmp_path):
    product = "17JUL01205545-M1BS-058186584010_01_P001"
    (tmp_path / f"{product}.IMD").write_text('satId = "WV03";\nmeanSunEl = 41.5;\ncloudCover = 0.02;\n')
    for tile in ("R1C1", "R2C3"):
        meta = read_acquisition(tmp_path / f"{product}_{tile}.TIF")
        assert meta.sensor == "WV03" and meta.sun_elevation == 41.5 and meta.cloud_cover == 0.02
        assert "no_metadata" not in meta.issues
    own = tmp_path / f"{product}_R1C1.IMD"  # a tile's own sidecar wins over the product's
    own.write_text('satId = "GE01";\n')
    assert read_acquisition(tmp_path / f"{product}_R1C1.TIF").sensor == "GE01"


def test_imd_band_groups_map_to_canonical_names():
    from arctic_vit.bands import CANONICAL_BANDS  # metadata.py spells them out (no torch on Dask workers)

    assert sorted(MAXAR_BAND_GROUPS.values()) == sorted(CANONICAL_BANDS)


def test_imd_calibration_records_what_it_cannot_use(tmp_path):
    imd = tmp_path / "x.IMD"
    imd.write_text(
        "BEGIN_GROUP = BAND_P\n absCalFactor = 5.678345e-02;\n effectiveBandwidth = 2.846000e-01;\nEND_GROUP = BAND_P\n"
        "BEGIN_GROUP = BAND_B\n absCalFactor = 1.26e-02;\nEND_GROUP = BAND_B\n"  # no effectiveBandwidth
        "BEGIN_GROUP = BAND_G\n absCalFactor = -1;\n effectiveBandwidth = 0.063;\nEND_GROUP = BAND_G\n"
        "BEGIN_GROUP = BAND_R\n absCalFactor = n/a;\n effectiveBandwidth = 0.0574;\nEND_GROUP = BAND_R\n"
        "BEGIN_GROUP = BAND_N\n absCalFactor = 9.042234e-03;\n effectiveBandwidth = 9.890000e-02;\nEND_GROUP = BAND_N\n"
        'BEGIN_GROUP = IMAGE_1\n satId = "QB02";\n meanSunEl = 12.5;\nEND_GROUP = IMAGE_1\n'
    )
    cal = parse_imd_calibration(imd)
    assert cal.sensor == "QB02" and cal.sun_elevation == 12.5 and cal.acquired is None
    assert list(cal.bands) == ["nir"] and cal.bands["nir"].effective_bandwidth == pytest.approx(0.0989)
    assert cal.pan is not None and cal.pan.abs_cal_factor == pytest.approx(0.05678345)
    assert set(cal.issues) == {"missing:acquired", "imd_uncalibrated:blue", "imd_uncalibrated:green",
                               "imd_uncalibrated:red"}
    with pytest.raises(FileNotFoundError, match=r"y\.IMD"):
        parse_imd_calibration(tmp_path / "y.IMD")
