"""evaluation.predict: whole-scene mapping of synthetic 11-bit GeoTIFF scenes with a tiny random-init model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from scipy import ndimage

from arctic_vit.corpus import CorpusContract
from evaluation.artefact import Predictor, load_finetuned, save_finetuned
from evaluation.overlap import tile_origins
from evaluation.predict import PredictConfig, predict
from evaluation.predict.__main__ import main
from evaluation.predict.stream import stream_semantic
from evaluation.predict.writer import NODATA_CLASS, semantic_polygons
from tests.test_artefact import CLASSES, tiny_model

BGRN = ("blue", "green", "red", "nir")
EIGHT = ("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2")
TILE = 64
GSD = 0.5


def write_scene(path: Path, height: int, width: int, bands=BGRN, collar: int = 0, seed: int = 0, crs="EPSG:32606",
                describe: bool = True, dtype: str = "uint16") -> Path:
    """A seeded 11-bit scene: smooth blobs over noise, a nodata (0) collar of ``collar`` px on the left."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(height, width)), 6)
    base = (base - base.min()) / (np.ptp(base) + 1e-9)
    data = np.stack([200 + 1500 * base * (0.5 + 0.5 * i / len(bands)) + rng.integers(0, 100, (height, width))
                     for i in range(len(bands))]).astype(np.uint16)
    data[:, :, :collar] = 0
    profile = dict(driver="GTiff", width=width, height=height, count=len(bands), dtype=dtype, nodata=0,
                   transform=from_origin(500000, 7800000, GSD, GSD), crs=crs, tiled=True, blockxsize=64,
                   blockysize=64)
    if dtype == "uint16":
        profile["NBITS"] = 11
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if describe:
            for i, b in enumerate(bands):
                dst.set_band_description(i + 1, b)
    return path


# small models on a shared 2-core machine run several times faster on one thread
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    model, corpus, b, kwargs = tiny_model("semantic")
    save_finetuned(folder, model, task="semantic", classes=CLASSES, corpus=corpus, tile_size=TILE,
                   normalization=b.normalization, encoder_provenance=b.describe(), build_kwargs=kwargs)
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_scene(folder / "s4.tif", 200, 230, collar=70, seed=1)  # collar wider than a tile: skipped windows
    write_scene(folder / "s8.tif", 130, 150, bands=EIGHT, seed=2)  # 8 bands: the model's four are fed
    imd = write_scene(folder / "simd.tif", 90, 100, describe=False, seed=3)  # band names from the .IMD sidecar
    imd.with_suffix(".IMD").write_text(
        'satId = "WV02";\nfirstLineTime = 2021-07-14T21:03:04.5Z;\n'
        + "".join(f"BEGIN_GROUP = BAND_{g}\nEND_GROUP = BAND_{g}\n" for g in ("B", "G", "R", "N"))
    )
    return folder


def _cfg(model_dir, input_path, out, **kw) -> PredictConfig:
    return PredictConfig(model=model_dir, input=input_path, out=out, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def mapped(model_dir, scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps")
    return predict(_cfg(model_dir, scenes, out, checkpoint_seconds=0)), out


class ConvSegmenter(torch.nn.Module):
    """Translation-equivariant stand-in for a segmentation model: DN / 2047 -> 5x5 conv -> K logits."""

    def __init__(self, bands: int = 4, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(bands, classes, 5, padding=2)
        self.conv.weight.data *= 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x / 2047.0)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_seam_streamed_scene_equals_whole_image_inference(tmp_path):
    path = write_scene(tmp_path / "seam.tif", 333, 301, seed=5)
    model = ConvSegmenter().eval()
    with rasterio.open(path) as src:
        strips = list(stream_semantic(src, (1, 2, 3, 4), model, 3, TILE, overlap=32, batch_size=5))
        whole_input = torch.from_numpy(src.read().astype(np.float32))[None]
    streamed = np.concatenate([s.probs for s in strips], axis=1)
    assert [s.row0 for s in strips[1:]] == [s.row1 for s in strips[:-1]] and strips[-1].row1 == 333
    with torch.no_grad():
        whole = torch.softmax(model(whole_input), 1)[0].numpy()
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() < 1e-5
    # predict's default on a CPU with native bf16: bf16 autocast, channels-last, on both sides
    model = model.to(memory_format=torch.channels_last)
    with rasterio.open(path) as src:
        bf16 = np.concatenate([s.probs for s in stream_semantic(src, (1, 2, 3, 4), model, 3, TILE, overlap=32,
                                                                autocast=bf16_autocast)], axis=1)
    with torch.inference_mode(), bf16_autocast():
        whole_bf16 = torch.softmax(model(whole_input.contiguous(memory_format=torch.channels_last)).float(), 1)
    assert np.abs(bf16 - whole_bf16[0].numpy()).max() < 1e-3


def test_map_outputs(mapped, scenes):
    summary, out = mapped
    totals = summary["totals"]
    assert (totals["scenes"], totals["done"], totals["failed"]) == (3, 3, 0)
    records = {r["scene_id"]: r for r in summary["scenes"]}
    assert records["s8"]["bands_used"] == list(BGRN)
    assert records["simd"]["acquired"] == "2021-07-14T21:03:04.500000Z"
    # windows: every tile of the grid is either run or skipped as nodata (all of its pixels in the collar)
    grid = tile_origins(200, 230, TILE, TILE // 4)
    in_collar = sum(c + TILE <= 70 for _, c in grid)
    assert records["s4"]["windows_skipped_nodata"] == in_collar > 0
    assert records["s4"]["windows_run"] == len(grid) - in_collar
    assert records["s4"]["km2_mapped"] == pytest.approx(200 * (230 - 70) * GSD**2 / 1e6)
    with rasterio.open(scenes / "s4.tif") as src, rasterio.open(out / "s4" / "class.tif") as cls, \
            rasterio.open(out / "s4" / "prob.tif") as prob:
        assert cls.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cls.crs == src.crs and cls.transform == src.transform and prob.count == len(CLASSES)
        classes, probs = cls.read(1), prob.read().astype(int)
    assert (classes[:, :70] == NODATA_CLASS).all() and (classes[:, 70:] < len(CLASSES)).all()
    assert (probs[:, :, :70] == 0).all()
    assert np.abs(probs[:, :, 70:].sum(0) - 255).max() <= len(CLASSES)  # rounded probabilities sum to 1
    clear = np.abs(probs[1] - probs[0]) >= 2  # not a rounding tie: the class is the most probable one
    np.testing.assert_array_equal(classes[clear], probs.argmax(0)[clear])


def test_polygons_match_the_class_raster(mapped):
    import geopandas as gpd

    summary, out = mapped
    gpkg = gpd.read_file(out / "s4" / "polygons.gpkg")
    parquet = gpd.read_parquet(out / "s4" / "polygons.parquet")
    assert list(gpkg.columns) == ["scene_id", "class_id", "class", "score", "area_m2", "acquired", "geometry"]
    assert gpkg.crs.to_epsg() == 3413 and parquet.crs.to_epsg() == 3413
    assert len(gpkg) == len(parquet) == summary["scenes"][0]["objects_per_class"]["iwp"]
    with rasterio.open(out / "s4" / "class.tif") as cls:
        classes = cls.read(1)
    _, regions = ndimage.label(classes == 1)
    assert len(gpkg) == regions  # one polygon per connected region
    assert gpkg["area_m2"].sum() == pytest.approx((classes == 1).sum() * GSD**2)  # area in the scene's UTM metres
    assert set(gpkg["scene_id"]) == {"s4"} and (gpkg["score"] > 0.5).all()


def test_polygons_rejoin_across_row_blocks(tmp_path):
    """Vectorising in blocks of 7 rows gives the same regions as in one block."""
    rng = np.random.default_rng(0)
    classes = (ndimage.gaussian_filter(rng.normal(size=(61, 53)), 2) > 0).astype(np.uint8)
    classes[ndimage.gaussian_filter(rng.normal(size=(61, 53)), 2) > 0.15] = 2
    probs = rng.integers(0, 256, (3, 61, 53)).astype(np.uint8)
    profile = dict(driver="GTiff", width=53, height=61, transform=from_origin(0, 61, 1, 1), crs="EPSG:32606")
    with rasterio.open(tmp_path / "c.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(classes[None])
    with rasterio.open(tmp_path / "p.tif", "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(probs)
    one = semantic_polygons(tmp_path / "c.tif", tmp_path / "p.tif", block_rows=1000)
    blocks = semantic_polygons(tmp_path / "c.tif", tmp_path / "p.tif", block_rows=7)

    def key(records):
        return sorted((r["class_id"], round(r["geometry"].area, 6), round(r["score"], 9), r["pixels"])
                      for r in records)

    assert key(one) == key(blocks)
    assert len(one) == sum(ndimage.label(classes == k)[1] for k in (1, 2))


def test_resume_after_interruption_gives_identical_outputs(model_dir, scenes, mapped, tmp_path, monkeypatch):
    import geopandas as gpd

    import evaluation.predict.stream as stream

    single = tmp_path / "in"
    single.mkdir()
    shutil.copy(scenes / "s4.tif", single / "s4.tif")
    out = tmp_path / "out"
    calls = {"n": 0}
    real = stream.fill_invalid

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # a kill in the middle of a strip, after a few checkpoints
        return real(*args)

    monkeypatch.setattr(stream, "fill_invalid", dying)
    with pytest.raises(KeyboardInterrupt):
        predict(_cfg(model_dir, single, out, checkpoint_seconds=0))
    assert (out / "s4" / ".partial" / "progress.json").is_file() and not (out / "s4" / "scene.json").exists()
    monkeypatch.setattr(stream, "fill_invalid", real)
    summary = predict(_cfg(model_dir, single, out, checkpoint_seconds=0))
    record = summary["scenes"][0]
    assert record["resumed_from_row_index"] > 0 and not (out / "s4" / ".partial").exists()
    reference = mapped[1] / "s4"
    assert record["windows_run"] == mapped[0]["scenes"][0]["windows_run"]
    for name in ("class.tif", "prob.tif"):
        with rasterio.open(out / "s4" / name) as a, rasterio.open(reference / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    a, b = gpd.read_parquet(out / "s4" / "polygons.parquet"), gpd.read_parquet(reference / "polygons.parquet")
    assert len(a) == len(b) and a.geometry.geom_equals(b.geometry).all() and (a["score"] == b["score"]).all()
    again = predict(_cfg(model_dir, single, out))  # finished scenes are not redone
    assert again["scenes"][0]["this_run"] == "already done"


def test_bad_inputs(model_dir, scenes, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(scenes / "simd.tif", folder / "good.tif")
    shutil.copy(scenes / "simd.IMD", folder / "good.IMD")
    (folder / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    clean = write_scene(tmp_path / "t.tif", 128, 128, seed=4)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        rasterio.shutil.copy(clean, folder / "truncated.tif", driver="GTiff", compress="deflate", tiled=True)
    data = (folder / "truncated.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) * 2 // 3])
    summary = predict(_cfg(model_dir, folder, tmp_path / "out"))
    status = {r["scene_id"]: r for r in summary["scenes"]}
    assert status["good"]["status"] == "done"
    assert status["corrupt"]["status"] == "failed" and "corrupt.tif" in status["corrupt"]["reason"]
    assert status["truncated"]["status"] == "failed" and status["truncated"]["reason"]
    assert summary["totals"]["failed"] == 2

    rgb = write_scene(tmp_path / "n.tif", 80, 80, bands=("nir", "green", "red"))
    with pytest.raises(ValueError, match=r"needs bands \['blue', 'green', 'red', 'nir'\] but the scene has "
                                         r"\['nir', 'green', 'red'\]"):
        predict(_cfg(model_dir, rgb, tmp_path / "o2"))
    nocrs = write_scene(tmp_path / "nocrs.tif", 80, 80, crs=None)
    with pytest.raises(ValueError, match=r"no CRS.*--allow-ungeoreferenced"):
        predict(_cfg(model_dir, nocrs, tmp_path / "o3"))
    summary = predict(_cfg(model_dir, nocrs, tmp_path / "o3", allow_ungeoreferenced=True))
    assert summary["totals"]["done"] == 1 and np.isnan(summary["scenes"][0]["km2_mapped"])
    assert json.loads((tmp_path / "o3" / "summary.json").read_text())["scenes"][0]["km2_mapped"] is None
    eight_bit = write_scene(tmp_path / "u8.tif", 80, 80, dtype="uint8")
    with pytest.raises(ValueError, match=r"8-bit digital numbers \(uint8 data\) but the model expects 11-bit"):
        predict(_cfg(model_dir, eight_bit, tmp_path / "o4"))
    unnamed = write_scene(tmp_path / "unnamed.tif", 80, 80, describe=False)
    with pytest.raises(ValueError, match="no band names for its 4 bands"):
        predict(_cfg(model_dir, unnamed, tmp_path / "o5"))
    assert predict(_cfg(model_dir, unnamed, tmp_path / "o5", bands=BGRN))["totals"]["done"] == 1


def test_output_folder_of_another_model_is_refused(model_dir, scenes, tmp_path):
    other = tmp_path / "other_model"
    model, corpus, b, kwargs = tiny_model("semantic", seed=1)
    save_finetuned(other, model, task="semantic", classes=CLASSES, corpus=corpus, tile_size=TILE,
                   normalization=b.normalization, encoder_provenance=b.describe(), build_kwargs=kwargs)
    scene = scenes / "simd.tif"
    out = tmp_path / "out"
    predict(_cfg(model_dir, scene, out))
    with pytest.raises(ValueError, match=r"holds a run of another model or settings .*--overwrite"):
        predict(_cfg(other, scene, out))
    summary = predict(_cfg(other, scene, out, overwrite=True))
    assert summary["scenes"][0]["this_run"] == "mapped"


def test_cli_and_scoring_against_labels(model_dir, scenes, mapped, tmp_path, capsys):
    """The map scored against itself as labels: every F1 is exactly 1 (scores run end to end)."""
    labels = tmp_path / "labels"
    labels.mkdir()
    with rasterio.open(mapped[1] / "s8" / "class.tif") as src:
        profile = src.profile | {"driver": "GTiff"}
        classes = src.read()
    with rasterio.open(labels / "s8.tif", "w", **profile) as dst:
        dst.write(classes)
    code = main(["--model", str(model_dir), "--input", str(scenes / "s8.tif"), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--labels", str(labels), "--no-progress", "--target-crs", "scene", "--overlay"])
    assert code == 0 and json.loads(capsys.readouterr().out)["done"] == 1
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "o" / "s8" / "overlay.png"))
    assert png.shape == (130, 150, 3)
    stretched = png[classes[0] == 0]  # background pixels: the stretched scene, spanning the full range
    assert stretched.min() == 0 and stretched.max() == 255
    record = json.loads((tmp_path / "o" / "s8" / "scene.json").read_text())
    scores = record["scores"]
    assert scores["pixel_f1"] == scores["object_f1"] == scores["detection_f1"] == scores["delineation_f1"] == 1.0
    assert main(["--model", str(tmp_path), "--input", str(scenes), "--out", str(tmp_path / "x"), "--no-progress"]) \
        == 2
    assert "predictor.json: not found" in capsys.readouterr().err


def test_score_maps_hand_computed():
    from evaluation.predict.score import regions, score_maps

    target = np.zeros((20, 20), dtype=np.uint8)
    target[2:6, 2:6] = 1  # object A: 16 px
    target[10:14, 10:14] = 1  # object B: 16 px
    pred = np.zeros_like(target)
    pred[2:6, 2:5] = 1  # 12 px inside A: IoU 0.75 -> object TP
    pred[16:18, 16:18] = 1  # 4 px false positive
    scores = score_maps(pred, target, 2, ("background", "x"), regions(pred, 2))
    assert scores["object_counts"] == [[1, 1, 1]] and scores["object_f1"] == pytest.approx(0.5)
    assert scores["pixel_counts"] == [[12, 4, 20]] and scores["pixel_f1"] == pytest.approx(24 / 48)
    assert scores["delineation_counts"] == [[12, 0, 4]]


def test_instance_model_maps_merged_instances(tmp_path):
    folder = tmp_path / "inst"
    model, corpus, b, kwargs = tiny_model("instance")
    save_finetuned(folder, model, task="instance", classes=CLASSES, corpus=corpus, tile_size=TILE,
                   normalization=b.normalization, encoder_provenance=b.describe(), build_kwargs=kwargs)
    scene = write_scene(tmp_path / "i.tif", 110, 120, collar=10, seed=7)
    summary = predict(_cfg(folder, scene, tmp_path / "out", score_threshold=0.0))
    record = summary["scenes"][0]
    assert record["status"] == "done", record
    import geopandas as gpd

    polygons = gpd.read_parquet(tmp_path / "out" / "i" / "polygons.parquet")
    assert len(polygons) == record["objects_per_class"]["iwp"]
    with rasterio.open(tmp_path / "out" / "i" / "class.tif") as src:
        classes = src.read(1)
    assert (classes[:, :10] == NODATA_CLASS).all()
    assert ((classes == 1).sum() > 0) == (len(polygons) > 0)


def test_predictor_protocol_accepts_any_semantic_module(tmp_path):
    """predict_scene works on a Predictor built in memory (what the benchmark's conv stand-in uses)."""
    from evaluation.predict import predict_scene
    from evaluation.predict.scenes import Scene, inspect

    corpus = CorpusContract(BGRN, 11, mean=(0.1,) * 4, std=(0.2,) * 4)
    predictor = Predictor(ConvSegmenter(classes=2).eval(), "semantic", CLASSES, corpus, TILE, "test", {}, "0",
                          tmp_path)
    path = write_scene(tmp_path / "c.tif", 100, 90, seed=9)
    scene = inspect(Scene(path, "c"), BGRN, 11, False)
    cfg = PredictConfig(model=tmp_path, input=path, out=tmp_path / "o", progress=False, precision="float32")
    record = predict_scene(scene, predictor, cfg, torch.device("cpu"))
    with rasterio.open(tmp_path / "o" / "c" / "prob.tif") as src:
        probs = src.read().astype(np.float32) / 255
    with rasterio.open(path) as src, torch.no_grad():
        whole = torch.softmax(ConvSegmenter(classes=2)(torch.from_numpy(src.read().astype(np.float32))[None]), 1)
    assert np.abs(probs - whole[0].numpy()).max() <= 0.5 / 255 + 1e-6  # uint8 rounding only
    assert record["status"] == "done"


@pytest.mark.slow
def test_dask_scheduler_one_task_per_scene_same_outputs(model_dir, scenes, mapped, tmp_path):
    """--scheduler local: the scenes run as Dask tasks on worker processes and give the same maps."""
    summary = predict(_cfg(model_dir, scenes, tmp_path / "dask", scheduler="local", n_workers=2, threads=1))
    assert summary["totals"]["done"] == 3
    for scene_id in ("s4", "s8", "simd"):
        with rasterio.open(tmp_path / "dask" / scene_id / "prob.tif") as a, \
                rasterio.open(mapped[1] / scene_id / "prob.tif") as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_scene_smaller_than_a_tile_is_reflect_padded(tmp_path):
    """A 40 x 50 scene under a 64-px tile: streamed result = predict_tiled's reflection padding of the whole image."""
    from evaluation.overlap import predict_tiled

    path = write_scene(tmp_path / "small.tif", 40, 50, seed=11)
    model = ConvSegmenter().eval()
    with rasterio.open(path) as src:
        strips = list(stream_semantic(src, (1, 2, 3, 4), model, 3, TILE, overlap=16))
        image = torch.from_numpy(src.read().astype(np.float32))
    assert len(strips) == 1 and strips[0].probs.shape == (3, 40, 50)
    expected = predict_tiled(model, image, TILE, 16)
    np.testing.assert_allclose(strips[0].probs, expected.numpy(), atol=1e-6)


def test_detections_become_scene_instances_and_paint_by_score():
    """Mask R-CNN output of one tile -> TileInstances in scene pixels (nodata and padding cut) -> class/prob strips."""
    from evaluation.predict.stream import detections_to_instances
    from evaluation.predict.writer import instance_strip

    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, 1:4, 1:5] = 0.9  # kept
    masks[1, 0, 2:6, 3:8] = 0.8  # kept, overlaps the first; its last column lies outside the scene
    masks[2, 0, 5:7, 5:7] = 0.9  # below the score threshold
    output = {"masks": masks, "labels": torch.tensor([1, 2, 1]), "scores": torch.tensor([0.75, 0.875, 0.25])}
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[1, 1] = False
    found = detections_to_instances(output, row=10, col=20, valid=valid, height=100, width=27, score_threshold=0.5)
    assert [(i.row, i.col, i.mask.shape, i.label) for i in found] == [(11, 21, (3, 4), 1), (12, 23, (4, 4), 2)]
    assert not found[0].mask[0, 0]  # the nodata pixel is not part of the object
    valid_rows = np.ones((8, 27), dtype=bool)
    classes, probs = instance_strip(found, 10, 18, 27, valid_rows, 3)
    assert classes[1, 21] == 0 and classes[1, 22] == 1  # nodata pixel left background, the rest class 1
    assert classes[2, 23] == 2 and probs[2, 2, 23] == round(255 * 0.875)  # the higher score painted on top
    assert probs[1, 2, 23] == round(255 * 0.75) and classes[2, 21] == 1


def test_bf16_precision_on_cpu_is_close_to_float32(model_dir, scenes, tmp_path):
    from timm.layers import PatchEmbed

    from evaluation.predict.run import cpu_bf16, float32_patch_embedding, inference_precision, semantic_forward
    from training.runtime import cpu_supports_bf16

    cpu = torch.device("cpu")
    assert inference_precision("auto", cpu).dtype is None
    assert cpu_bf16("auto", cpu) == cpu_supports_bf16() and not cpu_bf16("float32", cpu)
    predictor = load_finetuned(model_dir)
    x = torch.from_numpy(np.random.default_rng(0).integers(100, 2000, (2, 4, TILE, TILE)).astype(np.float32))
    forward = semantic_forward(predictor, torch.zeros(1, 2), cpu)
    embed = next(m for m in predictor.model.modules() if isinstance(m, PatchEmbed))
    seen = []
    hook = embed.proj.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.inference_mode():
        reference = predictor.model(x)
        torch.testing.assert_close(forward(x), reference)  # channels-last: float rounding only
        with float32_patch_embedding(predictor.model) as patched, torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = forward(x).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward(x)
    hook.remove()
    assert patched == 1 and seen == [torch.float32, torch.float32, torch.float32, torch.bfloat16]
    assert "forward" not in vars(embed)  # restored
    assert (torch.softmax(mixed, 1) - torch.softmax(reference, 1)).abs().max() < 0.02
    summary = predict(_cfg(model_dir, scenes / "s8.tif", tmp_path / "bf16", precision="bf16"))
    assert summary["identity"]["precision"] == "bf16"
    predict(_cfg(model_dir, scenes / "s8.tif", tmp_path / "fp32", precision="float32"))
    with rasterio.open(tmp_path / "bf16" / "s8" / "prob.tif") as a, \
            rasterio.open(tmp_path / "fp32" / "s8" / "prob.tif") as b:
        diff = np.abs(a.read().astype(int) - b.read().astype(int))
    assert diff.max() <= 0.05 * 255 and diff.mean() < 0.01 * 255
    with pytest.raises(ValueError, match="--precision 'fp8'"):
        predict(_cfg(model_dir, scenes / "s8.tif", tmp_path / "x", precision="fp8"))


def test_catalog_input_gives_bands_ids_and_dates(model_dir, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    write_scene(folder / "a.tif", 70, 90, describe=False, seed=12)
    write_scene(folder / "b.tif", 70, 90, bands=EIGHT, seed=13)
    (tmp_path / "catalog.csv").write_text("path,scene_id,bands,acquired\n"
                                          "archive/a.tif,A1,\"blue,green,red,nir\",2020-08-01T20:00:00Z\n"
                                          "archive/b.tif,B1,,2019-07-02T21:00:00Z\n")
    summary = predict(_cfg(model_dir, tmp_path / "catalog.csv", tmp_path / "out"))
    records = {r["scene_id"]: r for r in summary["scenes"]}
    assert records["A1"]["status"] == records["B1"]["status"] == "done"
    assert records["A1"]["acquired"] == "2020-08-01T20:00:00Z" and records["B1"]["bands_used"] == list(BGRN)
    import geopandas as gpd

    polygons = gpd.read_parquet(tmp_path / "out" / "B1" / "polygons.parquet")
    assert set(polygons["acquired"]) <= {"2019-07-02T21:00:00Z"} and set(polygons["scene_id"]) <= {"B1"}


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_identical_outputs(model_dir, tmp_path):
    """A real kill (SIGKILL of the CLI process after its first checkpoints), then the same command again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    write_scene(folder / "k.tif", 420, 300, collar=30, seed=21)
    command = [sys.executable, "-m", "evaluation.predict", "--model", str(model_dir), "--input", str(folder),
               "--device", "cpu", "--threads", "1", "--checkpoint-seconds", "0", "--no-progress"]
    repo = Path(__file__).resolve().parents[1]
    reference = subprocess.run([*command, "--out", str(tmp_path / "ref")], capture_output=True, text=True,
                               timeout=600, check=False, cwd=repo)
    assert reference.returncode == 0, reference.stderr[-2000:]
    out = tmp_path / "out"
    process = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=repo)
    progress = out / "k" / ".partial" / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["next_row"] >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "k" / "scene.json").exists()
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600, check=False,
                             cwd=repo)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((out / "k" / "scene.json").read_text())
    assert record["resumed_from_row_index"] >= 2
    for name in ("class.tif", "prob.tif"):
        with rasterio.open(out / "k" / name) as a, rasterio.open(tmp_path / "ref" / "k" / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())


def test_scoring_against_vector_labels(model_dir, scenes, tmp_path):
    """The map's own polygons as vector labels (class names, scene CRS): every F1 is exactly 1; and two touching
    label polygons stay two objects."""
    import geopandas as gpd
    from shapely.geometry import box

    out = tmp_path / "o"
    predict(_cfg(model_dir, scenes / "s8.tif", out, target_crs=None))
    labels = tmp_path / "labels"
    labels.mkdir()
    polygons = gpd.read_parquet(out / "s8" / "polygons.parquet")
    polygons[["class", "geometry"]].to_file(labels / "s8.gpkg")
    shutil.rmtree(out)
    summary = predict(_cfg(model_dir, scenes / "s8.tif", out, target_crs=None, labels=labels))
    scores = summary["scenes"][0]["scores"]
    assert scores["objects"]["ground_truth"] == scores["objects"]["predicted"] == len(polygons)
    assert scores["pixel_f1"] == scores["object_f1"] == scores["delineation_f1"] == 1.0

    from evaluation.predict.score import vector_labels

    with rasterio.open(scenes / "s8.tif") as src:
        x0, y0 = src.transform * (10, 10)
        touching = gpd.GeoDataFrame({"class_id": [1, 1]}, geometry=[box(x0, y0 - 5, x0 + 5, y0),
                                                                     box(x0 + 5, y0 - 5, x0 + 10, y0)], crs=src.crs)
        touching.to_parquet(tmp_path / "t.parquet")
        target, objects = vector_labels(tmp_path / "t.parquet", CLASSES, src.crs, src.transform, src.height,
                                        src.width)
    assert len(objects) == 2 and [o.mask.sum() for o in objects] == [100, 100]  # 5 m = 10 px at 0.5 m
    assert (target == 1).sum() == 200


def test_bit_depth_is_checked_and_an_untagged_uint16_scene_is_warned_about(tmp_path):
    """NBITS 11 on an 11-bit model: silent; 8-bit data: refused; uint16 without NBITS: a warning in the summary."""
    from evaluation.predict import scenes as scn

    tagged = write_scene(tmp_path / "tagged.tif", 64, 64)
    (scene,) = scn.discover(tagged)
    assert scn.inspect(scene, BGRN, 11, False).warnings == []
    with pytest.raises(scn.SceneError, match="11-bit"):
        scn.inspect(scn.discover(tagged)[0], BGRN, 8, False)
    untagged = tmp_path / "untagged.tif"
    with rasterio.open(tagged) as src:
        profile, data = src.profile, src.read()
    profile.pop("nbits", None)
    with rasterio.open(untagged, "w", **profile) as dst:
        dst.write(data)
        for i, b in enumerate(BGRN):
            dst.set_band_description(i + 1, b)
    (scene,) = scn.discover(untagged)
    assert any("records no bit depth" in w for w in scn.inspect(scene, BGRN, 11, False).warnings)


def test_untagged_uint16_scene_takes_its_bit_depth_from_the_vendor_sidecar(tmp_path):
    """IMD bitsPerPixel 16 of a WV02 scene: 11-bit (no warning, an 8-bit model refuses it naming the sidecar);
    bitsPerPixel 8: refused by an 11-bit model; an unknown sensor: the warning names it; tiles share the product's."""
    from evaluation.predict import scenes as scn

    untagged = write_scene(tmp_path / "scene.tif", 64, 64)
    with rasterio.open(untagged) as src:
        profile, data = src.profile, src.read()
    profile.pop("nbits", None)

    def scene_with(name: str, imd: str | None, xml: str | None = None):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = BGRN
        if imd is not None:
            (tmp_path / f"{name.split('_R')[0]}.IMD").write_text(imd)
        if xml is not None:
            path.with_suffix(".XML").write_text(xml)
        return scn.discover(path)[0]

    wv02 = 'satId = "WV02";\nbitsPerPixel = 16;\n'
    assert scn.inspect(scene_with("wv02", wv02), BGRN, 11, False).warnings == []
    with pytest.raises(scn.SceneError, match=r"11-bit digital numbers \(wv02b.IMD bitsPerPixel = 16 of a WV02"):
        scn.inspect(scene_with("wv02b", wv02), BGRN, 8, False)
    assert scn.inspect(scene_with("prod_R1C2", wv02), BGRN, 11, False).warnings == []  # the product's IMD
    with pytest.raises(scn.SceneError, match="8-bit digital numbers"):
        scn.inspect(scene_with("dra", 'satId = "WV03";\nbitsPerPixel = 8;\n'), BGRN, 11, False)
    xml = "<isd><IMD><BITSPERPIXEL>16</BITSPERPIXEL><IMAGE><SATID>GE01</SATID></IMAGE></IMD></isd>"
    assert scn.inspect(scene_with("ge01", None, xml), BGRN, 11, False).warnings == []
    (warning,) = scn.inspect(scene_with("odd", 'satId = "XX09";\nbitsPerPixel = 16;\n'), BGRN, 11, False).warnings
    assert "unknown sensor 'XX09'" in warning and "read as the model's 11-bit" in warning
    (warning,) = scn.inspect(scene_with("bare", None), BGRN, 11, False).warnings
    assert "no vendor sidecar" in warning


def test_map_scene_for_report_writes_outputs_and_scores_like_score_scene(tmp_path):
    from PIL import Image

    from evaluation.artefact import build_kwargs_from_recipe, load_finetuned
    from evaluation.backbones import build_backbone
    from evaluation.datasets.card import DatasetCard
    from evaluation.models import SemanticSegmentationModel
    from evaluation.predict import map_scene_for_report
    from evaluation.predict.score import score_scene
    from tests.test_artefact import _cfg as recipe
    from training.synthetic import LABEL_CLASSES, LABELS_SUFFIX, generate_archive

    classes = tuple(LABEL_CLASSES.values())
    card = DatasetCard(name="s", format="raster_pairs", root=Path("."), classes=classes, bands=BGRN, bit_depth=11)
    torch.manual_seed(0)
    b = build_backbone("arctic_mae_vit_tiny", card, TILE, weights="none",
                       dataset_stats={"mean": [300.0, 400.0, 350.0, 900.0], "std": [80.0, 90.0, 100.0, 200.0]})
    kwargs = build_kwargs_from_recipe(recipe("semantic"), "arctic_mae_vit_tiny")
    model = SemanticSegmentationModel(b, len(classes), **kwargs["model_kwargs"]).eval()
    model_dir = tmp_path / "model"
    save_finetuned(model_dir, model, task="semantic", classes=classes, corpus=CorpusContract(BGRN, 11, gsd_m=0.5),
                   tile_size=TILE, normalization=b.normalization, encoder_provenance=b.describe(),
                   build_kwargs=kwargs)
    (scene,) = generate_archive(tmp_path / "archive", n_scenes=1, size=128, seed=3, zone_size=64, catalog=False)
    labels = scene.with_name(scene.stem + LABELS_SUFFIX)
    out = tmp_path / "report"
    record = map_scene_for_report(model_dir, scene, labels, out)
    assert json.loads(json.dumps(record)) == record  # JSON-ready
    for relative in record["outputs"].values():
        assert (out / relative).is_file(), relative
    with Image.open(out / record["outputs"]["overlay_png"]) as png, rasterio.open(scene) as src:
        assert png.width * src.height == png.height * src.width
        valid = int((src.read_masks().min(axis=0) > 0).sum())
        km2 = valid * abs(src.transform.a * src.transform.e) / 1e6
    assert record["km2_mapped"] == pytest.approx(km2)
    assert set(record["objects_per_class"]) == set(classes[1:])
    direct = score_scene(out / scene.stem / "class.tif", out / scene.stem / "prob.tif", labels, scene.stem,
                         load_finetuned(model_dir, "cpu"))
    assert record["scores"] == json.loads(json.dumps(direct))
    assert record["scores"]["objects"]["ground_truth"] > 0
    again = map_scene_for_report(model_dir, scene, None, out)  # resumed: not redone, no scores asked
    assert again["scores"] is None and again["objects_per_class"] == record["objects_per_class"]


@pytest.mark.parametrize("kind", ["nodata", "nan", "internal_mask", "no_mask"])
def test_valid_pixels_equal_gdal_masks(tmp_path, kind):
    """valid_pixels (masks derived from the data already read for nodata-only bands) == GDAL's read_masks."""
    from rasterio.windows import Window

    from evaluation.predict.stream import valid_pixels

    rng = np.random.default_rng(4)
    dtype = "float32" if kind == "nan" else "uint16"
    data = rng.integers(0, 4, (3, 40, 50)).astype(dtype)  # many zeros, in some bands only
    profile = dict(driver="GTiff", width=50, height=40, count=3, dtype=dtype, crs="EPSG:32606",
                   transform=from_origin(500000, 7800000, 1, 1))
    if kind == "nodata":
        profile["nodata"] = 0
    elif kind == "nan":
        profile["nodata"] = float("nan")
        data[data == 0] = np.nan
    path = tmp_path / f"{kind}.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if kind == "internal_mask":
            dst.write_mask((data.min(axis=0) != 3).astype(np.uint8) * 255)
    window = Window(5, 3, 40, 30)
    with rasterio.open(path) as src:
        raw = src.read([1, 3], window=window)
        expected = src.read_masks([1, 3], window=window).min(axis=0) > 0
        got = valid_pixels(src, (1, 3), raw, window)
    assert got.dtype == bool and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert (kind == "no_mask") == bool(got.all())


def test_default_overlap_keeps_seams_and_edge_falling_weights(tmp_path):
    """The default overlap (32 px at 224-px tiles): weights still fall towards tile edges, streamed tiles equal
    whole-image inference of a translation-equivariant model, and a 1344-px scene runs 49 forwards, not 64."""
    from evaluation.overlap import MIN_WEIGHT, blend_weights
    from evaluation.predict.run import default_overlap

    tile = 224
    overlap = default_overlap(tile)
    assert overlap == 32 and _cfg(Path("m"), Path("i"), Path("o")).identity("x", tile)["overlap"] == overlap
    profile = blend_weights(tile, overlap)[tile // 2]
    margin = overlap // 4
    assert np.all(profile[:margin] == MIN_WEIGHT) and np.all(np.diff(profile[margin - 1 : overlap - margin + 1]) > 0)
    assert np.all(profile[overlap - margin : tile - overlap + margin] == 1) and np.allclose(profile, profile[::-1])
    assert len(tile_origins(1344, 1344, tile, overlap)) == 49 and len(tile_origins(1344, 1344, tile, 56)) == 64
    path = write_scene(tmp_path / "seam.tif", 520, 470, seed=6)
    model = ConvSegmenter().eval()
    with rasterio.open(path) as src:
        streamed = np.concatenate([s.probs for s in stream_semantic(src, (1, 2, 3, 4), model, 3, tile, overlap)],
                                  axis=1)
        with torch.no_grad():
            whole = torch.softmax(model(torch.from_numpy(src.read().astype(np.float32))[None]), 1)[0].numpy()
    assert np.abs(streamed - whole).max() < 1e-5


def test_folder_input_skips_label_rasters_and_scores_against_them(model_dir, scenes, mapped, tmp_path):
    """A folder holding scene.tif + scene.labels.tif (``training.synthetic.LABELS_SUFFIX``) maps one scene, and
    the same folder as --labels scores it against scene.labels.tif, not against the scene itself."""
    from evaluation.predict.scenes import discover
    from training.synthetic import LABELS_SUFFIX

    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(scenes / "s8.tif", folder / "scene.tif")
    with rasterio.open(mapped[1] / "s8" / "class.tif") as src:  # the map of the same pixels: every F1 is 1
        profile = src.profile | {"driver": "GTiff"}
        with rasterio.open(folder / f"scene{LABELS_SUFFIX}", "w", **profile) as dst:
            dst.write(src.read())
    assert [s.scene_id for s in discover(folder)] == ["scene"]
    summary = predict(_cfg(model_dir, folder, tmp_path / "out", labels=folder, target_crs=None))
    assert summary["totals"]["scenes"] == summary["totals"]["done"] == 1
    scores = summary["scenes"][0]["scores"]
    assert scores["pixel_f1"] == scores["object_f1"] == 1.0
    (folder / "scene.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"label rasters \*\.labels\.tif are not scenes"):
        discover(folder)


class _CountingReads:
    """A rasterio dataset whose ``read`` windows are recorded (everything else forwarded)."""

    def __init__(self, src) -> None:
        self._src, self.rows_read = src, []

    def read(self, *args, window, **kwargs):
        self.rows_read.append((window.row_off, window.row_off + window.height))
        return self._src.read(*args, window=window, **kwargs)

    def __getattr__(self, name):
        return getattr(self._src, name)


@pytest.mark.parametrize("blocks", ["tiled_64", "tiled_96", "strips_1", "one_strip"])
def test_strip_reader_reads_each_row_once_and_equals_direct_reads(tmp_path, blocks):
    """StripReader (tile 64, overlap 16, scene 200 x 150 with a nodata collar): every strip equals a direct window
    read of the same rows (data, GDAL valid mask, reflect padding of the last strip); scene rows are read from the
    file once in total, whatever the block layout, and the buffer never holds more than tile + block height rows."""
    from rasterio.windows import Window

    from evaluation.predict.stream import StripReader, grid

    src_path = write_scene(tmp_path / "s.tif", 200, 150, collar=20, seed=5)
    layout = {"tiled_64": dict(tiled=True, blockxsize=64, blockysize=64),
              "tiled_96": dict(tiled=True, blockxsize=96, blockysize=96),
              "strips_1": dict(tiled=False, blockysize=1), "one_strip": dict(tiled=False, blockysize=200)}[blocks]
    path = tmp_path / f"{blocks}.tif"
    with rasterio.open(src_path) as src:
        profile, data = src.profile | layout, src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    rows, _, _, _ = grid(200, 150, TILE, 16)
    with rasterio.open(path) as src:
        block_height = src.block_shapes[0][0]
        counting = _CountingReads(src)
        reader = StripReader(counting, (1, 2, 3, 4), TILE)
        for row in rows:
            image, valid = reader.read(row)
            h = min(TILE, 200 - row)
            window = Window(0, row, 150, h)
            expected = torch.from_numpy(src.read(window=window).astype(np.float32))
            expected_valid = torch.from_numpy(src.read_masks(window=window).min(axis=0) > 0)
            assert image.shape == (4, TILE, 150) and valid.shape == (TILE, 150)
            torch.testing.assert_close(image[:, :h], expected, rtol=0, atol=0)
            assert torch.equal(valid[:h], expected_valid)
            if h < TILE:  # reflected at the bottom, as pad_to_tile of the whole scene
                torch.testing.assert_close(image[:, h:], expected.flip(1)[:, 1 : TILE - h + 1], rtol=0, atol=0)
            assert reader.buffered_rows <= TILE + (block_height if block_height <= TILE else 1)
        with pytest.raises(ValueError, match="must not decrease"):
            reader.read(rows[-2])
    read = [r for lo, hi in counting.rows_read for r in range(lo, hi)]
    assert sorted(read) == list(range(200))  # each scene row once, none twice
    if blocks == "tiled_64":  # block-aligned: every read but the first starts on a block boundary
        assert all(lo % 64 == 0 for lo, _ in counting.rows_read)


def test_gdal_block_cache_is_the_size_gdal_env_states():
    """rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64, in bytes (a bare 64 meant 64 bytes: no block
    cache, each overlapping strip re-decoded its blocks); under GDAL_ENV GDAL's cache is 64 MiB."""
    import ctypes

    from evaluation.predict.writer import GDAL_ENV

    libraries = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                        if "libgdal" in line and "rasterio" in line}) if Path("/proc/self/maps").is_file() else []
    if not libraries:  # a system GDAL, or no /proc: the library rasterio uses cannot be told apart
        pytest.skip("rasterio's bundled libgdal is not visible in /proc/self/maps")
    gdal = ctypes.CDLL(libraries[0])
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    with rasterio.Env(**GDAL_ENV):
        assert gdal.GDALGetCacheMax64() == 64 * 2**20
