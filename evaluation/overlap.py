"""The one tiling / blending / merging implementation, shared by chip evaluation and whole-scene prediction.

- ``tile_origins``: a grid of fixed-size tiles covering an image, neighbours overlapping by at least ``overlap`` px,
  the last tile flush with the edge (origins spread evenly, so overlaps differ by at most one pixel).
- ``blend_weights``: a separable weight per tile pixel from the distance ``d`` to the nearest tile edge:
  ``MIN_WEIGHT`` for ``d < margin`` (default ``overlap // 4``), then a sin² ramp reaching 1 at ``overlap - margin``.
  Tile edges, where a fixed-size model sees the least context (and a convolution sees its padding), then count
  ~nothing wherever another tile covers them; with overlap >= 2·margin every pixel is in some tile's trusted
  part; a pixel seen by one tile only (the image border) keeps that tile's value: blended = Σ wᵢ pᵢ / Σ wᵢ.
- ``predict_tiled``: blended class probabilities of a whole (in-memory) image; ``TileAccumulator`` is the same
  blending for callers that stream rows of tiles (``evaluation.predict``).
- ``merge_instances``: instances predicted in overlapping tiles -> one instance per object.

Invalid (nodata) pixels are never model input values: ``fill_invalid`` replaces them, per tile and band, by the
mean of the tile's valid pixels of that band (raw units, so it does not depend on the model's normalisation;
0 where a band has no valid pixel); tiles without any valid pixel are not run at all; invalid pixels get
probability 0 (class nodata downstream).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MIN_WEIGHT = 1e-7
Forward = Callable[[torch.Tensor], torch.Tensor]


def _axis_origins(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((size - tile) / stride) + 1
    span = size - tile  # spread evenly: every step <= stride, so every overlap >= ``overlap``
    return [round(i * span / (count - 1)) for i in range(count)]


def tile_origins(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(row, col) origins of ``tile``-px tiles covering (height, width), row-major; a single (0, 0) if it fits."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    rows, cols = _axis_origins(height, tile, overlap), _axis_origins(width, tile, overlap)
    return [(r, c) for r in rows for c in cols]


def default_margin(overlap: int) -> int:
    """Edge pixels of a tile that count ~nothing where another tile covers them: a quarter of the overlap."""
    return overlap // 4


def _ramp(tile: int, overlap: int, margin: int) -> np.ndarray:
    if overlap <= 0:
        return np.ones(tile)
    if not 0 <= 2 * margin <= overlap:
        raise ValueError(f"blend margin must be in 0..overlap/2 = {overlap // 2}, got {margin}")
    distance = np.minimum(np.arange(tile), np.arange(tile)[::-1]).astype(np.float64)
    x = np.clip((distance - margin + 1) / (overlap - 2 * margin + 1), 0.0, 1.0)
    return np.maximum(np.sin(0.5 * np.pi * x) ** 2, MIN_WEIGHT)


def blend_weights(tile: int, overlap: int, margin: int | None = None) -> np.ndarray:
    """(tile, tile) float32 > 0: ``MIN_WEIGHT`` within ``margin`` px of an edge, a sin² ramp up to 1 over the rest
    of the ``overlap`` band, 1 inside (separable: the outer product of the 1-D profile)."""
    ramp = _ramp(tile, overlap, default_margin(overlap) if margin is None else margin)
    return np.outer(ramp, ramp).astype(np.float32)


def fill_invalid(tiles: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """tiles: (N, C, T, T), valid: (N, T, T) bool -> tiles with invalid pixels set to the tile's per-band valid mean."""
    v = valid[:, None].to(tiles.dtype)
    count = v.sum(dim=(2, 3), keepdim=True)
    mean = (tiles * v).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1)
    return torch.where(valid[:, None], tiles, mean.expand_as(tiles))


def run_tiles(forward: Forward, tiles: torch.Tensor, valid: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """tiles: (N, C, T, T) -> softmax probabilities (N, K, T, T) float32, ``batch_size`` tiles per forward."""
    out = []
    for start in range(0, len(tiles), batch_size):
        x = tiles[start : start + batch_size].float()
        if valid is not None:
            x = fill_invalid(x, valid[start : start + batch_size])
        with torch.no_grad():
            out.append(torch.softmax(forward(x).float(), dim=1))
    return torch.cat(out)


class TileAccumulator:
    """Σ wᵢ pᵢ and Σ wᵢ over a (K, H, W) region, for tiles whose origins are relative to the region."""

    def __init__(self, num_classes: int, height: int, width: int, tile: int, overlap: int,
                 margin: int | None = None) -> None:
        self.probs = torch.zeros(num_classes, height, width)
        self.weights = torch.zeros(height, width)
        self.tile = tile
        self.weight = torch.from_numpy(blend_weights(tile, overlap, margin))

    def add(self, probs: torch.Tensor, origins: Sequence[tuple[int, int]]) -> None:
        """probs: (N, K, T, T) of tiles at ``origins`` (row, col) in region coordinates."""
        t = self.tile
        for p, (r, c) in zip(probs, origins):
            self.probs[:, r : r + t, c : c + t] += p * self.weight
            self.weights[r : r + t, c : c + t] += self.weight

    def result(self, rows: slice = slice(None)) -> torch.Tensor:
        """Blended probabilities (K, h, W) of ``rows``; 0 where no tile contributed."""
        w = self.weights[rows]
        return torch.where(w > 0, self.probs[:, rows] / w.clamp(min=1e-30), torch.zeros(()))


def pad_to_tile(image: torch.Tensor, tile: int) -> torch.Tensor:
    """image: (C, H, W) -> (C, max(H, tile), max(W, tile)), reflected at the bottom/right (repeated if needed)."""
    while image.shape[-2] < tile or image.shape[-1] < tile:
        ph = min(tile - image.shape[-2], image.shape[-2] - 1) if image.shape[-2] < tile else 0
        pw = min(tile - image.shape[-1], image.shape[-1] - 1) if image.shape[-1] < tile else 0
        if ph == 0 and pw == 0:  # a single row or column: nothing to reflect
            return F.pad(image, (0, max(0, tile - image.shape[-1]), 0, max(0, tile - image.shape[-2])),
                         mode="replicate")
        image = F.pad(image[None].float(), (0, pw, 0, ph), mode="reflect")[0]
    return image


def predict_tiled(forward: Forward, image: torch.Tensor | np.ndarray, tile: int, overlap: int, batch_size: int = 8,
                  valid: torch.Tensor | np.ndarray | None = None, margin: int | None = None) -> torch.Tensor:
    """image: (C, H, W), valid: (H, W) bool -> blended probabilities (K, H, W); 0 where ``valid`` is False.

    ``forward``: (N, C, T, T) -> logits (N, K, T, T). An image smaller than a tile is reflect-padded.
    """
    image = torch.as_tensor(image).float()
    _, height, width = image.shape
    valid_t = None if valid is None else torch.as_tensor(valid).bool()
    padded = pad_to_tile(image, tile)
    if valid_t is not None:
        valid_t = pad_to_tile(valid_t[None].float(), tile)[0] > 0.5
    ph, pw = padded.shape[-2:]
    origins = tile_origins(ph, pw, tile, overlap)
    if valid_t is not None:
        origins = [(r, c) for r, c in origins if bool(valid_t[r : r + tile, c : c + tile].any())]
    acc: TileAccumulator | None = None
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        tiles = torch.stack([padded[:, r : r + tile, c : c + tile] for r, c in chunk])
        tile_valid = None if valid_t is None else torch.stack([valid_t[r : r + tile, c : c + tile] for r, c in chunk])
        probs = run_tiles(forward, tiles, tile_valid, batch_size)
        if acc is None:
            acc = TileAccumulator(probs.shape[1], ph, pw, tile, overlap, margin)
        acc.add(probs, chunk)
    if acc is None:  # nothing valid: the number of classes is unknown without a forward
        raise ValueError("predict_tiled: no valid pixel in the image")
    out = acc.result()[:, :height, :width]
    if valid_t is not None:
        out = out * valid_t[:height, :width]
    return out


@dataclass
class TileInstance:
    """One predicted object: ``mask`` (h, w) bool inside the box whose top-left is (row, col) in image pixels."""

    row: int
    col: int
    mask: np.ndarray
    label: int
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), end-exclusive."""
        return self.row, self.col, self.row + self.mask.shape[0], self.col + self.mask.shape[1]


def _iou_in_shared_box(a: TileInstance, b: TileInstance) -> float:
    r0, c0 = max(a.row, b.row), max(a.col, b.col)
    r1, c1 = min(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if r1 <= r0 or c1 <= c0:
        return 0.0
    ma = a.mask[r0 - a.row : r1 - a.row, c0 - a.col : c1 - a.col]
    mb = b.mask[r0 - b.row : r1 - b.row, c0 - b.col : c1 - b.col]
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else 0.0


def _union(group: list[TileInstance]) -> TileInstance:
    r0, c0 = min(i.row for i in group), min(i.col for i in group)
    r1, c1 = max(i.box[2] for i in group), max(i.box[3] for i in group)
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for i in group:
        mask[i.row - r0 : i.box[2] - r0, i.col - c0 : i.box[3] - c0] |= i.mask.astype(bool)
    best = max(group, key=lambda i: i.score)
    return TileInstance(r0, c0, mask, best.label, float(best.score))


def connected_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Indices 0..n-1 grouped by the connected components of the undirected ``pairs`` (each group ascending,
    groups ordered by their first index): transitive merging of tiles' instances and of blocks' polygons."""
    if n == 0:
        return []
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(index)
    return list(groups.values())


def merge_instances(instances: Iterable[TileInstance], iou_threshold: float = 0.5) -> list[TileInstance]:
    """Instances of overlapping tiles that are one object -> one instance (union of masks, max score).

    Rule: two instances of the same label are one object when the IoU of their masks *within the intersection of
    their boxes* is >= ``iou_threshold``. A tile sees only part of an object crossing its edge, so the whole-mask
    IoU of the two parts can be small; inside the shared box (for a seam-crossing object: the tiles' overlap
    region) both tiles saw the same pixels and agree. Two distinct touching objects whose boxes overlap cover
    different pixels of the shared box and stay apart. Merging is transitive (connected components), so an object
    spanning several tiles becomes one. Output: sorted by (row, col, label), deterministic.
    """
    items = sorted(instances, key=lambda i: (i.row, i.col, i.label, -i.score))
    same: list[tuple[int, int]] = []
    active: list[int] = []  # sweep over rows: only boxes still open at this row can intersect
    for j, inst in enumerate(items):
        active = [i for i in active if items[i].box[2] > inst.row]
        for i in active:
            other = items[i]
            if other.label == inst.label and other.col < inst.box[3] and inst.col < other.box[3] and (
                _iou_in_shared_box(other, inst) >= iou_threshold
            ):
                same.append((i, j))
        active.append(j)
    groups = [[items[k] for k in group] for group in connected_groups(len(items), same)]
    merged = [_union(g) if len(g) > 1 else g[0] for g in groups]
    return sorted(merged, key=lambda i: (i.row, i.col, i.label))
