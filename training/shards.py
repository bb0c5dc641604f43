"""Chip shards: fixed-size memory-mapped arrays + a metadata table, and the loader that streams them.

Layout written by ``training.pack`` (one folder)::

    corpus.json                the corpus contract (``arctic_vit.corpus.CorpusContract``): bands, bit_depth, per-band
                               mean/std in [0, 1] units, gsd_m, nodata -- the one place these facts live
    index.json                 {"format": 2, "dtype": "uint16", "chip_shape": [C, H, W], "count": N, "pixels": P,
                                "seed": 0, "shards": [{"name": "shard-00000", "count": 1024}, ...]}
    shard-00000.npy            (N, C, H, W) uint8/uint16 raw DN, band order of the contract's ``bands``
    shard-00000.parquet        one row per chip: chip_id, source_path, row_off, col_off, lat, lon, acquired, sensor;
                               its schema metadata stamps the shard's bands / bit depth / dtype (checked on open)

Pack writes the chips in a seeded global permutation (chip i of the manifest lands anywhere in any shard), so any
window of the stream -- and therefore any batch -- mixes scenes. Reading order (``ShardSampler``): shard order
shuffled per epoch, chips read shard after shard (sequential memory-mapped reads) through a shuffle buffer, the
stream split across DDP ranks by stride; DataLoader workers then take whole batches of it. Every chip's
augmentation is seeded by (seed, epoch, position in the stream), so an epoch is identical for any worker count and
can be resumed at any sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from arctic_vit.corpus import CONTRACT_FILENAME, ContractError, CorpusContract

INDEX_NAME = "index.json"
LEGACY_STATS_NAME = "stats.json"
SHARD_FORMAT = 2
SHARD_STAMP_KEY = b"arctic_vit.shard"  # parquet schema metadata: {"bands", "bit_depth", "dtype"} of the shard


def read_index(shard_dir: str | Path) -> dict[str, Any]:
    """Read and check ``index.json`` of a shard folder."""
    path = Path(shard_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no shard index at {path}: run `python -m training.pack` first")
    index = json.loads(path.read_text())
    if index.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path}: shard format {index.get('format')!r}, this code reads format {SHARD_FORMAT} "
                         "(format 1 kept bands/bit depth in index.json + stats.json): re-run `python -m training.pack`")
    return index


def read_contract(shard_dir: str | Path) -> CorpusContract:
    """The corpus contract of a shard folder (``corpus.json``, with measured mean/std)."""
    folder = Path(shard_dir)
    path = folder / CONTRACT_FILENAME
    if not path.is_file():
        legacy = folder / LEGACY_STATS_NAME
        hint = (f"; {legacy} is the old format (bands and bit depth in two files)" if legacy.is_file() else "")
        raise ContractError(f"{path}: corpus contract not found{hint}: re-run `python -m training.pack`")
    contract = CorpusContract.read(path)
    if not contract.has_stats:
        raise ContractError(f"{path}: corpus contract has no mean/std (pack measures them): re-run training.pack")
    return contract


def shard_stamp(contract: CorpusContract, dtype: str) -> dict[str, Any]:
    """What every shard of a folder must agree on (written into each shard's parquet schema metadata)."""
    return {"bands": list(contract.bands), "bit_depth": contract.bit_depth, "dtype": str(dtype)}


def check_shards(shard_dir: str | Path, index: dict[str, Any], contract: CorpusContract) -> None:
    """Every shard's stamp and array header agree with ``corpus.json`` / ``index.json``; errors name the file."""
    import pyarrow.parquet as pq

    folder = Path(shard_dir)
    expected = shard_stamp(contract, index["dtype"])
    for entry in index["shards"]:
        table = folder / f"{entry['name']}.parquet"
        array = folder / f"{entry['name']}.npy"
        for path in (table, array):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {folder / INDEX_NAME} but missing")
        metadata = pq.read_schema(table).metadata or {}
        if SHARD_STAMP_KEY not in metadata:
            raise ContractError(f"{table}: no shard stamp (bands, bit depth, dtype): re-run `python -m training.pack`")
        stamp = json.loads(metadata[SHARD_STAMP_KEY])
        for key, value in expected.items():
            if stamp.get(key) != value:
                raise ContractError(f"{table}: shard {key} {stamp.get(key)!r} disagrees with {value!r} of "
                                    f"{folder / CONTRACT_FILENAME} / {folder / INDEX_NAME}")
        header = np.load(array, mmap_mode="r")
        shape = (int(entry["count"]), *index["chip_shape"])
        if str(header.dtype) != index["dtype"] or tuple(header.shape) != shape:
            raise ContractError(f"{array}: array {header.dtype} {tuple(header.shape)}, {folder / INDEX_NAME} says "
                                f"{index['dtype']} {shape}")


@dataclass(frozen=True)
class AugmentConfig:
    """Overhead-imagery augmentations: random resized crop, flips and 90-degree rotations (no 'up' in the sky)."""

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True


def random_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> tuple[int, int, int, int]:
    """Sample (top, left, h, w) covering ``scale`` of the area with aspect in ``ratio``; whole image after 10 misses."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=gen).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    return 0, 0, height, width


def resize_with_validity(chip: torch.Tensor, valid: torch.Tensor | None, size: tuple[int, int]):
    """chip: (C, H, W) float32, valid: (H, W) bool or None -> (C, *size), (*size) bool; antialiased bilinear.

    The validity mask is resampled with the same kernel: an output pixel stays valid only when no nodata input pixel
    contributed to it (a blend of nodata and data is not data). Without nodata the mask is not resampled at all.
    """
    out = F.interpolate(chip[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    if valid is None or bool(valid.all()):
        return out, torch.ones(size, dtype=torch.bool)
    coverage = F.interpolate(valid[None, None].float(), size=size, mode="bilinear", antialias=True,
                             align_corners=False)[0, 0]
    return out, coverage > 1 - 1e-4


def augment(chip: torch.Tensor, valid: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator | None):
    """chip: (C, H, W) float32 DN, valid: (H, W) bool -> (C, S, S) float32, (S, S) bool. ``gen=None``: resize only."""
    height, width = chip.shape[-2:]
    if gen is not None:
        top, left, h, w = random_resized_crop_box(height, width, cfg.scale, cfg.ratio, gen)
        chip = chip[:, top : top + h, left : left + w]
        valid = valid[top : top + h, left : left + w]
    if chip.shape[-2:] != (cfg.size, cfg.size):
        chip, valid = resize_with_validity(chip, valid, (cfg.size, cfg.size))
    if gen is not None:
        flips = torch.randint(0, 2, (2,), generator=gen).tolist()
        quarter_turns = int(torch.randint(0, 4, (1,), generator=gen))
        dims = [d for d, flip, enabled in ((-1, flips[0], cfg.hflip), (-2, flips[1], cfg.vflip)) if flip and enabled]
        if dims:
            chip, valid = chip.flip(dims), valid.flip(dims)
        if cfg.rot90 and quarter_turns:
            chip, valid = chip.rot90(quarter_turns, (-2, -1)), valid.rot90(quarter_turns, (-2, -1))
    return chip.contiguous(), valid.contiguous()


class ShardDataset(Dataset):
    """Chips of a shard folder. Items are addressed ``(global_index, seed)``; ``seed < 0`` means no augmentation.

    Returns ``(image, valid)``: image (C, S, S) float32 normalised by the core's transform, valid (S, S) bool
    (False where every band equals the corpus' nodata value).
    """

    def __init__(self, shard_dir: str | Path, augment_cfg: AugmentConfig | None = None, normalize: bool = True) -> None:
        self.shard_dir = Path(shard_dir)
        self.index = read_index(self.shard_dir)
        self.contract = read_contract(self.shard_dir)
        check_shards(self.shard_dir, self.index, self.contract)
        self.augment_cfg = augment_cfg or AugmentConfig(size=int(self.index["chip_shape"][-1]))
        counts = [int(s["count"]) for s in self.index["shards"]]
        self.shard_names = [s["name"] for s in self.index["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.nodata = self.contract.nodata
        self._arrays: dict[int, np.ndarray] = {}  # opened lazily, per process (safe with DataLoader workers)
        self.normalize = self.contract.normalizer() if normalize else None

    @property
    def shard_counts(self) -> list[int]:
        return np.diff(self.offsets).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _array(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:
            self._arrays[shard] = np.load(self.shard_dir / f"{self.shard_names[shard]}.npy", mmap_mode="r")
        return self._arrays[shard]

    def raw(self, index: int) -> np.ndarray:
        """(C, H, W) raw DN of chip ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"chip {index} out of range for {len(self)} chips in {self.shard_dir}")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return np.asarray(self._array(shard)[index - self.offsets[shard]])

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        chip = torch.from_numpy(self.raw(index).astype(np.float32))
        if self.nodata is None:
            valid = torch.ones(chip.shape[-2:], dtype=torch.bool)
        else:
            valid = (chip != float(self.nodata)).any(dim=0)
        gen = torch.Generator().manual_seed(seed) if seed >= 0 else None
        chip, valid = augment(chip, valid, self.augment_cfg, gen)
        if self.normalize is not None:
            chip = self.normalize(chip)
        return chip, valid


def epoch_order(shard_counts: Sequence[int], seed: int, epoch: int, shuffle_buffer: int) -> np.ndarray:
    """Global chip order of one epoch: shuffled shard order, then a shuffle within consecutive buffer windows."""
    rng = np.random.default_rng([seed, epoch])
    offsets = np.concatenate([[0], np.cumsum(shard_counts)]).astype(np.int64)
    shards = rng.permutation(len(shard_counts))
    stream = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in shards]) if len(shards) else np.array([])
    buffer = max(1, int(shuffle_buffer))
    for start in range(0, len(stream), buffer):
        rng.shuffle(stream[start : start + buffer])
    return stream.astype(np.int64)


class ShardSampler(Sampler):
    """Yields ``(global_index, augmentation_seed)`` for one rank, starting at ``start`` samples into the epoch.

    Every rank gets the same number of samples: the epoch stream is cut to a multiple of ``world_size * batch_size``
    (``drop_last``) and rank r takes positions r, r + world_size, ...
    """

    def __init__(
        self,
        shard_counts: Sequence[int],
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1024,
        augment: bool = True,
    ) -> None:
        self.shard_counts = list(shard_counts)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.augment = augment
        self.epoch = 0
        self.start = 0
        total = sum(self.shard_counts)
        self.batches_per_rank = total // (world_size * batch_size)
        if self.batches_per_rank == 0:
            raise ValueError(
                f"{total} chips are fewer than one global batch ({world_size} ranks x {batch_size}): "
                "pack more chips or lower data.batch_size"
            )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the number of this rank's samples already consumed in it."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.shard_counts, self.seed, self.epoch, self.shuffle_buffer)
        used = self.batches_per_rank * self.batch_size * self.world_size
        positions = np.arange(self.rank, used, self.world_size)[self.start :]
        for position in positions.tolist():
            seed = sample_seed(self.seed, self.epoch, position) if self.augment else -1
            yield int(order[position]), seed


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit augmentation seed for one stream position, independent of workers and ranks."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(2, np.uint64)[0] >> np.uint64(1))
