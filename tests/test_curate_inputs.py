"""Curation input defects and the corpus contract: float rasters, GDAL causes, band counts, band names, config
validation before any work, one-line CLI errors, NaN descriptor rows, budgets above the candidates, corpus.json."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from arctic_vit.corpus import CONTRACT_FILENAME, CorpusContract
from training.config import load_config
from training.curate import run_curation
from training.curate.descriptors import DESCRIPTOR_NAMES, GROUPS, invalid_descriptor_rows
from training.curate.pipeline import CONTRACT_FILENAME as PIPELINE_CONTRACT_FILENAME
from training.curate.pipeline import check_band_names
from training.curate.tiling import Source, process_scene
from training.curate.validate import ConfigError, validate_config
from training.synthetic import generate_archive

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "curate.yaml"
GEO = dict(crs="EPSG:3413", transform=from_origin(-2.0e6, 1.0e6, 0.5, 0.5))


def _write(path: Path, data: np.ndarray, **profile) -> Path:
    base = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype)
    with rasterio.open(path, "w", **{**base, **GEO, **profile}) as dst:
        dst.write(data)
    return path


def _cfg(*overrides: str) -> dict:
    return load_config(CONFIG, overrides=["input.path=/nonexistent", "tiling.chip_size=64", "tiling.stride=64",
                                          "progress=false", *overrides])


def _texture(seed: int, shape=(4, 128, 128)) -> np.ndarray:
    """Reflectance-like 0..1 floats with structure (not low-information)."""
    rng = np.random.default_rng(seed)
    return (0.2 + 0.15 * rng.random(shape)).astype(np.float32)


def test_float_raster_is_not_rescaled_as_dns(tmp_path):
    reflectance = _texture(0)
    path = _write(tmp_path / "refl.tif", reflectance)
    result = process_scene(Source(str(path), "refl"), _cfg())
    assert result.rows["reject_reason"].isna().all(), "0-1 floats are not low-information"
    assert set(result.rows["bit_depth"]) == {0}, "a float raster has no DN bit depth"
    mean = DESCRIPTOR_NAMES.index("blue_mean")
    assert result.descriptors[:, mean] == pytest.approx(0.275, abs=0.01), "blue mean in reflectance, not /2047"
    # the same scene stored as reflectance x 10000: input.scale=10000 gives the same descriptors
    scaled = _write(tmp_path / "scaled.tif", reflectance * 10000)
    again = process_scene(Source(str(scaled), "scaled"), _cfg("input.scale=10000"))
    pixel = len(GROUPS["spectral"]) + len(GROUPS["texture"])
    np.testing.assert_allclose(again.descriptors[:, :pixel], result.descriptors[:, :pixel], rtol=1e-4, atol=1e-5)


def test_read_error_keeps_the_gdal_cause(tmp_path):
    good = generate_archive(tmp_path / "a", n_scenes=1, size=512, seed=1, labels=False)[0]
    raw = good.read_bytes()
    (tmp_path / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    result = process_scene(Source(str(tmp_path / "truncated.tif"), "t"), _cfg("tiling.chip_size=256",
                                                                              "tiling.stride=256"))
    reasons = result.rows["reject_reason"].dropna()
    errors = reasons[reasons.str.startswith("read_error")].tolist()
    assert errors, "the truncated scene has unreadable chips"
    assert all("TIFFRead" in e or "IReadBlock" in e for e in errors), errors[0]


def test_smaller_than_chip_records_the_true_band_count(tmp_path):
    path = _write(tmp_path / "small.tif", np.ones((4, 32, 32), np.uint16))
    row = process_scene(Source(str(path), "small"), _cfg()).rows.iloc[0]
    assert row["reject_reason"].startswith("smaller_than_chip") and row["band_count"] == 4


def test_unknown_band_names_fail_at_curation_naming_the_file(tmp_path):
    path = _write(tmp_path / "five.tif", np.ones((5, 64, 64), np.uint16))
    rows = process_scene(Source(str(path), "five"), _cfg("input.band_counts=[3,4,5,8]")).rows
    with pytest.raises(ValueError, match=r"five\.tif.*unknown band name.*input\.band_names\.5"):
        check_band_names(rows)  # run_curation calls it on each scene's rows as they arrive


def test_dask_workers_do_not_import_torch():
    """A scene task imports training.curate; arctic_vit imports torch (~1 GB RSS), which paused 1 GiB workers."""
    code = "import sys, training.curate.tiling, training.curate.pipeline; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    assert PIPELINE_CONTRACT_FILENAME == CONTRACT_FILENAME


@pytest.mark.parametrize(("override", "key"), [
    ("select.withn=random", "select.withn: unknown key; did you mean 'select.within'?"),
    ("select.within=closet", "select.within"),
    ("select.budget=-1", "select.budget"),
    ("select.bands=red,grene", "select.bands"),
    ("cluster.ap.damping=1.2", "cluster.ap.damping"),
    ("cluster.ap.preference=3", "cluster.ap.preference"),
    ("input.band_names={4: 'blue,green,red,infrared'}", "input.band_names.4"),
    ("input.scale=0", "input.scale"),
    ("tiling.min_valid_fraction=2", "tiling.min_valid_fraction"),
    ("dask.scheduler=slurm", "dask.scheduler"),
    ("input.band_names={4: 'blue,green,red'}", "input.band_names.4: 3 names for 4 bands"),
    ("tiling.max_read_px=32", "tiling.max_read_px: must be >= tiling.chip_size (64)"),
    ("cluster.ap.preference=target_k", "cluster.ap.target_k"),
    ("select.dedup=1", "select.dedup"),
    ("input.bit_depth=33", "input.bit_depth"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)) as error:
        validate_config(_cfg(override))
    assert "\n" not in str(error.value) and str(error.value).startswith(key.split(":")[0])


def test_bad_select_key_fails_before_any_tiling(tmp_path):
    archive = generate_archive(tmp_path / "scenes", n_scenes=1, size=256, seed=0, labels=False)[0].parent
    cfg = load_config(CONFIG, overrides=[f"input.path={archive}", f"out={tmp_path / 'out'}", "select.withn=random"])
    with pytest.raises(ConfigError, match=r"select\.withn"):
        run_curation(cfg)
    assert not (tmp_path / "out").exists(), "nothing was written: the error came before any work"


def test_cli_error_is_one_line_naming_the_key(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "training.curate", f"input.path={tmp_path}", f"out={tmp_path / 'out'}",
         "cluster.ap.damping=1.5"], cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and "cluster.ap.damping" in lines[0] and "Traceback" not in done.stderr


def test_invalid_descriptor_rows():
    x = np.zeros((4, len(DESCRIPTOR_NAMES)), np.float32)
    spectral = len(GROUPS["spectral"])
    x[1, 0] = np.inf  # inf anywhere
    x[2, :spectral] = np.nan  # no spectral value at all
    x[3, 3] = np.nan  # one missing band statistic: allowed (a source without that band)
    assert invalid_descriptor_rows(x).tolist() == [False, True, True, False]


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    archive = root / "scenes"
    generate_archive(archive, n_scenes=2, size=512, seed=4, labels=False)
    cfg = load_config(CONFIG, overrides=[f"input.path={archive}", f"out={root / 'out'}", "dask.scheduler=synchronous",
                                         "select.budget=100000", "progress=false", "report.figures=false"])
    return archive, root, run_curation(cfg)


def test_corpus_json_beside_the_manifest(curated):
    _, _, manifest_path = curated
    contract = CorpusContract.read(manifest_path.parent)
    manifest = pd.read_parquet(manifest_path)
    selected = manifest[manifest["selected"]]
    assert (manifest_path.parent / CONTRACT_FILENAME).is_file()
    assert contract.bands == tuple(selected["bands"].iloc[0].split(",")) == ("blue", "green", "red", "nir")
    assert contract.bit_depth == 11 and contract.mean is None and contract.std is None
    assert contract.gsd_m == pytest.approx(float(np.median(selected["gsd_m"])))
    with rasterio.open(selected["source_path"].iloc[0]) as src:
        assert contract.nodata == src.nodata


def test_budget_above_the_candidates_selects_all_and_says_so(curated):
    _, _, manifest_path = curated
    manifest = pd.read_parquet(manifest_path)
    accepted = manifest["reject_reason"].isna()
    assert manifest.loc[accepted, "selected"].all()
    summary = (manifest_path.parent / "report" / "summary.json").read_text()
    assert '"budget_covers_all_candidates": true' in summary


def test_disagreeing_bands_name_two_sources_or_select_one(curated, tmp_path):
    archive, _, _ = curated
    _write(archive / "eight.tif", (np.random.default_rng(0).integers(1, 2000, (8, 256, 256))).astype(np.uint16),
           nodata=0)
    overrides = [f"input.path={archive}", "dask.scheduler=synchronous", "progress=false", "report.figures=false",
                 "select.budget=20"]
    with pytest.raises(ValueError, match=r"disagree on bands: .*\.tif has .*, .*\.tif has "):
        run_curation(load_config(CONFIG, overrides=[*overrides, f"out={tmp_path / 'a'}"]))
    manifest = pd.read_parquet(run_curation(load_config(CONFIG, overrides=[
        *overrides, f"out={tmp_path / 'b'}", "select.bands=blue,green,red,nir"])))
    eight = manifest[manifest["source_path"].str.endswith("eight.tif")]
    assert eight["reject_reason"].str.startswith("band_set").all()
    assert CorpusContract.read(tmp_path / "b").bands == ("blue", "green", "red", "nir")
