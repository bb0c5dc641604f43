"""evaluation.gpu_estimate: the README block is the generated one; the grid arithmetic by hand."""

from __future__ import annotations

import pytest

from evaluation import gpu_estimate
from evaluation.gpu_estimate import Estimate, estimate, readme_block, render

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_grid_arithmetic_by_hand():
    e = Estimate("x", 10, 224, train_flop=3.0, eval_flop=1.0, epochs=2, crops=5, train_chips=7, backbones=4, seeds=5,
                 sweep=3, sweep_tiles=11, final_tiles=13)
    assert e.images_per_run == 70 and e.runs == 32
    assert e.total_flop == 32 * 70 * 3.0 + 4 * (3 * 11 + 5 * 13) * 1.0
    assert e.seconds == pytest.approx(e.total_flop / (989e12 * 0.30))
    assert "assumed" in render(e) and "not a measurement" in render(e)


def test_readme_block_is_the_generated_one():
    from pathlib import Path

    from evaluation.datasets import load_card

    cfg = gpu_estimate.parse_grid()[0]
    root = Path(load_card(cfg["dataset"]["card"]).root)
    if not root.is_dir():  # the MAPLE chips live outside the repository (../shared/data)
        pytest.skip(f"MAPLE chips not available at {root}")
    generated = render(estimate())
    assert readme_block() == generated, "run `python -m evaluation.gpu_estimate --write`"


def test_write_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{gpu_estimate.START}\nold\n{gpu_estimate.END}\nafter\n")
    gpu_estimate.write_readme(f"{gpu_estimate.START}\nnew\n{gpu_estimate.END}", readme)
    assert readme.read_text() == f"before\n{gpu_estimate.START}\nnew\n{gpu_estimate.END}\nafter\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        gpu_estimate.write_readme("x", readme)
