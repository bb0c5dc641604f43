"""The curation experiment, end to end on 2 CPU cores: what does curating the pretraining pool buy?

    make demo                                         # default size (<= 15 min on 2 idle cores)
    python -m evaluation.demo --size quick            # CI size (about 2 min)
    python -m evaluation.demo --size paper-cpu        # the larger version the README quotes (<= 2 h)
    python -m evaluation.demo --archive PATH          # your own folder of GeoTIFF scenes (+ sidecars)
    python -m evaluation.demo --real                  # the real MAPLE chips in ../shared/data/maple_iwp

Stages (each calls the public function of its module, so every step is also a command of its own):
a skewed archive (``training.synthetic``, profile ``arctic``) → curation (``training.curate``) → equal-budget pools
from the same accepted chips: curated, random subset, k-means selection, the whole archive
(``evaluation.demo_pools``) with their selection diagnostics (``evaluation.demo_diagnostics``) → pack and the same
tiny MAE recipe, steps and seed on each (``training.pack``, ``training.pretrain``) → export and reload through
``timm.create_model('arctic_mae_vit_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=FOLDER))``
and plain timm ``local-dir:`` → two measurements per pool against random init: frozen-encoder probes
(``evaluation.probes``, on a held-out archive of the same profile) and finetuning under the evaluation protocol
(``evaluation.finetune``) → one mapped scene (``evaluation.predict``) → model card and ``REPORT.md``
(``evaluation.demo_report``). The numbers are reported as measured, whichever way they fall.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
MAPLE = REPO_ROOT.parent / "shared" / "data" / "maple_iwp"
ENCODER = "arctic_mae_vit_tiny_patch16_224"
REFERENCE = "random_init"
NULL = "random_init_null"
"""The finetuning null: random init again with other seeds (``NULL_SEED_OFFSET``); its difference from ``REFERENCE``
is the size of a difference between two draws of the same thing, which a pool's difference must exceed."""
NULL_SEED_OFFSET = 100
IMAGENET = ("imagenet_supervised_vit_large", "vit_tiny_patch16_224")
"""The ImageNet reference when local weights are given (``--imagenet FILE``): evaluation's ImageNet backbone with
the architecture replaced by timm's ViT-Tiny/16 (``backbone.arch``), loaded from the file; never downloaded."""
PRETRAIN_BATCH = 16  # training/configs/pretrain_demo.yaml
REAL_CPU_OVERRIDES = ("model.pyramid_channels=64", "model.decoder_channels=64", "train.batch_size=4",
                      "train.crops_per_image=1", "train.threads=2")
"""--real: the MAPLE recipe at the synthetic recipes' CPU head size (its default threads=8 oversubscribes 2 cores)."""


@dataclass(frozen=True)
class DemoSize:
    scenes: int  # pretraining archive: scenes of scene_px x scene_px
    scene_px: int
    chip_px: int
    budget: int  # chips per pool (curated, random, k-means)
    pretrain_steps: int  # the same for every pool (whole archive included): steps, not epochs
    pretrain_img: int
    whole_archive: bool  # also pretrain on every accepted chip
    probe_scenes: int  # held-out probe archive (same profile, another seed): scenes of probe_scene_px
    probe_scene_px: int  # small scenes, many of them: the intervals resample scenes
    probe_zone_px: int  # zone size of the probe scenes (zones per scene as in the pretraining archive)
    probe_seeds: tuple[int, ...]
    finetune_epochs: int
    seeds: tuple[int, ...]  # finetuning seeds
    tasks: tuple[str, ...]
    task_scenes: int  # labelled finetuning archive (balanced profile, another seed): 20 % of scenes are the test split
    task_scene_px: int
    coverage_fractions: tuple[float, ...]
    map_scene: bool
    real_budget: int  # --real: chips per pool from the ~200 MAPLE chips (same steps)
    n_boot: int  # bootstrap resamples of every interval (probes and finetuning)

    def validate(self, name: str) -> None:
        """Every bound the experiment needs, checked before any work (one message naming the key)."""
        checks = {
            "scenes": self.scenes >= 1, "scene_px": self.scene_px >= self.chip_px, "chip_px": self.chip_px >= 64,
            "budget": self.budget >= PRETRAIN_BATCH,
            "pretrain_steps": self.pretrain_steps >= 1 and self.pretrain_steps % (self.budget // PRETRAIN_BATCH) == 0,
            "pretrain_img": self.pretrain_img % 16 == 0 and self.pretrain_img <= self.chip_px,
            "probe_scenes": self.probe_scenes >= 2, "probe_seeds": len(self.probe_seeds) >= 5,
            "probe_scene_px": self.probe_scene_px >= self.chip_px and self.probe_scene_px % self.probe_zone_px == 0,
            "probe_zone_px": self.probe_zone_px >= 64,
            "finetune_epochs": self.finetune_epochs >= 1, "seeds": len(self.seeds) >= 1,
            "tasks": bool(self.tasks) and set(self.tasks) <= {"iwp", "rts", "tcn", "infrastructure"},
            "task_scenes": self.task_scenes >= 5, "task_scene_px": self.task_scene_px >= 512,
            "coverage_fractions": all(0 < f <= 1 for f in self.coverage_fractions), "n_boot": self.n_boot >= 100,
            "real_budget": self.real_budget >= PRETRAIN_BATCH
            and self.pretrain_steps % (self.real_budget // PRETRAIN_BATCH) == 0,
        }
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"demo size {name!r}: invalid {', '.join(bad)} ({ {k: getattr(self, k) for k in bad} }): "
                             "see evaluation.demo.DemoSize.validate")
        chips = self.scenes * (self.scene_px // self.chip_px) ** 2
        if chips < self.budget:
            raise ValueError(f"demo size {name!r}: {self.scenes} scenes of {self.scene_px} px give {chips} chips of "
                             f"{self.chip_px} px, fewer than the budget of {self.budget}")


SIZES = {
    "quick": DemoSize(scenes=4, scene_px=768, chip_px=128, budget=48, pretrain_steps=12, pretrain_img=64,
                      whole_archive=True, probe_scenes=8, probe_scene_px=512, probe_zone_px=128,
                      probe_seeds=(0, 1, 2, 3, 4), finetune_epochs=2, seeds=(0,),
                      tasks=("iwp",), task_scenes=5, task_scene_px=512, coverage_fractions=(0.2, 0.4), map_scene=True,
                      real_budget=32, n_boot=200),
    "default": DemoSize(scenes=12, scene_px=1024, chip_px=128, budget=320, pretrain_steps=400, pretrain_img=64,
                        whole_archive=True, probe_scenes=24, probe_scene_px=512, probe_zone_px=128,
                        probe_seeds=(0, 1, 2, 3, 4), finetune_epochs=8,
                        seeds=(0, 1, 2), tasks=("iwp", "rts"), task_scenes=10, task_scene_px=512,
                        coverage_fractions=(0.05, 0.1, 0.2, 0.3, 0.5), map_scene=True, real_budget=64,
                        n_boot=500),
    "paper-cpu": DemoSize(scenes=48, scene_px=1024, chip_px=128, budget=960, pretrain_steps=4200, pretrain_img=64,
                          whole_archive=True, probe_scenes=64, probe_scene_px=512,
                          probe_zone_px=128, probe_seeds=tuple(range(10)), finetune_epochs=15,
                          seeds=(0, 1, 2), tasks=("iwp", "rts", "tcn", "infrastructure"), task_scenes=20,
                          task_scene_px=512, coverage_fractions=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5), map_scene=True,
                          real_budget=64, n_boot=1000),
}


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class StageTimer:
    """Wall seconds per stage (reported in REPORT.md and summary.json)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._start, 1)
        self._start = now


def make_archive(folder: Path, n_scenes: int, scene_px: int, seed: int, zone_px: int = 256) -> Path:
    """A seeded synthetic archive of the ``arctic`` profile (scene-type tables, label rasters) -> its folder."""
    from training.synthetic import generate_archive

    paths = generate_archive(folder, n_scenes=n_scenes, size=scene_px, seed=seed, labels=True, profile="arctic",
                             zone_size=zone_px)
    log(f"archive: {len(paths)} synthetic 11-bit BGRN scenes of {scene_px} px, {zone_px}-px zones (profile arctic) "
        f"in {folder}")
    return folder


def curate(archive: Path | str, out: Path, size: DemoSize, seed: int, chip_px: int) -> tuple[Path, dict]:
    """Run curation on the archive -> (manifest path, resolved config)."""
    from training.config import load_config
    from training.curate import run_curation

    cfg = load_config(REPO_ROOT / "training" / "configs" / "curate.yaml", overrides=[
        f"input.path={archive}", f"out={out / 'curate'}", f"seed={seed}", f"select.budget={size.budget}",
        f"tiling.chip_size={chip_px}", f"tiling.stride={chip_px}", "dask.n_workers=2", "progress=false",
    ])
    manifest = run_curation(cfg)
    table = pd.read_parquet(manifest)
    counts = table["selected"].sum(), (~table["selected"] & table["reject_reason"].isna()).sum()
    log(f"curation: {len(table)} candidate chips, {counts[0]} selected, {counts[1]} unselected, "
        f"{table['reject_reason'].notna().sum()} rejected -> {manifest}")
    return manifest, cfg


def pack_contract(manifest: Path, out: Path, synthetic: bool) -> dict[str, Any]:
    """pack's bands/bit_depth when no ``corpus.json`` lies beside ``manifest``: the curated one's, else the synthetic
    archive's own constants (``training.synthetic``); {} lets ``pack`` name what is missing."""
    from arctic_vit.corpus import CorpusContract

    if (manifest.parent / "corpus.json").is_file():
        return {}
    if (out / "curate" / "corpus.json").is_file():
        contract = CorpusContract.read(out / "curate" / "corpus.json")
        return {"bands": list(contract.bands), "bit_depth": contract.bit_depth}
    if synthetic:
        from training.synthetic import BANDS, BIT_DEPTH

        return {"bands": list(BANDS), "bit_depth": BIT_DEPTH}
    return {}


def pack_and_pretrain(pool: str, manifest: Path, out: Path, size: DemoSize, seed: int,
                      synthetic: bool = False) -> dict[str, Any]:
    """Pack a pool's chips, run the demo MAE recipe for ``size.pretrain_steps`` steps, export -> facts of the run.

    Steps are equal across pools (not epochs): ``epochs = ceil(steps / steps_per_epoch)`` and ``max_steps = steps``;
    for the budget pools (a multiple of the batch) the cosine schedule ends exactly at the last step, for the whole
    archive it spans ``epochs x steps_per_epoch`` >= steps (recorded as ``schedule_steps``).
    """
    from training.config import load_config
    from training.export import export_checkpoint
    from training.pack import pack
    from training.pretrain import pretrain

    shards = out / "shards" / pool
    index = pack(shards, manifest=manifest, workers=1, **pack_contract(manifest, out, synthetic))
    n_chips = sum(s["count"] for s in index["shards"])
    per_epoch = n_chips // PRETRAIN_BATCH
    if per_epoch == 0:
        raise ValueError(f"pool {pool!r}: {n_chips} chips cannot fill one batch of {PRETRAIN_BATCH}")
    epochs = math.ceil(size.pretrain_steps / per_epoch)
    warmup = 0.1 * size.pretrain_steps / per_epoch
    cfg = load_config(REPO_ROOT / "training" / "configs" / "pretrain_demo.yaml", overrides=[
        f"data.shards={shards}", f"data.img_size={size.pretrain_img}", "data.num_workers=0",
        f"optim.epochs={epochs}", f"optim.warmup_epochs={warmup}", f"run.max_steps={size.pretrain_steps}",
        f"run.out_dir={out / 'pretrain' / pool}", f"run.seed={seed}", "run.progress=false",
        f"run.vis_every={max(1, size.pretrain_steps // 2)}", "run.resume=false", "run.threads=1",
    ])
    summary = pretrain(cfg)
    export = export_checkpoint(out / "pretrain" / pool, out / "export" / pool)  # carries the corpus contract
    first, last = _loss_range(out / "pretrain" / pool)
    log(f"{pool}: {n_chips} chips packed, MAE {summary['step']} steps ({epochs} epochs of {per_epoch}), "
        f"loss {first} -> {last}; exported to {export}")
    return {"chips": n_chips, "steps": int(summary["step"]), "schedule_steps": epochs * per_epoch,
            "epochs": epochs, "first_loss": first, "last_loss": last, "export": export, "run": out / "pretrain" / pool}


def pretrain_pools(manifests: dict[str, Path], out: Path, size: DemoSize, seed: int, synthetic: bool,
                   jobs: int) -> dict[str, dict[str, Any]]:
    """``pack_and_pretrain`` for every pool, ``jobs`` pools at a time in separate processes (one torch thread each:
    two single-thread runs use 2 cores better than one run on two threads, and degrade gracefully on a loaded
    machine) -> pool -> facts, in pool order."""
    if jobs <= 1:
        return {name: pack_and_pretrain(name, path, out, size, seed, synthetic) for name, path in manifests.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(pack_and_pretrain, name, path, out, size, seed, synthetic)
                   for name, path in manifests.items()}
        return {name: future.result() for name, future in futures.items()}


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
    return {"bands": list(cfg["bands"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "input_size": list(cfg["input_size"]), "plain_timm_agrees": same}


def task_overrides(task: str, out: Path, size: DemoSize, seed: int) -> list[str]:
    """Recipe overrides cutting the task's labelled chips from a separate labelled archive (not the pretraining one)."""
    generate = {"task": task, "scenes_dir": str(out / "tasks" / "scenes"), "scenes": size.task_scenes,
                "size": size.task_scene_px, "seed": seed + 1000, "chip_size": 128}
    return [f"dataset.card_overrides.root={out / 'tasks' / task}",
            f"dataset.card_overrides.generate={json.dumps(generate)}"]


def finetune(recipe: Path, contenders: dict[str, tuple[str, str | None]], out: Path, size: DemoSize,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Every pool's encoder and random init on one recipe, ``size.seeds`` each -> the comparison's card JSON, plus
    ``curated_vs_random``: the paired hierarchical-bootstrap difference of the headline metric.

    contenders: label -> (evaluation backbone name, weights); the ImageNet backbone runs with ``IMAGENET``'s arch."""
    from evaluation.finetune import load_recipe, run
    from evaluation.report import bootstrap_metrics, load_per_image, write_report

    cfg = load_recipe(recipe, [f"train.epochs={size.finetune_epochs}", *overrides])
    root = out / "evaluation" / cfg["name"]
    runs: dict[str, list[dict]] = {}
    dirs: dict[str, list[Path]] = {}
    for label, (backbone, weights) in contenders.items():
        own = cfg if backbone != IMAGENET[0] else {**cfg, "backbone": {**cfg["backbone"], "arch": IMAGENET[1]}}
        for seed in size.seeds:
            run_seed = seed + NULL_SEED_OFFSET if label == NULL else seed
            run_path = root / label / f"seed{run_seed}"
            metrics = run(own, backbone, run_seed, weights, out_dir=run_path)
            runs.setdefault(label, []).append(metrics)
            dirs.setdefault(label, []).append(run_path)
            log(f"{cfg['name']}: {label} seed {seed}: {metrics['headline_metric']} "
                f"{metrics['scores'].get(metrics['headline_metric'])}")
    card = write_report(runs, dirs, root / "compare", reference=REFERENCE, n_boot=size.n_boot)
    if "random" in runs:  # every contender minus the random subset, paired (the experiment's baseline)
        per_image, groups = load_per_image(dirs)
        boot = bootstrap_metrics(per_image, groups, card["task"], "random", size.n_boot)[card["headline_metric"]]
        card["vs_random"] = {label: {k: boot[label].get(k) for k in ("diff", "diff_ci_low", "diff_ci_high")}
                             for label in runs if label not in ("random", NULL)}
        card["curated_vs_random"] = card["vs_random"].get("curated")
    card["model_dirs"] = {label: [str(d / "model") for d in paths] for label, paths in dirs.items()}
    return card


def write_card(export: Path, results: list[dict], training: dict[str, Any]) -> Path:
    """Re-render the curated export's model card with the measured comparison."""
    from arctic_vit.card import render_model_card

    config = json.loads((export / "config.json").read_text())
    config["arctic_vit"]["training"] = training
    (export / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    card = export / "README.md"
    card.write_text(render_model_card(config, results, own_backbone="curated"))
    return card


def _loss_range(run_dir: Path) -> tuple[str, str]:
    """First and last logged training loss of a pretraining run (JSONL log)."""
    losses = []
    for log_file in sorted(run_dir.glob("*.jsonl")):
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses.append(record["loss"])
    return (f"{losses[0]:.4f}", f"{losses[-1]:.4f}") if losses else ("–", "–")


def pool_stage(manifest: Path, curate_cfg: dict, out: Path, size: DemoSize, seed: int, whole: bool) -> dict[str, Any]:
    """Pools, their diagnostics, mosaics and coverage curves -> facts."""
    from evaluation import demo_diagnostics as diag
    from evaluation.demo_pools import (
        accepted_rows,
        build_pools,
        chip_types,
        curated_selection,
        kmeans_clusters,
        kmeans_selection,
        low_information_of,
        random_selection,
        standardised_descriptors,
    )

    within, weights = curate_cfg["select"]["within"], curate_cfg["descriptors"].get("weights")
    pools = build_pools(manifest, out / "pools", size.budget, seed, whole=whole, within=within, weights=weights)
    table = pd.read_parquet(manifest)
    rows = table.iloc[accepted_rows(table)].reset_index(drop=True)
    x = standardised_descriptors(manifest.parent, table, weights)
    types = chip_types(rows)
    low = low_information_of(types)
    selections = {name: p["selected"] for name, p in pools.items()}
    quality = diag.pool_quality(x, selections, types, low)
    archive = diag.archive_quality(x, types, low)
    if (types == "unknown").all():  # no scene-type tables (real chips): only coverage means something
        for row in (*quality.values(), archive):
            row.update(dict.fromkeys(("balance_entropy", "types_covered", "low_information_share")))
    candidate_types = chip_types(table)
    figures = {}
    for name, chosen in selections.items():
        figures[name] = diag.pool_mosaic(rows[chosen], out / "pools" / f"mosaic_{name}.png",
                                         f"pool '{name}': {int(chosen.sum())} chips, 24 drawn at random",
                                         scene_types=types[chosen], seed=seed)
    clusters = kmeans_clusters(x, seed)
    curves = diag.coverage_curves(x, {
        "curated": lambda b: curated_selection(table, x, b, within, seed),
        "random": lambda b: random_selection(len(x), b, seed),
        "kmeans": lambda b: kmeans_selection(x, clusters, b, seed),
    }, types, low, size.coverage_fractions, log=log)
    figures["coverage_curves"] = diag.plot_coverage_curves(curves, out / "pools" / "coverage_curves.png")
    diag.write_json(out / "pools" / "diagnostics.json", {"pools": quality, "archive": archive, "curves": curves})
    type_counts = {"candidates": pd.Series(candidate_types).value_counts().to_dict(),
                   "accepted": pd.Series(types).value_counts().to_dict(),
                   "rejected": pd.Series(candidate_types[table["reject_reason"].notna().to_numpy()]).value_counts()
                   .to_dict()}
    type_counts |= {name: pd.Series(types[chosen]).value_counts().to_dict() for name, chosen in selections.items()}
    log("pools: " + "; ".join(f"{n} {p['chips']} chips (" + ", ".join(
        f"{k} {v:.3g}" for k, v in quality[n].items() if isinstance(v, float)) + ")" for n, p in pools.items()))
    return {"pools": {n: {"manifest": p["manifest"], "chips": p["chips"]} for n, p in pools.items()},
            "quality": quality, "archive_quality": archive, "curves": curves, "figures": figures,
            "type_counts": type_counts, "accepted": len(rows)}


def probe_stage(exports: dict[str, Path], out: Path, size: DemoSize, seed: int) -> dict[str, Any]:
    """Frozen-encoder probes of every pool's encoder and random init on a held-out archive of the same profile."""
    from evaluation.probes import run_probes

    archive = make_archive(out / "probe_archive", size.probe_scenes, size.probe_scene_px, seed + 2000,
                           size.probe_zone_px)
    encoders: dict[str, Path | None] = {**exports, REFERENCE: None}
    return run_probes(encoders, archive, out / "probes", seeds=size.probe_seeds, chip_px=size.chip_px, device="cpu",
                      n_boot=size.n_boot)


def task_label_raster(labels: Path, task: str, out: Path) -> Path:
    """The generator's multi-class label raster -> the task's own (class 1 = the task's class, 0 = everything else;
    instance ids kept inside it), as the finetuning chips were cut (``evaluation.datasets.synthetic_tasks``)."""
    import rasterio

    from evaluation.datasets.synthetic_tasks import TASK_CLASS

    with rasterio.open(labels) as src:
        data, profile = src.read(), src.profile
    binary = (data[0] == TASK_CLASS[task]).astype(np.uint16)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack([binary, np.where(binary == 1, data[1], 0).astype(np.uint16)]))
    return out


def map_stage(model_dir: Path, task: str, out: Path, size: DemoSize, seed: int) -> dict[str, Any]:
    """Map one fresh labelled scene (never seen in training or scoring) with a finetuned model folder."""
    from evaluation.predict import map_scene_for_report
    from training.synthetic import LABELS_SUFFIX, generate_archive

    scene = generate_archive(out / "map_scene" / "scene", n_scenes=1, size=size.scene_px, seed=seed + 3000,
                             labels=True)[0]
    labels = task_label_raster(scene.with_name(scene.stem + LABELS_SUFFIX), task,
                               out / "map_scene" / "labels" / f"{scene.stem}{LABELS_SUFFIX}")
    target = out / "map_scene" / "map"
    if target.exists():  # an earlier demo run's map (another model: this run retrained it)
        shutil.rmtree(target)
    result = map_scene_for_report(model_dir, scene, labels, target, device="cpu")
    return {"out_dir": target, "task": task, **result}


def run_demo(out: Path, size_name: str = "default", seed: int = 0, archive: Path | None = None,
             real: bool = False, imagenet: Path | None = None, jobs: int = 2) -> Path:
    """Run every stage into ``out`` -> path of REPORT.md. ``imagenet``: a local ViT-Tiny/16 ImageNet weights file
    (the ImageNet reference is compared only when given; nothing is downloaded); ``jobs``: pools pretrained at once."""
    import torch

    from evaluation.demo_report import write_report

    if size_name not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, got {size_name!r}")
    size = SIZES[size_name]
    size.validate(size_name)
    timer, start, load_start = StageTimer(), time.time(), os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    synthetic = not real and archive is None
    skipped: list[str] = []
    if real:
        if not (MAPLE / "unlabelled").is_dir():
            raise FileNotFoundError(f"--real needs the MAPLE chips at {MAPLE / 'unlabelled'}")
        source, input_desc, chip_px = MAPLE / "unlabelled", f"real MAPLE chips ({MAPLE / 'unlabelled'})", 224
        size = dataclasses.replace(size, budget=size.real_budget)
        skipped += ["archive profile table and scene-type balance (the MAPLE chips have no scene types)",
                    "scene-type probes (no scene types); the segmentation probe needs scene-type tables too",
                    "whole-scene mapping (no labelled scene, only chips)"]
    elif archive is not None:
        source, input_desc, chip_px = archive, f"scene archive {archive}", size.chip_px
        skipped += ["probes (they need the generator's scene-type tables)", "whole-scene mapping"]
    else:
        source = make_archive(out / "archive", size.scenes, size.scene_px, seed)
        input_desc, chip_px = "seeded synthetic scene archive (training.synthetic, profile arctic)", size.chip_px
    timer.lap("archive")

    manifest, curate_cfg = curate(source, out, size, seed, chip_px)
    timer.lap("curation")
    pools = pool_stage(manifest, curate_cfg, out, size, seed, whole=size.whole_archive)
    timer.lap("pools and diagnostics")

    trained = pretrain_pools({name: info["manifest"] for name, info in pools["pools"].items()}, out, size, seed,
                             synthetic, jobs)
    steps = {name: t["steps"] for name, t in trained.items()}
    if len(set(steps.values())) != 1:
        raise RuntimeError(f"pools pretrained for unequal steps {steps}: the comparison would not be fair")
    timer.lap("pretraining")
    reload = {name: reload_check(t["export"]) for name, t in trained.items()}
    log(f"reloaded {len(reload)} exports with timm.create_model({ENCODER!r}, pretrained=True, ...) and local-dir: "
        "(outputs agree)")
    timer.lap("export and reload")

    exports = {name: t["export"] for name, t in trained.items()}
    probes = None
    if synthetic:
        probes = probe_stage(exports, out, size, seed)
        timer.lap("probes")

    contenders = {name: ("arctic_mae_vit_tiny", str(path)) for name, path in exports.items()}
    contenders[REFERENCE] = ("random_vit_tiny", None)
    contenders[NULL] = ("random_vit_tiny", None)
    if imagenet is not None:
        if not Path(imagenet).is_file():
            raise FileNotFoundError(f"--imagenet {imagenet}: no such file (a local {IMAGENET[1]} ImageNet checkpoint)")
        contenders["imagenet"] = (IMAGENET[0], str(imagenet))
    else:
        skipped.append(f"the ImageNet reference (no local {IMAGENET[1]} weights given with --imagenet FILE; the demo "
                       "never downloads)")
    if real:
        recipes = {"maple_iwp_semantic": (REPO_ROOT / "evaluation" / "recipes" / "maple_iwp_semantic.yaml",
                                          list(REAL_CPU_OVERRIDES))}
    else:
        recipes = {f"synthetic_{t}_semantic": (REPO_ROOT / "evaluation" / "recipes" / f"synthetic_{t}_semantic.yaml",
                                               task_overrides(t, out, size, seed)) for t in size.tasks}
    evaluation = {name: finetune(path, contenders, out, size, overrides) for name, (path, overrides) in recipes.items()}
    timer.lap("finetuning")

    mapped = None
    if synthetic and size.map_scene:
        first = next(iter(evaluation.values()))
        mapped = map_stage(Path(first["model_dirs"]["curated"][0]), size.tasks[0], out, size, seed) | {
            "recipe": first["recipe"], "model": first["model_dirs"]["curated"][0]}
        timer.lap("mapping")

    results = [row | {"task": name} for name, card in evaluation.items() for row in card["results"]
               if row["backbone"] != NULL]  # the model card compares encoders; the null stays in REPORT.md
    training = {"corpus": input_desc, "chips": trained["curated"]["chips"], "steps": size.pretrain_steps,
                "img_size": size.pretrain_img, "demo_size": size_name}
    card = write_card(trained["curated"]["export"], results, training)
    table = pd.read_parquet(manifest)
    rejects = table["reject_reason"].dropna().str.split(":").str[0].value_counts().to_dict()  # "reason: detail"
    facts = {
        "input": input_desc, "size": size_name, "size_config": asdict(size), "seed": seed, "synthetic": synthetic,
        "threads": torch.get_num_threads(), "manifest": manifest,
        "curation": {"candidates": len(table), "selected": int(table["selected"].sum()),
                     "unselected": int((~table["selected"] & table["reject_reason"].isna()).sum()),
                     "rejected": int(table["reject_reason"].notna().sum()), "reject_reasons": rejects},
        "pools": pools, "pretrain": trained, "reload": reload, "probes": probes, "evaluation": evaluation,
        "mapped": mapped, "card": card, "skipped": skipped,
    }
    timer.lap("card")
    facts["stage_seconds"], facts["seconds"] = timer.seconds, time.time() - start
    facts["load_average"] = {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()],
                             "cpus": os.cpu_count()}
    report = write_report(out, facts)
    (out / "summary.json").write_text(json.dumps(facts, indent=2, default=str))
    log(f"done in {(time.time() - start) / 60:.1f} min: {report}; stage seconds {timer.seconds}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "demo")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archive", type=Path, help="a folder of GeoTIFF scenes instead of the synthetic archive")
    parser.add_argument("--real", action="store_true", help="use the real MAPLE chips (../shared/data/maple_iwp)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first (otherwise finished steps are reused)")
    parser.add_argument("--imagenet", type=Path, help=f"local {IMAGENET[1]} ImageNet weights: adds that reference")
    parser.add_argument("--jobs", type=int, default=2, help="pools pretrained at once (one process, one thread each)")
    parser.add_argument("--check", action="store_true", help="validate the size's configuration and exit")
    args = parser.parse_args(argv)
    progress = logging.StreamHandler(sys.stdout)  # per-encoder progress of the probes (their own logger only)
    progress.setFormatter(logging.Formatter("[%(name)s %(asctime)s] %(message)s", "%H:%M:%S"))
    logging.getLogger("evaluation.probes").addHandler(progress)
    logging.getLogger("evaluation.probes").setLevel(logging.INFO)
    SIZES[args.size].validate(args.size)
    if args.check:
        print(json.dumps({"size": args.size, **asdict(SIZES[args.size])}))
        return 0
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    run_demo(args.out, args.size, args.seed, args.archive, args.real, args.imagenet, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
