"""training.pack: chip folders and curation manifests -> shards that keep values, band order, bit depth, metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from arctic_vit.corpus import ContractError, CorpusContract
from training.pack import ChipSource, pack, read_chip
from training.pack import main as pack_main
from training.shards import ShardDataset, read_contract, read_index

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
    assert index["dtype"] == "uint8" and index["count"] == 5 and "bands" not in index and "bit_depth" not in index
    assert not (out / "stats.json").exists()  # one owner: corpus.json
    dataset = ShardDataset(out, augment_cfg=None, normalize=False)
    chip_ids = pd.concat([pd.read_parquet(out / f"shard-{i:05d}.parquet") for i in range(3)])["chip_id"].tolist()
    assert sorted(chip_ids) == [f"chip_{i:03d}" for i in range(5)] and chip_ids != sorted(chip_ids)  # permuted
    for i, chip_id in enumerate(chip_ids):
        np.testing.assert_array_equal(dataset.raw(i), arrays[int(chip_id[-3:])])
    stacked = np.stack(arrays).astype(np.float64) / 255
    valid = (np.stack(arrays) != 0).any(axis=1)  # (N, H, W)
    per_band = stacked.transpose(1, 0, 2, 3)[:, valid]
    contract = read_contract(out)
    np.testing.assert_allclose(contract.mean, per_band.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(contract.std, per_band.std(axis=1), atol=1e-5)
    assert contract == CorpusContract(("nir", "green", "red"), 8, contract.mean, contract.std, nodata=0.0)
    assert dataset.contract == contract
    assert (out / "resolved_config.yaml").is_file()


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


CURATED = CorpusContract(("blue", "green", "red", "nir"), 11, gsd_m=0.5, nodata=0)


def test_pack_manifest_reads_selected_windows_with_metadata(tmp_path):
    scene = tmp_path / "scene.tif"
    data = _write_scene(scene)
    manifest = _manifest(tmp_path, scene, [(0, 0, True), (0, 32, False), (32, 16, True)])
    CURATED.write(tmp_path / "corpus.json")  # what curation writes beside its manifest
    index = pack(tmp_path / "shards", manifest=manifest, seed=1)

    assert index["dtype"] == "uint16" and index["chip_shape"] == [4, 32, 32]
    dataset = ShardDataset(tmp_path / "shards", augment_cfg=None, normalize=False)
    assert len(dataset) == 2  # the unselected row is not packed
    table = pd.read_parquet(tmp_path / "shards" / "shard-00000.parquet").set_index("chip_id")
    windows = {"c0": data[:, 0:32, 0:32], "c2": data[:, 32:64, 16:48]}
    for i, chip_id in enumerate(table.index):
        np.testing.assert_array_equal(dataset.raw(i), windows[chip_id])
    assert table.loc["c0", "lat"] == 70.0 and table.loc["c2", "lat"] == 72.0
    assert table.loc["c2", "acquired"] == "2020-07-03"
    contract = read_contract(tmp_path / "shards")
    chips = np.stack(list(windows.values())).astype(np.float64) / 2047
    np.testing.assert_allclose(contract.mean, chips.mean(axis=(0, 2, 3)), atol=1e-5)
    assert (contract.bands, contract.bit_depth, contract.gsd_m, contract.nodata) == (
        CURATED.bands, CURATED.bit_depth, CURATED.gsd_m, CURATED.nodata)


def test_pack_contract_errors_name_the_file_or_key(tmp_path):
    scene = tmp_path / "scene.tif"
    _write_scene(scene)
    manifest = _manifest(tmp_path, scene, [(0, 0, True)])
    with pytest.raises(ContractError, match=r"corpus\.json: corpus contract not found beside manifest"):
        pack(tmp_path / "a", manifest=manifest)
    index = pack(tmp_path / "b", manifest=manifest, bands=["blue", "green", "red", "nir"], bit_depth=11)
    assert read_contract(tmp_path / "b").bit_depth == 11 and index["count"] == 1
    CorpusContract(("blue", "green", "red", "nir"), 12).write(tmp_path / "corpus.json")
    with pytest.raises(ContractError, match=r"manifest .* bit depths \[11\], the corpus contract 12"):
        pack(tmp_path / "c", manifest=manifest)
    with pytest.raises(ContractError, match=r"pack\.bit_depth 11 disagrees .*corpus\.json"):
        pack(tmp_path / "c", manifest=manifest, bit_depth=11)

    tifs = tmp_path / "tifs"
    tifs.mkdir()
    _write_scene(tifs / "chip.tif", size=32)
    with pytest.raises(ContractError, match=r"pack\.bit_depth is required for the uint16 chips"):
        pack(tmp_path / "d", chip_dir=tifs, bands=["blue", "green", "red", "nir"])
    with pytest.raises(ContractError, match=r"pack\.bands"):
        pack(tmp_path / "d", chip_dir=tifs, bit_depth=11)
    with pytest.raises(ValueError, match=r"chip\.tif: value \d+ exceeds the 8-bit range"):
        pack(tmp_path / "d", chip_dir=tifs, bands=["blue", "green", "red", "nir"], bit_depth=8)


def test_shard_reader_rejects_disagreeing_shards_and_old_folders(tmp_path):
    make_chip_folder(tmp_path / "chips", count=4)
    pack(tmp_path / "eight", chip_dir=tmp_path / "chips", bands=["nir", "green", "red"], shard_size=2)
    pack(tmp_path / "twelve", chip_dir=tmp_path / "chips", bands=["nir", "green", "red"], bit_depth=12, shard_size=2)
    for suffix in ("npy", "parquet"):  # a shard of another corpus dropped into the folder
        (tmp_path / "eight" / f"shard-00001.{suffix}").write_bytes(
            (tmp_path / "twelve" / f"shard-00001.{suffix}").read_bytes())
    with pytest.raises(ContractError, match=r"shard-00001\.parquet: shard bit_depth 12 disagrees with 8"):
        ShardDataset(tmp_path / "eight")

    old = tmp_path / "old"
    old.mkdir()
    (old / "index.json").write_text(json.dumps({"format": 1, "bands": ["red"], "shards": []}))
    with pytest.raises(ValueError, match=r"index\.json: shard format 1.*re-run"):
        ShardDataset(old)
    (old / "index.json").write_text(json.dumps({"format": 2, "dtype": "uint8", "chip_shape": [1, 2, 2], "shards": []}))
    (old / "stats.json").write_text("{}")
    with pytest.raises(ContractError, match=r"old/corpus\.json: corpus contract not found; .*stats\.json is the old"):
        ShardDataset(old)


def test_resize_turns_pixels_touched_by_nodata_into_nodata(tmp_path):
    chips = tmp_path / "chips"
    chips.mkdir()
    chip = np.repeat(np.linspace(200, 250, 40).astype(np.uint8)[:, None, None], 40, axis=1).repeat(3, axis=2)
    chip[:, :20] = 0  # left half nodata
    Image.fromarray(chip).save(chips / "half.png")
    pack(tmp_path / "out", chip_dir=chips, bands=["nir", "green", "red"], chip_size=20)
    raw = ShardDataset(tmp_path / "out", augment_cfg=None, normalize=False).raw(0)
    assert (raw[:, :, :10] == 0).all() and (raw[:, :, 11:] >= 200).all()
    assert (raw[raw > 0] >= 200).all()  # no blend of nodata and data survives as data (a blend would be < 200)
    assert read_contract(tmp_path / "out").mean[0] >= 200 / 255  # nor enters the statistics


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
    CURATED.write(tmp_path / "corpus.json")
    with pytest.raises(ValueError, match="outside"):
        pack(tmp_path / "out4", manifest=outside)


@pytest.mark.skipif(not MAPLE.is_dir(), reason="shared MAPLE data not present")
def test_real_maple_chip_reads_as_three_band_uint8():
    chip = read_chip(ChipSource(chip_id="x", source_path=str(sorted((MAPLE / "unlabelled").glob("*.jpg"))[0])))
    assert chip.shape == (3, 656, 656) and chip.dtype == np.uint8
    assert not math.isnan(float(chip.mean()))
