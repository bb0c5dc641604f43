"""Curation on a real Dask LocalCluster: same manifest as a local run, also when a worker is killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client, LocalCluster

from training.config import load_config
from training.curate import run_curation
from training.synthetic import generate_archive

CONFIG = Path(__file__).resolve().parents[1] / "training" / "configs" / "curate.yaml"
# tiny partitions and chunks so the clustering also runs as several Dask tasks
SMALL = ["cluster.ap.partition_size=8", "cluster.ap.chunk_size=8", "select.budget=10", "report.figures=false",
         "progress=false", "dask.n_workers=2", "dask.memory_limit=1GiB"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask_archive")
    generate_archive(root, n_scenes=6, size=512, seed=2, labels=False)
    return root


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("sync")
    cfg = load_config(CONFIG, overrides=[f"input.path={archive}", f"out={out}", "dask.scheduler=synchronous", *SMALL])
    return pd.read_parquet(run_curation(cfg))


def test_local_cluster_gives_the_same_manifest(archive, reference, tmp_path):
    cfg = load_config(CONFIG, overrides=[f"input.path={archive}", f"out={tmp_path}", "dask.scheduler=local", *SMALL])
    pd.testing.assert_frame_equal(pd.read_parquet(run_curation(cfg)), reference)


def test_worker_killed_mid_run_does_not_change_the_manifest(archive, reference, tmp_path):
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                     memory_limit="1GiB") as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        killed: list[str] = []

        def kill_a_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                busy = [worker for worker, tasks in client.processing().items() if tasks and worker in pids]
                if busy:
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                    return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
        killer.start()
        cfg = load_config(CONFIG, overrides=[f"input.path={archive}", f"out={tmp_path}", *SMALL])
        cfg["dask"]["scheduler"] = cluster.scheduler_address
        manifest = pd.read_parquet(run_curation(cfg))
        killer.join(timeout=5)
    assert killed, "no worker was killed while it was running a task"
    pd.testing.assert_frame_equal(manifest, reference)


def test_worker_side_modules_do_not_import_torch():
    """What a Dask worker imports to run a scene or a clustering task stays light: torch (via arctic_vit) would add
    ~0.9 GB per worker and pause workers at a 1 GiB memory limit (the run then waits forever)."""
    import subprocess
    import sys

    code = ("import sys, training.curate.tiling, training.curate.affinity, training.curate.pipeline; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "False"
