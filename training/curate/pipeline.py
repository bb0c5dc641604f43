"""``run_curation(cfg) -> manifest path``: tile -> descriptors -> cluster -> select -> manifest + report.

Sources are processed as Dask tasks (one per scene) and cached under ``<out>/cache/scenes`` keyed by the file
(path, size, mtime) and the tiling/descriptor settings, so a re-run skips finished scenes. Every task is a pure
function of its inputs and results are put back in source order, so the manifest does not depend on the scheduler,
on task completion order, or on a worker dying mid-run (Dask re-runs its tasks elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.curate.affinity import hierarchical_ap
from training.curate.descriptors import DESCRIPTOR_NAMES, METADATA_NAMES, invalid_descriptor_rows, standardise
from training.curate.kmeans import hierarchical_kmeans
from training.curate.metadata import catalog_row_for, load_catalog
from training.curate.report import write_report
from training.curate.select import duplicate_rows, select
from training.curate.tiling import SceneResult, Source, discover, process_scene
from training.runtime import dask_client

if TYPE_CHECKING:
    from training.schemas import CurateConfig

log = logging.getLogger(__name__)
CONTRACT_FILENAME = "corpus.json"  # must equal arctic_vit.corpus.CONTRACT_FILENAME (tested); arctic_vit imports
# torch, so this module (imported by every Dask worker that runs a scene) imports it only inside functions
MANIFEST_NAME = "manifest.parquet"
CACHE_VERSION = "2"
MANIFEST_ROW_GROUP = 100_000  # rows per Parquet row group: readers (pack) stream the manifest group by group


def _inputs(cfg: dict) -> list[str]:
    raw = cfg["input"].get("path")
    if not raw:
        raise ValueError("input.path is not set (a folder, a file or a list of them): add input.path=DIR")
    return [str(p) for p in (raw if isinstance(raw, list) else [raw])]


def _cache_key(source: Source, cfg: dict, catalog_row: dict | None) -> str:
    stat = os.stat(source.path)
    relevant = {k: cfg[k] for k in ("input", "tiling", "descriptors")}
    relevant["tiling"] = {k: v for k, v in relevant["tiling"].items() if k != "gdal_threads"}
    relevant["input"] = {k: v for k, v in relevant["input"].items() if k not in ("path", "catalog")}
    payload = json.dumps([CACHE_VERSION, source, stat.st_size, stat.st_mtime_ns, relevant, catalog_row],
                         sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def _load_cached(cache: Path, key: str) -> SceneResult | None:
    rows_path, desc_path = cache / f"{key}.parquet", cache / f"{key}.npy"
    if not (rows_path.exists() and desc_path.exists()):
        return None
    return SceneResult(rows=pd.read_parquet(rows_path), descriptors=np.load(desc_path, allow_pickle=False))


def _store_cached(cache: Path, key: str, result: SceneResult) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{key}.tmp"
    np.save(tmp.with_suffix(".tmp.npy"), result.descriptors, allow_pickle=False)
    result.rows.to_parquet(tmp.with_suffix(".tmp.parquet"), index=False)
    os.replace(tmp.with_suffix(".tmp.npy"), cache / f"{key}.npy")
    os.replace(tmp.with_suffix(".tmp.parquet"), cache / f"{key}.parquet")


def _process_sources(sources: list[Source], cfg: dict, catalog: dict, out: Path, client) -> list[SceneResult]:
    from tqdm.auto import tqdm

    cache = out / "cache" / "scenes"
    results: list[SceneResult | None] = [None] * len(sources)
    todo = []
    for i, source in enumerate(sources):
        row = catalog_row_for(catalog, Path(source.path))
        key = _cache_key(source, cfg, row)
        results[i] = _load_cached(cache, key)
        if results[i] is None:
            todo.append((i, source, row, key))
    if len(sources) - len(todo):
        log.info("skipping %d finished scenes (cached)", len(sources) - len(todo))
    bar = tqdm(total=len(todo), desc="scenes", unit="scene", disable=not cfg["progress"])
    if client is None:
        for i, source, row, key in todo:
            results[i] = process_scene(source, cfg, row)
            check_band_names(results[i].rows)
            _store_cached(cache, key, results[i])
            bar.update()
    else:
        from distributed import as_completed

        futures = {client.submit(process_scene, s, cfg, row, pure=False): (i, key) for i, s, row, key in todo}
        for future in as_completed(futures):
            i, key = futures[future]
            results[i] = future.result()
            check_band_names(results[i].rows)
            _store_cached(cache, key, results[i])
            bar.update()
    bar.close()
    return results


def ap_arguments(cfg: dict) -> dict:
    """``cluster.ap`` of the config -> keyword arguments of ``hierarchical_ap`` (the same names, typed by
    ``CurateConfig``: no casts here)."""
    return dict(cfg["cluster"]["ap"])


def _cluster(x: np.ndarray, cfg: dict, client) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], dict]:
    from tqdm.auto import tqdm

    method = cfg["cluster"]["method"]
    seed = int(cfg["seed"])
    t0 = time.perf_counter()
    if method == "ap":
        bar = tqdm(desc="affinity propagation (items over all levels)", unit="item",
                   disable=not cfg["progress"])
        result = hierarchical_ap(x, **ap_arguments(cfg), seed=seed, client=client, progress=bar.update)
        bar.close()
        info = dict(method="ap", preference=result.preference, stop_reason=result.stop_reason, levels=result.levels)
    elif method == "kmeans":
        result = hierarchical_kmeans(x, cfg["cluster"].get("kmeans", {}).get("levels"), seed=seed)
        info = dict(method="kmeans", levels=result.levels)
    else:
        raise ValueError(f"cluster.method must be 'ap' or 'kmeans', got {method!r}")
    info["seconds"] = time.perf_counter() - t0
    return result.labels, result.exemplars, result.level_labels, info


def run_curation(cfg: dict[str, Any] | CurateConfig) -> Path:
    """Run every stage for ``cfg`` (a merged dict or a ``training.schemas.CurateConfig``; see
    training/configs/curate.yaml) -> path of ``manifest.parquet``."""
    t_start = time.perf_counter()
    # arctic_vit (torch) through the schema: imported here, not at import (Dask workers import this module to run
    # scenes and would each load torch, ~0.9 GB, enough to pause a worker at its memory limit)
    from training.config import write_resolved
    from training.curate.validate import validate_config

    cfg = validate_config(cfg)  # every key, select.* included, before any tiling; a plain dict, defaults filled
    out = Path(cfg["out"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, out)
    inputs = _inputs(cfg)
    sources = discover(inputs, list(cfg["input"]["patterns"]), list(cfg["input"].get("exclude") or []))
    if not sources:
        raise FileNotFoundError(f"no input files matching {cfg['input']['patterns']} under {inputs}")
    catalog = load_catalog(cfg["input"].get("catalog"))
    with dask_client(cfg["dask"]) as client:
        t0 = time.perf_counter()
        results = _process_sources(sources, cfg, catalog, out, client)
        t_tiles = time.perf_counter() - t0
        manifest = pd.concat([r.rows for r in results], ignore_index=True)  # columnar (Arrow strings), no row dicts
        raw = np.concatenate([r.descriptors for r in results if r.descriptors is not None and len(r.descriptors)]
                             or [np.zeros((0, len(DESCRIPTOR_NAMES)), np.float32)])
        del results
        return curate_candidates(manifest, raw, cfg, out, client, t_tiles=t_tiles, t_start=t_start)


def content_keys(hashes: pd.Series, pixel_part: np.ndarray) -> np.ndarray:
    """Content hashes (n,) and pixel descriptors (n, p) float32 -> (n, b) uint8 rows (the exact-duplicate key).

    Equal-length hashes (CRC32 hex) are read from the Arrow buffer, so no per-row Python string is made.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(hashes.reset_index(drop=True))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.fill_null(pc.cast(arr, pa.large_binary()), b"")
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets)
    if len(arr) and (lengths == lengths[0]).all():
        data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(len(arr), lengths[0])
    else:  # unequal lengths: pad each to the longest (rare; per-row values only here)
        width = int(lengths.max()) if len(arr) else 0
        data = np.frombuffer(b"".join(v.ljust(width, b"\0") for v in arr.to_pylist()) or b"", np.uint8)
        data = data.reshape(len(arr), width)
    pixels = np.ascontiguousarray(pixel_part, np.float32).view(np.uint8).reshape(len(pixel_part), -1)
    return np.concatenate([data, pixels], axis=1)


def curate_candidates(
    manifest: pd.DataFrame, raw: np.ndarray, cfg: dict, out: Path, client=None, *, t_tiles: float = 0.0,
    t_start: float | None = None,
) -> Path:
    """Candidates -> ``manifest.parquet`` path: rejects (band set, non-finite descriptors, duplicates), standardise,
    cluster, select, write the manifest (row groups), corpus.json, descriptors and the report.

    manifest: one row per candidate (tiling's columns; accepted rows have ``reject_reason`` null), raw: (n_accepted,
    D) float32 descriptors of the accepted rows in manifest order. ``client``: a ``distributed.Client`` or None.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    seed = int(cfg["seed"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accepted = np.flatnonzero(manifest["reject_reason"].isna().to_numpy())
    if len(accepted) != len(raw):
        raise RuntimeError(f"internal: {len(accepted)} accepted chips but {len(raw)} descriptors")
    keep = np.ones(len(accepted), bool)
    wanted = cfg["select"].get("bands")
    if wanted:  # one band set out of several sources
        from arctic_vit.bands import validate_bands

        wanted = ",".join(validate_bands(str(wanted)))
        other = (manifest["bands"].iloc[accepted] != wanted).to_numpy()
        manifest.loc[accepted[other], "reject_reason"] = f"band_set: not select.bands={wanted}"
        keep &= ~other
    bad = invalid_descriptor_rows(raw)
    manifest.loc[accepted[bad & keep], "reject_reason"] = "invalid_descriptor: non-finite values"
    keep &= ~bad
    accepted, raw = accepted[keep], raw[keep]
    if cfg["select"]["dedup"] and len(raw):
        pixel_part = raw[:, : len(DESCRIPTOR_NAMES) - len(METADATA_NAMES)]  # same pixels, whatever the metadata
        dup = duplicate_rows(content_keys(manifest["content_hash"].iloc[accepted], pixel_part))
        manifest.loc[accepted[dup], "reject_reason"] = "duplicate"
        accepted, raw = accepted[~dup], raw[~dup]
    corpus_contract(manifest.iloc[accepted])  # disagreeing bands / bit depth: an error before clustering
    x, stats = standardise(raw, cfg["descriptors"].get("weights"))
    labels, exemplars, level_labels, cluster_info = (
        _cluster(x, cfg, client) if len(x) else (np.zeros(0, int), np.zeros(0, int), [], {"method": "none"})
    )
    within = cfg["select"]["within"]
    budget = int(cfg["select"]["budget"])
    if budget >= len(x):
        log.warning("select.budget=%d >= %d candidate chips: all of them are selected", budget, len(x))
    chosen = select(x, labels, exemplars, budget, within=within, finer_levels=level_labels[:-1], seed=seed)
    manifest = _annotate(manifest, accepted, labels, exemplars, level_labels, chosen)
    contract = corpus_contract(manifest[manifest["selected"]])
    if contract is None:
        log.warning("no chip selected: no %s written", CONTRACT_FILENAME)
    manifest_path = out / MANIFEST_NAME
    import pyarrow as pa

    write_row_groups(manifest_path, len(manifest), lambda a, b: manifest.iloc[a:b],
                     schema=pa.Schema.from_pandas(manifest, preserve_index=False))
    if contract is not None:
        contract.write(out / CONTRACT_FILENAME)
    chip_ids = manifest["chip_id"].iloc[accepted].reset_index(drop=True)
    write_row_groups(out / "descriptors.parquet", len(raw), lambda a, b: pd.concat(
        [chip_ids.iloc[a:b].reset_index(drop=True), pd.DataFrame(raw[a:b], columns=DESCRIPTOR_NAMES)], axis=1))
    (out / "descriptor_stats.json").write_text(json.dumps(stats))
    info = dict(timings_s=dict(tiles_and_descriptors=t_tiles, cluster=cluster_info.pop("seconds", 0.0),
                               total=time.perf_counter() - t_start),
                cluster=cluster_info, budget=budget, within=within,
                budget_covers_all_candidates=bool(budget >= len(x)),
                corpus=None if contract is None else contract.to_dict())
    write_report(out, manifest, x, info, figures=bool(cfg["report"]["figures"]),
                 mosaic_clusters=int(cfg["report"]["mosaic_clusters"]), seed=seed)
    return manifest_path


def write_row_groups(path: Path, n_rows: int, rows: Callable[[int, int], pd.DataFrame],
                     group: int = MANIFEST_ROW_GROUP, schema=None) -> None:
    """Write ``rows(a, b)`` (a DataFrame of rows a..b) for consecutive blocks of ``group`` rows as Parquet row groups,
    one block in memory at a time (readers such as ``training.pack`` stream them group by group). ``schema``
    (``pyarrow.Schema``, default: the first block's) is the file's; each block is cast to it (an all-null column in
    one block does not change the type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    tmp = path.with_suffix(".tmp.parquet")
    try:
        for a in range(0, max(n_rows, 1), group):
            table = pa.Table.from_pandas(rows(a, min(a + group, n_rows)), preserve_index=False)
            if writer is None:
                schema = table.schema if schema is None else schema
                writer = pq.ParquetWriter(tmp, schema)
            if not table.schema.equals(schema, check_metadata=False):
                table = table.cast(schema)
            writer.write_table(table, row_group_size=group)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, path)


def check_band_names(rows: pd.DataFrame) -> None:
    """One scene's rows -> ValueError naming the file when its band names are not canonical (at curation, not at
    training)."""
    from arctic_vit.bands import validate_bands

    for bands, path, count in rows.loc[rows["bands"] != "", ["bands", "source_path", "band_count"]].drop_duplicates(
            "bands").itertuples(index=False):
        try:
            validate_bands(bands)
        except ValueError as err:
            raise ValueError(f"{path}: {err}; name them with input.band_names.{count}=...") from None


def corpus_contract(selected: pd.DataFrame):  # -> arctic_vit.corpus.CorpusContract | None
    """Manifest rows (the selected chips) -> ``CorpusContract(bands, bit_depth, gsd_m=median, nodata)`` (no
    statistics: pack adds them); None for no rows. Disagreeing bands / bit depth / nodata: an error naming two
    sources."""
    if selected.empty:
        return None
    for column, fix in (("bands", " (or choose one band set with select.bands=...)"), ("bit_depth", ""),
                        ("nodata", "")):
        values = selected[column].astype(str)
        if values.nunique() > 1:
            first = selected.drop_duplicates(column)[["source_path", column]].head(2).to_numpy().tolist()
            raise ValueError(f"selected chips disagree on {column}: {first[0][0]} has {first[0][1]}, "
                             f"{first[1][0]} has {first[1][1]}{fix}")
    bit_depth = int(selected["bit_depth"].iloc[0])
    if bit_depth == 0:
        raise ValueError(f"{selected['source_path'].iloc[0]}: float raster with no bit depth: set input.bit_depth "
                         "(the corpus contract normalises DN / (2**bit_depth - 1))")
    from arctic_vit.corpus import CorpusContract

    gsd = selected["gsd_m"].to_numpy(np.float64)
    gsd = gsd[np.isfinite(gsd)]
    nodata = float(selected["nodata"].iloc[0])
    return CorpusContract(bands=tuple(selected["bands"].iloc[0].split(",")), bit_depth=bit_depth,
                          gsd_m=float(np.median(gsd)) if len(gsd) else None,
                          nodata=None if math.isnan(nodata) else nodata)


def _annotate(manifest: pd.DataFrame, accepted: np.ndarray, labels: np.ndarray, exemplars: np.ndarray,
              level_labels: list[np.ndarray], chosen: np.ndarray) -> pd.DataFrame:
    """Add cluster ids per level (fine -> coarse; -1 for rejected chips), final cluster, exemplar and selected flags."""
    n = len(manifest)
    for level, ids in enumerate(level_labels):
        column = np.full(n, -1, np.int64)
        column[accepted] = ids
        manifest[f"cluster_l{level}"] = column
    cluster = np.full(n, -1, np.int64)
    cluster[accepted] = labels
    manifest["cluster"] = cluster
    is_exemplar = np.zeros(n, bool)
    is_exemplar[accepted[exemplars]] = True
    manifest["is_exemplar"] = is_exemplar
    selected = np.zeros(n, bool)
    selected[accepted[chosen]] = True
    manifest["selected"] = selected
    order = ["chip_id", "source_path", "scene_id", "row_off", "col_off", "height", "width", "band_count", "bands",
             "bit_depth", "nodata", "crs", "center_x", "center_y", "lat", "lon", "sensor", "acquired", "sun_elevation",
             "off_nadir", "cloud_cover", "gsd_m"]
    rest = [c for c in manifest.columns if c not in order]
    manifest = manifest[order + rest]
    for column in ("row_off", "col_off", "height", "width", "band_count", "bit_depth"):
        manifest[column] = manifest[column].astype(np.int64)
    return manifest
