"""A Dask partition task that fails is re-scattered and re-run; one that keeps failing ends in an error naming it."""

from __future__ import annotations

import threading

import pytest

distributed = pytest.importorskip("distributed")

from training.curate.affinity import _on_workers  # noqa: E402

_attempts: dict[int, int] = {}
_lock = threading.Lock()


def _flaky(value: int) -> int:
    """Fails the first time it sees 2, always fails on 5, else returns value squared (threads share _attempts)."""
    with _lock:
        _attempts[value] = _attempts.get(value, 0) + 1
        seen = _attempts[value]
    if value == 5 or (value == 2 and seen == 1):
        raise OSError(f"partition {value} failed (attempt {seen})")
    return value * value


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl) as c:
        yield c


def test_failed_partition_is_retried(client):
    _attempts.clear()
    assert _on_workers(client, _flaky, [1, 2, 3]) == [1, 4, 9]
    assert _attempts == {1: 1, 2: 2, 3: 1}, "only the failing task ran again"


def test_partition_failing_every_time_is_named(client):
    _attempts.clear()
    with pytest.raises(RuntimeError, match=r"_flaky task 1 of 3 failed 3 times on the Dask workers: OSError: "
                                           r"partition 5 failed"):
        _on_workers(client, _flaky, [1, 5, 3], retries=2)
    assert _attempts[5] == 3
