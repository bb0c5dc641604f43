"""Run a backbone x seed grid on one recipe and report it (finished runs are skipped on re-run).

    python -m evaluation.compare --recipe evaluation/recipes/maple_iwp_semantic.yaml \\
        --backbones random_vit_tiny arctic_mae_vit_tiny --weights arctic_mae_vit_tiny=outputs/export \\
        --seeds 0 1 2 --reference random_vit_tiny -- train.epochs=8

Recipe overrides (``key.sub=value``) follow ``--``, since ``--backbones``/``--seeds``/``--weights`` take lists.

Writes ``<output.root>/<recipe>/compare/``: results.csv, results.md, results.png, panels.png, model_card.json
(see ``evaluation.report``); the runs themselves stay in ``<output.root>/<recipe>/<backbone>/seed<N>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.backbones import BACKBONES
from evaluation.finetune import load_recipe, run, run_dir
from evaluation.report import write_report
from training.config import write_resolved


def parse_weights(pairs: list[str]) -> dict[str, str]:
    """["name=path", ...] -> {name: path}; ``ValueError`` on a malformed pair or an unknown backbone."""
    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in BACKBONES:
            raise ValueError(f"--weights expects BACKBONE=PATH with a backbone of {BACKBONES}, got {pair!r}")
        weights[name] = value
    return weights


def compare(cfg: dict, backbones: list[str], seeds: list[int], reference: str | None = None,
            weights: dict[str, str] | None = None, out_dir: Path | None = None, force: bool = False,
            n_boot: int = 1000) -> dict:
    """Every backbone x seed run of ``cfg`` (skipping finished ones) -> report files; returns the card JSON."""
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; valid names: {', '.join(BACKBONES)}")
    reference = reference or backbones[0]
    if reference not in backbones:
        raise ValueError(f"reference {reference!r} is not among the compared backbones {backbones}")
    weights = weights or {}
    runs, dirs = {}, {}
    for backbone in backbones:
        for seed in seeds:
            metrics = run(cfg, backbone, seed, weights.get(backbone), force=force)
            runs.setdefault(backbone, []).append(metrics)
            dirs.setdefault(backbone, []).append(run_dir(cfg, backbone, seed))
            state = "skipped (done)" if metrics.get("skipped") else f"{metrics['seconds']} s"
            print(f"{backbone} seed {seed}: foreground mean F1 {metrics['scores']['foreground_mean_f1']} [{state}]")
    out = out_dir or run_dir(cfg, "compare", 0).parent
    write_resolved(cfg, out)
    return write_report(runs, dirs, out, reference, n_boot=n_boot)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--backbones", nargs="+", required=True, choices=BACKBONES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reference", default=None, help="backbone the others are compared with (default: first)")
    parser.add_argument("--weights", nargs="*", default=[], metavar="BACKBONE=PATH",
                        help="weights per backbone: hub | none | local path (default: the recipe's)")
    parser.add_argument("--out", default=None, help="report folder (default <output.root>/<recipe>/compare)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("overrides", nargs="*", metavar="-- key.sub=value", help="recipe overrides, after --")
    args = parser.parse_args(argv)
    cfg = load_recipe(args.recipe, args.overrides)
    card = compare(cfg, args.backbones, args.seeds, args.reference, parse_weights(args.weights),
                   Path(args.out) if args.out else None, args.force, args.bootstrap)
    out = Path(args.out) if args.out else run_dir(cfg, "compare", 0).parent
    print((out / "results.md").read_text())
    print(f"report: {out}  (model card JSON: {out / 'model_card.json'}, {len(card['results'])} rows)")


if __name__ == "__main__":
    main()
