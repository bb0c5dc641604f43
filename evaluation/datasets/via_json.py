"""VGG Image Annotator (VIA 2) polygon chips, the MAPLE ice-wedge-polygon format: image files + one JSON.

JSON: ``{key: {"filename", "regions": {"0": {"shape_attributes": {"name": "polygon", "all_points_x": [...],
"all_points_y": [...]}, "region_attributes": {<class_attribute>: "lowcenter"}}}}}`` (``regions`` may be a list).
Each polygon becomes one instance mask and is burnt into the semantic mask (pixel centres inside the polygon).

Card options: ``annotations`` (JSON file name in ``root``, default ``via_region_data.json``), ``class_attribute``
(default ``object_name``), ``empty_chips`` (``skip`` (default, recorded) or ``keep`` as all-background chips).
Recorded rejects: polygons that lie wholly outside their chip, degenerate polygons (< 3 points or zero area),
non-polygon shapes, empty chips when skipped. Errors: a missing image file or JSON, an unknown class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import torch
from PIL import Image
from rasterio.features import rasterize
from shapely.geometry import Polygon, box

from evaluation.datasets.base import ChipDataset
from evaluation.datasets.card import DatasetCard


@dataclass(frozen=True)
class _Chip:
    path: Path
    polygons: tuple[tuple[Polygon, int], ...]  # (polygon in pixel coordinates, class id)


class ViaJsonDataset(ChipDataset):
    def __init__(self, card: DatasetCard, split: str | None = None) -> None:
        super().__init__(card, split)

    def _list_items(self, root: Path) -> dict[str, _Chip]:
        options = self.card.options
        json_path = root / options.get("annotations", "via_region_data.json")
        if not json_path.is_file():
            raise FileNotFoundError(f"VIA annotation file not found: {json_path} (dataset card {self.card.name!r})")
        entries = json.loads(json_path.read_text())
        if "_via_img_metadata" in entries:  # a full VIA project file instead of an exported region file
            entries = entries["_via_img_metadata"]
        attribute = options.get("class_attribute", "object_name")
        keep_empty = options.get("empty_chips", "skip") == "keep"
        chips: dict[str, _Chip] = {}
        for key, entry in entries.items():
            filename = entry.get("filename")
            if not filename:
                raise ValueError(f"{json_path}: entry {key!r} has no filename")
            image_path = root / filename
            if not image_path.is_file():
                raise FileNotFoundError(f"{json_path}: image {filename!r} of entry {key!r} not found at {image_path}")
            with Image.open(image_path) as image:
                width, height = image.size
            polygons = self._polygons(entry, filename, attribute, width, height)
            if not polygons and not keep_empty:
                self.reject(filename, "empty chip: no usable polygon (card options.empty_chips=skip)")
                continue
            chip_id = image_path.stem
            if chip_id in chips:
                raise ValueError(f"{json_path}: image {filename!r} is listed twice")
            chips[chip_id] = _Chip(image_path, tuple(polygons))
        return chips

    def _polygons(self, entry: dict, filename: str, attribute: str, width: int, height: int):
        regions = entry.get("regions") or {}
        regions = regions.items() if isinstance(regions, dict) else enumerate(regions)
        frame = box(0, 0, width, height)
        polygons = []
        for index, region in regions:
            where = f"{filename} region {index}"
            shape = region.get("shape_attributes", {})
            if shape.get("name") != "polygon":
                self.reject(where, f"shape {shape.get('name')!r} is not a polygon")
                continue
            class_name = (region.get("region_attributes") or {}).get(attribute)
            if class_name is None:
                raise ValueError(f"{where}: region has no {attribute!r} attribute (card options.class_attribute)")
            class_id = self.card.class_id(str(class_name), where)
            points = list(zip(shape.get("all_points_x", []), shape.get("all_points_y", [])))
            if len(points) < 3:
                self.reject(where, f"degenerate polygon with {len(points)} point(s)")
                continue
            polygon = shapely.make_valid(Polygon(points))
            if polygon.area == 0:
                self.reject(where, "degenerate polygon with zero area")
                continue
            if not polygon.intersects(frame) or polygon.intersection(frame).area == 0:
                self.reject(where, f"polygon lies outside the {width}x{height} chip")
                continue
            polygons.append((polygon, class_id))
        return polygons

    def _load(self, item_id: str, item: _Chip) -> dict:
        path = item.path
        with Image.open(path) as image:
            array = np.asarray(image)
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        image = self.check_image(array, str(path))
        height, width = image.shape[-2:]
        semantic = np.zeros((height, width), dtype=np.uint8)
        masks, labels = [], []
        for polygon, class_id in item.polygons:
            burnt = rasterize([(polygon, 1)], out_shape=(height, width), fill=0, dtype="uint8")
            if not burnt.any():  # a sliver between pixel centres: nothing to score, keep the semantic mask honest
                continue
            semantic[burnt == 1] = class_id
            masks.append(burnt)
            labels.append(class_id)
        instances = {
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        return {
            "image": image, "mask": self.check_mask(semantic, str(path)), "instances": instances,
            "latlon": self.latlon_tensor(None), "id": item_id,
        }
