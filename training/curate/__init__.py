"""Curation: scenes -> chips -> descriptors -> scalable affinity propagation -> diversity-aware selection, on Dask.

    python -m training.curate --config training/configs/curate.yaml input.path=DIR out=DIR

or ``run_curation(load_config("training/configs/curate.yaml", overrides=[...]))``. See README.md in this folder.
"""

from training.curate.pipeline import MANIFEST_NAME, run_curation

__all__ = ["MANIFEST_NAME", "run_curation"]
