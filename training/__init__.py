"""Curation, MAE pretraining and export of the arctic encoder (run from the repo root: ``python -m training.<stage>``)."""
