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
import timm

import arctic_vit  # noqa: F401  (registers the family with timm)

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

TIMM_VIT_ROUTE = "NON_STD_FILTERS = [\n    'vit_*',"
"""Start of timm's name filter that sends ViTs to test_model_default_cfgs_non_std."""

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


def _outcomes(root: Path, *args: str) -> tuple[Counter, dict[str, set[str]]]:
    """Run pytest in ``root``: count (test function, outcome) from its -rA summary, and collect each function's
    failure messages."""
    env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="1000")  # summary lines unabridged
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--tb=no",
                           "-W", "ignore", *args], cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    found = re.findall(r"^(PASSED|FAILED|ERROR) \S+::(?:\w+::)?(\w+)\S*(?: - (.*))?$", done.stdout, re.MULTILINE)
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    print(root.name, Counter(outcome for outcome, _, _ in found))  # the record for the closing note (pytest -s)
    messages: dict[str, set[str]] = {}
    for outcome, name, message in found:
        if outcome != "PASSED":
            messages.setdefault(name, set()).add(message)
    return Counter((name, outcome) for outcome, name, _ in found), messages


def _timm_tests(root: Path, src: Path, route_family_as_vit: bool) -> Path:
    """timm's tests/test_models.py (bodies untouched) and the family-selecting conftest under ``root``; with
    ``route_family_as_vit`` the family's names join timm's ``NON_STD_FILTERS``, next to ``'vit_*'``."""
    (root / "tests").mkdir(parents=True)
    text = (src / "tests" / "test_models.py").read_text()
    if route_family_as_vit:
        assert text.count(TIMM_VIT_ROUTE) == 1, "timm's NON_STD_FILTERS no longer starts with 'vit_*'"
        text = text.replace(TIMM_VIT_ROUTE, TIMM_VIT_ROUTE.replace("'vit_*'", "'arctic_mae_vit_*', 'vit_*'"))
    (root / "tests" / "test_models.py").write_text(text)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "conftest.py").write_text(TIMM_CONFTEST)
    return root


@pytest.mark.slow
def test_timm_test_models_on_the_family(tmp_path):
    src = _source("ARCTIC_PEER_TIMM_SRC")
    family = len(timm.list_models("arctic*", include_tags=True))
    counts, messages = _outcomes(_timm_tests(tmp_path / "as_is", src, False), "tests/test_models.py")
    # timm picks the config test by name: fnmatch against NON_STD_FILTERS ('vit_*', 'deit*', 'eva_*', ...) sends its
    # own ViTs to test_model_default_cfgs_non_std; 'arctic_mae_vit_*' matches none, so the family gets the standard
    # variant, written for NCHW trunks: `assert outputs.shape[spatial_axis[0]] == pool_size[0]` on
    # `outputs = model.forward_features(x)` with spatial_axis (2, 3). A timm VisionTransformer returns tokens
    # (N, 1 + L, D) there, so no pool_size can pass (None, as for timm's ViTs, fails first with a TypeError).
    assert counts[("test_model_default_cfgs", "FAILED")] == family, counts
    assert messages == {"test_model_default_cfgs": {"TypeError: 'NoneType' object is not subscriptable"}}, messages
    for name in ("test_model_forward", "test_model_backward", "test_model_forward_features", "test_model_forward_fx",
                 "test_model_backward_fx", "test_model_forward_torchscript", "test_model_forward_fx_torchscript"):
        assert counts[(name, "PASSED")] == family, counts
    # routed as timm routes its own ViTs, the family passes the config test timm applies to ViTs
    routed, _ = _outcomes(_timm_tests(tmp_path / "routed", src, True), "tests/test_models.py", "-k", "default_cfgs")
    assert routed == Counter({("test_model_default_cfgs_non_std", "PASSED"): family}), routed


@pytest.mark.slow
def test_smp_encoder_and_model_testers_on_the_family(tmp_path):
    src = _source("ARCTIC_PEER_SMP_SRC")
    shutil.copytree(src / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("test_*.py"))
    (tmp_path / "tests" / "conftest.py").write_text(SMP_CONFTEST)
    (tmp_path / "tests" / "test_arctic_family.py").write_text(SMP_SELECTION)
    (tmp_path / "git.py").write_text(GIT_STANDIN)
    counts, _ = _outcomes(tmp_path, "tests/test_arctic_family.py")
    failed = {name for (name, outcome) in counts if outcome != "PASSED"}
    # smp's model classes declare themselves scriptable; the arctic encoder refuses TorchScript with a message
    assert failed <= {"test_torch_script"}, counts
    assert counts[("test_any_resolution", "PASSED")] == 3 and counts[("test_torch_export", "PASSED")] == 4
