"""Evaluation datasets: VIA-JSON chips, GeoTIFF raster pairs, vector labels, synthetic tasks, cards and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from evaluation.datasets import IGNORE_INDEX, build_dataset, load_card
from evaluation.datasets.card import card_from_dict
from evaluation.datasets.splits import SplitSpec, parse_splits
from evaluation.datasets.synthetic_tasks import cut_task_chips

MAPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "maple_iwp"


def _via_card(root: Path, **options) -> dict:
    return {"name": "via_test", "format": "via_json", "root": str(root), "classes": ["background", "low", "high"],
            "bands": ["nir", "green", "red"], "bit_depth": 8,
            "splits": {"seed": 0, "fractions": {"train": 0.5, "val": 0.5}}, "options": options}


def _region(xs, ys, name="low") -> dict:
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": {"object_name": name}}


def _write_via(root: Path, regions_by_file: dict[str, list[dict]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, regions in regions_by_file.items():
        Image.fromarray(np.full((32, 32, 3), 100, dtype=np.uint8)).save(root / name)
        entries[f"{name}123"] = {"filename": name, "size": 123, "regions": {str(i): r for i, r in enumerate(regions)}}
    (root / "via_region_data.json").write_text(json.dumps(entries))


def test_via_polygons_become_instances_and_semantic_mask_with_recorded_rejects(tmp_path):
    _write_via(tmp_path, {
        "a.jpg": [_region([2, 10, 10, 2], [2, 2, 10, 10]), _region([20, 30, 30, 20], [20, 20, 30, 30], "high"),
                  _region([40, 50, 50], [40, 40, 50]),  # wholly outside the 32 px chip
                  _region([1, 2], [1, 2])],  # degenerate
        "b.jpg": [_region([0, 8, 8, 0], [0, 0, 8, 8], "high")],
        "empty.jpg": [],
    })
    dataset = build_dataset(card_from_dict(_via_card(tmp_path)))
    assert dataset.ids == ["a", "b"]
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["instances"]["labels"].tolist() == [1, 2]
    assert sample["instances"]["masks"][0].sum() == 64  # pixel centres inside the 8 x 8 square
    assert (sample["mask"] == 1).sum() == 64 and (sample["mask"] == 2).sum() == 100
    assert torch.isnan(sample["latlon"]).all()
    reasons = {r.item: r.reason for r in dataset.rejects}
    assert "outside" in reasons["a.jpg region 2"]
    assert "degenerate" in reasons["a.jpg region 3"]
    assert "empty chip" in reasons["empty.jpg"]


def test_via_bad_input_raises_naming_the_file(tmp_path):
    _write_via(tmp_path, {"a.jpg": [_region([2, 10, 10], [2, 2, 10], "unknown_class")]})
    with pytest.raises(ValueError, match=r"a\.jpg region 0: class 'unknown_class' is not in dataset card"):
        build_dataset(card_from_dict(_via_card(tmp_path)))
    _write_via(tmp_path, {"a.jpg": [_region([2, 10, 10], [2, 2, 10])]})
    entries = json.loads((tmp_path / "via_region_data.json").read_text())
    entries["x"] = {"filename": "missing.jpg", "regions": {}}
    (tmp_path / "via_region_data.json").write_text(json.dumps(entries))
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        build_dataset(card_from_dict(_via_card(tmp_path)))


def test_card_validation(tmp_path):
    with pytest.raises(ValueError, match="missing field"):
        card_from_dict({"name": "x", "format": "via_json"})
    with pytest.raises(ValueError, match="unknown band"):
        card_from_dict(_via_card(tmp_path) | {"bands": ["infrared"]})
    with pytest.raises(ValueError, match="unknown splits key"):
        card_from_dict(_via_card(tmp_path) | {"splits": {"groups": "scene"}})
    with pytest.raises(ValueError, match=r"splits\.group must be one of"):
        card_from_dict(_via_card(tmp_path) | {"splits": {"group": "site"}})


def _spec(**splits) -> SplitSpec:
    return parse_splits({"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, **splits}, Path("."), "card.yaml")


def test_chip_hash_split_is_stable_when_chips_are_added():
    ids = [f"chip{i:03d}" for i in range(200)]
    before, _ = _spec(seed=3).assign(ids)
    after, moved = _spec(seed=3).assign(ids + [f"new{i}" for i in range(50)])
    assert moved == [] and all(after[i] == before[i] for i in ids)  # adding chips moves no other chip
    assert before == _spec(seed=3).assign(list(reversed(ids)))[0]
    shares = {n: list(before.values()).count(n) / len(ids) for n in ("train", "val", "test")}
    assert shares == pytest.approx({"train": 0.6, "val": 0.2, "test": 0.2}, abs=0.08)
    assert before != _spec(seed=4).assign(ids)[0]


def test_group_split_keeps_every_scene_on_one_side():
    ids = [f"scene_{s:03d}_r{r:05d}_c{c:05d}" for s in range(30) for r in (0, 128) for c in (0, 128, 256)]
    split_of, _ = _spec(group="scene").assign(ids)
    sides = {}
    for item, split in split_of.items():
        sides.setdefault(item.split("_r")[0], set()).add(split)
    assert len(sides) == 30 and all(len(v) == 1 for v in sides.values())
    assert set(split_of.values()) == {"train", "val", "test"}
    binned = _spec(group={"regex": r"FID_(\d+)_", "bin": 20})
    assert binned.group_of("FID_160_Polygon_1") == binned.group_of("FID_179_Polygon_2") == "8"
    assert binned.group_of("FID_180_Polygon_1") == "9"
    with pytest.raises(ValueError, match=r"card.yaml: splits.group '\^\(\.\+\)_r.* matches nothing in chip id 'a1'"):
        _spec(group="scene").assign(["a1"])


def test_few_groups_still_fill_every_split():
    for seed in range(20):  # 3 scenes, 3 splits: every split gets one, whatever the hashes say
        split_of, moved = _spec(group="scene", seed=seed).assign([f"scene_{s}_r0_c0" for s in range(3)])
        assert sorted(split_of.values()) == ["test", "train", "val"]
        assert len(moved) <= 2


def _via_folder(root: Path, names: list[str]) -> None:
    _write_via(root, {n: [_region([2, 10, 10, 2], [2, 2, 10, 10])] for n in names})


def test_split_folders_list_and_their_errors(tmp_path):
    for split, names in {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["d.jpg"]}.items():
        _via_folder(tmp_path / split, names)
    card = card_from_dict(_via_card(tmp_path) | {"splits": {"folders": {"train": "train", "val": "val",
                                                                          "test": "test"}}})
    assert [build_dataset(card, s).ids for s in ("train", "val", "test")] == [["a", "b"], ["c"], ["d"]]
    assert build_dataset(card, "test")[0]["instances"]["masks"].shape == (1, 32, 32)
    # a MAPLE-style card: root chips grouped into train/val, the test split from its own folder (one override)
    _via_folder(tmp_path / "pool", ["e.jpg", "f.jpg", "g.jpg"])
    mixed = card_from_dict(_via_card(tmp_path / "pool") | {"splits": {
        "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "folders": {"test": str(tmp_path / "test")}}})
    assert build_dataset(mixed, "test").ids == ["d"]
    assert sorted(build_dataset(mixed, "train").ids + build_dataset(mixed, "val").ids) == ["e", "f", "g"]
    with pytest.raises(FileNotFoundError, match=r"split folder for 'test' not found: .*nowhere"):
        card_from_dict(_via_card(tmp_path) | {"splits": {"folders": {"test": "nowhere"}}})
    _via_folder(tmp_path / "val2", ["a.jpg"])
    twice = card_from_dict(_via_card(tmp_path) | {"splits": {"folders": {"train": "train", "val": "val2"}}})
    with pytest.raises(ValueError, match=r"chip id\(s\) \['a'\] of folder .*val2 are already in another split"):
        build_dataset(twice, "train")
    (tmp_path / "pool" / "splits.csv").write_text("id,split\ne,train\nf,val\ng,test\ne,test\n")
    listed = card_from_dict(_via_card(tmp_path / "pool") | {"splits": {"list": "splits.csv"}})
    with pytest.raises(ValueError, match=r"splits.csv: chip 'e' is listed in two splits"):
        build_dataset(listed, "train")
    (tmp_path / "pool" / "splits.csv").write_text("id,split\ne,train\nf,val\ng,test\n")
    assert build_dataset(listed, "test").ids == ["g"]


def _geotiff(path: Path, data: np.ndarray, nodata=None, crs="EPSG:3413") -> None:
    x, y = warp_transform("EPSG:4326", crs, [-150.0], [70.0])
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=from_origin(x[0], y[0], 0.5, 0.5), nodata=nodata) as dst:
        dst.write(data)


def _pair_card(root: Path, bands=("blue", "green", "red", "nir"), **options) -> dict:
    return {"name": "pairs", "format": "raster_pairs", "root": str(root), "classes": ["background", "slump"],
            "bands": list(bands), "bit_depth": 11, "options": {"label_suffix": ".labels.tif", **options},
            "splits": {"seed": 0, "fractions": {"train": 1.0}}}


def test_raster_pairs_latlon_from_crs_and_nodata_ignored(tmp_path):
    image = np.full((4, 16, 16), 500, dtype=np.uint16)
    image[:, :2, :] = 0  # nodata rows
    labels = np.zeros((2, 16, 16), dtype=np.uint16)
    labels[0, 8:, 8:] = 1
    _geotiff(tmp_path / "c1.tif", image, nodata=0)
    _geotiff(tmp_path / "c1.labels.tif", labels)
    sample = build_dataset(card_from_dict(_pair_card(tmp_path)))[0]
    lat, lon = sample["latlon"].tolist()
    assert lat == pytest.approx(70.0, abs=0.01) and lon == pytest.approx(-150.0, abs=0.01)
    assert (sample["mask"][:2] == IGNORE_INDEX).all() and (sample["mask"] == 1).sum() == 64
    assert sample["instances"] is None


def test_raster_pairs_bad_input(tmp_path):
    _geotiff(tmp_path / "c1.tif", np.ones((3, 8, 8), dtype=np.uint16))
    with pytest.raises(FileNotFoundError, match=r"c1\.labels\.tif"):
        build_dataset(card_from_dict(_pair_card(tmp_path)))
    labels = np.zeros((1, 8, 8), dtype=np.uint16)
    labels[0, 0, 0] = 7  # not a class of the card
    _geotiff(tmp_path / "c1.labels.tif", labels)
    dataset = build_dataset(card_from_dict(_pair_card(tmp_path)))
    with pytest.raises(ValueError, match=r"c1\.labels\.tif: label value\(s\) \[7\] are not classes"):
        dataset[0]
    labels[0, 0, 0] = 1
    _geotiff(tmp_path / "c1.labels.tif", labels)
    with pytest.raises(ValueError, match=r"c1\.tif: image has shape \(3, 8, 8\), expected 4 bands"):
        build_dataset(card_from_dict(_pair_card(tmp_path)))[0]
    assert build_dataset(card_from_dict(_pair_card(tmp_path, bands=("red", "green", "blue"))))[0]["mask"].sum() == 1


def test_missing_label_skip_is_recorded(tmp_path):
    _geotiff(tmp_path / "a.tif", np.ones((4, 8, 8), dtype=np.uint16))
    _geotiff(tmp_path / "b.tif", np.ones((4, 8, 8), dtype=np.uint16))
    _geotiff(tmp_path / "b.labels.tif", np.zeros((1, 8, 8), dtype=np.uint16))
    dataset = build_dataset(card_from_dict(_pair_card(tmp_path, missing_label="skip")))
    assert dataset.ids == ["b"]
    assert [r.reason for r in dataset.rejects] == ["label file a.labels.tif missing"]


def test_vector_labels_reprojected_and_rasterised(tmp_path):
    _geotiff(tmp_path / "c1.tif", np.ones((4, 20, 20), dtype=np.uint16))
    with rasterio.open(tmp_path / "c1.tif") as src:
        left, top = src.xy(4, 4, offset="ul")
        right, bottom = src.xy(12, 12, offset="ul")
    lons, lats = warp_transform("EPSG:3413", "EPSG:4326", [left, right, right, left], [top, top, bottom, bottom])
    ring = [[lo, la] for lo, la in zip(lons, lats)] + [[lons[0], lats[0]]]
    far = [[10.0, 10.0], [10.1, 10.0], [10.1, 10.1], [10.0, 10.0]]
    geojson = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": "slump"}, "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {"class": "slump"}, "geometry": {"type": "Polygon", "coordinates": [far]}},
    ]}
    (tmp_path / "c1.geojson").write_text(json.dumps(geojson))
    card = _pair_card(tmp_path) | {"format": "vector", "options": {"label_suffix": ".geojson"}}
    dataset = build_dataset(card_from_dict(card))
    sample = dataset[0]
    filled = torch.nonzero(sample["mask"] == 1)
    assert 60 <= len(filled) <= 64 and filled.min() >= 4 and filled.max() <= 11  # the 8 x 8 square, reprojected
    assert len(sample["instances"]["labels"]) == 1
    assert "outside chip c1.tif" in dataset.rejects[0].reason
    geojson["features"][0]["properties"]["class"] = "road"
    (tmp_path / "c1.geojson").write_text(json.dumps(geojson))
    with pytest.raises(ValueError, match="class 'road' is not in dataset card"):
        build_dataset(card_from_dict(card))[0]


def test_synthetic_task_chips_are_binary_pairs(tmp_path):
    from training.synthetic import generate_archive

    scenes = generate_archive(tmp_path / "scenes", n_scenes=1, size=256, seed=0, labels=True, zone_size=128)
    chips = cut_task_chips(scenes, "iwp", tmp_path / "iwp", chip_size=64)
    assert chips and all(p.with_name(p.stem + ".labels.tif").is_file() for p in chips)
    card = load_card("evaluation/datasets/cards/synthetic_iwp.yaml", {"root": str(tmp_path / "iwp"),
                                                                       "generate": None})
    dataset = build_dataset(card)
    masks = [dataset[i]["mask"] for i in range(len(dataset))]
    values = torch.unique(torch.cat([m.flatten() for m in masks]))
    assert set(values.tolist()) <= {0, 1, IGNORE_INDEX} and 1 in values.tolist()
    with_instances = [dataset[i]["instances"] for i in range(len(dataset))]
    assert any(len(inst["labels"]) > 1 for inst in with_instances)  # every polygon its own instance
    with pytest.raises(ValueError, match="unknown task"):
        cut_task_chips(scenes, "glaciers", tmp_path / "x", 64)


@pytest.mark.skipif(not (MAPLE_DIR / "labelled").is_dir(), reason="real MAPLE chips (../shared) not available")
def test_real_maple_chips_load_with_both_classes():
    card = load_card("evaluation/datasets/cards/maple_iwp.yaml")
    train, val, test = (build_dataset(card, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (37, 15, 15) and not set(train.ids) & (set(val.ids) | set(test.ids))
    assert not {train.group_of[i] for i in train.ids} & {test.group_of[i] for i in test.ids}  # group-held-out
    sample = val[0]
    assert sample["image"].shape == (3, 656, 656)
    assert len(sample["instances"]["labels"]) > 0
    assert all(r.reason.startswith("degenerate") for r in train.rejects)


def test_concurrent_generation_of_a_synthetic_card_gives_one_complete_copy(tmp_path):
    """compare's process pool may build one card from several workers at once: each sees a complete folder."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluation.datasets.card import load_card
    from evaluation.datasets.synthetic_tasks import ensure_generated

    overrides = {"root": str(tmp_path / "rts"),
                 "generate": {"scenes_dir": str(tmp_path / "scenes"), "scenes": 2, "size": 256, "zone_size": 128,
                              "chip_size": 64}}
    card = load_card("evaluation/datasets/cards/synthetic_rts.yaml", overrides)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: ensure_generated(card), range(3)))
    images = sorted(p.name for p in (tmp_path / "rts").glob("*.tif") if not p.name.endswith(".labels.tif"))
    labels = sorted(p.name for p in (tmp_path / "rts").glob("*.labels.tif"))
    assert images and labels == [name[: -len(".tif")] + ".labels.tif" for name in images]
    assert sorted(p.name for p in (tmp_path / "scenes").glob("scene_*.tif") if ".labels" not in p.name) == [
        "scene_000.tif", "scene_001.tif"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # losers' temp folders removed
