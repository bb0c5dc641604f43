"""Probe data: chips cut from a synthetic scene archive, labelled with their scene type and rare-class masks, split
by scene; and frozen features of an exported encoder.

Scene types come from each scene's zone table (``training.synthetic.chip_scene_types``: the type covering most of a
chip's pixels), masks from its ``X.labels.tif`` (band 1, class ids; class names from its ``CLASSES`` tag).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import timm
import torch
from rasterio.windows import Window
from sklearn.model_selection import StratifiedGroupKFold

from arctic_vit.corpus import CONFIG_NAME, CorpusContract
from arctic_vit.transforms import MultispectralNormalize
from training.synthetic import ZONES_SUFFIX, chip_scene_types

log = logging.getLogger(__name__)
LABELS_SUFFIX = ".labels.tif"


@dataclass
class ProbeChips:
    """images (N, C, h, w) uint16 DN; scenes, scene_types (N,) str; masks (N, h, w) uint8 class ids or None."""

    images: np.ndarray
    scenes: np.ndarray
    scene_types: np.ndarray
    masks: np.ndarray | None
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> ProbeChips:
        return ProbeChips(self.images[index], self.scenes[index], self.scene_types[index],
                          None if self.masks is None else self.masks[index], self.class_names)


def archive_scenes(archive: Path) -> list[Path]:
    """The scenes of an archive that carry a zone table (``X.tif`` + ``X.zones.json``), sorted."""
    archive = Path(archive)
    if not archive.is_dir():
        raise FileNotFoundError(f"probe archive {archive}: not a folder")
    scenes = sorted(p.with_name(p.name[: -len(ZONES_SUFFIX)] + ".tif") for p in archive.glob(f"*{ZONES_SUFFIX}"))
    missing = [p.name for p in scenes if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"probe archive {archive}: zone tables without their scene: {missing}")
    if not scenes:
        raise FileNotFoundError(f"probe archive {archive}: no scene with a zone table (*{ZONES_SUFFIX}); generate it "
                                "with python -m training.synthetic --labels [--profile arctic]")
    return scenes


def _class_names(label_path: Path, count: int) -> tuple[str, ...]:
    with rasterio.open(label_path) as src:
        tag = src.tags().get("CLASSES", "")
    names = dict(item.split(":", 1) for item in tag.split(",") if ":" in item)
    return tuple(names.get(str(c), f"class_{c}") for c in range(count))


def cut_chips(archive: Path, chip_px: int, max_chips_per_scene: int | None = None, seed: int = 0) -> ProbeChips:
    """Every full ``chip_px`` chip on a non-overlapping grid of every scene (at most ``max_chips_per_scene``,
    drawn with ``seed``), skipping chips without a valid pixel -> ``ProbeChips``. Masks when every scene has
    labels."""
    scenes = archive_scenes(archive)
    images, names, types, masks = [], [], [], []
    with_labels = all(s.with_name(s.stem + LABELS_SUFFIX).is_file() for s in scenes)
    start = time.time()
    for i, scene in enumerate(scenes):
        with rasterio.open(scene) as src:
            height, width = src.height, src.width
            grid = [(r, c) for r in range(0, height - chip_px + 1, chip_px)
                    for c in range(0, width - chip_px + 1, chip_px)]
            if max_chips_per_scene is not None and len(grid) > max_chips_per_scene:
                keep = np.random.default_rng([seed, i]).choice(len(grid), max_chips_per_scene, replace=False)
                grid = [grid[k] for k in sorted(keep)]
            windows = [Window(c, r, chip_px, chip_px) for r, c in grid]
            chips = [src.read(window=w) for w in windows]
        valid = [bool((chip > 0).all(axis=0).any()) for chip in chips]
        windows = [w for w, ok in zip(windows, valid) if ok]
        images += [chip for chip, ok in zip(chips, valid) if ok]
        types += chip_scene_types(scene, windows)
        names += [scene.stem] * len(windows)
        if with_labels:
            with rasterio.open(scene.with_name(scene.stem + LABELS_SUFFIX)) as lab:
                masks += [lab.read(1, window=w).astype(np.uint8) for w in windows]
        log.info("probe chips: scene %d/%d %s: %d chips (%.0f s)", i + 1, len(scenes), scene.name, len(windows),
                 time.time() - start)
    if not images:
        raise ValueError(f"probe archive {archive}: no chip of {chip_px} px with a valid pixel")
    class_count = int(max(m.max() for m in masks)) + 1 if masks else 0
    class_names = _class_names(scenes[0].with_name(scenes[0].stem + LABELS_SUFFIX),
                               max(class_count, 2)) if with_labels else ()
    return ProbeChips(np.stack(images), np.array(names), np.array(types),
                      np.stack(masks) if with_labels else None, class_names)


SPLIT_CANDIDATES = 16
"""Seeded scene splits tried by ``split_by_scene``; the one sharing most classes between its sides is kept."""


def split_by_scene(chips: ProbeChips, test_fraction: float = 1 / 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) chip indices with whole scenes on one side -> of ``SPLIT_CANDIDATES`` stratified group splits
    (scikit-learn's ``StratifiedGroupKFold``, first fold = test), the one with most scene types, then most mask
    classes, present on both sides (ties: the first). Deterministic for ``seed``; never looks at features."""
    scenes = np.unique(chips.scenes)
    if len(scenes) < 2:
        raise ValueError(f"probes need at least 2 scenes to split by scene, the archive has {len(scenes)}")
    n_splits = min(len(scenes), max(2, round(1 / test_fraction)))
    mask_classes = None
    if chips.masks is not None:  # mask classes per chip, (N, K) bool
        k = int(chips.masks.max()) + 1
        mask_classes = np.stack([np.bincount(m.ravel(), minlength=k) > 0 for m in chips.masks])[:, 1:]
    best, best_score = None, None
    for candidate in range(SPLIT_CANDIDATES):
        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed * 1000 + candidate)
        train, test = next(folds.split(np.zeros(len(chips)), chips.scene_types, groups=chips.scenes))
        shared_types = len(set(chips.scene_types[train]) & set(chips.scene_types[test]))
        shared_masks = 0 if mask_classes is None else int(
            (mask_classes[train].any(0) & mask_classes[test].any(0)).sum())
        score = (shared_types, shared_masks)
        if best_score is None or score > best_score:
            best, best_score = (np.sort(train), np.sort(test)), score
    return best


def zscore_normalizer(images: np.ndarray, contract: CorpusContract) -> MultispectralNormalize:
    """Per-band z-score of ``images`` (N, C, h, w) DN over valid pixels (all bands > nodata): one preprocessing
    for every encoder, on the contract's DN scale."""
    if images.shape[1] != len(contract.bands):
        raise ValueError(f"probe chips have {images.shape[1]} bands, the encoders' corpus contract {contract.bands}")
    pixels = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)
    pixels = pixels[:, (pixels > (contract.nodata or 0)).all(axis=0)].astype(np.float64) / contract.max_value
    return MultispectralNormalize(pixels.mean(1).tolist(), np.maximum(pixels.std(1), 1e-6).tolist(),
                                  max_value=contract.max_value)


def export_contract(folder: Path) -> CorpusContract:
    """The corpus contract of an export folder (``config.json['corpus']``)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"encoder {folder}: no {CONFIG_NAME} (not a training.export folder)")
    return CorpusContract.read(path)


def load_encoder(folder: Path | None, architecture_from: Path, chip_px: int, seed: int) -> torch.nn.Module:
    """An exported encoder by plain timm ``local-dir:`` at ``chip_px``; ``folder=None``: the same architecture as
    ``architecture_from`` with random init (seeded)."""
    torch.manual_seed(seed)
    source = folder if folder is not None else architecture_from
    model = timm.create_model(f"local-dir:{Path(source).resolve()}", pretrained=folder is not None, img_size=chip_px)
    return model.eval()


@torch.inference_mode()
def encode(model: torch.nn.Module, normalize: MultispectralNormalize, images: np.ndarray,
           batch_size: int = 64, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """images (N, C, h, w) DN -> pooled (N, D) mean of the patch tokens, patches (N, h/16 * w/16, D) float32."""
    model = model.to(device)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    pooled, patches = [], []
    for start in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[start : start + batch_size].astype(np.int32))).to(device)
        tokens = model.forward_features(x)[:, prefix:].float()
        patches.append(tokens.cpu().numpy())
        pooled.append(tokens.mean(1).cpu().numpy())
    return np.concatenate(pooled), np.concatenate(patches)


def patch_targets(masks: np.ndarray, patch: int, min_share: float) -> np.ndarray:
    """masks (N, h, w) class ids -> (N, h/patch * w/patch): per patch, the foreground class with the most pixels if
    it covers >= ``min_share`` of the patch, else 0 (background)."""
    n, h, w = masks.shape
    gh, gw = h // patch, w // patch
    blocks = masks[:, : gh * patch, : gw * patch].reshape(n, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n * gh * gw, patch * patch).astype(np.int64)
    k = int(masks.max()) + 1
    counts = np.zeros((len(blocks), max(k, 2)), np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(blocks)), blocks.shape[1]), blocks.ravel()), 1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < min_share * patch * patch] = 0
    return best.reshape(n, gh * gw)


def describe_split(chips: ProbeChips, train: np.ndarray, test: np.ndarray) -> dict:
    return {"train_scenes": sorted(set(chips.scenes[train].tolist())),
            "test_scenes": sorted(set(chips.scenes[test].tolist())),
            "train_chips": len(train), "test_chips": len(test),
            "scene_type_counts": {"train": _counts(chips.scene_types[train]),
                                  "test": _counts(chips.scene_types[test])}}


def _counts(values: Sequence[str]) -> dict[str, int]:
    names, counts = np.unique(np.asarray(values), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}
