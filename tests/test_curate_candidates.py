"""curate_candidates (everything after tiling) on a columnar manifest: rejects recorded, dedup exact, counts add up."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from training.config import load_config
from training.curate.descriptors import DESCRIPTOR_NAMES, GROUPS
from training.curate.pipeline import content_keys, curate_candidates
from training.curate.select import duplicate_mask, duplicate_rows

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "curate.yaml"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_curation", REPO / "benchmarks" / "bench_curation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_duplicate_rows_equals_the_set_based_mask():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 3, (400, 5)).astype(np.uint8)  # 243 possible rows: many repeats
    expected = duplicate_mask([row.tobytes() for row in keys])
    assert expected.sum() > 100
    np.testing.assert_array_equal(duplicate_rows(keys), expected)
    assert duplicate_rows(np.zeros((0, 4), np.uint8)).shape == (0,)


def test_content_keys_equal_exactly_when_hash_and_pixels_are_equal():
    hashes = pd.Series(["00aa", "00aa", "00ab", None, None, "0aa"], dtype="str")
    pixels = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0], [1.0, 2.0]], np.float32)
    keys = content_keys(hashes, pixels)
    assert duplicate_rows(keys).tolist() == [False, True, False, False, True, False]
    pixels[1, 1] = np.nextafter(np.float32(2.0), np.float32(3.0))  # one ulp apart: not a duplicate
    assert duplicate_rows(content_keys(hashes, pixels)).tolist() == [False, False, False, False, True, False]


def test_non_finite_rows_and_duplicates_are_recorded_rejects(tmp_path):
    n = 400
    manifest = _bench().e2e_manifest(n)
    rng = np.random.default_rng(1)
    raw = (rng.integers(0, 4, n)[:, None] * 3.0 + rng.standard_normal((n, len(DESCRIPTOR_NAMES)))).astype(np.float32)
    texture = len(GROUPS["spectral"])
    raw[5, texture] = np.nan  # NaN texture: cannot be clustered
    raw[9, 3] = np.inf
    raw[20] = raw[10]  # same pixels and (below) the same content hash: an exact duplicate
    manifest.loc[20, "content_hash"] = manifest.loc[10, "content_hash"]
    raw[30, : texture] = np.nan  # no spectral value at all
    cfg = load_config(CONFIG, overrides=[f"out={tmp_path}", "select.budget=50", "progress=false",
                                         "report.figures=false", "cluster.ap.partition_size=64"])
    path = curate_candidates(manifest, raw, cfg, tmp_path)
    out = pd.read_parquet(path)
    reasons = out["reject_reason"]
    assert reasons[[5, 9, 30]].tolist() == ["invalid_descriptor: non-finite values"] * 3
    assert reasons[20] == "duplicate" and pd.isna(reasons[10])
    assert reasons.notna().sum() == 4 and len(out) == n
    assert out["selected"].sum() == 50 and not out.loc[reasons.notna(), "selected"].any()
    assert (out.loc[reasons.notna(), "cluster"] == -1).all() and (out.loc[reasons.isna(), "cluster"] >= 0).all()
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["candidates"] == summary["selected"] + summary["unselected"] + summary["rejected"] == n
    assert summary["rejected_by_reason"] == {"invalid_descriptor": 3, "duplicate": 1}
    assert pq.ParquetFile(tmp_path / "descriptors.parquet").metadata.num_rows == n - 4


def test_manifest_written_in_row_groups_reads_back_equal(tmp_path):
    import pyarrow as pa

    from training.curate.pipeline import write_row_groups

    frame = _bench().e2e_manifest(10)
    frame.loc[6:, "reject_reason"] = "duplicate"  # all-null in the first blocks, set in the last
    frame["note"] = [None] * 4 + ["x"] * 6  # an object column, all None in the first block
    path = tmp_path / "m.parquet"
    write_row_groups(path, len(frame), lambda a, b: frame.iloc[a:b], group=4,
                     schema=pa.Schema.from_pandas(frame, preserve_index=False))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    back = pd.read_parquet(path)
    assert back["chip_id"].tolist() == frame["chip_id"].tolist()
    assert back["reject_reason"].isna().sum() == 6 and back["note"].isna().tolist()[3:5] == [True, False]
    np.testing.assert_array_equal(back["row_off"].to_numpy(), frame["row_off"].to_numpy())
