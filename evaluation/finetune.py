"""Finetune one backbone on one dataset recipe with one seed; write the scores.

    python -m evaluation.finetune --recipe evaluation/recipes/maple_iwp_semantic.yaml \\
        --backbone arctic_mae_vit_tiny --weights outputs/export --seed 0 --device auto train.epochs=5

Protocol: trains on ``dataset.train_split``; scores ``dataset.tune_split`` (val: what an lr sweep chooses on) and,
when the card has it, ``dataset.test_split`` once (reported); without a test split the tune split is reported and
named as such. Headline preprocessing: every backbone gets the same per-band z-score of the training split
(``backbone.normalization: zscore``); ``native`` (each model's pretraining statistics) is the secondary protocol.
Pretrained encoders train with layer-wise lr decay, random init without it.

Device (``--device`` / ``train.device``): auto (CUDA when present) | cpu | cuda[:N]; bf16 autocast on CUDA (fp16 +
loss scaling where bf16 is not native), float32 on the CPU.

Outputs in ``<output.root>/<recipe name>/<backbone>/seed<seed>/``: ``resolved_config.yaml``, ``metrics.json``
(scores per split, backbone description, normalisation, lr, device, data rejects, timing), ``per_image.npz`` (the
reported split's per-chip counts, groups and instance matches, for bootstraps), ``predictions.npz`` (a few tiles
for qualitative panels) and, for final runs, ``model/`` (``evaluation.artefact.save_finetuned``: the finetuned model
as a folder ``evaluation.predict`` loads; ``output.save_model: false`` skips it). A run is skipped when its
``metrics.json`` has the same run key: the resolved config, the dataset card, the weights' sha256 (file or folder
content) and the code version (``--force`` reruns it).

A plain loop on purpose: one short function per phase reads more easily than a trainer's callbacks here, and the
whole protocol (crops, layer-wise lr decay, warmup + cosine, evaluation tiling) stays visible in one file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from arctic_vit.config import as_dict, load_config, validate_config, write_resolved
from arctic_vit.corpus import CorpusContract
from arctic_vit.weights import sha256_file
from evaluation.artefact import build_kwargs_from_recipe, save_finetuned
from evaluation.backbones import BACKBONES, Backbone, build_backbone
from evaluation.chip_eval import evaluate
from evaluation.datasets import ChipDataset, build_dataset, load_card
from evaluation.datasets.card import IGNORE_INDEX, REPO_ROOT, DatasetCard, resolve_path
from evaluation.devices import DEVICE_CHOICES, Precision, backward_step, cuda_device, resolve_device, to_device
from evaluation.metrics import strict_json
from evaluation.models import (
    InstanceSegmentationModel,
    SemanticSegmentationModel,
    cosine_lr,
    masks_to_targets,
    param_groups,
)
from evaluation.recipe_schema import RecipeConfig
from evaluation.tiling import random_view, stack

log = logging.getLogger(__name__)
METRICS_NAME = "metrics.json"
HEADLINE = {"semantic": "foreground_mean_f1", "instance": "instance_f1"}
"""The headline metric of a task: pixel F1 for semantic recipes, object F1 (IoU >= 0.5) for instance recipes."""
CODE_GLOBS = ("arctic_vit/*.py", "evaluation/datasets/*.py", *(f"evaluation/{m}.py" for m in (
    "backbones", "chip_eval", "devices", "finetune", "metrics", "models", "overlap", "prithvi", "tiling")))
"""The source a run's scores depend on (reporting, comparison and demo code are not part of the run key)."""

__all__ = ["evaluate", "load_recipe", "run", "run_dir", "train", "train_step"]


def run_dir(cfg: dict, backbone: str, seed: int) -> Path:
    """``<output.root>/<recipe>/<backbone>/seed<N>``; a relative ``output.root`` is under the current directory (never
    inside an installed package)."""
    return resolve_path(cfg["output"]["root"], Path.cwd()) / cfg["name"] / backbone / f"seed{seed}"


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """The core's ``sha256_file``, cached per (path, size, mtime) so repeated runs do not re-hash large weights."""
    return sha256_file(path)


def weights_sha256(weights: str | None) -> str:
    """Content fingerprint of ``--weights``: sha256 of a file, or of every file (relative path + sha256) of a folder;
    ``hub`` / ``none`` stand for themselves (hub revisions are pinned in code, which the code version covers)."""
    if weights in (None, "none", "hub"):
        return str(weights or "none")
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--weights {weights}: no such file or folder")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(path) if f != path else f.name}:".encode())
        digest.update(_file_sha256(str(f), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


def code_version(root: Path = REPO_ROOT, globs: tuple[str, ...] = CODE_GLOBS) -> str:
    """sha256 of the source files a run's scores depend on (``CODE_GLOBS`` under ``root``): a change reruns."""
    digest = hashlib.sha256()
    for f in sorted({f for pattern in globs for f in root.glob(pattern)}):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def dataset_stats(dataset: ChipDataset) -> dict[str, list[float]]:
    """Per-band mean/std (DN) over the scored pixels of a split: the training-split z-score of the headline protocol."""
    total = sq = count = 0.0
    for sample in dataset:
        valid = sample["mask"] != IGNORE_INDEX
        pixels = sample["image"][:, valid].double()
        total, sq, count = total + pixels.sum(1), sq + (pixels**2).sum(1), count + valid.sum().item()
    mean = total / max(count, 1)
    std = (sq / max(count, 1) - mean**2).clamp(min=0).sqrt()
    return {"mean": mean.tolist(), "std": std.tolist()}


def build_model(cfg: dict, backbone: Backbone, card: DatasetCard) -> torch.nn.Module:
    m = cfg["model"]
    common = dict(pyramid_channels=m["pyramid_channels"], use_latlon=m["use_latlon"],
                  freeze_encoder=m["freeze_encoder"])
    if cfg["task"] == "semantic":
        return SemanticSegmentationModel(backbone, card.num_classes, decoder_channels=m["decoder_channels"], **common)
    return InstanceSegmentationModel(backbone, card.num_classes, img_size=m["img_size"], **common,
                                     **(m.get("maskrcnn") or {}))


def layer_decay_for(cfg: dict, backbone_name: str) -> float:
    """Layer-wise lr decay of a backbone: the recipe's for pretrained encoders, none (1.0) for random init."""
    return 1.0 if backbone_name.startswith("random_") else cfg["train"]["layer_decay"]


def make_batch(cfg: dict, views: list, device: torch.device) -> dict:
    """Views -> a batch on ``device``; instance targets are built on the CPU first, then moved with the rest."""
    batch = stack(views)
    if cfg["task"] == "instance":
        batch["targets"] = [masks_to_targets(inst) for inst in batch.pop("instances")]
    else:
        batch.pop("instances")
    return to_device(batch, device)


def train_step(cfg: dict, model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
               precision: Precision, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimisation step on a batch already on the model's device -> the detached loss (on that device)."""
    with precision.autocast():
        if cfg["task"] == "semantic":
            logits = model(batch["image"], batch["latlon"])
            loss = F.cross_entropy(logits.float(), batch["mask"], ignore_index=IGNORE_INDEX)
        else:
            loss = sum(v.float() for v in model(batch["image"], batch["targets"], batch["latlon"]).values())
    backward_step(loss, optimizer, scaler)
    return loss.detach()


def train(cfg: dict, model: torch.nn.Module, encoder: torch.nn.Module, samples: list[dict], seed: int,
          device: torch.device | str = "cpu", layer_decay: float | None = None) -> list[float]:
    """Random crops, AdamW (layer-wise lr decay ``layer_decay``), per-iteration warmup + cosine -> mean loss per
    epoch. The model is moved to ``device``; crops are cut on the CPU and moved batch by batch."""
    t = cfg["train"]
    device = torch.device(device)
    precision = Precision.for_device(device)
    scaler = precision.scaler()
    model.to(device)
    rng = np.random.default_rng(seed)
    decay = t["layer_decay"] if layer_decay is None else layer_decay
    groups = param_groups(model, encoder, t["weight_decay"], decay)
    optimizer = torch.optim.AdamW(groups, lr=t["lr"], betas=(0.9, 0.999))
    views_per_epoch = len(samples) * t["crops_per_image"]
    steps_per_epoch = max(1, views_per_epoch // t["batch_size"])
    total = steps_per_epoch * t["epochs"]
    warmup = int(t["warmup_fraction"] * total)
    size, step, history = cfg["model"]["img_size"], 0, []
    model.train()
    start = time.time()
    for epoch in range(t["epochs"]):
        order = rng.permutation(views_per_epoch) % len(samples)
        losses = []
        for b in range(steps_per_epoch):
            views = [random_view(samples[i], size, rng, t["flips"]) for i in order[b * t["batch_size"]:
                                                                                      (b + 1) * t["batch_size"]]]
            factor = cosine_lr(step, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = t["lr"] * factor * group["lr_scale"]
            losses.append(train_step(cfg, model, make_batch(cfg, views, device), optimizer, precision, scaler))
            step += 1
        history.append(float(torch.stack(losses).float().mean().cpu()))  # one device sync per epoch
        log.info("epoch %d/%d: loss %.4f (%d steps, %.0f s)", epoch + 1, t["epochs"], history[-1], step,
                 time.time() - start)
    return history


def run(cfg: RecipeConfig | dict, backbone_name: str, seed: int, weights: str | None = None, force: bool = False,
        out_dir: Path | None = None, device: str | None = None, final: bool = True) -> dict[str, Any]:
    """One finetuning run -> its metrics dict (read back from disk when the run was already done).

    ``cfg``: a ``RecipeConfig`` or a recipe dict (``load_recipe``), validated here once; the run reads the typed
    model, and its plain record (the recipe + backbone name + seed: hashed into the run key, written as
    ``resolved_config.yaml``) is what the helpers below and ``chip_eval`` / ``artefact`` read.
    ``final=False`` (an lr-sweep run) scores the tune split only: the test split is touched by final runs alone.
    """
    recipe = cfg if isinstance(cfg, RecipeConfig) else validate_config(RecipeConfig, cfg, "recipe")
    if weights is not None:
        recipe = recipe.model_copy(update={"backbone": recipe.backbone.model_copy(update={"weights": weights})})
    record = recipe.model_dump(mode="json")
    record["backbone"]["name"], record["seed"] = backbone_name, seed
    option = "--device" if device is not None else "train.device"
    resolved = resolve_device(device if device is not None else recipe.train.device, option)
    card = load_card(recipe.dataset.card, recipe.dataset.card_overrides)
    out = out_dir or run_dir(record, backbone_name, seed)
    precision = Precision.for_device(resolved)
    key = {"config": config_hash(record), "card": config_hash(card.to_dict()), "final": final,
           "weights_sha256": weights_sha256(recipe.backbone.weights), "code_version": code_version(),
           "device_type": resolved.type, "precision": precision.name}
    digest = config_hash(key)
    metrics_path = out / METRICS_NAME
    if metrics_path.is_file() and not force:
        previous = json.loads(metrics_path.read_text())
        if previous.get("config_hash") == digest:
            return previous | {"skipped": True}
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.train.threads)
    try:
        with cuda_device(resolved):
            return _run(recipe, record, card, backbone_name, seed, out, digest, key, resolved, final)
    finally:
        torch.set_num_threads(threads)


def _run(recipe: RecipeConfig, cfg: dict, card: DatasetCard, backbone_name: str, seed: int, out: Path, digest: str,
         key: dict, device: torch.device, final: bool) -> dict[str, Any]:
    torch.manual_seed(seed)
    start = time.time()
    d = recipe.dataset
    train_set = build_dataset(card, d.train_split)
    card = train_set.card
    splits = [d.tune_split]
    if final and d.test_split and d.test_split in card.splits.names:
        splits.append(d.test_split)
    eval_sets = {name: build_dataset(card, name) for name in splits}
    b = recipe.backbone
    stats = dataset_stats(train_set) if backbone_name.startswith("random_") or b.normalization == "zscore" else None
    backbone = build_backbone(
        backbone_name, card, recipe.model.img_size, weights=b.weights, normalization=b.normalization,
        dataset_stats=stats, arch=b.arch, rgb_bands=b.rgb_bands or ("red", "green", "blue"),
        imagenet_all_bands=b.imagenet_all_bands, prithvi_num_heads=b.prithvi_num_heads,
    )
    model = build_model(cfg, backbone, card)
    samples = [train_set[i] for i in range(len(train_set))]
    if recipe.task == "instance" and not any(s["instances"] is not None and len(s["instances"]["labels"])
                                             for s in samples):
        raise ValueError(f"task 'instance' needs instance labels but the training split of {card.name!r} has none "
                         "(raster pairs: set the card's options.instance_band)")
    decay = layer_decay_for(cfg, backbone_name)
    log.info("%s seed %d: training on %d chips of %r (%s, lr %g, layer decay %g, %s)", backbone_name, seed,
             len(train_set), card.name, device, recipe.train.lr, decay, backbone.normalization)
    history = train(cfg, model, backbone.encoder, samples, seed, device, decay)
    precision = Precision.for_device(device)
    results = {name: evaluate(cfg, model, data, card, device, precision) for name, data in eval_sets.items()}
    reported = splits[-1]
    result = results[reported]

    out.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, out)
    if final and recipe.output.save_model:
        save_finetuned(out / "model", model, task=recipe.task, classes=card.classes, corpus=CorpusContract(
            card.bands, card.bit_depth, gsd_m=card.gsd_m), tile_size=recipe.model.img_size,
            normalization=backbone.normalization, encoder_provenance=backbone.describe(),
            build_kwargs=build_kwargs_from_recipe(cfg, backbone_name))
    _save_per_image(out / "per_image.npz", result)
    if result["panels"]:
        images, masks, preds, names = zip(*result["panels"])
        np.savez_compressed(out / "predictions.npz", images=np.stack(images), masks=np.stack(masks),
                            preds=np.stack(preds), names=np.array(names), bands=np.array(backbone.input_bands),
                            card_bands=np.array(card.bands), max_value=card.max_value)
    note = (f"reported on {reported!r}, held out from training and lr choice" if reported != d.tune_split else
            f"reported on {reported!r}: the split lr is tuned on (the card has no {d.test_split!r} split)")
    metrics = {
        "recipe": cfg["name"], "task": recipe.task, "dataset": card.name, "classes": list(card.classes),
        "backbone": backbone.describe(), "seed": seed, "headline_metric": HEADLINE[recipe.task],
        "scores": result["scores"], "scores_by_split": {n: r["scores"] for n, r in results.items()},
        "eval_split": reported, "eval_note": note, "splits": card.splits.kind,
        "protocol": {"normalization": backbone.normalization, "lr": recipe.train.lr, "layer_decay": decay,
                     "tune_split": d.tune_split,
                     "device": str(device), "precision": precision.name, "eval_overlap_px": recipe.eval.overlap},
        "n_train": len(train_set), "n_eval": len(eval_sets[reported]),
        "n_by_split": {n: len(x) for n, x in eval_sets.items()},
        "rejects": [{"item": r.item, "reason": r.reason} for r in train_set.rejects],
        "loss_per_epoch": history, "seconds": round(time.time() - start, 1), "config_hash": digest, "run_key": key,
    }
    (out / METRICS_NAME).write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False))
    return metrics


def _save_per_image(path: Path, result: dict) -> None:
    """Per-chip arrays of the reported split; instance matches flattened with their chip index."""
    arrays = {"ids": np.array(result["ids"]), "groups": np.array(result["groups"]),
              "pixel_counts": result["pixel_counts"]}
    if "matches" in result:
        for name in ("object", "detection", "delineation"):
            arrays[f"{name}_counts"] = result[f"{name}_counts"]
        matches = result["matches"]
        arrays["match_image"] = np.concatenate([np.full(len(m["scores"]), i) for i, m in enumerate(matches)])
        arrays["gt_image"] = np.concatenate([np.full(len(m["gt_labels"]), i) for i, m in enumerate(matches)])
        for field in ("scores", "labels", "tp", "gt_labels"):
            arrays[f"match_{field}"] = np.concatenate([m[field] for m in matches])
    np.savez_compressed(path, **arrays)


def load_matches(data: Any) -> list[dict]:
    """The per-chip matches back from ``per_image.npz`` (see ``_save_per_image``)."""
    n = len(data["ids"])
    image, gt_image = data["match_image"], data["gt_image"]
    return [{"scores": data["match_scores"][image == i], "labels": data["match_labels"][image == i],
             "tp": data["match_tp"][image == i], "gt_labels": data["match_gt_labels"][gt_image == i]}
            for i in range(n)]


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """Recipe YAML (its ``defaults:`` chain merged) + ``key=value`` overrides; the name defaults to the file stem.

    A relative ``path`` is looked up in the current directory, then among the shipped recipes' root."""
    path = Path(path).expanduser() if Path(path).expanduser().is_file() else resolve_path(path)
    cfg = as_dict(load_config(path, overrides=overrides, schema=RecipeConfig))  # validated: one-line key errors
    cfg["name"] = cfg["name"] or path.stem
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, help="recipe YAML (dataset x protocol)")
    parser.add_argument("--backbone", required=True, choices=BACKBONES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="hub | none | local path (export folder, checkpoint)")
    parser.add_argument("--out", default=None, help="run folder (default <output.root>/<recipe>/<backbone>/seed<N>)")
    parser.add_argument("--force", action="store_true", help="rerun even if metrics.json exists")
    parser.add_argument("--device", default=None, help=f"{DEVICE_CHOICES} (default: the recipe's train.device)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)
    cfg = load_recipe(args.recipe, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = run(cfg, args.backbone, args.seed, args.weights, args.force, Path(args.out) if args.out else None,
                  device=args.device)
    print(yaml.safe_dump({k: metrics[k] for k in ("recipe", "seed", "eval_split", "scores", "seconds")} |
                         {"backbone": metrics["backbone"]["backbone"], "skipped": metrics.get("skipped", False)},
                         sort_keys=False))


if __name__ == "__main__":
    main()
