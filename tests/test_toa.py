"""DN -> top-of-atmosphere reflectance from Maxar ``.IMD`` calibration, and native Prithvi fed with it."""

from __future__ import annotations

import datetime as dt
import math

import pytest
import torch

from arctic_vit.bands import CANONICAL_BANDS
from evaluation.backbones import build_backbone
from evaluation.datasets.card import card_from_dict
from evaluation.prithvi import PRITHVI_MEAN, PRITHVI_STD, REFLECTANCE_SCALE, random_prithvi_checkpoint
from evaluation.toa import card_toa, earth_sun_distance, julian_date, toa_coefficients, toa_for_image
from training.curate.metadata import parse_imd_calibration

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A WorldView-2 4-band (Multi) IMD, laid out as delivered (values plausible, not from a real product)
WV02_IMD = """version = "28.3";
generationTime = 2016-07-16T03:12:09.000000Z;
productOrderId = "000000000010_01_P001";
bandId = "Multi";
BEGIN_GROUP = BAND_B
\tULLon = -150.01;
\tabsCalFactor = 1.260825e-02;
\teffectiveBandwidth = 5.430000e-02;
END_GROUP = BAND_B
BEGIN_GROUP = BAND_G
\tabsCalFactor = 9.713071e-03;
\teffectiveBandwidth = 6.300000e-02;
END_GROUP = BAND_G
BEGIN_GROUP = BAND_R
\tabsCalFactor = 1.103623e-02;
\teffectiveBandwidth = 5.740000e-02;
END_GROUP = BAND_R
BEGIN_GROUP = BAND_N
\tabsCalFactor = 9.042234e-03;
\teffectiveBandwidth = 9.890000e-02;
END_GROUP = BAND_N
BEGIN_GROUP = IMAGE_1
\tsatId = "WV02";
\tCatId = "1030010057A2B100";
\tfirstLineTime = 2016-07-15T21:39:55.000000Z;
\tmeanSunAz = 170.5;
\tmeanSunEl = 40.0;
\tmeanOffNadirViewAngle = 12.3;
\tcloudCover = 0.010;
END_GROUP = IMAGE_1
END;
"""
WV02_ESUN = {"blue": 2007.27, "green": 1829.62, "red": 1538.85, "nir": 1053.21}  # Thuillier 2003, Maxar's table
WV02_CAL = {"blue": (1.260825e-02, 5.43e-02), "green": (9.713071e-03, 6.3e-02), "red": (1.103623e-02, 5.74e-02),
            "nir": (9.042234e-03, 9.89e-02)}


def _write(path, text=WV02_IMD):
    path.write_text(text)
    return path


def test_red_reflectance_by_hand(tmp_path):
    toa = toa_coefficients(_write(tmp_path / "scene.IMD"), ("red",))
    # radiance: L = DN * absCalFactor / effectiveBandwidth = 500 * 0.01103623 / 0.0574 = 96.13441 W m-2 sr-1 um-1
    radiance = 500 * 0.01103623 / 0.0574
    assert radiance == pytest.approx(96.13441, rel=1e-6)
    # 2016-07-15T21:39:55Z: JD = 2451545 (2000-01-01 12:00) + 6040 days + 9h39m55s = 2457585.40272
    assert julian_date(dt.datetime(2016, 7, 15, 21, 39, 55)) == pytest.approx(2457585.40272, abs=1e-5)
    # g = 357.529 + 0.98560028 * 6040.40272 = 6310.9516 deg (= 190.9516 mod 360);
    # d = 1.00014 - 0.01671 cos g - 0.00014 cos 2g = 1.00014 + 0.016406 - 0.000130 = 1.016416 AU
    g = math.radians(190.9516)
    d = 1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)
    assert d == pytest.approx(1.016416, abs=2e-6) and toa.earth_sun_distance == pytest.approx(d, abs=1e-6)
    # rho = L d^2 pi / (Esun cos(90 - 40 deg)) = 96.13441 * 1.033101 * 3.141593 / (1538.85 * 0.642788) = 0.315433
    expected = radiance * d**2 * math.pi / (1538.85 * math.cos(math.radians(50.0)))
    assert expected == pytest.approx(0.315433, rel=1e-5)
    assert 500 * toa.scale[0] + toa.offset[0] == pytest.approx(expected, rel=1e-6)
    assert toa.offset == (0.0,) and toa.sensor == "WV02" and "scene.IMD" in toa.describe()


def test_gain_offset_enter_the_radiance(tmp_path):
    plain = toa_coefficients(_write(tmp_path / "scene.IMD"), ("red",))
    corrected = toa_coefficients(tmp_path / "scene.IMD", ("red",), {"red": (0.952, -2.5)})
    assert corrected.scale[0] == pytest.approx(0.952 * plain.scale[0])
    # offset in radiance units times the same radiance -> reflectance factor
    assert corrected.offset[0] == pytest.approx(-2.5 * plain.scale[0] * 0.0574 / 0.01103623)
    with pytest.raises(ValueError, match="blue"):
        toa_coefficients(tmp_path / "scene.IMD", ("red",), {"blue": (1.0, 0.0)})


@pytest.mark.parametrize(("when", "expected"), [("2026-01-03T12:00:00Z", 0.9833), ("2026-07-06T12:00:00Z", 1.0167)])
def test_earth_sun_distance_at_perihelion_and_aphelion(when, expected):
    assert earth_sun_distance(when) == pytest.approx(expected, abs=1e-3)


def test_imd_without_calibration_is_an_error_naming_the_file(tmp_path):
    text = "\n".join(line for line in WV02_IMD.splitlines() if "absCalFactor" not in line)
    imd = _write(tmp_path / "nocal.IMD", text)
    assert parse_imd_calibration(imd).bands == {}
    with pytest.raises(ValueError, match=r"nocal\.IMD.*no radiometric calibration"):
        toa_coefficients(imd, ("blue", "green", "red", "nir"))
    scene = tmp_path / "chip.tif"
    with pytest.raises(ValueError, match=r"chip\.tif: no \.IMD sidecar"):
        toa_for_image(scene, ("red",))
    _write(tmp_path / "chip.IMD")
    assert toa_for_image(scene, ("red",)).source.name == "chip.IMD"


def test_unknown_sensor_and_dark_sun_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"x\.IMD.*no published Esun table for sensor 'WV01'"):
        toa_coefficients(_write(tmp_path / "x.IMD", WV02_IMD.replace('"WV02"', '"WV01"')), ("red",))
    with pytest.raises(ValueError, match=r"y\.IMD.*meanSunEl"):
        toa_coefficients(_write(tmp_path / "y.IMD", WV02_IMD.replace("meanSunEl = 40.0", "meanSunEl = -3.0")),
                         ("red",))
    with pytest.raises(ValueError, match="GE01 has no Esun for band"):
        toa_coefficients(_write(tmp_path / "z.IMD", EIGHT_BAND.replace('"WV03"', '"GE01"')), ("coastal",))


EIGHT_BAND = "".join(
    f"BEGIN_GROUP = {group}\n\tabsCalFactor = {0.001 * (i + 1):e};\n\teffectiveBandwidth = 0.05;\nEND_GROUP = {group}\n"
    for i, group in enumerate(("BAND_C", "BAND_B", "BAND_G", "BAND_Y", "BAND_R", "BAND_RE", "BAND_N", "BAND_N2",
                               "BAND_S1"))
) + 'BEGIN_GROUP = IMAGE_1\n\tsatId = "WV03";\n\tmeanSunEl = 30.0;\nEND_GROUP = IMAGE_1\n' \
    "BEGIN_GROUP = MAP_PROJECTED_PRODUCT\n\tearliestAcqTime = 2019-03-01T10:00:00.000000Z;\n" \
    "END_GROUP = MAP_PROJECTED_PRODUCT\n"


def test_eight_band_imd_maps_to_canonical_names(tmp_path):
    cal = parse_imd_calibration(_write(tmp_path / "wv3.IMD", EIGHT_BAND))
    assert tuple(cal.bands) == CANONICAL_BANDS  # WorldView-3 order, canonical names
    assert cal.bands["rededge"].abs_cal_factor == pytest.approx(0.006)  # BAND_RE is the 6th group
    assert cal.bands["nir2"].abs_cal_factor == pytest.approx(0.008)
    assert cal.acquired == "2019-03-01T10:00:00Z", "earliestAcqTime when firstLineTime is absent"
    assert cal.issues == ["imd_unmapped_band:BAND_S1"]  # SWIR is not a canonical band: recorded, not mapped
    toa = toa_coefficients(cal, CANONICAL_BANDS)
    assert len(set(toa.scale)) == 8


def _prithvi_card(root, **options):
    return card_from_dict({"name": "scene", "format": "raster_pairs", "root": str(root), "bit_depth": 11,
                           "classes": ["background", "a"], "bands": ["coastal", "blue", "green", "red", "nir"],
                           "options": options})


@pytest.fixture(scope="module")
def prithvi_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("prithvi") / "Prithvi_EO_V2_300M.pt"
    torch.save(random_prithvi_checkpoint(embed_dim=64, depth=2, img_size=224, decoder_depth=1,
                                         decoder_embed_dim=32), path)
    return str(path)


def test_card_with_toa_from_feeds_prithvi_per_band_reflectance(tmp_path, prithvi_weights):
    _write(tmp_path / "scene.IMD")
    backbone = build_backbone("prithvi_eo2_300m", _prithvi_card(tmp_path, toa_from="imd"), 32,
                              weights=prithvi_weights, prithvi_num_heads=4)
    assert backbone.input_bands == ("blue", "green", "red", "nir")
    assert "TOA reflectance from scene.IMD" in backbone.normalization and "Thuillier 2003" in backbone.normalization
    assert backbone.notes and backbone.notes[0].startswith("reflectance per band: blue: DN*")
    dn = torch.full((1, 5, 32, 32), 500.0)
    got = backbone.prepare(dn)[0, :, 0, 0]
    d = earth_sun_distance("2016-07-15T21:39:55Z")
    cos_zenith = math.cos(math.radians(90.0 - 40.0))
    expected = []
    for i, band in enumerate(("blue", "green", "red", "nir")):
        factor, width = WV02_CAL[band]
        reflectance = 500 * factor / width * d**2 * math.pi / (WV02_ESUN[band] * cos_zenith)
        expected.append((reflectance - PRITHVI_MEAN[i] / REFLECTANCE_SCALE) / (PRITHVI_STD[i] / REFLECTANCE_SCALE))
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    scalar = build_backbone("prithvi_eo2_300m", _prithvi_card(tmp_path), 32, weights=prithvi_weights,
                            prithvi_num_heads=4)
    assert scalar.normalization == "model-native: pretraining mean/std of DN / 2047"
    assert not torch.allclose(scalar.prepare(dn)[0, :, 0, 0], got)


def test_card_toa_bad_input(tmp_path, prithvi_weights):
    text = "\n".join(line for line in WV02_IMD.splitlines() if "BAND_N" not in line and "9.89" not in line
                     and "9.042234" not in line)
    _write(tmp_path / "a.IMD", text)  # nir group gone: the card points at TOA, the chip's IMD lacks nir
    with pytest.raises(ValueError, match=r"a\.IMD.*\['nir'\]"):
        build_backbone("prithvi_eo2_300m", _prithvi_card(tmp_path, toa_from="imd"), 32, weights=prithvi_weights,
                       prithvi_num_heads=4)
    _write(tmp_path / "b.IMD")
    with pytest.raises(ValueError, match=r"several \.IMD files.*options\.toa_imd"):
        card_toa(_prithvi_card(tmp_path, toa_from="imd"), ("red",))
    assert card_toa(_prithvi_card(tmp_path, toa_from="imd", toa_imd="b.IMD"), ("red",)).source.name == "b.IMD"
    with pytest.raises(FileNotFoundError, match="toa_imd"):
        card_toa(_prithvi_card(tmp_path, toa_from="imd", toa_imd="c.IMD"), ("red",))
    with pytest.raises(ValueError, match="toa_from: 'xml'"):
        card_toa(_prithvi_card(tmp_path, toa_from="xml"), ("red",))
    with pytest.raises(ValueError, match="not both"):
        card_toa(_prithvi_card(tmp_path, toa_from="imd", toa_imd="b.IMD", reflectance_per_dn=1e-4), ("red",))
    assert card_toa(_prithvi_card(tmp_path), ("red",)) is None
    zscored = build_backbone("prithvi_eo2_300m", _prithvi_card(tmp_path, toa_from="imd"), 32, weights=prithvi_weights,
                             prithvi_num_heads=4, normalization="zscore",
                             dataset_stats={"mean": [1.0] * 5, "std": [2.0] * 5})
    assert zscored.normalization == "train-split z-score", "z-score of DN = z-score of reflectance: TOA not needed"
