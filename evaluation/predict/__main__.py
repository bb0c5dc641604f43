"""python -m evaluation.predict --model MODEL_DIR --input SCENE.tif|FOLDER|catalog.csv --out DIR [options]"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from evaluation.devices import DEVICE_CHOICES
from evaluation.predict.run import PredictConfig, predict


def parse_args(argv: list[str] | None = None) -> PredictConfig:
    p = argparse.ArgumentParser(prog="python -m evaluation.predict",
                                description="Map whole scenes with a finetuned model folder: class/probability "
                                            "COGs, GeoPackage/GeoParquet polygons, summary.json.")
    p.add_argument("--model", required=True, type=Path, help="finetuned model folder (predictor.json)")
    p.add_argument("--input", required=True, type=Path, help="a GeoTIFF scene, a folder of them, or a catalog CSV")
    p.add_argument("--out", required=True, type=Path, help="output folder (resumable)")
    p.add_argument("--device", default="auto", help=DEVICE_CHOICES)
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bf16"),
                   help="auto: bf16 autocast on CUDA, float32 on CPU; bf16 also on CPUs with native bf16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--overlap", type=int, default=None, help="tile overlap in px (default tile_size // 7)")
    p.add_argument("--target-crs", default="EPSG:3413", help="CRS of the polygons; 'scene' keeps the scene's")
    p.add_argument("--bands", default=None, help="scene band names when the files carry none, e.g. blue,green,red,nir")
    p.add_argument("--score-threshold", type=float, default=0.5, help="instance models: minimum score")
    p.add_argument("--labels", type=Path, default=None,
                   help="folder of label rasters <scene_id>.tif (or one label file): score the maps")
    p.add_argument("--overlay", action="store_true", help="also write <scene>/overlay.png (true colour + classes)")
    p.add_argument("--scheduler", default="synchronous", help="synchronous | local | tcp://host:8786 (Dask)")
    p.add_argument("--n-workers", type=int, default=2, help="local Dask cluster size")
    p.add_argument("--threads", type=int, default=None, help="torch threads per scene task")
    p.add_argument("--checkpoint-seconds", type=float, default=30.0)
    p.add_argument("--allow-ungeoreferenced", action="store_true", help="map scenes without CRS in pixel units")
    p.add_argument("--overwrite", action="store_true", help="replace another model's run in --out")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    bands = tuple(b.strip().lower() for b in a.bands.split(",")) if a.bands else None
    return PredictConfig(model=a.model, input=a.input, out=a.out, device=a.device, batch_size=a.batch_size,
                         overlap=a.overlap, score_threshold=a.score_threshold,
                         target_crs=None if a.target_crs.lower() == "scene" else a.target_crs,
                         allow_ungeoreferenced=a.allow_ungeoreferenced, overwrite=a.overwrite, bands=bands,
                         scheduler=a.scheduler, n_workers=a.n_workers, threads=a.threads,
                         checkpoint_seconds=a.checkpoint_seconds, labels=a.labels, overlay=a.overlay,
                         precision=a.precision, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    try:
        summary = predict(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary["totals"], indent=2))
    return 0 if summary["totals"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
