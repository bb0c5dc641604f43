"""Whole-scene mapping with a finetuned model folder (``evaluation.artefact``).

    python -m evaluation.predict --model MODEL_DIR --input SCENE.tif|FOLDER|catalog.csv --out DIR

    from evaluation.predict import PredictConfig, predict
    summary = predict(PredictConfig(model="MODEL_DIR", input="scenes/", out="maps/"))

Streaming (``stream``), outputs (``writer``), orchestration, resume and Dask (``run``), scene discovery and checks
(``scenes``), scoring against label rasters (``score``). See ``evaluation/PREDICT.md``.
"""

from evaluation.predict.run import PredictConfig, predict, predict_scene

__all__ = ["PredictConfig", "predict", "predict_scene"]
