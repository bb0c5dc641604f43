"""The README's "ViT-L on one GPU" estimate, generated: FLOPs counted by ``torch.utils.flop_counter`` on the meta
device (no memory, no weights), the run counts read from the recipe, its dataset card and the compare grid below.

    python -m evaluation.gpu_estimate           # print the markdown block
    python -m evaluation.gpu_estimate --write   # replace the block between the markers in evaluation/README.md

Counted: the recipe's model (ViT-L/16 + pyramid + head at ``model.img_size``), forward + backward per training
crop, forward per evaluation tile. Runs: per backbone ``len(train.lr_sweep)`` sweep runs (first seed, scored on the
tune split) + one run per seed (scored on the tune and test splits); ``train.epochs x train.crops_per_image x``
training chips images per run; evaluation tiles from ``evaluation.overlap.tile_origins`` over each chip's size.
Every backbone is counted at the arctic ViT-L's FLOPs (the grid's encoders are all ViT-L/16; Prithvi's smaller
patch embedding is ignored). The utilisation is an assumption, not a measurement.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

GRID_COMMAND = (
    "--recipe evaluation/recipes/maple_iwp_semantic.yaml --backbones arctic_mae_vit_large imagenet_mae_vit_large "
    "prithvi_eo2_300m random_vit_large --seeds 0 1 2 3 4 -- 'train.lr_sweep=[3.0e-5,1.0e-4,3.0e-4]'"
)
"""The four-backbone ViT-L grid that the estimate prices (``python -m evaluation.compare`` arguments)."""
FLOP_MODEL = "arctic_mae_vit_large"
PEAK_TFLOPS = 989.0
"""H100 SXM dense bf16 peak (NVIDIA datasheet), TFLOP/s."""
ASSUMED_UTILISATION = 0.30
"""Assumed fraction of the peak reached end to end: an assumption, not measured."""
BATCH = 2
"""Images per counted batch (training BatchNorm in the head needs > 1); FLOPs are reported per image."""
README = Path(__file__).with_name("README.md")
MARKER = "gpu-estimate"
START, END = f"<!-- {MARKER}:start -->", f"<!-- {MARKER}:end -->"


@dataclass
class Estimate:
    command: str
    params: int
    img_size: int
    train_flop: float  # per training image, forward + backward
    eval_flop: float  # per evaluation tile, forward
    epochs: int
    crops: int
    train_chips: int
    backbones: int
    seeds: int
    sweep: int
    sweep_tiles: int  # evaluation tiles of a sweep run (tune split)
    final_tiles: int  # evaluation tiles of a seed run (tune + test splits)

    @property
    def images_per_run(self) -> int:
        return self.epochs * self.crops * self.train_chips

    @property
    def runs(self) -> int:
        return self.backbones * (self.sweep + self.seeds)

    @property
    def eval_total_flop(self) -> float:
        return self.backbones * (self.sweep * self.sweep_tiles + self.seeds * self.final_tiles) * self.eval_flop

    @property
    def total_flop(self) -> float:
        return self.runs * self.images_per_run * self.train_flop + self.eval_total_flop

    @property
    def seconds(self) -> float:
        return self.total_flop / (PEAK_TFLOPS * 1e12 * ASSUMED_UTILISATION)


def parse_grid(command: str = GRID_COMMAND) -> tuple[dict, list[str], list[int]]:
    """compare's arguments -> (recipe config with overrides, backbones, seeds)."""
    from evaluation.finetune import load_recipe

    args = shlex.split(command)
    split = args.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--backbones", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    known = parser.parse_args(args[:split])
    return load_recipe(known.recipe, args[split + 1:]), known.backbones, known.seeds


def count_flops(cfg: dict, card) -> tuple[int, float, float]:
    """(parameters, FLOP forward+backward per training image, FLOP forward per eval tile) on the meta device."""
    from evaluation.backbones import build_backbone
    from evaluation.finetune import build_model

    size = cfg["model"]["img_size"]
    with torch.device("meta"):
        backbone = build_backbone(FLOP_MODEL, card, size, weights="none", normalization="native")
        model = build_model(cfg, backbone, card)
        x = torch.empty(BATCH, len(card.bands), size, size)
    params = sum(p.numel() for p in model.parameters())
    model.train()
    with FlopCounterMode(display=False) as train_counter:
        model(x).sum().backward()
    model.eval()
    with FlopCounterMode(display=False) as eval_counter, torch.no_grad():
        model(x)
    return params, train_counter.get_total_flops() / BATCH, eval_counter.get_total_flops() / BATCH


def estimate(command: str = GRID_COMMAND) -> Estimate:
    from evaluation.datasets import build_dataset, load_card
    from evaluation.overlap import tile_origins

    cfg, backbones, seeds = parse_grid(command)
    if cfg["task"] != "semantic":
        raise ValueError(f"{command}: the estimate prices a semantic recipe, got task {cfg['task']!r}")
    card = load_card(cfg["dataset"]["card"], cfg["dataset"].get("card_overrides") or None)
    d, size, overlap = cfg["dataset"], cfg["model"]["img_size"], cfg["eval"]["overlap"]

    def tiles(split: str) -> int:
        dataset = build_dataset(card, split)
        return sum(len(tile_origins(*dataset[i]["image"].shape[-2:], size, overlap)) for i in range(len(dataset)))

    tune = tiles(d["tune_split"])
    test = tiles(d["test_split"]) if d["test_split"] else 0
    params, train_flop, eval_flop = count_flops(cfg, card)
    t = cfg["train"]
    return Estimate(command, params, size, train_flop, eval_flop, t["epochs"], t["crops_per_image"],
                    len(build_dataset(card, d["train_split"])), len(backbones), len(seeds),
                    len(t["lr_sweep"] or []), tune, tune + test)


def render(e: Estimate) -> str:
    """The markdown block (between the markers) for ``e``."""
    return "\n".join([
        START,
        f"Generated by `python -m evaluation.gpu_estimate --write` (FLOPs counted by `torch.utils.flop_counter` on "
        f"the meta device) for `python -m evaluation.compare {e.command}`.",
        "",
        f"- Model: ViT-L/16 + pyramid + UPerNet at {e.img_size} px, {e.params / 1e6:.1f} M parameters: "
        f"**{e.train_flop / 1e9:.0f} GFLOP per training image** (forward + backward), "
        f"**{e.eval_flop / 1e9:.0f} GFLOP per evaluation tile** (forward).",
        f"- Per run: {e.epochs} epochs x {e.crops} crops x {e.train_chips} training chips = {e.images_per_run:,} "
        f"images = {e.images_per_run * e.train_flop / 1e15:.2f} PFLOP of training.",
        f"- Grid: {e.backbones} backbones x ({e.sweep} lr-sweep runs + {e.seeds} seeds) = {e.runs} runs; "
        f"evaluation {e.sweep_tiles} tiles per sweep run, {e.final_tiles} per seed run "
        f"({e.eval_total_flop / 1e15:.2f} PFLOP in all); total **{e.total_flop / 1e15:.0f} PFLOP**.",
        f"- At an **assumed** {ASSUMED_UTILISATION:.0%} of an H100's {PEAK_TFLOPS:g} TFLOP/s dense bf16 peak "
        f"(an assumption, not a measurement): **about {e.seconds / 60:.0f} minutes** of compute. Crops are cut on "
        "the CPU in the training process and runs start and load data, so expect the wall time to be several "
        "times that: an estimate, not measured on a GPU.",
        END,
    ])


def write_readme(block: str, path: Path = README) -> None:
    """Replace the marked block of ``path`` with ``block`` (markers included, as ``render`` gives it)."""
    from arctic_vit.card import replace_block

    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path}: markers {START} / {END} not found")
    path.write_text(replace_block(text, MARKER, block.removeprefix(START + "\n").removesuffix("\n" + END)))


def readme_block(path: Path = README) -> str:
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path}: markers {START} / {END} not found")
    return START + text.split(START, 1)[1].split(END, 1)[0] + END


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.gpu_estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"replace the block in {README}")
    args = parser.parse_args(argv)
    block = render(estimate())
    if args.write:
        write_readme(block)
    print(block)


if __name__ == "__main__":
    main()
