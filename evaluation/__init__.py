"""Finetuning recipes and backbone comparison (run from the repo root: ``python -m evaluation.<stage>``)."""
