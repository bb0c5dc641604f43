"""training.pack: chip folders and curation manifests -> shards that keep values, band order, bit depth, metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from training.pack import ChipSource, pack, read_chip
from training.pack import main as pack_main
from training.shards import ShardDataset, read_index, read_stats

MAPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maple_iwp"


def make_chip_folder(folder: Path, count: int = 6, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    """Seeded RGB PNG chips with a nodata (all-zero) corner and a gradient; returns their (C, H, W) arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    ramp = np.linspace(20, 230, size, dtype=np.float32)
    for i in range(count):
        chip = np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                         np.full((size, size), 40.0 + 20 * i, np.float32)])
        chip = np.clip(chip + rng.normal(0, 8, chip.shape), 1, 255).astype(np.uint8)
        chip[:, : size // 4, : size // 4] = 0  # nodata corner
        Image.fromarray(chip.transpose(1, 2, 0)).save(folder / f"chip_{i:03d}.png")
        arrays.append(chip)
    return arrays


def test_pack_folder_keeps_pixels_and_computes_stats_over_valid_pixels(tmp_path):
    arrays = make_chip_folder(tmp_path / "chips", count=5)
    out = tmp_path / "shards"
    pack_main([f"pack.chip_dir={tmp_path / 'chips'}", f"pack.out_dir={out}", "pack.shard_size=2",
               "pack.bands=[nir, green, red]", "pack.workers=2"])

    index = read_index(out)
    assert [s["count"] for s in index["shards"]] == [2, 2, 1]
    assert index["bands"] == ["nir", "green", "red"] and index["bit_depth"] == 8 and index["dtype"] == "uint8"
    dataset = ShardDataset(out, augment_cfg=None, normalize=False)
    for i, chip in enumerate(arrays):
        np.testing.assert_array_equal(dataset.raw(i), chip)
    stacked = np.stack(arrays).astype(np.float64) / 255
    valid = (np.stack(arrays) != 0).any(axis=1)  # (N, H, W)
    per_band = stacked.transpose(1, 0, 2, 3)[:, valid]
    stats = read_stats(out)
    np.testing.assert_allclose(stats["mean"], per_band.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(stats["std"], per_band.std(axis=1), atol=1e-5)
    assert stats["count"] == 5 and stats["bands"] == ["nir", "green", "red"]
    assert (out / "resolved_config.yaml").is_file()
    table = pd.read_parquet(out / "shard-00001.parquet")
    assert table["chip_id"].tolist() == ["chip_002", "chip_003"]


def _write_scene(path: Path, bands: int = 4, size: int = 64) -> np.ndarray:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(1)
    data = rng.integers(1, 2048, size=(bands, size, size), dtype=np.uint16)  # 11-bit values
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
                       crs="EPSG:32606", transform=from_origin(500000, 7800000, 0.5, 0.5)) as dst:
        dst.write(data)
    return data


def _manifest(tmp_path: Path, scene: Path, rows: list[tuple[int, int, bool]]) -> Path:
    records = [
        {"chip_id": f"c{i}", "source_path": str(scene), "row_off": r, "col_off": c, "height": 32, "width": 32,
         "band_count": 4, "bands": "blue,green,red,nir", "bit_depth": 11, "lat": 70.0 + i, "lon": -150.0,
         "acquired": f"2020-07-0{i + 1}", "sensor": "WV02", "selected": selected,
         "reject_reason": "" if selected else "low_information"}
        for i, (r, c, selected) in enumerate(rows)
    ]
    path = tmp_path / "manifest.parquet"
    pd.DataFrame(records).to_parquet(path)
    return path


def test_pack_manifest_reads_selected_windows_with_metadata(tmp_path):
    scene = tmp_path / "scene.tif"
    data = _write_scene(scene)
    manifest = _manifest(tmp_path, scene, [(0, 0, True), (0, 32, False), (32, 16, True)])
    index = pack(tmp_path / "shards", manifest=manifest)

    assert index["bands"] == ["blue", "green", "red", "nir"] and index["bit_depth"] == 11
    assert index["dtype"] == "uint16" and index["chip_shape"] == [4, 32, 32]
    dataset = ShardDataset(tmp_path / "shards", augment_cfg=None, normalize=False)
    assert len(dataset) == 2  # the unselected row is not packed
    np.testing.assert_array_equal(dataset.raw(0), data[:, 0:32, 0:32])
    np.testing.assert_array_equal(dataset.raw(1), data[:, 32:64, 16:48])
    table = pd.read_parquet(tmp_path / "shards" / "shard-00000.parquet")
    assert table["chip_id"].tolist() == ["c0", "c2"]
    assert table["lat"].tolist() == [70.0, 72.0] and table["acquired"].tolist()[1] == "2020-07-03"
    stats = json.loads((tmp_path / "shards" / "stats.json").read_text())
    chips = np.stack([data[:, 0:32, 0:32], data[:, 32:64, 16:48]]).astype(np.float64) / 2047
    np.testing.assert_allclose(stats["mean"], chips.mean(axis=(0, 2, 3)), atol=1e-5)
    assert stats["bit_depth"] == 11


def test_pack_errors_name_the_bad_file(tmp_path):
    make_chip_folder(tmp_path / "chips", count=2)
    (tmp_path / "chips" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        pack(tmp_path / "out", chip_dir=tmp_path / "chips", bands=["nir", "green", "red"])

    odd = tmp_path / "odd"
    make_chip_folder(odd, count=1, size=40)
    Image.fromarray(np.full((30, 30, 3), 9, np.uint8)).save(odd / "small.png")
    with pytest.raises(ValueError, match=r"small\.png"):
        pack(tmp_path / "out2", chip_dir=odd, bands=["nir", "green", "red"])
    index = pack(tmp_path / "out3", chip_dir=odd, bands=["nir", "green", "red"], chip_size=32)
    assert index["chip_shape"] == [3, 32, 32]  # resizing is explicit

    scene = tmp_path / "scene.tif"
    _write_scene(scene)
    outside = _manifest(tmp_path, scene, [(48, 48, True)])
    with pytest.raises(ValueError, match="outside"):
        pack(tmp_path / "out4", manifest=outside)


@pytest.mark.skipif(not MAPLE.is_dir(), reason="shared MAPLE data not present")
def test_real_maple_chip_reads_as_three_band_uint8():
    chip = read_chip(ChipSource(chip_id="x", source_path=str(sorted((MAPLE / "unlabelled").glob("*.jpg"))[0])))
    assert chip.shape == (3, 656, 656) and chip.dtype == np.uint8
    assert not math.isnan(float(chip.mean()))
