"""Synthetic labelled stand-ins for the four tasks (IWP, RTS, TCN, infrastructure), cut from the curation
generator's scenes (``training.synthetic.generate_archive(..., labels=True)``) into GeoTIFF chip pairs.

Each task keeps its own class as 1 (everything else background) and, for IWP, the instance ids. Chips holding the
class are all kept, plus as many chips without it (negatives), so the result is the raster-pairs format.

    python -m evaluation.datasets.synthetic_tasks --card evaluation/datasets/cards/synthetic_rts.yaml
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from evaluation.datasets.card import DatasetCard, load_card, resolve_path

TASK_CLASS = {"iwp": 1, "rts": 2, "tcn": 3, "infrastructure": 4}
"""Task -> class id in the generator's label rasters (training.synthetic.LABEL_CLASSES)."""


def cut_task_chips(scenes: list[Path], task: str, out_dir: Path, chip_size: int, seed: int = 0) -> list[Path]:
    """Write ``X.tif`` / ``X.labels.tif`` chip pairs for ``task`` from labelled scenes -> image chip paths."""
    if task not in TASK_CLASS:
        raise ValueError(f"unknown task {task!r}; tasks: {list(TASK_CLASS)}")
    class_id = TASK_CLASS[task]
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    positives, negatives = [], []
    for scene in scenes:
        label_path = scene.with_name(scene.stem + ".labels.tif")
        if not label_path.is_file():
            raise FileNotFoundError(f"scene {scene} has no label raster {label_path.name} (generate with labels=True)")
        with rasterio.open(label_path) as src:
            height, width = src.height, src.width
            for row in range(0, height - chip_size + 1, chip_size):
                for col in range(0, width - chip_size + 1, chip_size):
                    classes = src.read(1, window=Window(col, row, chip_size, chip_size))
                    window = (scene, row, col)
                    (positives if (classes == class_id).mean() > 0.01 else negatives).append(window)
    if not positives:
        raise ValueError(f"no {chip_size} px chip of {len(scenes)} scene(s) holds class {task!r}: generate more or "
                         "larger scenes, or smaller zones")
    chosen = positives + [negatives[i] for i in rng.permutation(len(negatives))[: len(positives)]]
    written = []
    for scene, row, col in chosen:
        name = f"{scene.stem}_r{row:05d}_c{col:05d}"
        written.append(_write_pair(scene, row, col, chip_size, class_id, out_dir / name, keep_instances=task == "iwp"))
    return sorted(written)


def _write_pair(scene: Path, row: int, col: int, size: int, class_id: int, stem: Path, keep_instances: bool) -> Path:
    window = Window(col, row, size, size)
    with rasterio.open(scene) as src:
        image = src.read(window=window)
        profile = dict(
            driver="GTiff", width=size, height=size, count=src.count, dtype=image.dtype, crs=src.crs,
            transform=window_transform(window, src.transform), nodata=src.nodata,
        )
        descriptions = src.descriptions
    with rasterio.open(scene.with_name(scene.stem + ".labels.tif")) as src:
        labels = src.read(window=window)
    binary = (labels[0] == class_id).astype(np.uint16)
    instances = np.where(binary == 1, labels[1], 0).astype(np.uint16) if keep_instances else binary * 0
    image_path = stem.with_suffix(".tif")
    with rasterio.open(image_path, "w", **profile) as dst:
        dst.write(image)
        dst.descriptions = descriptions
    with rasterio.open(stem.with_name(stem.name + ".labels.tif"), "w", **{**profile, "count": 2, "nodata": None,
                                                                         "dtype": "uint16"}) as dst:
        dst.write(np.stack([binary, instances]))
    return image_path


def ensure_generated(card: DatasetCard) -> DatasetCard:
    """Generate a synthetic card's chips under ``card.root`` if they are not there yet (cards with ``generate``).

    Safe under concurrency (``compare`` runs one process per device): scenes and chips are written into a private
    temporary folder and renamed into place whole, so a folder that exists is complete; a process that loses the
    race discards its copy.
    """
    if card.generate is None or (card.root.is_dir() and any(card.root.glob("*.labels.tif"))):
        return card
    from training.synthetic import generate_archive  # the curation stage's generator (labels contract)

    spec = card.generate
    scenes_dir = resolve_path(spec.get("scenes_dir", card.root.parent / "scenes"))
    _build_once(scenes_dir, lambda tmp: generate_archive(
        tmp, n_scenes=int(spec.get("scenes", 2)), size=int(spec.get("size", 512)), seed=int(spec.get("seed", 0)),
        labels=True, zone_size=int(spec.get("zone_size", 256))))
    scenes = sorted(p for p in scenes_dir.glob("scene_*.tif") if not p.name.endswith(".labels.tif"))
    _build_once(card.root, lambda tmp: cut_task_chips(scenes, spec["task"], tmp, int(spec.get("chip_size", 128)),
                                                      seed=int(spec.get("seed", 0))))
    return card


def _build_once(target: Path, build: Callable[[Path], object]) -> None:
    """Run ``build(tmp)`` into a private sibling folder and rename it to ``target`` unless ``target`` exists."""
    if target.is_dir() and any(target.iterdir()):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        build(tmp)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty placeholder is not a finished build
        os.rename(tmp, target)
    except OSError:
        if not (target.is_dir() and any(target.iterdir())):
            raise  # not a lost race: a real error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cut synthetic task chips for a dataset card with `generate:`.")
    parser.add_argument("--card", required=True, nargs="+", help="synthetic dataset card YAML(s)")
    for path in parser.parse_args(argv).card:
        card = ensure_generated(load_card(path))
        print(f"{card.name}: {len(list(card.root.glob('*.labels.tif')))} chip pairs in {card.root}")


if __name__ == "__main__":
    main()
