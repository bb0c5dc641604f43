"""Run a backbone x seed grid on one recipe and report it (finished runs are skipped on re-run).

    python -m evaluation.compare --recipe evaluation/recipes/maple_iwp_semantic.yaml \\
        --backbones random_vit_tiny arctic_mae_vit_tiny --weights arctic_mae_vit_tiny=outputs/export \\
        --seeds 0 1 2 --reference random_vit_tiny --device auto -- train.epochs=8 'train.lr_sweep=[1e-4,3e-4,1e-3]'

Recipe overrides (``key.sub=value``) follow ``--``, since ``--backbones``/``--seeds``/``--weights`` take lists.

Fair training: with ``train.lr_sweep`` each backbone first trains at every lr of the sweep (first seed) and is scored
on the tune split (val) only; the lr with the best headline score is then used for every seed, whose final runs
score the test split once. Runs are independent: with several visible GPUs (``--device auto`` or ``cuda``) they
run one per GPU in a process pool; on one device they run in turn.

Writes ``<output.root>/<recipe>/compare/``: results.csv, results.md, results.png, panels.png, model_card.json
(see ``evaluation.report``); the runs themselves stay in ``<output.root>/<recipe>/<backbone>/seed<N>/`` (sweep runs
in ``<backbone>/sweep/lr<lr>/seed<N>/``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from arctic_vit.config import write_resolved
from evaluation.backbones import BACKBONES
from evaluation.devices import DEVICE_CHOICES, run_devices
from evaluation.finetune import HEADLINE, load_recipe, run, run_dir
from evaluation.report import write_report

log = logging.getLogger(__name__)
Job = tuple[dict, str, int, "str | None", bool, "Path | None", bool]


def parse_weights(pairs: list[str]) -> dict[str, str]:
    """["name=path", ...] -> {name: path}; ``ValueError`` on a malformed pair or an unknown backbone."""
    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in BACKBONES:
            raise ValueError(f"--weights expects BACKBONE=PATH with a backbone of {BACKBONES}, got {pair!r}")
        weights[name] = value
    return weights


_WORKER_DEVICE: str | None = None


def _init_worker(devices: multiprocessing.Queue) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = devices.get()  # each worker process owns one GPU for its whole life


def _job(job: Job) -> dict:
    cfg, backbone, seed, weights, force, out, final = job
    return run(cfg, backbone, seed, weights, force, out, device=_WORKER_DEVICE, final=final)


def run_jobs(jobs: list[Job], devices: list[str]) -> list[dict]:
    """Independent runs -> their metrics, in order: one process per device when there are several, else in turn."""
    if len(devices) == 1:
        return [run(cfg, b, s, w, f, o, device=devices[0], final=final) for cfg, b, s, w, f, o, final in jobs]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    queue = context.Queue()
    for device in devices:
        queue.put(device)
    with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_worker, initargs=(queue,)) as pool:
        return list(pool.map(_job, jobs))


def _with_lr(cfg: dict, lr: float) -> dict:
    return {**cfg, "train": {**cfg["train"], "lr": lr}}


def sweep_lr(cfg: dict, backbones: list[str], seed: int, weights: dict[str, str], devices: list[str],
             force: bool) -> dict[str, dict]:
    """backbone -> {"lr": chosen, "sweep": {lr: tune-split headline score}} (first seed, tune split only)."""
    grid = cfg["train"]["lr_sweep"]  # floats: validated by RecipeConfig (load_recipe)
    headline = HEADLINE[cfg["task"]]
    jobs = [(_with_lr(cfg, lr), b, seed, weights.get(b), force, run_dir(cfg, b, seed).parent / "sweep" / f"lr{lr:g}"
             / f"seed{seed}", False) for b in backbones for lr in grid]
    results = run_jobs(jobs, devices)
    chosen = {}
    for i, backbone in enumerate(backbones):
        scores = {lr: results[i * len(grid) + j]["scores"].get(headline) for j, lr in enumerate(grid)}
        finite = {lr: v for lr, v in scores.items() if v is not None}
        if not finite:
            raise ValueError(f"lr sweep of {backbone}: every lr of {grid} gave an undefined {headline} on the tune "
                             "split")
        best = max(finite, key=lambda lr: (finite[lr], -lr))
        chosen[backbone] = {"lr": best, "sweep": {f"{lr:g}": v for lr, v in scores.items()}}
        print(f"{backbone}: lr sweep {chosen[backbone]['sweep']} -> {best:g}")
    return chosen


def compare(cfg: dict, backbones: list[str], seeds: list[int], reference: str | None = None,
            weights: dict[str, str] | None = None, out_dir: Path | None = None, force: bool = False,
            n_boot: int = 1000, device: str | None = None) -> dict:
    """Every backbone x seed run of ``cfg`` (skipping finished ones; lr swept first when ``train.lr_sweep``) ->
    report files; returns the card JSON."""
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:
        raise ValueError(f"unknown backbone(s) {unknown}; valid names: {', '.join(BACKBONES)}")
    reference = reference or backbones[0]
    if reference not in backbones:
        raise ValueError(f"reference {reference!r} is not among the compared backbones {backbones}")
    option = "--device" if device is not None else "train.device"
    devices = run_devices(device if device is not None else cfg["train"].get("device", "auto"), option)
    weights = weights or {}
    chosen = sweep_lr(cfg, backbones, seeds[0], weights, devices, force) if cfg["train"].get("lr_sweep") else {}
    jobs = [(_with_lr(cfg, chosen[b]["lr"]) if b in chosen else cfg, b, s, weights.get(b), force, None, True)
            for b in backbones for s in seeds]
    runs, dirs = {}, {}
    for (job_cfg, backbone, seed, *_), metrics in zip(jobs, run_jobs(jobs, devices)):
        runs.setdefault(backbone, []).append(metrics)
        dirs.setdefault(backbone, []).append(run_dir(job_cfg, backbone, seed))
        state = "skipped (done)" if metrics.get("skipped") else f"{metrics['seconds']} s"
        headline = HEADLINE[cfg["task"]]
        print(f"{backbone} seed {seed}: {headline} on {metrics['eval_split']} {metrics['scores'].get(headline)} "
              f"[{state}]")
    out = out_dir or run_dir(cfg, "compare", 0).parent
    write_resolved(cfg, out)
    return write_report(runs, dirs, out, reference, n_boot=n_boot, chosen_lr=chosen)


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
    parser.add_argument("--device", default=None,
                        help=f"{DEVICE_CHOICES}; auto/cuda with several GPUs: one run per GPU (default: train.device)")
    parser.add_argument("overrides", nargs="*", metavar="-- key.sub=value", help="recipe overrides, after --")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_recipe(args.recipe, args.overrides)
    card = compare(cfg, args.backbones, args.seeds, args.reference, parse_weights(args.weights),
                   Path(args.out) if args.out else None, args.force, args.bootstrap, args.device)
    out = Path(args.out) if args.out else run_dir(cfg, "compare", 0).parent
    print((out / "results.md").read_text())
    print(f"report: {out}  (model card JSON: {out / 'model_card.json'}, {len(card['results'])} rows)")


if __name__ == "__main__":
    main()
