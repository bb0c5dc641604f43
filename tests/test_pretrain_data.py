"""training.shards loader: deterministic shuffles, rank/worker splits, resumable positions, aligned augmentations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.test_pack import make_chip_folder
from training.pack import pack
from training.shards import AugmentConfig, ShardDataset, ShardSampler, augment, epoch_order, read_contract

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    make_chip_folder(root / "chips", count=12, size=40)
    pack(root / "shards", chip_dir=root / "chips", bands=["nir", "green", "red"], shard_size=5)
    return root / "shards"


def test_epoch_order_shuffles_shards_and_buffer_deterministically():
    counts = [5, 5, 5, 2]
    first = epoch_order(counts, seed=3, epoch=0, shuffle_buffer=4)
    assert sorted(first.tolist()) == list(range(17))
    assert np.array_equal(first, epoch_order(counts, seed=3, epoch=0, shuffle_buffer=4))
    assert not np.array_equal(first, epoch_order(counts, seed=3, epoch=1, shuffle_buffer=4))
    # with a buffer of 1 the stream is whole shards in a shuffled order: sequential reads
    unbuffered = epoch_order(counts, seed=3, epoch=0, shuffle_buffer=1).tolist()
    starts = [0, 5, 10, 15]
    blocks, i = [], 0
    while i < len(unbuffered):
        shard = starts.index(unbuffered[i])
        blocks.append(shard)
        assert unbuffered[i : i + counts[shard]] == list(range(starts[shard], starts[shard] + counts[shard]))
        i += counts[shard]
    assert sorted(blocks) == [0, 1, 2, 3]


def test_ranks_split_the_epoch_without_overlap_and_equally():
    counts = [7, 7, 3]  # 17 chips, 2 ranks x batch 3 -> 2 batches per rank, 12 chips used
    samplers = [ShardSampler(counts, batch_size=3, seed=0, rank=r, world_size=2) for r in range(2)]
    taken = [[index for index, _ in s] for s in samplers]
    assert len(taken[0]) == len(taken[1]) == 6
    assert not set(taken[0]) & set(taken[1])
    order = epoch_order(counts, 0, 0, 1024)
    assert sorted(taken[0] + taken[1]) == sorted(order[:12].tolist())
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardSampler([3], batch_size=2, world_size=2)


def test_resume_position_continues_the_same_stream():
    sampler = ShardSampler([10, 10], batch_size=2, seed=5)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.set_epoch(1, start=6)
    assert list(sampler) == full[6:] and len(sampler) == len(full) - 6


def test_batches_identical_for_any_worker_count(shards):
    dataset = ShardDataset(shards, AugmentConfig(size=32))

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = ShardSampler(dataset.shard_counts, batch_size=4, seed=1, shuffle_buffer=3)
        sampler.set_epoch(2)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers, drop_last=True)
        return [images for images, _ in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 3
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)
    assert serial[0].shape == (4, 3, 32, 32) and serial[0].dtype == torch.float32


def test_normalisation_uses_corpus_stats(shards):
    dataset = ShardDataset(shards, AugmentConfig(size=40))
    raw = ShardDataset(shards, AugmentConfig(size=40), normalize=False)
    image, valid = dataset[(0, -1)]
    raw_image, _ = raw[(0, -1)]
    contract = read_contract(shards)
    expected = ((raw_image / 255 - torch.tensor(contract.mean).view(3, 1, 1))
                / torch.tensor(contract.std).view(3, 1, 1))
    torch.testing.assert_close(image, expected)
    assert not valid[:10, :10].any() and valid[10:, 10:].all()  # the packed chips' nodata corner


def test_augmentations_move_the_nodata_mask_with_the_pixels():
    chip = torch.zeros(2, 16, 16)
    chip[:, 4:, 4:] = torch.arange(144, dtype=torch.float32).view(12, 12) + 1
    valid = (chip != 0).any(0)
    cfg = AugmentConfig(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    seen = set()
    for seed in range(12):
        out, out_valid = augment(chip, valid, cfg, torch.Generator().manual_seed(seed))
        assert torch.equal(out_valid, (out != 0).any(0))
        seen.add(tuple(out[0].flatten().tolist()))
    assert len(seen) > 3  # flips and rotations really vary
    cropped, cropped_valid = augment(chip, valid, AugmentConfig(size=8, scale=(0.2, 0.5)), torch.Generator())
    assert cropped.shape == (2, 8, 8) and cropped_valid.shape == (8, 8)


def test_batches_mix_scenes_although_chips_arrive_in_scene_order(tmp_path):
    """800 chips of 200 scenes listed scene by scene (as a manifest lists them), shards of 32 and a shuffle buffer of
    one shard (what made a batch a handful of scenes before): every batch of 16 spans >= 0.8 x 16 scenes."""
    rng = np.random.default_rng(0)
    chips = tmp_path / "chips"
    chips.mkdir()
    for scene in range(200):
        for chip in range(4):
            Image.fromarray(rng.integers(1, 255, (8, 8, 3), dtype=np.uint8)).save(chips / f"s{scene:03d}_{chip}.png")
    pack(tmp_path / "shards", chip_dir=chips, bands=["nir", "green", "red"], shard_size=32)
    table = pd.concat([pd.read_parquet(tmp_path / "shards" / f"shard-{i:05d}.parquet") for i in range(25)])
    scene_of = table["chip_id"].str[:4].to_numpy()  # global chip index -> scene

    def epoch(epoch: int, start: int = 0) -> list[int]:
        sampler = ShardSampler([32] * 25, batch_size=16, seed=3, shuffle_buffer=32)
        sampler.set_epoch(epoch, start)
        return [index for index, _ in sampler]

    order = epoch(0)
    batches = [order[i : i + 16] for i in range(0, len(order), 16)]
    distinct = [len(set(scene_of[b])) for b in batches]
    assert len(batches) == 50 and min(distinct) >= 0.8 * min(16, 200), distinct
    in_scene_order = np.sort(scene_of)  # what packing in manifest order gave: at most 32 / 4 = 8 scenes a batch
    assert max(len(set(in_scene_order[b])) for b in batches) <= 8
    assert epoch(0) == order and epoch(0, start=48) == order[48:]  # deterministic and resumable mid-epoch
    assert epoch(1) != order
