"""timm's and smp's own test suites run against the arctic family (opt-in: they need those libraries' sources).

    ARCTIC_PEER_TIMM_SRC=/path/to/pytorch-image-models ARCTIC_PEER_SMP_SRC=/path/to/segmentation_models.pytorch \
        python -m pytest -m slow tests/test_peer_suites.py

Each test copies the peer's test files (bodies untouched) into a temporary folder, adds the small selection below
(a conftest, and for smp the subclasses naming our encoder), runs pytest there and checks the outcome per test.
The sources are never vendored; the expected results are the ones recorded in the closing note of issue 12.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

TIMM_CONFTEST = '''
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import arctic_vit  # noqa: E402,F401  (registers the family with timm before test_models parametrizes)

def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        name = getattr(item, "callspec", None) and item.callspec.params.get("model_name")
        (keep if isinstance(name, str) and name.startswith("arctic") else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
'''

SMP_CONFTEST = '''
import functools, os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import segmentation_models_pytorch as smp  # noqa: E402
import arctic_vit  # noqa: E402,F401
_create_model = smp.create_model

@functools.wraps(_create_model)
def _create_model_without_imagenet(*args, **kwargs):  # smp's default encoder_weights="imagenet" does not exist here
    kwargs.setdefault("encoder_weights", None)
    return _create_model(*args, **kwargs)

smp.create_model = _create_model_without_imagenet
'''

SMP_SELECTION = '''
from tests.encoders import base as encoder_base
from tests.models import base as model_base
ENCODER = "arctic_mae_vit_tiny_patch16_224"

class TestArcticEncoder(encoder_base.BaseEncoderTester):
    encoder_names = [ENCODER]
    supports_dilated = False

class TestArcticUnet(model_base.BaseModelTester):
    test_model_type = "unet"
    test_encoder_name = ENCODER

class TestArcticUPerNet(model_base.BaseModelTester):
    test_model_type = "upernet"
    test_encoder_name = ENCODER
    default_batch_size = 2

class TestArcticFPN(model_base.BaseModelTester):
    test_model_type = "fpn"
    test_encoder_name = ENCODER
'''

GIT_STANDIN = '''
class Repo:  # smp's tests/utils.py asks git whether to run on a diff; no repository here: run everything
    def __init__(self, *args, **kwargs):
        raise RuntimeError("not a git repository")
'''


def _source(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value or not Path(value, "tests").is_dir():
        pytest.skip(f"set {variable} to a checkout of the library's sources")
    return Path(value)


def _outcomes(root: Path, *args: str) -> Counter:
    """Run pytest in ``root`` and count (test function, outcome) from its -rA summary."""
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--tb=no",
                           "-W", "ignore", *args], cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    found = re.findall(r"^(PASSED|FAILED|ERROR) \S+::(?:\w+::)?(\w+)", done.stdout, re.MULTILINE)
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    return Counter((name, outcome) for outcome, name in found)


@pytest.mark.slow
def test_timm_test_models_on_the_family(tmp_path):
    src = _source("ARCTIC_PEER_TIMM_SRC")
    (tmp_path / "tests").mkdir()
    shutil.copy(src / "tests" / "test_models.py", tmp_path / "tests")
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "conftest.py").write_text(TIMM_CONFTEST)
    counts = _outcomes(tmp_path, "tests/test_models.py")
    failed = {name for (name, outcome) in counts if outcome != "PASSED"}
    # timm routes ViTs to test_model_default_cfgs_non_std by name ('vit_*'); the std variant checks NCHW pooling
    assert failed <= {"test_model_default_cfgs"}, counts
    assert counts[("test_model_forward", "PASSED")] == 5 and counts[("test_model_forward_torchscript", "PASSED")] == 5


@pytest.mark.slow
def test_smp_encoder_and_model_testers_on_the_family(tmp_path):
    src = _source("ARCTIC_PEER_SMP_SRC")
    shutil.copytree(src / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("test_*.py"))
    (tmp_path / "tests" / "conftest.py").write_text(SMP_CONFTEST)
    (tmp_path / "tests" / "test_arctic_family.py").write_text(SMP_SELECTION)
    (tmp_path / "git.py").write_text(GIT_STANDIN)
    counts = _outcomes(tmp_path, "tests/test_arctic_family.py")
    failed = {name for (name, outcome) in counts if outcome != "PASSED"}
    # smp's model classes declare themselves scriptable; the arctic encoder refuses TorchScript with a message
    assert failed <= {"test_torch_script"}, counts
    assert counts[("test_any_resolution", "PASSED")] == 3 and counts[("test_torch_export", "PASSED")] == 4
