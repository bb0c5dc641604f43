"""GeoTIFF image + label raster pairs (infrastructure / RTS / TCN style); lat/lon of the chip centre from its CRS.

Card options: ``image_glob`` (default ``*.tif``), ``label_suffix`` (default ``.labels.tif``: ``X.tif`` pairs with
``X.labels.tif`` beside it), ``label_band`` (1-based, default 1, class ids), ``instance_band`` (1-based or null:
instance ids, 0 = none), ``missing_label`` (``error`` (default) or ``skip``, recorded).
Image nodata pixels (all bands equal to the file's nodata value) are ignored in the mask.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import transform as warp_transform

from evaluation.datasets.base import ChipDataset, instances_from_ids
from evaluation.datasets.card import IGNORE_INDEX


def center_latlon(dataset: rasterio.io.DatasetReader) -> tuple[float, float] | None:
    """(lat, lon) in degrees of the raster centre, or None when the raster has no CRS."""
    if dataset.crs is None:
        return None
    x, y = dataset.xy(dataset.height / 2, dataset.width / 2, offset="ul")
    lon, lat = warp_transform(dataset.crs, "EPSG:4326", [x], [y])
    return float(lat[0]), float(lon[0])


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """-> image (C, H, W), nodata mask (H, W) bool, centre (lat, lon) or None."""
    with rasterio.open(path) as src:
        image = src.read()
        nodata = np.zeros(image.shape[1:], dtype=bool)
        if src.nodata is not None:
            nodata = np.all(image == src.nodata, axis=0)
        return image, nodata, center_latlon(src)


class RasterPairDataset(ChipDataset):
    def _list_items(self, root: Path) -> dict[str, tuple[Path, Path]]:
        options = self.card.options
        suffix = options.get("label_suffix", ".labels.tif")
        pairs = {}
        for image_path in sorted(root.glob(options.get("image_glob", "*.tif"))):
            if image_path.name.endswith(suffix):
                continue
            label_path = image_path.with_name(image_path.name[: -len(image_path.suffix)] + suffix)
            if not label_path.is_file():
                if options.get("missing_label", "error") == "skip":
                    self.reject(str(image_path), f"label file {label_path.name} missing")
                    continue
                raise FileNotFoundError(
                    f"label file for {image_path} not found: {label_path} (card options.missing_label=skip records "
                    "and skips such images instead)"
                )
            pairs[image_path.stem] = (image_path, label_path)
        return pairs

    def _load(self, item_id: str, item: tuple[Path, Path]) -> dict:
        image_path, label_path = item
        image, nodata, latlon = read_image(image_path)
        options = self.card.options
        with rasterio.open(label_path) as src:
            if (src.height, src.width) != image.shape[1:]:
                raise ValueError(
                    f"{label_path}: label raster is {src.height}x{src.width}, image {image_path.name} is "
                    f"{image.shape[1]}x{image.shape[2]}"
                )
            class_ids = src.read(int(options.get("label_band", 1)))
            instance_band = options.get("instance_band")
            instance_ids = src.read(int(instance_band)) if instance_band else None
        mask = self.check_mask(class_ids, str(label_path))
        mask[nodata] = IGNORE_INDEX
        instances = instances_from_ids(instance_ids, class_ids) if instance_ids is not None else None
        if latlon is None or any(math.isnan(v) for v in latlon):
            latlon = None
        return {
            "image": self.check_image(image, str(image_path)), "mask": mask, "instances": instances,
            "latlon": self.latlon_tensor(latlon), "id": item_id,
        }
