"""The end-to-end demo: a raw scene archive to a published backbone and a comparison table, on 2 CPU cores.

    make demo                                         # default size (~10-15 min on 2 cores)
    python -m evaluation.demo --size quick            # CI size (a few minutes)
    python -m evaluation.demo --archive PATH          # your own folder of GeoTIFF scenes (+ sidecars)
    python -m evaluation.demo --real                  # the real MAPLE chips in ../shared/data/maple_iwp

Stages (each calls the public function of its module, so every step is also a command of its own):
archive (``training.synthetic``) → curation (``training.curate``) → pack the curated selection and a random subset
of the same size (``training.pack``) → tiny MAE on each (``training.pretrain``) → export to hub folders
(``training.export``) → reload through ``timm.create_model('arctic_mae_vit_tiny_patch16_224', pretrained=True,
pretrained_cfg_overlay=dict(file=FOLDER))`` and plain timm ``local-dir:`` → finetune/evaluate MAE-on-curated vs
MAE-on-random-subset vs random init (``evaluation.finetune``) → model card and ``REPORT.md``.
All outputs go to one folder (``--out``, default ``outputs/demo``); REPORT.md describes its layout. The numbers are
reported as measured, whichever way they fall.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
MAPLE = REPO_ROOT.parent / "shared" / "data" / "maple_iwp"
ENCODER = "arctic_mae_vit_tiny_patch16_224"
VARIANTS = ("mae_curated", "mae_random_subset")
LABELS = {"mae_curated": "arctic_mae_vit_tiny (MAE on curated chips)",
          "mae_random_subset": "arctic_mae_vit_tiny (MAE on a random subset, same size)",
          "random_init": "random_vit_tiny (random init)"}


@dataclass(frozen=True)
class DemoSize:
    scenes: int
    scene_px: int
    chip_px: int
    budget: int
    pretrain_epochs: int
    pretrain_img: int
    finetune_epochs: int
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]


SIZES = {
    "quick": DemoSize(scenes=4, scene_px=768, chip_px=128, budget=48, pretrain_epochs=4, pretrain_img=64,
                      finetune_epochs=2, seeds=(0,), tasks=("iwp", "rts")),
    "default": DemoSize(scenes=12, scene_px=1024, chip_px=128, budget=320, pretrain_epochs=60, pretrain_img=64,
                        finetune_epochs=12, seeds=(0, 1, 2), tasks=("iwp", "rts", "tcn", "infrastructure")),
}


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_archive(out: Path, size: DemoSize, seed: int) -> Path:
    """A seeded synthetic scene archive with label rasters -> its folder."""
    from training.synthetic import generate_archive

    folder = out / "archive"
    paths = generate_archive(folder, n_scenes=size.scenes, size=size.scene_px, seed=seed, labels=True)
    log(f"archive: {len(paths)} synthetic 11-bit BGRN scenes of {size.scene_px} px in {folder}")
    return folder


def curate(archive: Path | str, out: Path, size: DemoSize, seed: int, chip_px: int) -> Path:
    """Run curation on the archive -> manifest path."""
    from training.config import load_config
    from training.curate import run_curation

    cfg = load_config(REPO_ROOT / "training" / "configs" / "curate.yaml", overrides=[
        f"input.path={archive}", f"out={out / 'curate'}", f"seed={seed}", f"select.budget={size.budget}",
        f"tiling.chip_size={chip_px}", f"tiling.stride={chip_px}", "dask.n_workers=2",
    ])
    manifest = run_curation(cfg)
    table = pd.read_parquet(manifest)
    counts = table["selected"].sum(), (~table["selected"] & table["reject_reason"].isna()).sum()
    log(f"curation: {len(table)} candidate chips, {counts[0]} selected, {counts[1]} unselected, "
        f"{table['reject_reason'].notna().sum()} rejected -> {manifest}")
    return manifest


def random_subset_manifest(manifest: Path, out: Path, seed: int) -> Path:
    """The same manifest with ``selected`` redrawn uniformly among accepted chips, same count (the baseline)."""
    table = pd.read_parquet(manifest)
    accepted = np.flatnonzero(table["reject_reason"].isna().to_numpy())
    n = int(table["selected"].sum())
    chosen = np.random.default_rng(seed).choice(accepted, size=n, replace=False)
    table["selected"] = False
    table.loc[table.index[chosen], "selected"] = True
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest_random_subset.parquet"
    table.to_parquet(path, index=False)
    return path


def pack_contract(manifest: Path, out: Path, synthetic: bool) -> dict[str, Any]:
    """pack's bands/bit_depth when no ``corpus.json`` lies beside ``manifest``: the curated one's, else the synthetic
    archive's own constants (``training.synthetic``); {} lets ``pack`` name what is missing."""
    from arctic_vit.corpus import CorpusContract

    if (manifest.parent / "corpus.json").is_file():
        return {}
    if (out / "curate" / "corpus.json").is_file():
        contract = CorpusContract.read(out / "curate" / "corpus.json")
        return {"bands": list(contract.bands), "bit_depth": contract.bit_depth, "gsd_m": contract.gsd_m}
    if synthetic:
        from training.synthetic import BANDS, BIT_DEPTH, GSD_M

        return {"bands": list(BANDS), "bit_depth": BIT_DEPTH, "gsd_m": GSD_M}
    return {}


def pack_and_pretrain(variant: str, manifest: Path, out: Path, size: DemoSize, seed: int,
                      synthetic: bool = False) -> dict[str, Any]:
    """Pack a manifest's selected chips, pretrain the tiny MAE on them, export -> {shards, run, export} paths."""
    from training.config import load_config
    from training.export import export_checkpoint
    from training.pack import pack
    from training.pretrain import pretrain

    shards = out / "shards" / variant
    index = pack(shards, manifest=manifest, workers=1, **pack_contract(manifest, out, synthetic))
    n_chips = sum(s["count"] for s in index["shards"])
    total_steps = max(1, -(-n_chips // 16)) * size.pretrain_epochs  # demo config: batch 16
    cfg = load_config(REPO_ROOT / "training" / "configs" / "pretrain_demo.yaml", overrides=[
        f"data.shards={shards}", f"data.img_size={size.pretrain_img}", "data.num_workers=0",
        f"optim.epochs={size.pretrain_epochs}", f"optim.warmup_epochs={max(1, size.pretrain_epochs // 10)}",
        f"run.out_dir={out / 'pretrain' / variant}", f"run.seed={seed}", "run.progress=false",
        f"run.vis_every={max(1, total_steps // 2)}", "run.resume=false",
    ])
    summary = pretrain(cfg)
    export = export_checkpoint(out / "pretrain" / variant, out / "export" / variant)  # carries the corpus contract
    log(f"{variant}: {n_chips} chips packed, MAE {summary['step']} steps, last loss {summary['loss']:.4f}; "
        f"exported to {export}")
    return {"shards": shards, "run": out / "pretrain" / variant, "export": export, "summary": summary,
            "chips": n_chips}


def reload_check(export: Path) -> dict[str, Any]:
    """Load the export as users would (arctic_vit + timm, plain timm) and check both agree."""
    import timm
    import torch

    import arctic_vit

    model = timm.create_model(ENCODER, pretrained=True, pretrained_cfg_overlay=dict(file=str(export))).eval()
    plain = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    dn = torch.randint(0, 2 ** int(cfg["bit_depth"]), (2, cfg["input_size"][0], *cfg["input_size"][1:]))
    with torch.no_grad():
        x = arctic_vit.normalize_for(model)(dn)
        same = torch.allclose(model(x), plain(x), atol=1e-5)
    if not same:
        raise RuntimeError(f"{export}: arctic_vit and plain timm loads disagree")
    log(f"reloaded {export} with timm.create_model({ENCODER!r}, pretrained=True, ...) and local-dir: (outputs agree)")
    return {"bands": list(cfg["bands"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "input_size": list(cfg["input_size"]), "plain_timm_agrees": same}


def task_overrides(task: str, out: Path, size: DemoSize, seed: int) -> list[str]:
    """Recipe overrides cutting the task's labelled chips from a separate labelled archive (not the pretraining one)."""
    generate = {"task": task, "scenes_dir": str(out / "tasks" / "scenes"), "scenes": max(3, size.scenes // 2),
                "size": size.scene_px, "seed": seed + 1000, "chip_size": 128}
    return [f"dataset.card_overrides.root={out / 'tasks' / task}",
            f"dataset.card_overrides.generate={json.dumps(generate)}"]


def evaluate(recipe: Path, exports: dict[str, Path], out: Path, size: DemoSize,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """MAE-on-curated vs MAE-on-random-subset vs random init on one recipe -> the comparison's card JSON."""
    from evaluation.finetune import load_recipe, run
    from evaluation.report import write_report

    cfg = load_recipe(recipe, [f"train.epochs={size.finetune_epochs}", *overrides])
    root = out / "evaluation" / cfg["name"]
    contenders = {v: ("arctic_mae_vit_tiny", str(exports[v])) for v in VARIANTS} | {"random_init": ("random_vit_tiny",
                                                                                                      None)}
    runs: dict[str, list[dict]] = {}
    dirs: dict[str, list[Path]] = {}
    for label, (backbone, weights) in contenders.items():
        for seed in size.seeds:
            run_path = root / label / f"seed{seed}"
            metrics = run(cfg, backbone, seed, weights, out_dir=run_path)
            runs.setdefault(label, []).append(metrics)
            dirs.setdefault(label, []).append(run_path)
            log(f"{cfg['name']}: {label} seed {seed}: foreground mean F1 "
                f"{metrics['scores'].get('foreground_mean_f1')}")
    return write_report(runs, dirs, root / "compare", reference="random_init", n_boot=500)


def write_card(export: Path, results: list[dict], training: dict[str, Any]) -> Path:
    """Re-render the curated export's model card with the measured comparison."""
    from arctic_vit.card import render_model_card

    config = json.loads((export / "config.json").read_text())
    config["arctic_vit"]["training"] = training
    (export / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    card = export / "README.md"
    card.write_text(render_model_card(config, results, own_backbone="mae_curated"))
    return card


def write_report(out: Path, facts: dict[str, Any]) -> Path:
    """REPORT.md: what ran, the figures of every stage, the comparison tables, the folder layout."""
    from arctic_vit.card import results_table

    rel = lambda p: Path(p).resolve().relative_to(out.resolve())  # noqa: E731
    lines = [
        "# arctic-vit demo report", "",
        f"Input: {facts['input']}. Size: `{facts['size']}`. Seed {facts['seed']}. "
        f"Wall time {facts['seconds'] / 60:.1f} min on {facts['threads']} CPU thread(s).", "",
        "## 1. Curation", "",
        f"{facts['curation']['candidates']} candidate chips → {facts['curation']['selected']} selected, "
        f"{facts['curation']['unselected']} unselected, {facts['curation']['rejected']} rejected "
        f"(reasons: {facts['curation']['reject_reasons'] or 'none'}). Manifest: `{rel(facts['manifest'])}`.", "",
    ]
    for figure in sorted((out / "curate" / "report").glob("*.png")):
        lines += [f"![{figure.stem}]({rel(figure)})", ""]
    lines += ["## 2. MAE pretraining (tiny ViT, CPU)", "",
              "| variant | chips | steps | first loss | last loss | export |", "|---|---|---|---|---|---|"]
    for variant, info in facts["pretrain"].items():
        lines.append(f"| {variant} | {info['chips']} | {info['steps']} | {info['first_loss']} | {info['last_loss']} "
                     f"| `{rel(info['export'])}` |")
    lines.append("")
    for variant in facts["pretrain"]:
        for png in sorted((out / "pretrain" / variant / "vis").glob("*.png"))[-1:]:
            lines += [f"Reconstruction ({variant}): ![{variant}]({rel(png)})", ""]
    curated = facts["reload"][VARIANTS[0]]
    lines += ["## 3. Export and reload", "",
              f"Reloaded with `timm.create_model('{ENCODER}', pretrained=True, pretrained_cfg_overlay="
              "dict(file=FOLDER))` and with plain timm `local-dir:FOLDER`; outputs agree: "
              f"{all(r['plain_timm_agrees'] for r in facts['reload'].values())}. Bands "
              f"{curated['bands']}, corpus mean {np.round(curated['mean'], 4).tolist()}.",
              "", "## 4. Evaluation (foreground mean F1, reference: random init)", "",
              "Every backbone gets the same preprocessing (per-band z-score of the training split); random init "
              "trains without layer-wise lr decay. Splits keep whole scenes on one side (train / val / test); the "
              "test split is scored once. Intervals: hierarchical bootstrap over seeds x chips grouped by scene.", ""]
    for name, card in facts["evaluation"].items():
        lines += [f"### {name} ({card['eval_split']} split, {card['n_eval_images']} chips in "
                  f"{card['n_eval_groups']} scene(s))", "", results_table(card["results"]), ""]
        for png in ("results.png", "panels.png"):
            path = out / "evaluation" / name / "compare" / png
            if path.is_file():
                lines += [f"![{name} {png}]({rel(path)})", ""]
    lines += ["## 5. Model card", "", f"`{rel(facts['card'])}` (rendered from the export's pretrained_cfg and the "
              "results above).", "", "## Folder layout", "", "```",
              "archive/            synthetic scenes (*.tif, *.IMD/*.XML sidecars, *.labels.tif, catalog.csv)",
              "curate/             manifest.parquet, descriptors.parquet, report/ (summary.json, figures)",
              "random_subset/      the baseline manifest: same number of chips, drawn uniformly",
              "tasks/              labelled stand-ins for the evaluation (a separate seeded archive, cut per task)",
              "shards/<variant>/   packed chips + corpus.json (bands, bit depth, per-band mean/std)",
              "pretrain/<variant>/ checkpoints/, metrics JSONL, TensorBoard events, vis/ reconstructions",
              "export/<variant>/   hub folders: model.safetensors, config.json, README.md (model card)",
              "evaluation/<recipe>/<variant>/seed<N>/  finetuning runs; evaluation/<recipe>/compare/ tables, plots",
              "summary.json        every figure of this report, machine-readable",
              "REPORT.md           this file", "```", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def _loss_range(run_dir: Path) -> tuple[str, str]:
    """First and last logged training loss of a pretraining run (JSONL log)."""
    losses = []
    for log_file in sorted(run_dir.glob("*.jsonl")):
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses.append(record["loss"])
    return (f"{losses[0]:.4f}", f"{losses[-1]:.4f}") if losses else ("–", "–")


def run_demo(out: Path, size_name: str = "default", seed: int = 0, archive: Path | None = None,
             real: bool = False) -> Path:
    """Run every stage into ``out`` -> path of REPORT.md."""
    import torch

    size = SIZES[size_name]
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if real:
        if not (MAPLE / "unlabelled").is_dir():
            raise FileNotFoundError(f"--real needs the MAPLE chips at {MAPLE}")
        source, input_desc, chip_px = MAPLE / "unlabelled", f"real MAPLE chips ({MAPLE / 'unlabelled'})", 224
    elif archive is not None:
        source, input_desc, chip_px = archive, f"scene archive {archive}", size.chip_px
    else:
        source = make_archive(out, size, seed)
        input_desc, chip_px = "seeded synthetic scene archive (training.synthetic)", size.chip_px

    manifest = curate(source, out, size, seed, chip_px)
    baseline = random_subset_manifest(manifest, out / "random_subset", seed)
    synthetic = not real and archive is None
    trained = {"mae_curated": pack_and_pretrain("mae_curated", manifest, out, size, seed, synthetic),
               "mae_random_subset": pack_and_pretrain("mae_random_subset", baseline, out, size, seed, synthetic)}
    reload = {variant: reload_check(info["export"]) for variant, info in trained.items()}

    if real:
        recipes = {"maple_iwp_semantic": (REPO_ROOT / "evaluation" / "recipes" / "maple_iwp_semantic.yaml", [])}
    else:
        recipes = {f"synthetic_{t}_semantic": (REPO_ROOT / "evaluation" / "recipes" / f"synthetic_{t}_semantic.yaml",
                                               task_overrides(t, out, size, seed)) for t in size.tasks}
    evaluation = {name: evaluate(path, {v: trained[v]["export"] for v in VARIANTS}, out, size, overrides)
                  for name, (path, overrides) in recipes.items()}
    results = [row | {"task": f"{name}"} for name, card in evaluation.items() for row in card["results"]]

    table = pd.read_parquet(manifest)
    rejects = table["reject_reason"].dropna().str.split(":").str[0].value_counts().to_dict()  # "reason: detail"
    pretrain_facts = {}
    for variant, info in trained.items():
        first, last = _loss_range(info["run"])
        pretrain_facts[variant] = {"chips": info["chips"],
                                   "steps": info["summary"]["step"], "first_loss": first, "last_loss": last,
                                   "export": info["export"]}
    training = {"corpus": input_desc, "chips": pretrain_facts["mae_curated"]["chips"],
                "epochs": size.pretrain_epochs, "img_size": size.pretrain_img, "demo_size": size_name}
    card = write_card(trained["mae_curated"]["export"], results, training)
    facts = {
        "input": input_desc, "size": size_name, "seed": seed, "seconds": time.time() - start,
        "threads": torch.get_num_threads(), "manifest": manifest,
        "curation": {"candidates": len(table), "selected": int(table["selected"].sum()),
                     "unselected": int((~table["selected"] & table["reject_reason"].isna()).sum()),
                     "rejected": int(table["reject_reason"].notna().sum()), "reject_reasons": rejects},
        "pretrain": pretrain_facts, "reload": reload, "evaluation": evaluation, "card": card,
    }
    (out / "summary.json").write_text(json.dumps(facts, indent=2, default=str))
    report = write_report(out, facts)
    log(f"done in {(time.time() - start) / 60:.1f} min: {report}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "demo")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive", type=Path, help="a folder of GeoTIFF scenes instead of the synthetic archive")
    parser.add_argument("--real", action="store_true", help="use the real MAPLE chips (../shared/data/maple_iwp)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first (otherwise finished steps are reused)")
    args = parser.parse_args(argv)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    run_demo(args.out, args.size, args.seed, args.archive, args.real)
    return 0


if __name__ == "__main__":
    sys.exit(main())
