"""Finetune one backbone on one dataset recipe with one seed; write the scores.

    python -m evaluation.finetune --recipe evaluation/recipes/maple_iwp_semantic.yaml \\
        --backbone arctic_mae_vit_tiny --weights outputs/export --seed 0 train.epochs=5

Outputs in ``<output.root>/<recipe name>/<backbone>/seed<seed>/``: ``resolved_config.yaml``, ``metrics.json``
(scores, backbone description, normalisation used, data rejects, timing), ``per_image.npz`` (per-image [tp, fp, fn]
per class, for paired bootstraps) and ``predictions.npz`` (a few evaluation tiles for qualitative panels).
A run whose ``metrics.json`` exists for the same resolved config is skipped (``--force`` reruns it).

A plain loop on purpose: one short function per phase reads more easily than a trainer's callbacks here, and the
whole protocol (crops, layer-wise lr decay, warmup + cosine, evaluation tiling) stays visible in one file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from evaluation.backbones import BACKBONES, Backbone, build_backbone
from evaluation.datasets import ChipDataset, build_dataset, load_card
from evaluation.datasets.card import IGNORE_INDEX, DatasetCard, resolve_path
from evaluation.metrics import instance_counts, instance_scores, match_instances, pixel_counts, semantic_scores
from evaluation.models import (
    InstanceSegmentationModel,
    SemanticSegmentationModel,
    cosine_lr,
    masks_to_targets,
    param_groups,
)
from evaluation.tiling import grid_views, random_view, stack
from training.config import load_config, write_resolved

METRICS_NAME = "metrics.json"
TASKS = ("semantic", "instance")


def run_dir(cfg: dict, backbone: str, seed: int) -> Path:
    return resolve_path(cfg["output"]["root"]) / cfg["name"] / backbone / f"seed{seed}"


def config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dataset_stats(dataset: ChipDataset) -> dict[str, list[float]]:
    """Per-band mean/std (DN) over the scored pixels of a split: the per-dataset z-score option."""
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


def train(cfg: dict, model: torch.nn.Module, encoder: torch.nn.Module, samples: list[dict], seed: int) -> list[float]:
    """Random crops, AdamW with layer-wise lr decay, per-iteration warmup + cosine -> mean loss per epoch."""
    t = cfg["train"]
    rng = np.random.default_rng(seed)
    groups = param_groups(model, encoder, t["weight_decay"], t["layer_decay"])
    optimizer = torch.optim.AdamW(groups, lr=t["lr"], betas=(0.9, 0.999))
    views_per_epoch = len(samples) * t["crops_per_image"]
    steps_per_epoch = max(1, views_per_epoch // t["batch_size"])
    total = steps_per_epoch * t["epochs"]
    warmup = int(t["warmup_fraction"] * total)
    size, step, history = cfg["model"]["img_size"], 0, []
    model.train()
    for _ in range(t["epochs"]):
        order = rng.permutation(views_per_epoch) % len(samples)
        losses = []
        for b in range(steps_per_epoch):
            views = [random_view(samples[i], size, rng, t["flips"]) for i in order[b * t["batch_size"]:
                                                                                      (b + 1) * t["batch_size"]]]
            batch = stack(views)
            factor = cosine_lr(step, total, warmup)
            for group in optimizer.param_groups:
                group["lr"] = t["lr"] * factor * group["lr_scale"]
            loss = _loss(cfg, model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        history.append(float(np.mean(losses)))
    return history


def _loss(cfg: dict, model: torch.nn.Module, batch: dict) -> torch.Tensor:
    if cfg["task"] == "semantic":
        logits = model(batch["image"], batch["latlon"])
        return F.cross_entropy(logits, batch["mask"], ignore_index=IGNORE_INDEX)
    targets = [masks_to_targets(inst) for inst in batch["instances"]]
    return sum(model(batch["image"], targets, batch["latlon"]).values())


@torch.no_grad()
def evaluate(cfg: dict, model: torch.nn.Module, dataset: ChipDataset, card: DatasetCard) -> dict[str, Any]:
    """Tile every evaluation chip; pool per-chip counts -> scores, per-image arrays, a few prediction tiles."""
    model.eval()
    size, batch_size = cfg["model"]["img_size"], cfg["train"]["batch_size"]
    k, panels = card.num_classes, cfg["eval"]["panels"]
    ids, pixel, matches, inst_counts, kept, dropped = [], [], [], [], [], 0
    for sample in dataset:
        views = grid_views(sample, size)
        counts = np.zeros((k, 3), dtype=np.int64)
        icounts = np.zeros((k, 3), dtype=np.int64)
        for start in range(0, len(views), batch_size):
            chunk = views[start : start + batch_size]
            batch = stack(chunk)
            if cfg["task"] == "semantic":
                preds = model(batch["image"], batch["latlon"]).argmax(1)
            else:
                outputs = model(batch["image"], None, batch["latlon"])
                preds = torch.stack([_instances_to_semantic(o, size, cfg["eval"]["score_threshold"])
                                     for o in outputs])
                for view, out in zip(chunk, outputs):
                    dropped += view.dropped
                    match = match_instances((out["masks"][:, 0] > 0.5), out["scores"], out["labels"],
                                            view.instances["masks"], view.instances["labels"])
                    matches.append(match)
                    icounts += instance_counts(match, k, cfg["eval"]["score_threshold"])
            for view, pred in zip(chunk, preds):
                counts += pixel_counts(pred, view.mask, k)
                if len(kept) < panels and (view.mask != IGNORE_INDEX).any():
                    kept.append((view.image.numpy(), view.mask.numpy(), pred.numpy(), f"{view.source}@{view.origin}"))
        ids.append(sample["id"])
        pixel.append(counts)
        inst_counts.append(icounts)
    present = np.stack(pixel)[:, :, [0, 2]].sum(axis=(0, 2)) > 0  # tp + fn: the class occurs in the ground truth
    absent = [name for name, seen in zip(card.classes[1:], present[1:]) if not seen]
    if len(absent) == len(card.classes) - 1:
        raise ValueError(f"evaluation split {cfg['dataset']['eval_split']!r} of {card.name!r} holds no foreground "
                         "pixel: every score would be undefined; use a split with labelled objects")
    scores = semantic_scores(pixel, card.classes)
    scores["warnings"] = [f"class {name!r} is absent from the evaluation split: its F1 is undefined and left "
                          "out of the foreground mean" for name in absent]
    if cfg["task"] == "instance":
        scores.update(instance_scores(matches, card.classes, cfg["eval"]["score_threshold"]))
        scores["instances_dropped_at_tile_edges"] = dropped
    return {"scores": scores, "ids": ids, "pixel_counts": np.stack(pixel), "instance_counts": np.stack(inst_counts),
            "panels": kept}


def _instances_to_semantic(output: dict, size: int, threshold: float) -> torch.Tensor:
    """Mask R-CNN output -> (S, S) class map (higher-scoring instances painted last), for pixel scores too."""
    semantic = torch.zeros(size, size, dtype=torch.long)
    order = torch.argsort(output["scores"])
    for i in order:
        if output["scores"][i] >= threshold:
            semantic[output["masks"][i, 0] > 0.5] = output["labels"][i]
    return semantic


def run(cfg: dict, backbone_name: str, seed: int, weights: str | None = None, force: bool = False,
        out_dir: Path | None = None) -> dict[str, Any]:
    """One finetuning run -> its metrics dict (read back from disk when the run was already done)."""
    if cfg.get("task") not in TASKS:
        raise ValueError(f"recipe task must be one of {TASKS}, got {cfg.get('task')!r}")
    cfg = _typed(json.loads(json.dumps(cfg)))  # private copy with numbers as numbers
    cfg["backbone"]["name"], cfg["seed"] = backbone_name, seed
    if weights is not None:
        cfg["backbone"]["weights"] = weights
    out = out_dir or run_dir(cfg, backbone_name, seed)
    digest = config_hash(cfg)
    metrics_path = out / METRICS_NAME
    if metrics_path.is_file() and not force:
        previous = json.loads(metrics_path.read_text())
        if previous.get("config_hash") == digest:
            return previous | {"skipped": True}
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg["train"]["threads"]))
    try:
        return _run(cfg, backbone_name, seed, out, digest)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: dict, backbone_name: str, seed: int, out: Path, digest: str) -> dict[str, Any]:
    torch.manual_seed(seed)
    start = time.time()
    metrics_path = out / METRICS_NAME

    card = load_card(cfg["dataset"]["card"], cfg["dataset"].get("card_overrides"))
    train_set = build_dataset(card, cfg["dataset"]["train_split"])
    eval_set = build_dataset(card, cfg["dataset"]["eval_split"])
    card = train_set.card
    b = cfg["backbone"]
    stats = dataset_stats(train_set) if backbone_name.startswith("random_") or b["normalization"] == "zscore" \
        else None
    backbone = build_backbone(
        backbone_name, card, cfg["model"]["img_size"], weights=b["weights"], normalization=b["normalization"],
        dataset_stats=stats, arch=b.get("arch"), rgb_bands=b.get("rgb_bands") or ("red", "green", "blue"),
        imagenet_all_bands=bool(b.get("imagenet_all_bands")), prithvi_num_heads=int(b.get("prithvi_num_heads", 16)),
    )
    model = build_model(cfg, backbone, card)
    samples = [train_set[i] for i in range(len(train_set))]
    if cfg["task"] == "instance" and not any(s["instances"] is not None and len(s["instances"]["labels"])
                                             for s in samples):
        raise ValueError(f"task 'instance' needs instance labels but the training split of {card.name!r} has none "
                         "(raster pairs: set the card's options.instance_band)")
    history = train(cfg, model, backbone.encoder, samples, seed)
    result = evaluate(cfg, model, eval_set, card)

    out.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, out)
    np.savez_compressed(out / "per_image.npz", ids=np.array(result["ids"]), pixel_counts=result["pixel_counts"],
                        instance_counts=result["instance_counts"])
    if result["panels"]:
        images, masks, preds, names = zip(*result["panels"])
        np.savez_compressed(out / "predictions.npz", images=np.stack(images), masks=np.stack(masks),
                            preds=np.stack(preds), names=np.array(names), bands=np.array(backbone.input_bands),
                            card_bands=np.array(card.bands), max_value=card.max_value)
    metrics = {
        "recipe": cfg["name"], "task": cfg["task"], "dataset": card.name, "classes": list(card.classes),
        "backbone": backbone.describe(), "seed": seed, "scores": result["scores"],
        "n_train": len(train_set), "n_eval": len(eval_set), "eval_split": cfg["dataset"]["eval_split"],
        "rejects": [{"item": r.item, "reason": r.reason} for r in train_set.rejects],
        "loss_per_epoch": history, "seconds": round(time.time() - start, 1), "config_hash": digest,
    }
    metrics_path.write_text(json.dumps(_finite(metrics), indent=2, allow_nan=False))
    return metrics


FLOAT_KEYS = {"train": ("lr", "weight_decay", "layer_decay", "warmup_fraction"), "eval": ("score_threshold",)}
INT_KEYS = {"train": ("epochs", "batch_size", "crops_per_image", "threads"), "eval": ("panels",),
            "model": ("img_size", "pyramid_channels", "decoder_channels")}


def _typed(cfg: dict) -> dict:
    """Cast numeric settings (YAML reads ``train.lr=1e-3`` as a string); a clear error if one is not a number."""
    for kind, table in ((float, FLOAT_KEYS), (int, INT_KEYS)):
        for section, keys in table.items():
            for key in keys:
                value = cfg.get(section, {}).get(key)
                if value is None:
                    continue
                try:
                    cfg[section][key] = kind(float(value)) if kind is int else kind(value)
                except (TypeError, ValueError):
                    raise ValueError(f"recipe setting {section}.{key}={value!r} is not a number") from None
    return cfg


def _finite(value: Any) -> Any:
    """NaN/inf -> None recursively, so metrics.json is strict JSON (undefined scores read as null)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """Recipe YAML (its ``defaults:`` chain merged) + ``key=value`` overrides; the name defaults to the file stem."""
    path = resolve_path(path)
    cfg = load_config(path, overrides=overrides)
    cfg.setdefault("name", path.stem)
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m evaluation.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, help="recipe YAML (dataset x protocol)")
    parser.add_argument("--backbone", required=True, choices=BACKBONES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="hub | none | local path (export folder, checkpoint)")
    parser.add_argument("--out", default=None, help="run folder (default <output.root>/<recipe>/<backbone>/seed<N>)")
    parser.add_argument("--force", action="store_true", help="rerun even if metrics.json exists")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_intermixed_args(argv)
    cfg = load_recipe(args.recipe, args.overrides)
    metrics = run(cfg, args.backbone, args.seed, args.weights, args.force, Path(args.out) if args.out else None)
    print(yaml.safe_dump({k: metrics[k] for k in ("recipe", "seed", "scores", "seconds")} |
                         {"backbone": metrics["backbone"]["backbone"], "skipped": metrics.get("skipped", False)},
                         sort_keys=False))


if __name__ == "__main__":
    main()
