"""Vector labels (GeoJSON, shapefile, GeoPackage: anything GDAL reads) rasterised against GeoTIFF chips.

Card options: ``image_glob`` (default ``*.tif``); ``labels``: one vector file (relative to ``root``) for all chips,
or null to pair ``X.tif`` with ``X<label_suffix>`` (``label_suffix`` default ``.geojson``); ``class_attribute``
(default ``class``): the feature field holding the class name; ``missing_label`` (``error`` | ``skip``).
Every feature is one instance. Features are reprojected to the chip's CRS; with per-chip label files a feature
that misses its chip is a recorded reject (with one shared file most features miss any one chip, by design).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import shapely
import torch
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from evaluation.datasets.base import ChipDataset
from evaluation.datasets.card import IGNORE_INDEX
from evaluation.datasets.raster_pairs import read_image


def read_vector(path: Path, class_attribute: str) -> tuple[str | None, list, list[str]]:
    """-> (CRS, shapely geometries, class names) of every feature in ``path``."""
    meta, _, geometry, field_data = pyogrio.raw.read(path)
    fields = list(meta["fields"])
    if class_attribute not in fields:
        raise ValueError(f"{path}: no field {class_attribute!r} (fields: {fields}; card options.class_attribute)")
    names = [str(v) for v in field_data[fields.index(class_attribute)]]
    return meta.get("crs"), list(shapely.from_wkb(geometry)), names


class VectorDataset(ChipDataset):
    def _list_items(self, root: Path) -> dict[str, tuple[Path, Path]]:
        options = self.card.options
        shared = options.get("labels")
        suffix = options.get("label_suffix", ".geojson")
        items = {}
        for image_path in sorted(root.glob(options.get("image_glob", "*.tif"))):
            label_path = root / shared if shared else image_path.with_suffix(suffix)
            if not label_path.is_file():
                if options.get("missing_label", "error") == "skip":
                    self.reject(str(image_path), f"label file {label_path.name} missing")
                    continue
                raise FileNotFoundError(f"vector labels for {image_path} not found: {label_path}")
            items[image_path.stem] = (image_path, label_path)
        self._vectors: dict[Path, tuple] = getattr(self, "_vectors", {})
        return items

    def _features(self, label_path: Path) -> tuple:
        if label_path not in self._vectors:
            self._vectors[label_path] = read_vector(label_path, self.card.options.get("class_attribute", "class"))
        return self._vectors[label_path]

    def _load(self, item_id: str, item: tuple[Path, Path]) -> dict:
        image_path, label_path = item
        image, nodata, latlon = read_image(image_path)
        with rasterio.open(image_path) as src:
            crs, transform, shape = src.crs, src.transform, (src.height, src.width)
        vector_crs, geometries, names = self._features(label_path)
        per_chip = not self.card.options.get("labels")
        semantic = np.zeros(shape, dtype=np.uint8)
        masks, labels = [], []
        for index, (geometry, name) in enumerate(zip(geometries, names)):
            where = f"{label_path} feature {index}"
            class_id = self.card.class_id(name, where)
            if geometry is None or geometry.is_empty:
                self._record_once(where, "empty geometry")
                continue
            if vector_crs and crs and str(vector_crs) != str(crs):
                geometry = shapely.geometry.shape(transform_geom(vector_crs, crs, shapely.geometry.mapping(geometry)))
            burnt = rasterize([(geometry, 1)], out_shape=shape, transform=transform, fill=0, dtype="uint8")
            if not burnt.any():
                if per_chip:
                    self._record_once(where, f"feature lies outside chip {image_path.name}")
                continue
            semantic[burnt == 1] = class_id
            masks.append(burnt)
            labels.append(class_id)
        mask = torch.from_numpy(semantic.astype(np.int64))
        mask[torch.from_numpy(nodata)] = IGNORE_INDEX
        instances = {
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, *shape, dtype=torch.uint8),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        return {
            "image": self.check_image(image, str(image_path)), "mask": mask, "instances": instances,
            "latlon": self.latlon_tensor(latlon), "id": item_id,
        }

    def _record_once(self, where: str, reason: str) -> None:
        if all(r.item != where for r in self.rejects):
            self.reject(where, reason)
