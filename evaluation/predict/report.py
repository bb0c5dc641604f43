"""One scene mapped for a report (the demo): maps, polygons, overlay PNG and scores in one JSON-ready dict."""

from __future__ import annotations

import time
from pathlib import Path

from evaluation.artefact import load_finetuned
from evaluation.predict.run import SUMMARY_NAME, PredictConfig, predict
from evaluation.predict.score import label_path, score_scene

OUTPUT_FILES = {"class_raster": "class.tif", "probability_raster": "prob.tif", "polygons_gpkg": "polygons.gpkg",
                "polygons_parquet": "polygons.parquet", "overlay_png": "overlay.png"}


def map_scene_for_report(model_dir: Path, scene: Path, labels: Path | None, out_dir: Path,
                         device: str = "cpu") -> dict:
    """Map ``scene`` with the model folder ``model_dir`` into ``out_dir`` -> a JSON-ready record.

    Writes ``out_dir/<scene_id>/`` (class/probability COGs, GeoPackage + GeoParquet polygons, ``overlay.png``: true
    colour + predicted classes) and ``out_dir/summary.json``. ``labels``: a label raster on the scene's grid (band 1
    = class ids; e.g. ``training.synthetic``'s ``X.labels.tif``), label vectors, or a folder holding
    ``<scene_id>.tif`` / ``.labels.tif`` / ``.gpkg`` ...; the map is scored against it (``evaluation.predict.score``:
    object F1 at IoU >= 0.5, detection / delineation F1, pixel F1). Paths in the record are relative to ``out_dir``.
    A scene already mapped in ``out_dir`` by the same model and settings is not redone (resume)."""
    start = time.perf_counter()
    model_dir, scene, out_dir = Path(model_dir), Path(scene), Path(out_dir)
    if not scene.is_file():
        raise FileNotFoundError(f"scene {scene}: not a file")
    labels = Path(labels) if labels is not None else None
    summary = predict(PredictConfig(model=model_dir, input=scene, out=out_dir, device=device, overlay=True,
                                    labels=labels, progress=False))
    record = summary["scenes"][0]
    if record["status"] != "done":
        raise RuntimeError(f"scene {scene} failed: {record.get('reason')}")
    scene_id = record["scene_id"]
    folder = out_dir / scene_id
    outputs = {key: str((folder / name).relative_to(out_dir)) for key, name in OUTPUT_FILES.items()}
    outputs["summary"] = SUMMARY_NAME
    scores = record.get("scores") if labels is not None else None
    if labels is not None and (scores is None or scores["labels"] != str(label_path(labels, scene_id))):
        # mapped by an earlier call against other labels: score this map against these (class-map regions)
        scores = score_scene(folder / "class.tif", folder / "prob.tif", labels, scene_id,
                             load_finetuned(model_dir, "cpu"))
    return {
        "scene_id": scene_id, "scene": str(scene), "model": str(model_dir), "device": device,
        "outputs": outputs, "height": record["height"], "width": record["width"],
        "km2_mapped": record["km2_mapped"], "objects_per_class": record["objects_per_class"],
        "windows_run": record["windows_run"], "windows_skipped_nodata": record["windows_skipped_nodata"],
        "scores": scores, "warnings": record["warnings"],
        "seconds": {**record["seconds"], "total": round(time.perf_counter() - start, 2)},
    }
