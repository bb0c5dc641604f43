"""Runtime helpers shared by training and evaluation that import neither torch nor ``arctic_vit``.

``evaluation.predict`` and ``training.curate`` both start Dask clients and ask whether the CPU runs bfloat16; the
curation Dask workers must not import torch (``import arctic_vit`` does, to register with timm), so these live here,
in a leaf module both stages may import (tests/test_layering.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["cpu_supports_bf16", "dask_client"]


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 matmuls (AVX512-BF16 or AMX-BF16; read from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def dask_client(dask_cfg: Mapping[str, Any]) -> Iterator[Any]:
    """'synchronous' -> None (run here); 'local' -> a LocalCluster; an address (tcp://...) -> a Client to it.

    ``dask_cfg``: ``scheduler``, ``n_workers``, ``threads_per_worker``, ``memory_limit`` (curation's validated
    ``dask`` section, or the predictor's settings); no defaults here, so none can disagree with the schema's."""
    scheduler = str(dask_cfg["scheduler"])
    if scheduler in ("synchronous", "none", "sync"):
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=int(dask_cfg["n_workers"]), threads_per_worker=int(dask_cfg["threads_per_worker"]),
            processes=True, memory_limit=dask_cfg["memory_limit"], dashboard_address=None,
        )
        with cluster, Client(cluster) as client:
            yield client
    elif "://" in scheduler:
        with Client(scheduler) as client:
            yield client
    else:
        raise ValueError(f"dask.scheduler must be 'local', 'synchronous' or an address (tcp://host:8786): {scheduler}")
