"""Curation benchmarks: scalable AP vs sklearn, scaling to 1M points (also on a Dask LocalCluster), descriptor speed.

    .venv/bin/python benchmarks/bench_curation.py [--quick] [--out outputs/bench_curation.json]

Every AP measurement runs in its own subprocess (``--measure METHOD N``) so its peak memory is its own. At the
comparison sizes each method runs twice: once untraced for the time and the growth of the peak RSS (``ru_maxrss``)
over the RSS after the data was made, once under ``tracemalloc`` for the traced peak (numpy's buffers are traced).
tracemalloc hooks every allocation, so it slows code that makes many small arrays (ours) far more than code that
makes a few big ones (sklearn): times under it are not comparable, and none is reported. The scaling runs are
untraced (peak = RSS growth). Data: ``make_blobs(n, 24 features, 50 centres, std 2.5)``, float32. Methods:

- ``sklearn``: ``sklearn.cluster.AffinityPropagation`` (defaults: damping 0.5, max_iter 200), the shared preference.
- ``exact``: our exact AP (float32, vectorised), damping 0.7, max_iter 400: the reference objective.
- ``ours``: hierarchical AP (partitions of 256) at the same preference; ``ours_k``: the same with ``target_k`` = the
  exact run's cluster count (quality at equal cluster counts).

Quality = net similarity of the reference / net similarity of ours (both negative: 1.0 = as good, > 1 better).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_data(n: int, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n, n_features=24, centers=50, cluster_std=2.5, random_state=seed)
    return x.astype(np.float32)


def measure(method: str, n: int, preference: float | None, target_k: int | None, trace: bool = False) -> dict:
    """Run one method on n points in this process -> seconds, memory, clusters, net similarity, convergence.

    ``trace``: record the tracemalloc peak (and no time: tracing slows the run unevenly across methods).
    """
    from training.curate.affinity import exact_ap, hierarchical_ap, net_similarity, resolve_preference

    x = make_data(n)
    pref = resolve_preference(x, "median") if preference is None else preference
    rss_before = _rss_bytes()
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    converged, n_iter = None, None
    if method == "sklearn":
        from sklearn.cluster import AffinityPropagation

        model = AffinityPropagation(preference=pref, random_state=0).fit(x)
        labels = model.cluster_centers_indices_[model.labels_] if len(model.cluster_centers_indices_) else None
        n_iter, converged = int(model.n_iter_), bool(model.n_iter_ < model.max_iter)
    elif method == "exact":
        labels, converged, n_iter = exact_ap(x, pref, damping=0.7, max_iter=400)
    elif method in ("ours", "ours_k", "ours_dask"):
        client = None
        if method == "ours_dask":
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            client = Client(cluster)
            t0 = time.perf_counter()  # the cluster start-up is not part of the clustering time
        result = hierarchical_ap(
            x, preference=pref if method != "ours_k" else "target_k", target_k=target_k, partition_size=256,
            seed=0, client=client,
        )
        labels = result.exemplars[result.labels]
        if client is not None:
            client.close()
            cluster.close()
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0
    traced_peak = None
    if trace:
        traced_peak = tracemalloc.get_traced_memory()[1] / 1e9
        tracemalloc.stop()
    rss_growth = max(0, _peak_rss_bytes() - rss_before)
    out = dict(method=method, n=n, seconds=None if trace else seconds, traced_peak_gb=traced_peak,
               rss_growth_gb=None if trace else rss_growth / 1e9, converged=converged, n_iter=n_iter, preference=pref)
    if labels is not None:
        out.update(clusters=len(np.unique(labels)), net_similarity=net_similarity(x, labels, pref),
                   distortion=net_similarity(x, labels, 0.0))
    return out


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_measure(
    method: str, n: int, preference: float | None = None, target_k: int | None = None, traced: bool = True
) -> dict:
    """One untraced subprocess (time, RSS) and, with ``traced``, one under tracemalloc (traced peak) -> merged."""
    command = [sys.executable, __file__, "--measure", method, str(n)]
    if preference is not None:
        command += ["--preference", repr(preference)]
    if target_k is not None:
        command += ["--target-k", str(target_k)]
    result = _run_json(command, f"{method} n={n}")
    if traced:
        result["traced_peak_gb"] = _run_json([*command, "--trace"], f"{method} n={n} traced")["traced_peak_gb"]
    print(json.dumps(result), flush=True)
    return result


def _run_json(command: list[str], what: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def descriptor_read_ratio(n_scenes: int, size: int, repeats: int = 3, gdal_threads: int | None = None) -> dict:
    """Chips/s of tiling + descriptors vs a bare rasterio windowed-read loop over the same chips (warm cache).

    ``gdal_threads``: override ``tiling.gdal_threads`` of the default config for our side (the bare loop: GDAL
    defaults, one chip per read).
    """
    import rasterio
    from rasterio.windows import Window

    from training.config import load_config
    from training.curate.tiling import chip_windows, discover, process_scene
    from training.synthetic import generate_archive

    cfg = load_config(REPO / "training" / "configs" / "curate.yaml")
    if gdal_threads is not None:
        cfg["tiling"]["gdal_threads"] = gdal_threads
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
    best_bare, best_ours = max(rates["bare"]), max(rates["ours"])
    return dict(chips=count, gdal_threads=cfg["tiling"]["gdal_threads"], bare_chips_per_s=best_bare,
                ours_chips_per_s=best_ours,
                descriptor_read_ratio=best_ours / best_bare, rates=rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test of this script)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_curation.json"))
    parser.add_argument("--measure", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--preference", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--target-k", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-sklearn-10k", action="store_true", help="skip the slow (~160 s, ~4 GB) sklearn run")
    args = parser.parse_args()
    if args.measure:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.preference, args.target_k, args.trace)))
        return

    from training.curate.affinity import resolve_preference

    compare_sizes = [500, 1000] if args.quick else [2000, 5000, 10000]
    scale_sizes = [20000] if args.quick else [100_000, 1_000_000]
    report: dict = {"compare": {}, "scaling": {}, "cpu_count": os.cpu_count()}
    for n in compare_sizes:
        pref = resolve_preference(make_data(n), "median")
        row = {m: run_measure(m, n, pref) for m in ("exact", "ours")}
        row["ours_k"] = run_measure("ours_k", n, pref, target_k=row["exact"]["clusters"])
        if not (args.skip_sklearn_10k and n >= 10000):
            row["sklearn"] = run_measure("sklearn", n, pref)
        exact, ours, ours_k = row["exact"], row["ours"], row["ours_k"]
        row["quality_same_preference"] = exact["net_similarity"] / ours["net_similarity"]
        row["quality_equal_k"] = exact["distortion"] / ours_k["distortion"]
        if "sklearn" in row:
            row["speedup_vs_sklearn"] = row["sklearn"]["seconds"] / ours["seconds"]
            row["memory_ratio_vs_sklearn"] = ours["traced_peak_gb"] / max(row["sklearn"]["traced_peak_gb"], 1e-12)
            row["rss_ratio_vs_sklearn"] = ours["rss_growth_gb"] / max(row["sklearn"]["rss_growth_gb"], 1e-12)
        report["compare"][str(n)] = row
    for n in scale_sizes:
        report["scaling"][str(n)] = {m: run_measure(m, n, traced=False) for m in ("ours", "ours_dask")}
    archive = (2, 512) if args.quick else (8, 2048)
    report["descriptors"] = descriptor_read_ratio(*archive)
    report["descriptors_2_gdal_threads"] = descriptor_read_ratio(*archive, gdal_threads=2)
    top = str(compare_sizes[-1])
    big = str(scale_sizes[-1])
    summary = dict(
        ap_speedup_10k=report["compare"][top].get("speedup_vs_sklearn"),
        ap_memory_ratio_10k=report["compare"][top].get("memory_ratio_vs_sklearn"),
        ap_rss_ratio_10k=report["compare"][top].get("rss_ratio_vs_sklearn"),
        ap_quality_10k=report["compare"][top]["quality_same_preference"],
        ap_quality_equal_k_10k=report["compare"][top]["quality_equal_k"],
        sklearn_converged_10k=report["compare"][top].get("sklearn", {}).get("converged"),
        exact_converged_10k=report["compare"][top]["exact"]["converged"],
        ap_1m_seconds=report["scaling"][big]["ours"]["seconds"],
        ap_1m_peak_gb=report["scaling"][big]["ours"]["rss_growth_gb"],
        ap_1m_dask_seconds=report["scaling"][big]["ours_dask"]["seconds"],
        ap_100k_seconds=report["scaling"].get("100000", {}).get("ours", {}).get("seconds"),
        descriptor_read_ratio=report["descriptors"]["descriptor_read_ratio"],
        descriptor_read_ratio_2_gdal_threads=report["descriptors_2_gdal_threads"]["descriptor_read_ratio"],
        sizes=dict(compare=compare_sizes, scaling=scale_sizes),
    )
    report["summary"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
