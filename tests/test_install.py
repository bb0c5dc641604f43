"""The wheel is the pipeline: built from the sources, installed into an empty environment outside the repository, every
stage CLI runs from a foreign working directory and a tiny synthetic corpus goes curate -> pack -> pretrain -> export
-> plain timm.

The environment gets no network: its own site-packages holds only the wheel (installed with ``--no-deps``); the
dependencies come from this interpreter's site-packages, added by a ``.pth`` path line, which does not process that
folder's own ``.pth`` files, so an editable install of the repository stays invisible. (The full check, a fresh venv
installing ``arctic-vit[training,evaluation]`` from the wheel with its dependencies, is the same with a real
``pip install``; see the closing note of issue 12.)
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("arctic_vit", "training", "evaluation")
STAGE_CLIS = (
    "training.synthetic", "training.curate", "training.pack", "training.pretrain", "training.export",
    "evaluation.finetune", "evaluation.compare", "evaluation.predict", "evaluation.demo", "arctic_vit",
)

pytestmark = pytest.mark.slow


def _run(python: Path, cwd: Path, *args: str, timeout: int = 600) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the environment's python, the wheel) with the wheel built from a copy of the sources that ship."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(root / "wheel")], check=True, timeout=600)
    wheel = next((root / "wheel").glob("arctic_vit-*.whl"))
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, timeout=600)
    env_site = Path(_run(python, root, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (env_site / "zz_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, wheel


def test_wheel_ships_packages_configs_and_cards(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*"):
            if path.suffix in {".py", ".yaml", ".yml"} or path.parent.name == "templates":
                assert path.relative_to(REPO_ROOT).as_posix() in names, f"{path} is not in the wheel"


def test_every_stage_cli_runs_from_the_installed_wheel(installed, tmp_path):
    python, _ = installed
    where = json.loads(_run(python, tmp_path, "-c", "import json, arctic_vit, training, evaluation; "
                            "print(json.dumps([m.__file__ for m in (arctic_vit, training, evaluation)]))"))
    assert all(Path(f).is_relative_to(python.parents[1]) for f in where), where  # the wheel's copy, not the repo
    for module in STAGE_CLIS:
        usage = _run(python, tmp_path, "-m", module, "--help", timeout=300)
        assert usage.startswith(f"usage: python -m {module} "), usage.splitlines()[0]  # the command, not 'pack.py'


def test_tiny_corpus_through_every_training_stage(installed, tmp_path):
    python, _ = installed
    _run(python, tmp_path, "-m", "training.synthetic", "--out", "archive", "--scenes", "2", "--size", "512")
    _run(python, tmp_path, "-m", "training.curate", "--scheduler", "synchronous", "input.path=archive", "out=curated")
    _run(python, tmp_path, "-m", "training.pack", "pack.manifest=curated/manifest.parquet", "pack.out_dir=shards")
    _run(python, tmp_path, "-m", "training.pretrain", "data.shards=shards", "run.out_dir=pretrain",
         "run.max_steps=1", "data.batch_size=4", "optim.epochs=1", "optim.warmup_epochs=0")
    _run(python, tmp_path, "-m", "training.export", "export.checkpoint=pretrain/checkpoints", "export.out_dir=export")
    loaded = json.loads(_run(python, tmp_path, "-c", (
        "import json, timm, torch, arctic_vit\n"
        "m = timm.create_model('local-dir:export').eval()\n"
        "print(json.dumps(dict(mean=list(m.pretrained_cfg['mean']), max_value=arctic_vit.normalize_for(m).max_value,"
        " features=list(m(torch.zeros(1, 4, 96, 96)).shape))))"
    )))
    packed = json.loads((tmp_path / "shards" / "corpus.json").read_text())
    assert loaded["features"] == [1, 192]
    assert loaded["max_value"] == 2 ** packed["bit_depth"] - 1
    assert loaded["mean"] == pytest.approx(packed["mean"])  # the corpus statistics travelled to the plain-timm load


class WroteIntoEnvironment(AssertionError):
    """A stage wrote files into the installed environment instead of its output folder."""


def test_quick_demo_writes_only_under_its_out_folder(installed, tmp_path):
    python, _ = installed
    env_root = python.parents[1]
    before = {p for p in env_root.rglob("*") if "__pycache__" not in p.parts}
    _run(python, tmp_path, "-m", "evaluation.demo", "--size", "quick", "--out", "demo_out", timeout=900)
    assert (tmp_path / "demo_out" / "REPORT.md").is_file()
    written = sorted(str(p) for p in env_root.rglob("*") if "__pycache__" not in p.parts and p not in before)
    if written:
        raise WroteIntoEnvironment(f"the demo wrote {len(written)} files into the installed environment: {written[:3]}")
