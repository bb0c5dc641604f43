"""Whole-scene mapping with a finetuned model folder (``evaluation.artefact``).

    python -m evaluation.predict --model MODEL_DIR --input SCENE.tif|FOLDER|catalog.csv --out DIR

    from evaluation.predict import PredictConfig, predict
    summary = predict(PredictConfig(model="MODEL_DIR", input="scenes/", out="maps/"))

Streaming (``stream``), outputs (``writer``), orchestration, resume and Dask (``run``), scene discovery and checks
(``scenes``), scoring against label rasters (``score``), one scene for a report (``report``:
``map_scene_for_report``). See ``evaluation/PREDICT.md``.
"""

from evaluation.predict.report import map_scene_for_report
from evaluation.predict.run import PredictConfig, predict, predict_scene

__all__ = ["PredictConfig", "map_scene_for_report", "predict", "predict_scene"]
