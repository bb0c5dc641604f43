"""Curation, MAE pretraining and export of the arctic encoder.

Run from the repository root: ``python -m training.<stage>``.
"""
