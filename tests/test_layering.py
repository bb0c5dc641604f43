"""The package layers, read from the source (ast, nothing imported): ``arctic_vit`` (the core) imports neither
``training`` nor ``evaluation``; ``training`` never imports ``evaluation``; ``evaluation`` imports from ``training``
only torch-free leaf modules that hold facts both stages share (``ALLOWED``), except the end-to-end demo files, which
run both stages by design. The allowed modules themselves import neither torch nor ``arctic_vit``: curation's Dask
workers must not import torch, and ``import arctic_vit`` does (it registers the family with timm)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"training.curate.metadata", "training.runtime", "training.synthetic", "training.synthetic_arctic"}
"""What ``evaluation`` may import from ``training``."""
BOTH_STAGES = {p.relative_to(REPO).as_posix() for p in (REPO / "evaluation").glob("demo*.py")} | {
    "evaluation/probe_data.py"}
"""Files that run curation, pretraining and evaluation end to end (``evaluation/demo*.py`` and the probe data)."""
TORCH_FREE = {"torch", "torchvision", "timm", "arctic_vit"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth (function-level imports included)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
                      for alias in node.names]
    return found


def _is_module(name: str) -> bool:
    """``from training import synthetic`` imports the module ``training.synthetic``."""
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_walk_sees_every_kind_of_import():
    """The parser itself: absolute, from, relative and function-level imports all resolve to module names."""
    found = {name for _, name in imports(REPO / "training" / "curate" / "pipeline.py")}
    assert {"training.curate.affinity", "training.runtime", "training.curate.validate", "numpy"} <= found
    assert "arctic_vit.config" in {name for _, name in imports(REPO / "training" / "config.py")}
    core = {name for _, name in imports(REPO / "arctic_vit" / "__init__.py")}
    assert "arctic_vit.bands" in core and "arctic_vit.hub" in core  # `from . import bands, hub` and `from .hub ...`
    assert len(sources("arctic_vit")) > 5 and len(sources("training")) > 10 and len(sources("evaluation")) > 10


@pytest.mark.parametrize(("package", "forbidden"), [("arctic_vit", {"training", "evaluation"}),
                                                    ("training", {"evaluation"})])
def test_lower_layers_do_not_import_upper_ones(package, forbidden):
    bad = [f"{path.relative_to(REPO)}:{line} imports {name}" for path in sources(package)
           for line, name in imports(path) if _top(name) in forbidden]
    assert not bad, "\n".join(bad)


def test_evaluation_imports_only_shared_torch_free_training_modules():
    bad = [f"{path.relative_to(REPO)}:{line} imports {name} (allowed: {sorted(ALLOWED)})"
           for path in sources("evaluation") if path.relative_to(REPO).as_posix() not in BOTH_STAGES
           for line, name in imports(path) if _top(name) == "training" and name not in ALLOWED]
    assert not bad, "\n".join(bad)
    assert (REPO / "evaluation" / "probe_data.py").is_file(), "an exempt file moved: update BOTH_STAGES"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_shared_training_modules_stay_torch_free(module):
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    heavy = [f"{path.relative_to(REPO)}:{line} imports {name}" for line, name in imports(path)
             if _top(name) in TORCH_FREE]
    assert not heavy, "\n".join(heavy)
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print(sorted(m for m in {sorted(TORCH_FREE)}"
                           " if m in sys.modules))"], cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]", f"importing {module} loads {done.stdout.strip()}"
