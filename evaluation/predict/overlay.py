"""A quick-look PNG: the scene in true colour (2-98 % stretch per band) with the predicted classes blended on top.

Reads decimated (``out_shape``: GDAL uses the overviews of a COG), so a whole scene costs ``max_size``² pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from evaluation.predict.scenes import scene_band_names
from evaluation.predict.writer import NODATA_CLASS

PALETTE = np.array([(0, 0, 0), (255, 64, 32), (32, 160, 255), (255, 220, 0), (160, 64, 255), (0, 200, 120),
                    (255, 128, 192), (128, 255, 255)], dtype=np.float32)


def overlay_png(scene: Path, class_raster: Path, out: Path, max_size: int = 1024, alpha: float = 0.5,
                bands: tuple[str, ...] | None = None) -> Path:
    """Write ``out`` (PNG, atomically): ``scene`` red/green/blue under ``class_raster``'s foreground classes."""
    from PIL import Image

    with rasterio.open(scene) as src, rasterio.open(class_raster) as cls:
        scale = max(src.width, src.height) / max_size
        shape = (max(1, math.ceil(src.height / max(scale, 1))), max(1, math.ceil(src.width / max(scale, 1))))
        names = scene_band_names(src, Path(scene), None, bands)
        missing = [b for b in ("red", "green", "blue") if b not in names]
        if missing:
            raise ValueError(f"{scene}: no true colour: bands {missing} missing from {list(names)}")
        indexes = [names.index(b) + 1 for b in ("red", "green", "blue")]
        rgb = src.read(indexes, out_shape=(3, *shape), resampling=Resampling.average).astype(np.float32)
        valid = src.read_masks(indexes, out_shape=(3, *shape), resampling=Resampling.nearest).min(0) > 0
        classes = cls.read(1, out_shape=shape, resampling=Resampling.nearest)
    image = np.zeros((*shape, 3), dtype=np.float32)
    for i in range(3):
        lo, hi = np.percentile(rgb[i][valid], (2, 98)) if valid.any() else (0.0, 1.0)
        image[..., i] = np.clip((rgb[i] - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    foreground = (classes > 0) & (classes != NODATA_CLASS)
    colours = PALETTE[np.minimum(classes, len(PALETTE) - 1)]
    image[foreground] = (1 - alpha) * image[foreground] + alpha * colours[foreground]
    image[~valid] = 0
    tmp = out.with_name(f".{out.name}.tmp.png")
    Image.fromarray(image.astype(np.uint8)).save(tmp)
    os.replace(tmp, out)
    return out
