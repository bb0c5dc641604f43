"""Test session setup: offline hub, isolated caches, small thread counts.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME when it is first imported (``import timm`` triggers
it), so they are set here, before any test module imports timm.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HUB_PORT = _free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="arctic-vit-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)  # the session's cache, gone afterwards
os.environ["HF_TOKEN"] = "hf_standin_token"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "maple_iwp"


@pytest.fixture(scope="session")
def hub():
    """The local hub stand-in on HF_ENDPOINT, for the whole session."""
    from tests.hub_standin import HubStandIn

    server = HubStandIn(port=HUB_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def maple_dir() -> Path:
    """The real MAPLE IWP chips beside the checkout; tests using it skip when ../shared is absent."""
    if not (MAPLE_DIR / "unlabelled").is_dir():
        pytest.skip(f"real MAPLE data not available at {MAPLE_DIR}")
    return MAPLE_DIR


@pytest.fixture
def one_torch_thread():
    """One torch thread for a test: small models run faster so on an oversubscribed CPU; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """``one_torch_thread`` for a whole module (``pytestmark = pytest.mark.usefixtures(...)``); restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
