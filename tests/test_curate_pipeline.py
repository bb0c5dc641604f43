"""End to end: synthetic scenes + bad inputs + chip images -> manifest contract, reconciled counts, report, resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from training.config import load_config
from training.curate import run_curation
from training.synthetic import generate_archive

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "curate.yaml"
MAPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maple_iwp"
CONTRACT = [
    "chip_id", "source_path", "row_off", "col_off", "height", "width", "band_count", "bands", "bit_depth", "crs",
    "center_x", "center_y", "lat", "lon", "sensor", "acquired", "sun_elevation", "off_nadir", "cloud_cover", "gsd_m",
    "cluster_l0", "is_exemplar", "selected", "reject_reason",
]


def _write(path: Path, data: np.ndarray, **profile) -> None:
    base = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype)
    with rasterio.open(path, "w", **{**base, **profile}) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def messy_archive(tmp_path_factory) -> Path:
    """Two good synthetic scenes, one of each kind of bad input, and a folder of JPEG chips."""
    root = tmp_path_factory.mktemp("messy")
    good = generate_archive(root / "scenes", n_scenes=2, size=512, seed=11, labels=True)
    geo = dict(crs="EPSG:3413", transform=from_origin(-2.0e6, 1.0e6, 0.5, 0.5))
    rng = np.random.default_rng(0)
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.tif").write_bytes(b"II*\x00" + rng.bytes(5000))
    raw = good[0].read_bytes()
    (bad / "truncated.tif").write_bytes(raw[: len(raw) // 3])
    _write(bad / "two_bands.tif", rng.integers(1, 2047, (2, 256, 256)).astype(np.uint16), nodata=0, **geo)
    _write(bad / "all_nodata.tif", np.zeros((4, 512, 256), np.uint16), nodata=0, **geo)
    with_nan = rng.uniform(100, 1500, (4, 512, 256)).astype(np.float32)
    with_nan[:, :256, :] = np.nan
    _write(bad / "with_nan.tif", with_nan, **geo)
    with rasterio.open(bad / "with_nan.tif", "r+") as dst:  # float DNs of an 11-bit sensor, tagged as such
        dst.update_tags(BIT_DEPTH="11")
    _write(bad / "no_georef.tif", rng.integers(1, 2047, (4, 256, 256)).astype(np.uint16), nodata=0)
    _write(root / "scenes" / "eight_band_u8.tif", rng.integers(1, 255, (8, 256, 256)).astype(np.uint8), nodata=0,
           **geo)  # striped, 8-bit, 8 bands
    shutil.copy(good[1], bad / "garbled_meta.tif")
    (bad / "garbled_meta.IMD").write_bytes(b"\x00\x01 not an IMD \xff")
    chips = root / "chips"
    chips.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(chips / f"chip_{i}.jpg")
    return root


def _config(inputs, out: Path, *extra: str) -> dict:
    overrides = [f"out={out}", "dask.scheduler=synchronous", "select.budget=6", "progress=false", *extra]
    cfg = load_config(CONFIG, overrides=overrides)
    cfg["input"]["path"] = [str(p) for p in inputs] if isinstance(inputs, list) else str(inputs)
    return cfg


@pytest.fixture(scope="module")
def messy_run(messy_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate_out")
    cfg = _config(messy_archive, out, "select.bands=blue,green,red,nir")  # mixed band sets: pick one
    return cfg, run_curation(cfg)


def test_manifest_contract_and_counts(messy_run):
    manifest_path = messy_run[1]
    manifest = pd.read_parquet(manifest_path)
    assert set(CONTRACT) <= set(manifest.columns)
    assert manifest["chip_id"].is_unique
    assert all(Path(p).is_absolute() for p in manifest["source_path"])
    rejected = manifest["reject_reason"].notna()
    assert manifest["selected"].sum() == 6 and not (manifest["selected"] & rejected).any()
    summary = json.loads((manifest_path.parent / "report" / "summary.json").read_text())
    assert summary["candidates"] == len(manifest) == summary["selected"] + summary["unselected"] + summary["rejected"]
    assert (manifest.loc[rejected, "cluster"] == -1).all() and (manifest.loc[~rejected, "cluster"] >= 0).all()
    accepted = manifest[~rejected]
    assert accepted["is_exemplar"].sum() == accepted["cluster"].nunique()
    assert (manifest_path.parent / "resolved_config.yaml").exists()
    descriptors = pd.read_parquet(manifest_path.parent / "descriptors.parquet")
    assert descriptors["chip_id"].tolist() == accepted["chip_id"].tolist()
    for name in ("cluster_sizes", "exemplar_mosaic", "embedding_clusters", "selected_vs_all"):
        assert (manifest_path.parent / "report" / f"{name}.png").stat().st_size > 1000
    good = manifest[manifest["scene_id"] == "scenes/scene_000"]
    assert len(good) == 4 and (good["bands"] == "blue,green,red,nir").all() and (good["bit_depth"] == 11).all()
    assert good["lat"].between(60, 80).all() and (good["crs"] == "EPSG:3413").all()
    assert set(good["sensor"]) <= {"WV02", "WV03", "GE01", "QB02"} and good["acquired"].notna().all()
    with rasterio.open(good["source_path"].iloc[0]) as src:  # every window lies inside its source
        assert (good["row_off"] + good["height"] <= src.height).all()
        assert (good["col_off"] + good["width"] <= src.width).all()


def test_bad_inputs_are_recorded(messy_run):
    manifest = pd.read_parquet(messy_run[1]).set_index("chip_id")

    def reasons(scene_id: str) -> list[str]:
        return manifest.loc[manifest["scene_id"] == scene_id, "reject_reason"].fillna("").tolist()

    assert reasons("bad/corrupt")[0].startswith("unreadable")
    assert manifest.loc["bad/corrupt:source", "source_path"].endswith("corrupt.tif")
    assert any(r.startswith(("unreadable", "read_error")) for r in reasons("bad/truncated"))
    assert reasons("bad/two_bands") == ["band_count: 2 not in [3, 4, 8]"]
    assert reasons("bad/all_nodata") == ["nodata", "nodata"]
    nan_rows = reasons("bad/with_nan")
    assert nan_rows[0] == "nodata" and nan_rows[1] == "", "NaN pixels are invalid; the clean chip is kept"
    no_georef = manifest[manifest["scene_id"] == "bad/no_georef"].iloc[0]
    assert "no_georeferencing" in no_georef["metadata_issues"] and np.isnan(no_georef["lat"])
    assert pd.isna(no_georef["reject_reason"]) and pd.isna(no_georef["crs"])
    garbled = manifest[manifest["scene_id"] == "bad/garbled_meta"]
    assert garbled["metadata_issues"].str.contains("imd_no_fields").all() and garbled["sensor"].isna().all()
    copied = manifest[manifest["scene_id"] == "scenes/scene_001"]  # the same pixels, found after bad/garbled_meta
    kept = garbled["reject_reason"].isna().to_numpy()
    assert kept.any() and (copied["reject_reason"].to_numpy()[kept] == "duplicate").all()
    eight = manifest[manifest["scene_id"] == "scenes/eight_band_u8"].iloc[0]
    assert eight["bands"] == "coastal,blue,green,yellow,red,rededge,nir,nir2" and eight["bit_depth"] == 8
    assert "no_metadata" in eight["metadata_issues"]
    assert eight["reject_reason"] == "band_set: not select.bands=blue,green,red,nir"
    jpeg = manifest[manifest["scene_id"] == "chips/chip_0"].iloc[0]
    assert jpeg["bands"] == "nir,green,red" and jpeg["bit_depth"] == 8 and jpeg["band_count"] == 3
    assert jpeg["reject_reason"].startswith("band_set")


def test_rerun_skips_finished_scenes_and_is_deterministic(messy_run):
    cfg, manifest_path = messy_run
    cache = sorted((manifest_path.parent / "cache" / "scenes").glob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    before = pd.read_parquet(manifest_path)
    run_curation(cfg)
    assert [p.stat().st_mtime_ns for p in cache] == stamps, "cached scenes are not processed again"
    pd.testing.assert_frame_equal(pd.read_parquet(manifest_path), before)


def test_kmeans_and_cli(messy_archive, tmp_path):
    out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "training.curate", "--config", str(CONFIG), f"input.path={messy_archive / 'scenes'}",
         f"out={out}", "cluster.method=kmeans", "select.bands=blue,green,red,nir", "select.within=balanced",
         "select.budget=3", "report.figures=false",
         "progress=false", "--scheduler", "synchronous"],
        check=True, cwd=REPO, capture_output=True,
    )
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["selected"].sum() == 3 and {"cluster_l0", "cluster_l1"} <= set(manifest.columns)


def test_maple_chip_folder(tmp_path):
    if not MAPLE.exists():
        pytest.skip("../shared/data/maple_iwp not present")
    subset = tmp_path / "maple"
    subset.mkdir()
    for path in sorted((MAPLE / "unlabelled").glob("*.jpg"))[:12]:
        (subset / path.name).symlink_to(path)
    manifest = pd.read_parquet(run_curation(_config(subset, tmp_path / "out", "report.figures=false")))
    assert len(manifest) == 12 * 4 and (manifest["bands"] == "nir,green,red").all()
    assert manifest["crs"].isna().all() and manifest["selected"].sum() == 6
