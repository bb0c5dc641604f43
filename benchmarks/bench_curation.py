"""Curation benchmark that can fail: clustering quality on hard regimes vs best-configured sklearn AP; selection.

    .venv/bin/python benchmarks/bench_curation.py [--quick] [--out outputs/bench_curation.json] [--readme]

Data regime (printed first, and in the JSON): 24-d float32 points at n = 5k and 10k (``--quick``: 5k, three cases),
six cases — ``blobs50`` (50 isotropic blobs), ``zipf_aniso`` (60 anisotropic Gaussian clusters, Zipf(1.1) sizes),
``blobs500`` (500 blobs: more clusters than a partition), ``gaussian`` and ``uniform`` (continuous, no clusters),
``maple`` (52-d descriptors of the real MAPLE chips, cut into 64-px chips by the pipeline's own tiling and descriptor
code, a seeded subsample; skipped when ``../shared/data/maple_iwp/unlabelled`` is absent).

Methods, each in its own subprocess (time and peak-RSS growth are its own), all on the same float32 points:

- ``sklearn``: ``AffinityPropagation(damping=0.9, max_iter=1000, convergence_iter=15, preference=p,
  affinity='precomputed')`` on ``S = -||x_i - x_j||²`` (float32, built inside the timed run), p = the median of
  sampled similarities (``affinity.resolve_preference``), the same p for every method. Its convergence is reported;
  a case where it did not converge is flagged and its ratio is not a target.
- ``ours``: ``hierarchical_ap`` with the defaults of ``training/configs/curate.yaml`` (``cluster.ap``), same p.
- ``kmeans``: sklearn ``KMeans(K, n_init=1)`` at sklearn AP's cluster count K, each cluster's medoid as exemplar.
- ``hkmeans``: hierarchical k-means (``kmeans.hierarchical_kmeans``, Vo et al. 2024 style) with levels
  ``[sqrt(n K), K]``, medoid exemplars.

Memory is ``peak_rss_growth_gb``: the process's peak RSS (``ru_maxrss``, a high-water mark) minus its RSS after the
data was made. When making the data peaks higher than the method (``maple``: descriptor extraction of 201 images),
the figure is an upper bound that includes that peak (it reads ~1 GB for every method there).

Every method is scored the same way: each point joins its nearest exemplar and ``affinity.net_similarity`` gives the
AP objective ``sum_i -||x_i - x_e(i)||² + K p`` (negative). ``quality = net(sklearn) / net(method)``: 1.0 = as good,
> 1 better. Targets (asserted; exit status 1 when one is missed): ``quality(ours) >= 0.98`` on every case where
sklearn converged, and ``net(ours) >= net(kmeans)`` on every case.

Selection (``selection``): a skewed archive of descriptors — 4 common scene types holding 90 % of 20k chips as
near-duplicates, 40 rare types with 10-60 chips each, and a block of low-information chips (a flat, near-constant
type) — and a budget of 500. Curated (``hierarchical_ap`` + ``select`` with the
config's ``select.within``) vs a random subset vs k-means
selection (K = budget, the chip nearest each centroid): coverage (mean and 95th percentile distance from every chip to
its nearest selected chip), balance (entropy of the selection over the types, / log(#types)), share of low-information
chips selected. Targets: curated beats random on p95 coverage and on balance, at that budget (``selection``, 2.5 %
of the chips: most clusters get one or two) and at a third of the chips (``selection_large``: the regime of the
demo's pools, where picking the chips closest to each exemplar covered worse than a random subset).

Descriptor extraction (``descriptors``): chips/s of ``tiling.process_scene`` with the default config vs a bare
rasterio windowed-read loop over the same chips, alternating the two, best of ``repeats``. Target: ratio >= 0.8.

``--readme`` rewrites the table between ``<!-- curation-benchmark:start/end -->`` in ``training/curate/README.md``
from the JSON (``report.render_benchmark_readme``) and copies the JSON to ``training/curate/benchmark.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAPLE_DIR = REPO.parent / "shared" / "data" / "maple_iwp" / "unlabelled"
CASES = ("blobs50", "zipf_aniso", "blobs500", "gaussian", "uniform", "maple")
QUICK_CASES = ("blobs500", "gaussian", "maple")
DIM = 24
QUALITY_TARGET = 0.98
READ_RATIO_TARGET = 0.8
SKLEARN_AP = dict(damping=0.9, max_iter=1000, convergence_iter=15)


# --- data -------------------------------------------------------------------------------------------------------

def zipf_anisotropic(n: int, seed: int = 0, k: int = 60) -> np.ndarray:
    """n points in 24-d: k Gaussian clusters with random anisotropic covariances and Zipf(1.1) sizes."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, k + 1) ** 1.1
    sizes = rng.multinomial(n, weights / weights.sum())
    centres = rng.uniform(-20, 20, (k, DIM))
    parts = []
    for centre, size in zip(centres, sizes):
        axes = rng.standard_normal((DIM, DIM)) * rng.uniform(0.2, 2.5, DIM)[None, :]
        parts.append(centre + rng.standard_normal((size, DIM)) @ axes.T * 0.6)
    return np.concatenate(parts)[rng.permutation(n)].astype(np.float32)


def maple_raw_descriptors(chip: int = 64) -> np.ndarray:
    """Raw descriptors (N, 52) of the MAPLE chips cut into ``chip``-px chips by the pipeline's own tiling code."""
    from training.config import load_config
    from training.curate.tiling import discover, process_scene

    cfg = load_config(REPO / "training" / "configs" / "curate.yaml",
                      overrides=[f"tiling.chip_size={chip}", f"tiling.stride={chip}"])
    sources = discover([str(MAPLE_DIR)], list(cfg["input"]["patterns"]), list(cfg["input"]["exclude"]))
    return np.concatenate([process_scene(source, cfg).descriptors for source in sources])


def maple_descriptors(chip: int = 64) -> np.ndarray:
    """Standardised descriptors (N, 52) of the MAPLE chips (``maple_raw_descriptors``, the pipeline's weights)."""
    from training.config import load_config
    from training.curate.descriptors import standardise

    cfg = load_config(REPO / "training" / "configs" / "curate.yaml")
    return standardise(maple_raw_descriptors(chip), cfg["descriptors"]["weights"])[0]


def make_case(case: str, n: int, seed: int = 0) -> np.ndarray:
    """case name, n -> (n, d) float32 points (deterministic)."""
    rng = np.random.default_rng(seed)
    if case == "gaussian":
        return rng.standard_normal((n, DIM)).astype(np.float32)
    if case == "uniform":
        return rng.random((n, DIM)).astype(np.float32)
    if case == "zipf_aniso":
        return zipf_anisotropic(n, seed)
    if case.startswith("blobs"):
        from sklearn.datasets import make_blobs

        x, _ = make_blobs(n, n_features=DIM, centers=int(case.removeprefix("blobs")), cluster_std=2.5,
                          random_state=seed)
        return x.astype(np.float32)
    if case == "maple":
        full = maple_descriptors()
        if n > len(full):
            raise ValueError(f"maple has {len(full)} chips, fewer than n = {n}")
        return full[np.sort(rng.choice(len(full), n, replace=False))]
    raise ValueError(f"unknown case {case!r}; known: {CASES}")


def medoid_exemplars(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """x: (n, d), labels: (n,) 0..K-1 -> (K,) index of each cluster's member nearest its mean (its medoid)."""
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    means = sums / np.bincount(labels, minlength=k)[:, None]
    dist = np.einsum("ij,ij->i", x - means[labels], x - means[labels])
    order = np.lexsort((dist, labels))
    return order[np.searchsorted(labels[order], np.arange(k))]


# --- one measurement (a subprocess) -----------------------------------------------------------------------------

def measure(method: str, case: str, n: int, preference: float, k: int | None, out: Path) -> dict:
    """Run one method on one case in this process; write its exemplars (K,) to ``out`` -> seconds, memory, info."""
    from training.config import load_config
    from training.curate.pipeline import ap_arguments

    x = make_case(case, n)
    rss_before = _rss_bytes()
    t0 = time.perf_counter()
    info: dict = {}
    if method == "sklearn":
        from sklearn.cluster import AffinityPropagation

        from training.curate.affinity import negative_sq_distances

        model = AffinityPropagation(**SKLEARN_AP, preference=preference, affinity="precomputed", random_state=0)
        model.fit(negative_sq_distances(x))
        exemplars = np.asarray(model.cluster_centers_indices_, np.int64)
        info = dict(n_iter=int(model.n_iter_), converged=bool(model.n_iter_ < SKLEARN_AP["max_iter"]
                                                              and len(exemplars) > 0))
    elif method == "ours":
        from training.curate.affinity import hierarchical_ap

        kwargs = ap_arguments(load_config(REPO / "training" / "configs" / "curate.yaml"))
        kwargs["preference"] = preference
        result = hierarchical_ap(x, **kwargs, seed=0)
        exemplars = result.exemplars
        info = dict(preference_reported=result.preference, stop_reason=result.stop_reason,
                    levels=[{k2: v for k2, v in lv.items() if k2 != "seconds"} for lv in result.levels])
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        labels = KMeans(k, n_init=1, random_state=0).fit_predict(x)
        exemplars = medoid_exemplars(x, np.unique(labels, return_inverse=True)[1])
    elif method == "hkmeans":
        from training.curate.kmeans import hierarchical_kmeans

        fine = max(k, min(n, round(math.sqrt(n * k))))
        result = hierarchical_kmeans(x, [fine, k] if fine > k else [k], seed=0)
        exemplars = result.exemplars
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0
    np.save(out, np.asarray(exemplars, np.int64))
    return dict(method=method, case=case, n=n, seconds=seconds,
                peak_rss_growth_gb=max(0, _peak_rss_bytes() - rss_before) / 1e9, **info)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_measure(method: str, case: str, n: int, preference: float, k: int | None, tmp: Path) -> tuple[dict, np.ndarray]:
    out = tmp / f"{method}_{case}_{n}.npy"
    command = [sys.executable, __file__, "--measure", method, case, str(n), repr(preference), str(k or 0), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{method} on {case} n={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)


# --- the clustering suite ---------------------------------------------------------------------------------------

def compare_case(case: str, n: int, tmp: Path) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from training.curate.affinity import nearest_exemplar, net_similarity, resolve_preference

    x = make_case(case, n)
    pref = resolve_preference(x, "median")
    row: dict = dict(case=case, n=n, dim=int(x.shape[1]), preference=pref, methods={})
    labels = {}
    sk, sk_ex = run_measure("sklearn", case, n, pref, None, tmp)
    k = max(2, len(sk_ex))
    for method in ("sklearn", "ours", "kmeans", "hkmeans"):
        info, ex = (sk, sk_ex) if method == "sklearn" else run_measure(method, case, n, pref, k, tmp)
        if len(ex) == 0:
            info.update(clusters=0, net_similarity=None)
            row["methods"][method] = info
            continue
        labels[method] = ex[nearest_exemplar(x, ex)]
        info.update(clusters=len(ex), net_similarity=net_similarity(x, labels[method], pref))
        row["methods"][method] = info
        print(json.dumps({k2: v for k2, v in info.items() if k2 != "levels"}), flush=True)
    base = row["methods"]["sklearn"]["net_similarity"]
    for method, info in row["methods"].items():
        if base is not None and info.get("net_similarity"):
            info["quality"] = base / info["net_similarity"]
            info["ari_vs_sklearn"] = float(adjusted_rand_score(labels["sklearn"], labels[method]))
            info["cluster_ratio"] = info["clusters"] / row["methods"]["sklearn"]["clusters"]
    ours = row["methods"]["ours"]
    row["sklearn_converged"] = bool(sk.get("converged"))
    row["checks"] = {
        "quality_vs_sklearn": None if not row["sklearn_converged"] else bool(ours["quality"] >= QUALITY_TARGET),
        "beats_kmeans": bool(ours["net_similarity"] >= row["methods"]["kmeans"]["net_similarity"]),
        "preference_reported_is_used": bool(ours["preference_reported"] == pref),
    }
    return row


# --- selection quality ------------------------------------------------------------------------------------------

def skewed_archive(seed: int = 0, n_common: int = 18_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> x (n, 24) descriptors, type (n,) scene type id, low_info (n,) bool. 4 common near-duplicate types (90 %),
    40 rare types of 10-60 chips, 800 low-information chips (one flat type)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-6, 6, (45, DIM))
    sizes = [*rng.multinomial(n_common, [0.4, 0.3, 0.2, 0.1]), *rng.integers(10, 61, 40), 800]
    spread = [0.15] * 4 + [1.0] * 40 + [0.05]  # common types: near-duplicates; low-information: nearly constant
    x = np.concatenate([c + rng.standard_normal((s, DIM)) * sd for c, s, sd in zip(centres, sizes, spread)])
    types = np.repeat(np.arange(45), sizes)
    return x.astype(np.float32), types, types == 44


def selection_quality(budget: int = 500, seed: int = 0) -> dict:
    from sklearn.cluster import KMeans

    from training.config import load_config
    from training.curate.affinity import hierarchical_ap, negative_sq_distances
    from training.curate.pipeline import ap_arguments
    from training.curate.quality import selection_quality as selection_quality_of
    from training.curate.select import select

    x, types, low = skewed_archive(seed)
    rng = np.random.default_rng(seed)
    cfg = load_config(REPO / "training" / "configs" / "curate.yaml")
    kwargs, within = ap_arguments(cfg), cfg["select"]["within"]
    t0 = time.perf_counter()
    ap = hierarchical_ap(x, **kwargs, seed=seed)
    curated = np.flatnonzero(select(x, ap.labels, ap.exemplars, budget, within=within,
                                    finer_levels=ap.level_labels[:-1], seed=seed))
    seconds = time.perf_counter() - t0
    random = np.sort(rng.choice(len(x), budget, replace=False))
    km = KMeans(budget, n_init=1, random_state=seed).fit(x)
    kmeans = np.unique(np.argmax(negative_sq_distances(km.cluster_centers_.astype(np.float32), x), axis=1))

    def scores(chosen: np.ndarray) -> dict:
        return selection_quality_of(x, chosen, scene_types=types, low_information=low)

    out = dict(n=len(x), types=int(types.max() + 1), budget=budget, low_information_chips=int(low.sum()),
               curated=dict(scores(curated), seconds=seconds, clusters=len(ap.exemplars), within=within),
               random=scores(random), kmeans=scores(kmeans))
    out["checks"] = {
        "coverage_p95_beats_random": out["curated"]["coverage_p95"] < out["random"]["coverage_p95"],
        "balance_beats_random": out["curated"]["balance_entropy"] > out["random"]["balance_entropy"],
    }
    return out


# --- descriptor extraction vs bare reads -------------------------------------------------------------------------

def descriptor_read_ratio(n_scenes: int, size: int, repeats: int = 3) -> dict:
    """Chips/s of tiling + descriptors (default config) vs a bare windowed-read loop over the same chips.

    The two arms alternate (bare, ours, bare, ours, ...) so machine load hits both alike; best rate of each.
    """
    import rasterio
    from rasterio.windows import Window

    from training.config import load_config
    from training.curate.tiling import chip_windows, discover, process_scene
    from training.synthetic import generate_archive

    cfg = load_config(REPO / "training" / "configs" / "curate.yaml")
    chip, stride = cfg["tiling"]["chip_size"], cfg["tiling"]["stride"]
    with tempfile.TemporaryDirectory() as tmp:
        generate_archive(tmp, n_scenes=n_scenes, size=size, seed=0, labels=False)
        sources = discover([tmp], ["*.tif"], ["*.labels.tif"])

        def bare() -> int:
            count = 0
            for source in sources:
                with rasterio.open(source.path) as src:
                    for row_off, col_off in chip_windows(src.height, src.width, chip, stride):
                        src.read(window=Window(col_off, row_off, chip, chip))
                        count += 1
            return count

        def ours() -> int:
            return sum(len(process_scene(source, cfg).rows) for source in sources)

        bare()  # warm the page cache
        rates: dict[str, list[float]] = {"bare": [], "ours": []}
        for _ in range(repeats):
            for name, fn in (("bare", bare), ("ours", ours)):
                t0 = time.perf_counter()
                count = fn()
                rates[name].append(count / (time.perf_counter() - t0))
    ratio = max(rates["ours"]) / max(rates["bare"])
    return dict(chips=count, scenes=n_scenes, size=size, gdal_threads=cfg["tiling"]["gdal_threads"],
                bare_chips_per_s=max(rates["bare"]), ours_chips_per_s=max(rates["ours"]),
                descriptor_read_ratio=ratio, rates=rates, checks={"read_ratio": ratio >= READ_RATIO_TARGET})


# --- the pipeline at millions: clustering + selection + manifest, RSS of the whole process tree --------------------

E2E_SIZES = (250_000, 1_000_000)
E2E_QUICK_SIZES = (20_000, 80_000)
E2E_BUDGET_SHARE = 0.1  # select.budget = 10 % of the rows
# Targets (asserted). Workers hold one task's data (partition / group / chunk sizes), so their peak must not grow
# with n; the client holds the descriptor arrays (n x 52 float32, raw and standardised) and the columnar manifest,
# so its growth is linear in n with a small constant: no per-row Python objects (a dict per chip was ~1.7 KB).
E2E_WORKER_PEAK_RATIO_TARGET = 1.5  # max worker-process peak RSS at the largest size / at the smallest
E2E_CLIENT_BYTES_PER_ROW_TARGET = 1500  # client peak RSS per extra row between the smallest and the largest size
E2E_JITTER = 0.05  # resampled MAPLE rows + N(0, (0.05 x column std)²)


def e2e_raw_descriptors(n: int, source: str, seed: int = 0) -> np.ndarray:
    """(n, 52) float32 raw descriptors with real structure.

    source = a .npy of the real MAPLE chips' raw descriptors: rows resampled with replacement plus jitter (0.05 of
    each column's std; NaN columns — bands a JPEG lacks — stay NaN); source = 'generator': 300 Gaussian clusters with
    Zipf(1.1) sizes and random anisotropic spreads (80 %) plus a uniform continuous background (20 %).
    """
    from training.curate.descriptors import DESCRIPTOR_NAMES

    rng = np.random.default_rng(seed)
    d = len(DESCRIPTOR_NAMES)
    if source != "generator":
        base = np.load(source)
        std = np.nan_to_num(np.nanstd(base, axis=0), nan=0.0).astype(np.float32)
        out = base[rng.integers(0, len(base), n)]
        out += rng.standard_normal((n, d), dtype=np.float32) * (E2E_JITTER * std)
        return out
    k = 300
    weights = 1.0 / np.arange(1, k + 1) ** 1.1
    sizes = rng.multinomial(int(n * 0.8), weights / weights.sum())
    centres = rng.uniform(-10, 10, (k, d)).astype(np.float32)
    spreads = rng.uniform(0.2, 2.0, (k, d)).astype(np.float32)
    owner = np.repeat(np.arange(k), sizes)
    out = np.empty((n, d), np.float32)
    m = len(owner)
    out[:m] = centres[owner] + rng.standard_normal((m, d), dtype=np.float32) * spreads[owner]
    out[m:] = rng.uniform(-12, 12, (n - m, d)).astype(np.float32)
    return out[rng.permutation(n)]


def e2e_manifest(n: int, chips_per_scene: int = 1024, chip: int = 256):
    """A columnar candidate manifest of n accepted chips (tiling's columns), built with Arrow compute (no per-row
    Python objects): scenes of ``chips_per_scene`` chips on a 32-chip-wide grid, 4-band 11-bit WorldView-3."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    i = np.arange(n, dtype=np.int64)
    scene = i // chips_per_scene
    row_off = (i % chips_per_scene) // 32 * chip
    col_off = (i % chips_per_scene) % 32 * chip

    def text(values: np.ndarray):
        return pc.cast(pa.array(values), pa.large_string())

    def word(value: str):
        return pa.scalar(value, pa.large_string())

    scene_id = pc.binary_join_element_wise(word("scene"), pc.utf8_lpad(text(scene), 6, "0"), word(""))
    chip_id = pc.binary_join_element_wise(scene_id, text(row_off), text(col_off), word(":"))
    source_path = pc.binary_join_element_wise(word("/archive/"), scene_id, word(".tif"), word(""))

    def strings(arrow) -> pd.Series:
        return pd.Series(pd.array(arrow, dtype=pd.StringDtype("pyarrow", na_value=np.nan)))  # pandas "str"

    def constant(value, dtype=None) -> np.ndarray:
        return np.full(n, value, dtype)

    frame = pd.DataFrame({
        "chip_id": strings(chip_id), "source_path": strings(source_path), "scene_id": strings(scene_id),
        "row_off": row_off, "col_off": col_off, "height": constant(chip, np.int64), "width": constant(chip, np.int64),
        "band_count": constant(4, np.int64), "bands": strings(pa.repeat("blue,green,red,nir", n)),
        "bit_depth": constant(11, np.int64), "nodata": constant(0.0), "crs": strings(pa.repeat("EPSG:3413", n)),
        "center_x": (col_off + chip / 2).astype(np.float64), "center_y": -(row_off + chip / 2).astype(np.float64),
        "lat": constant(70.0), "lon": constant(-150.0), "sensor": strings(pa.repeat("WV03", n)),
        "acquired": strings(pa.repeat("2020-07-01T21:00:00Z", n)), "sun_elevation": constant(40.0),
        "off_nadir": constant(10.0), "cloud_cover": constant(0.0), "gsd_m": constant(0.5),
        "metadata_issues": strings(pa.repeat("", n)), "valid_fraction": constant(1.0),
        "content_hash": strings(pc.utf8_lpad(text(i), 10, "0")),
        "reject_reason": strings(pa.nulls(n, pa.large_string())),
    })
    return frame


class ProcessTreeSampler:
    """Samples the RSS of this process and of all its descendants (Dask nanny + worker processes) every ``period``."""

    def __init__(self, period: float = 0.2):
        import threading

        import psutil

        self.me = psutil.Process()
        self.period = period
        self.client_peak = 0
        self.workers_peak = 0  # sum over the descendant processes at one sample
        self.worker_peak = 0  # the largest single descendant
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        import psutil

        self.client_peak = max(self.client_peak, self.me.memory_info().rss)
        rss = []
        for child in self.me.children(recursive=True):
            try:
                rss.append(child.memory_info().rss)
            except psutil.Error:  # a process that ended between listing and reading
                continue
        if rss:
            self.workers_peak = max(self.workers_peak, sum(rss))
            self.worker_peak = max(self.worker_peak, max(rss))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measure_e2e(n: int, source: str, out_dir: Path) -> dict:
    """One size, in this process: LocalCluster (the config's dask section) -> ``pipeline.curate_candidates`` on n
    rows -> seconds, peak RSS of the client and of the worker processes, manifest checks."""
    import pyarrow.parquet as pq

    from training.config import load_config
    from training.curate.pipeline import MANIFEST_NAME, curate_candidates
    from training.runtime import dask_client

    budget = int(n * E2E_BUDGET_SHARE)
    cfg = load_config(REPO / "training" / "configs" / "curate.yaml",
                      overrides=[f"out={out_dir}", f"select.budget={budget}", "progress=false", "report.figures=false"])
    with ProcessTreeSampler() as sampler, dask_client(cfg["dask"]) as client:
        time.sleep(1.0)
        sampler.sample()
        client_base = sampler.me.memory_info().rss  # imports + Dask client, before any data
        t0 = time.perf_counter()
        raw = e2e_raw_descriptors(n, source)
        manifest = e2e_manifest(n)
        t_data = time.perf_counter() - t0
        t0 = time.perf_counter()
        path = curate_candidates(manifest, raw, cfg, Path(out_dir), client)
        seconds = time.perf_counter() - t0
        n_workers = len(client.scheduler_info()["workers"])
    del manifest, raw
    meta = pq.ParquetFile(path).metadata
    table = pq.read_table(path, columns=["selected", "reject_reason", "cluster"])
    summary = json.loads((Path(out_dir) / "report" / "summary.json").read_text())
    rows, selected = meta.num_rows, int(table["selected"].to_numpy().sum())
    info = dict(
        n=n, source="maple_resampled" if source != "generator" else "generator", seconds=seconds,
        data_seconds=t_data, budget=budget, n_workers=n_workers, threads_per_worker=cfg["dask"]["threads_per_worker"],
        client_base_gb=client_base / 1e9, client_peak_gb=sampler.client_peak / 1e9,
        client_growth_bytes_per_row=(sampler.client_peak - client_base) / n,
        workers_peak_gb=sampler.workers_peak / 1e9, worker_peak_gb=sampler.worker_peak / 1e9,
        manifest_rows=rows, manifest_row_groups=meta.num_row_groups, selected=selected,
        rejected=summary["rejected"], clusters=summary["clusters"], cluster_levels=[
            {k: v for k, v in lv.items() if k in ("level", "items", "exemplars", "seconds")}
            for lv in summary["cluster"]["levels"]],
        timings_s=summary["timings_s"], manifest=MANIFEST_NAME,
    )
    info["checks"] = {"manifest_has_every_row": rows == n,
                      "budget_selected": selected == min(budget, n - info["rejected"])}
    return info


def end_to_end(sizes: tuple[int, ...], tmp: Path) -> dict:
    """Each size in its own subprocess (its own peak RSS); MAPLE raw descriptors once in this process when present."""
    if MAPLE_DIR.is_dir():
        source = str(tmp / "maple_raw.npy")
        np.save(source, maple_raw_descriptors())
        regime = f"resampled real MAPLE descriptors ({MAPLE_DIR}) + N(0, ({E2E_JITTER} x column std)^2) jitter"
    else:
        source = "generator"
        regime = "generator: 300 Zipf-sized anisotropic Gaussian clusters (80 %) + uniform background (20 %), 52-d"
    print(json.dumps({"end_to_end_regime": regime, "sizes": list(sizes)}), flush=True)
    runs = []
    for n in sizes:
        out = tmp / f"e2e_{n}"
        command = [sys.executable, __file__, "--e2e", str(n), source, str(out)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        shutil.rmtree(out, ignore_errors=True)
        if done.returncode != 0:  # recorded as a missed target (the other sections' results are kept)
            print(f"end-to-end n={n} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            return dict(regime=regime, runs=runs, error=f"n={n}: exit {done.returncode}: {done.stderr[-1500:]}",
                        checks={f"n={n}: ran": False})
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "cluster_levels"}), flush=True)
    small, large = runs[0], runs[-1]
    result = dict(regime=regime, runs=runs,
                  client_peak_ratio=large["client_peak_gb"] / small["client_peak_gb"],
                  worker_peak_ratio=large["worker_peak_gb"] / small["worker_peak_gb"],
                  size_ratio=large["n"] / small["n"],
                  client_marginal_bytes_per_row=(large["client_peak_gb"] - small["client_peak_gb"]) * 1e9
                  / max(large["n"] - small["n"], 1),
                  targets=dict(worker_peak_ratio=E2E_WORKER_PEAK_RATIO_TARGET,
                               client_bytes_per_row=E2E_CLIENT_BYTES_PER_ROW_TARGET))
    result["checks"] = {
        "worker_peak_bounded": result["worker_peak_ratio"] <= E2E_WORKER_PEAK_RATIO_TARGET,
        "client_bytes_per_row": result["client_marginal_bytes_per_row"] <= E2E_CLIENT_BYTES_PER_ROW_TARGET,
        **{f"n={r['n']}: {k}": v for r in runs for k, v in r["checks"].items()},
    }
    return result


# --- main ---------------------------------------------------------------------------------------------------------

def failed_checks(report: dict) -> list[str]:
    """Every check that is False (None = not applicable, e.g. sklearn did not converge) -> 'where: check' lines."""
    failed = []
    for row in report.get("compare", []):
        failed += [f"{row['case']} n={row['n']}: {name}" for name, ok in row["checks"].items() if ok is False]
    for section in ("selection", "selection_large", "descriptors", "end_to_end"):
        failed += [f"{section}: {name}" for name, ok in report.get(section, {}).get("checks", {}).items()
                   if ok is False]
    return failed


def write_readme(report: dict, source: Path) -> None:
    """The benchmark block of training/curate/README.md from ``report``; ``source`` copied to benchmark.json."""
    from training.curate.report import render_benchmark_readme

    readme = REPO / "training" / "curate" / "README.md"
    readme.write_text(render_benchmark_readme(readme.read_text(), report))
    target = REPO / "training" / "curate" / "benchmark.json"
    if source.resolve() != target.resolve():
        shutil.copy(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 5k, three cases, small descriptor archive")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_curation.json"))
    parser.add_argument("--readme", action="store_true", help="update training/curate/README.md from this run")
    parser.add_argument("--readme-from", default=None, metavar="JSON",
                        help="only regenerate the README table (and benchmark.json) from this benchmark JSON")
    parser.add_argument("--cases", default=None, help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--sections", default="compare,selection,descriptors,end_to_end",
                        help="comma-separated subset of compare,selection,descriptors,end_to_end")
    parser.add_argument("--e2e-sizes", default=None, help="comma-separated row counts for end_to_end (default "
                        f"{','.join(map(str, E2E_SIZES))}; --quick {','.join(map(str, E2E_QUICK_SIZES))})")
    parser.add_argument("--measure", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--e2e", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.e2e:
        n, source, out = args.e2e
        print(json.dumps(measure_e2e(int(n), source, Path(out))))
        return
    if args.measure:
        method, case, n, pref, k, out = args.measure
        print(json.dumps(measure(method, case, int(n), float(pref), int(k) or None, Path(out))))
        return

    if args.readme_from:
        write_readme(json.loads(Path(args.readme_from).read_text()), Path(args.readme_from))
        return
    sizes = [5000] if args.quick else [5000, 10000]
    cases = [c for c in (args.cases.split(",") if args.cases else QUICK_CASES if args.quick else CASES)]
    skipped = []
    if "maple" in cases and not MAPLE_DIR.is_dir():
        cases.remove("maple")
        skipped.append(f"maple: {MAPLE_DIR} absent")
    regime = dict(mode="quick" if args.quick else "full", sizes=sizes, cases=cases, skipped=skipped, dim=DIM,
                  maple_dir=str(MAPLE_DIR), sklearn=SKLEARN_AP, cpu_count=os.cpu_count(),
                  targets=dict(quality_vs_sklearn=QUALITY_TARGET, beats_kmeans=True, read_ratio=READ_RATIO_TARGET))
    sections = args.sections.split(",")
    e2e_sizes = tuple(int(v) for v in args.e2e_sizes.split(",")) if args.e2e_sizes else (
        E2E_QUICK_SIZES if args.quick else E2E_SIZES)
    regime["sections"] = sections
    regime["end_to_end_sizes"] = list(e2e_sizes)
    regime["load_average_start"] = os.getloadavg()
    print(json.dumps({"data_regime": regime}), flush=True)
    report: dict = dict(data_regime=regime, compare=[])
    with tempfile.TemporaryDirectory() as tmp:
        if "compare" in sections:
            for n in sizes:
                for case in cases:
                    row = compare_case(case, n, Path(tmp))
                    report["compare"].append(row)
                    print(json.dumps({"case": case, "n": n, "checks": row["checks"]}), flush=True)
        if "selection" in sections:
            report["selection"] = selection_quality()
            print(json.dumps({"selection": report["selection"]}), flush=True)
            report["selection_large"] = selection_quality(budget=report["selection"]["n"] // 3)
            print(json.dumps({"selection_large": report["selection_large"]}), flush=True)
        if "descriptors" in sections:
            report["descriptors"] = descriptor_read_ratio(*((2, 1024) if args.quick else (8, 2048)))
            print(json.dumps({"descriptors": {k: v for k, v in report["descriptors"].items() if k != "rates"}}),
                  flush=True)
        if "end_to_end" in sections:
            report["end_to_end"] = end_to_end(e2e_sizes, Path(tmp))
            print(json.dumps({"end_to_end": {k: v for k, v in report["end_to_end"].items() if k != "runs"}}),
                  flush=True)
    regime["load_average_end"] = os.getloadavg()
    report["failed"] = failed_checks(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.readme:
        write_readme(report, Path(args.out))
    print(json.dumps(dict(failed=report["failed"], out=args.out)))
    if report["failed"]:
        print("targets missed:\n  " + "\n  ".join(report["failed"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
