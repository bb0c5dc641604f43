"""Streaming inference over one scene: rows of overlapping tiles read strip by strip, blended in a rolling buffer.

The tile grid is ``evaluation.overlap.tile_origins`` of the whole scene, so results do not depend on how the scene
is streamed. Tile row i covers scene rows [rᵢ, rᵢ + T); once it is processed, rows [rᵢ, rᵢ₊₁) can receive no more
tiles and are final: they are yielded, and the accumulated sums of rows [rᵢ₊₁, rᵢ + T) (the *carry*) move on to
the next strip. Memory: one strip of the scene (C × T × W) plus the carry (K × T × W floats), independent of the
scene's height. ``StreamState`` (next tile row, carry, counters) is all a resumed run needs.

Nodata (``read_masks``: nodata value, internal mask or alpha; a pixel is valid when every used band is valid):
tiles without a valid pixel are not run (``skipped``); invalid pixels of the others are filled with the tile's
per-band valid mean before the forward (``overlap.fill_invalid``) and get probability 0.
Scenes smaller than a tile are reflect-padded (``overlap.pad_to_tile``) strip by strip, which equals padding the
whole scene because reflection along a row does not depend on other rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from evaluation.overlap import TileAccumulator, TileInstance, fill_invalid, pad_to_tile, tile_origins


@dataclass
class StreamState:
    next_row: int = 0  # index of the next tile row
    carry_probs: np.ndarray | None = None  # (K, h, PW) float32 weighted sums of rows below the last final row
    carry_weights: np.ndarray | None = None  # (h, PW)
    windows_run: int = 0
    windows_skipped: int = 0
    instances: list[TileInstance] = field(default_factory=list)  # instance models: found so far (unmerged)


@dataclass
class Strip:
    row0: int  # final scene rows [row0, row1)
    row1: int
    probs: np.ndarray | None  # (K, row1 - row0, W) float32 (semantic), 0 where invalid
    valid: np.ndarray  # (row1 - row0, W) bool
    state: StreamState  # the state after this strip (what a checkpoint stores)


def grid(height: int, width: int, tile: int, overlap: int) -> tuple[list[int], list[int], int, int]:
    """Tile row and column origins of the (padded) scene, and the padded size."""
    ph, pw = max(height, tile), max(width, tile)
    origins = tile_origins(ph, pw, tile, overlap)
    return sorted({r for r, _ in origins}), sorted({c for _, c in origins}), ph, pw


def valid_pixels(src, band_indexes: tuple[int, ...], data: np.ndarray, window: Window) -> np.ndarray:
    """(h, w) bool: every band in ``band_indexes`` valid. Bands whose only mask is their nodata value (GDAL's
    ``GMF_NODATA``) are masked from ``data`` itself, exactly as GDAL's mask would (value == nodata, or NaN for a NaN
    nodata), without decoding the window a second time; per-dataset masks and alpha bands are read."""
    flags = [src.mask_flag_enums[b - 1] for b in band_indexes]
    if all(f == [MaskFlags.all_valid] for f in flags):
        return np.ones(data.shape[1:], dtype=bool)
    if all(f == [MaskFlags.nodata] for f in flags) and all(
            _representable(src.nodatavals[b - 1], data.dtype) for b in band_indexes):
        valid = np.ones(data.shape[1:], dtype=bool)
        for band, values in zip(band_indexes, data):
            nodata = src.nodatavals[band - 1]
            valid &= ~np.isnan(values) if np.isnan(nodata) else values != np.array(nodata, dtype=values.dtype)
        return valid
    return src.read_masks(list(band_indexes), window=window).min(axis=0) > 0


def _representable(value: float, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def read_rows(src, band_indexes: tuple[int, ...], row0: int, row1: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene rows [row0, row1) of ``band_indexes`` as stored -> data (C, h, W) and valid (h, W) bool."""
    window = Window(0, row0, src.width, row1 - row0)
    raw = src.read(list(band_indexes), window=window)
    return raw, valid_pixels(src, band_indexes, raw, window)


class StripReader:
    """Scene rows [row, row + tile) for non-decreasing ``row``, each stored block decoded once.

    Consecutive strips overlap by ``overlap`` rows and a strip spans two block rows of a tiled GeoTIFF, so reading
    every strip from the file would decode most blocks twice or thrice (GDAL's block cache is kept small:
    ``writer.GDAL_ENV``). Here rows are read once, up to the next block boundary, and kept (rows above the current
    strip dropped) until no later strip needs them: at most ``tile + block height`` rows; blocks taller than a tile
    (strip-organised files) are read row-exact instead. Each strip is assembled straight into its float32 tensor.
    """

    def __init__(self, src, band_indexes: tuple[int, ...], tile: int) -> None:
        self.src, self.band_indexes, self.tile = src, band_indexes, tile
        block_height = src.block_shapes[0][0]
        self.block_height = block_height if block_height <= tile else 1
        self.chunks: list[tuple[int, np.ndarray, np.ndarray]] = []  # (first scene row, data (C, h, W), valid)
        self.last_row = 0

    @property
    def buffered_rows(self) -> int:
        return sum(len(valid) for _, _, valid in self.chunks)

    def read(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> image (C, T', PW) float32 and valid (T', PW) bool of rows [row, row + T), padded to a tile."""
        if row < self.last_row:
            raise ValueError(f"StripReader: row {row} after row {self.last_row}; rows must not decrease")
        self.last_row = row
        end = min(row + self.tile, self.src.height)
        self.chunks = [(row, data[:, row - first :].copy(), valid[row - first :].copy()) if first < row else
                       (first, data, valid) for first, data, valid in self.chunks if first + len(valid) > row]
        buffered = self.chunks[-1][0] + len(self.chunks[-1][2]) if self.chunks else row
        if buffered < end:
            stop = min(-(-end // self.block_height) * self.block_height, self.src.height)
            self.chunks.append((buffered, *read_rows(self.src, self.band_indexes, buffered, stop)))
        h = end - row
        image = np.empty((len(self.band_indexes), h, self.src.width), dtype=np.float32)
        valid = np.empty((h, self.src.width), dtype=bool)
        for first, data, chunk_valid in self.chunks:
            a, b = max(first, row), min(first + len(chunk_valid), end)
            if a < b:
                image[:, a - row : b - row] = data[:, a - first : b - first]
                valid[a - row : b - row] = chunk_valid[a - first : b - first]
        image, valid = torch.from_numpy(image), torch.from_numpy(valid)
        if h < self.tile or self.src.width < self.tile:
            image = pad_to_tile(image, self.tile)
            valid = pad_to_tile(valid[None].float(), self.tile)[0] > 0.5
        return image, valid


def _prefetched(src, band_indexes: tuple[int, ...], rows: list[int], start: int, tile: int
                ) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor]]]:
    """(i, strip of tile row i) for i >= ``start`` (``StripReader``); strip i + 1 is read (decoded by GDAL, which
    releases the GIL) in a background thread while strip i is computed. Only that thread touches ``src`` and the
    reader until it is joined."""
    if start >= len(rows):
        return
    reader = StripReader(src, band_indexes, tile)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read_strip") as pool:
        pending = pool.submit(reader.read, rows[start])
        for i in range(start, len(rows)):
            strip = pending.result()
            if i + 1 < len(rows):
                pending = pool.submit(reader.read, rows[i + 1])
            yield i, strip


def _batches(image: torch.Tensor, valid: torch.Tensor, cols: list[int], tile: int, batch_size: int, state: StreamState):
    """Tiles of one strip with a valid pixel, in batches: (origins, tiles (N, C, T, T), valid (N, T, T))."""
    keep = []
    for c in cols:
        if bool(valid[:tile, c : c + tile].any()):
            keep.append(c)
        else:
            state.windows_skipped += 1
    for start in range(0, len(keep), batch_size):
        chunk = keep[start : start + batch_size]
        tiles = torch.stack([image[:, :tile, c : c + tile] for c in chunk])
        tile_valid = torch.stack([valid[:tile, c : c + tile] for c in chunk])
        state.windows_run += len(chunk)
        yield chunk, tiles, tile_valid


def stream_semantic(src, band_indexes: tuple[int, ...], forward: Callable[[torch.Tensor], torch.Tensor],
                    num_classes: int, tile: int, overlap: int, margin: int | None = None, batch_size: int = 8,
                    state: StreamState | None = None, device: torch.device | str = "cpu",
                    autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> Iterator[Strip]:
    """Blended class probabilities of an open rasterio scene, one final strip at a time (see module doc).

    ``forward``: (N, C, T, T) raw DN on ``device`` -> logits (N, K, T, T); ``state``: resume from a checkpoint.
    """
    state = state or StreamState()
    rows, cols, ph, pw = grid(src.height, src.width, tile, overlap)
    autocast = autocast or contextlib.nullcontext
    for i, (image, valid) in _prefetched(src, band_indexes, rows, state.next_row, tile):
        r = rows[i]
        acc = TileAccumulator(num_classes, tile, pw, tile, overlap, margin)
        if state.carry_probs is not None:
            h = state.carry_probs.shape[1]
            acc.probs[:, :h] = torch.from_numpy(state.carry_probs)
            acc.weights[:h] = torch.from_numpy(state.carry_weights)
        for chunk, tiles, tile_valid in _batches(image, valid, cols, tile, batch_size, state):
            x = fill_invalid(tiles, tile_valid).to(device)
            with torch.inference_mode(), autocast():
                logits = forward(x)
            acc.add(torch.softmax(logits.float(), dim=1).cpu(), [(0, c) for c in chunk])
        end = rows[i + 1] - r if i + 1 < len(rows) else ph - r  # local rows that are final now
        state.carry_probs = acc.probs[:, end:].numpy().copy() if i + 1 < len(rows) else None
        state.carry_weights = acc.weights[end:].numpy().copy() if i + 1 < len(rows) else None
        state.next_row = i + 1
        row1 = min(r + end, src.height)
        final_valid = valid[: row1 - r, : src.width]
        probs = (acc.result(slice(0, row1 - r))[:, :, : src.width] * final_valid).numpy()
        yield Strip(r, row1, probs, final_valid.numpy(), state)


def detections_to_instances(output: dict, row: int, col: int, valid: torch.Tensor, height: int, width: int,
                            score_threshold: float) -> list[TileInstance]:
    """One tile's Mask R-CNN output -> TileInstances in scene pixels (mask > 0.5, valid pixels inside the scene)."""
    out = []
    inside = valid.clone()
    inside[max(0, height - row):] = False
    inside[:, max(0, width - col):] = False
    for mask, label, score in zip(output["masks"], output["labels"], output["scores"]):
        if float(score) < score_threshold:
            continue
        m = (mask[0].float().cpu() > 0.5) & inside
        rr, cc = torch.where(m)
        if len(rr) == 0:
            continue
        r0, r1, c0, c1 = int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1
        out.append(TileInstance(row + r0, col + c0, m[r0:r1, c0:c1].numpy(), int(label), float(score)))
    return out


def stream_instances(src, band_indexes: tuple[int, ...], model: torch.nn.Module, tile: int, overlap: int,
                     batch_size: int = 8, score_threshold: float = 0.5, state: StreamState | None = None,
                     device: torch.device | str = "cpu",
                     autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> Iterator[Strip]:
    """Instance model: TileInstances of every tile row, collected into ``state.instances`` (merged by the caller)."""
    state = state or StreamState()
    rows, cols, _, _ = grid(src.height, src.width, tile, overlap)
    autocast = autocast or contextlib.nullcontext
    reader = StripReader(src, band_indexes, tile)
    for i in range(state.next_row, len(rows)):
        r = rows[i]
        image, valid = reader.read(r)
        for chunk, tiles, tile_valid in _batches(image, valid, cols, tile, batch_size, state):
            x = fill_invalid(tiles, tile_valid).to(device)
            with torch.no_grad(), autocast():
                outputs = model(x)
            for c, out, v in zip(chunk, outputs, tile_valid):
                state.instances.extend(detections_to_instances(out, r, c, v, src.height, src.width, score_threshold))
        state.next_row = i + 1
        row1 = min(rows[i + 1] if i + 1 < len(rows) else src.height, src.height)
        yield Strip(r, row1, None, valid[: row1 - r, : src.width].numpy(), state)
