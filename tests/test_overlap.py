"""evaluation.overlap: tile grid, blend weights, seam-free blending, nodata handling, merging across tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.overlap import (
    MIN_WEIGHT,
    TileInstance,
    blend_weights,
    merge_instances,
    predict_tiled,
    tile_origins,
)


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [
    (1, 1, 8, 2), (7, 9, 8, 3), (8, 8, 8, 3), (9, 8, 8, 3), (101, 257, 32, 8), (333, 65, 64, 17), (224, 1000, 224, 0),
])
def test_tile_origins_cover_and_overlap(height, width, tile, overlap):
    origins = tile_origins(height, width, tile, overlap)
    rows, cols = sorted({r for r, _ in origins}), sorted({c for _, c in origins})
    assert origins == [(r, c) for r in rows for c in cols]  # row-major grid
    for starts, size in ((rows, height), (cols, width)):
        assert starts[0] == 0
        if size <= tile:
            assert starts == [0]
            continue
        assert starts[-1] == size - tile  # flush with the edge, never past it
        steps = np.diff(starts)
        assert (tile - steps >= overlap).all()  # neighbours overlap by >= overlap
        assert steps.max() - steps.min() <= 1  # spread evenly
    covered = np.zeros((max(height, tile), max(width, tile)), dtype=bool)
    for r, c in origins:
        covered[r : r + tile, c : c + tile] = True
    assert covered[:height, :width].all()


def test_tile_origins_reject_bad_arguments():
    with pytest.raises(ValueError, match="overlap < tile"):
        tile_origins(100, 100, 16, 16)


def test_blend_weights_hand_computed_profile():
    w = blend_weights(8, 4, margin=1)
    profile = np.array([MIN_WEIGHT, 0.25, 0.75, 1, 1, 0.75, 0.25, MIN_WEIGHT])  # sin²(π/6), sin²(π/3)
    np.testing.assert_allclose(w, np.outer(profile, profile), rtol=1e-5)
    assert w.dtype == np.float32
    default = blend_weights(224, 64)
    assert default.shape == (224, 224) and (default > 0).all() and default.max() == 1.0
    centre_row = default[112]
    assert (np.diff(centre_row[:112]) >= 0).all()  # falling towards the edges


def test_blend_weights_normalise_to_one_where_tiles_overlap():
    """A constant model through the blending gives back its constant exactly: Σ wᵢ p / Σ wᵢ = p everywhere."""
    constant = torch.tensor([0.3, -1.2, 2.0])

    def forward(x):
        return constant[None, :, None, None].expand(len(x), 3, *x.shape[-2:])

    out = predict_tiled(forward, torch.rand(2, 97, 131), tile=32, overlap=12)
    expected = torch.softmax(constant, 0)[:, None, None].expand(3, 97, 131)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # and the normalised weights of every tile covering a pixel sum to exactly one
    origins, w = tile_origins(97, 131, 32, 12), blend_weights(32, 12)
    total = np.zeros((97, 131), dtype=np.float64)
    for r, c in origins:
        total[r : r + 32, c : c + 32] += w
    share = np.zeros_like(total)
    for r, c in origins:
        share[r : r + 32, c : c + 32] += w / total[r : r + 32, c : c + 32]
    np.testing.assert_allclose(share, 1.0, atol=1e-12)
    margin = 12 // 4  # away from the image border, every pixel lies in some tile's trusted (non-margin) part
    assert total[margin:-margin, margin:-margin].min() >= np.sin(np.pi / 2 / (12 - 2 * margin + 1)) ** 4 * 0.999


def _conv(seed: int = 0, kernel: int = 5) -> torch.nn.Conv2d:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 4, kernel, padding=kernel // 2)
    conv.weight.data *= 3.0
    return conv.eval()


def test_seam_tiled_equals_whole_image_for_a_translation_equivariant_model():
    conv = _conv()
    image = torch.rand(3, 77, 101)
    with torch.no_grad():
        whole = torch.softmax(conv(image[None]), 1)[0]
    tiled = predict_tiled(conv, image, tile=32, overlap=16, batch_size=3)
    assert (tiled - whole).abs().max() < 1e-5
    # the same tiles without the edge margin do show seams: the test can fail
    no_margin = predict_tiled(conv, image, tile=32, overlap=16, margin=0)
    assert (no_margin - whole).abs().max() > 1e-3


def test_nodata_pixels_never_feed_the_model_and_get_zero():
    conv = _conv(1)
    image = torch.rand(3, 70, 90) * 2000
    valid = torch.ones(70, 90, dtype=torch.bool)
    valid[:, :40] = False  # a collar wider than a tile: whole tiles without data
    valid[50:55, 60:70] = False
    calls = []

    def forward(x):
        calls.append(len(x))
        return conv(x / 2000)

    a = predict_tiled(forward, image, tile=24, overlap=8, valid=valid)
    poisoned = image.clone()
    poisoned[:, ~valid] = 1e6
    b = predict_tiled(forward, poisoned, tile=24, overlap=8, valid=valid)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a[:, ~valid] == 0).all()
    torch.testing.assert_close(a[:, valid].sum(0), torch.ones(int(valid.sum())), atol=1e-5, rtol=0)
    all_tiles = tile_origins(70, 90, 24, 8)
    run = [(r, c) for r, c in all_tiles if valid[r : r + 24, c : c + 24].any()]
    assert sum(calls) == 2 * len(run) < 2 * len(all_tiles)  # all-nodata tiles are never run


def test_image_smaller_than_a_tile_is_reflect_padded():
    conv = _conv(2, kernel=3)
    image = torch.rand(3, 10, 13)
    out = predict_tiled(conv, image, tile=16, overlap=4)
    padded = torch.nn.functional.pad(image[None], (0, 3, 0, 6), mode="reflect")
    with torch.no_grad():
        expected = torch.softmax(conv(padded), 1)[0, :, :10, :13]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def _crop_instance(mask: np.ndarray, r0: int, c0: int, r1: int, c1: int, label: int, score: float):
    """The part of ``mask`` one tile [r0:r1, c0:c1] sees, as a TileInstance in its bounding box (None if empty)."""
    part = np.zeros_like(mask)
    part[r0:r1, c0:c1] = mask[r0:r1, c0:c1]
    rows, cols = np.where(part)
    if len(rows) == 0:
        return None
    box = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    return TileInstance(int(box[0]), int(box[1]), part[box[0] : box[2], box[1] : box[3]], label, score)


def _tiles_view(objects, tiles, scores):
    out = []
    for t, (r0, c0, r1, c1) in enumerate(tiles):
        for mask, label in objects:
            inst = _crop_instance(mask, r0, c0, r1, c1, label, scores[t])
            if inst is not None:
                out.append(inst)
    return out


def _full(inst: TileInstance, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[inst.row : inst.box[2], inst.col : inst.box[3]] = inst.mask
    return out


def test_object_crossing_a_seam_merges_into_one():
    yy, xx = np.mgrid[:60, :100]
    disc = (yy - 30) ** 2 + (xx - 50) ** 2 <= 20**2  # crosses both tiles' edges (44 and 56)
    tiles = [(0, 0, 60, 56), (0, 44, 60, 100)]
    parts = _tiles_view([(disc, 1)], tiles, scores=[0.6, 0.9])
    assert len(parts) == 2
    whole_iou = (_full(parts[0], disc.shape) & _full(parts[1], disc.shape)).sum() / disc.sum()
    assert whole_iou < 0.5  # a whole-mask IoU rule would keep them apart
    merged = merge_instances(parts)
    assert len(merged) == 1
    np.testing.assert_array_equal(_full(merged[0], disc.shape), disc)
    assert merged[0].score == 0.9 and merged[0].label == 1


def test_two_adjacent_objects_stay_two_and_labels_do_not_mix():
    a = np.zeros((60, 100), dtype=bool)
    b = np.zeros_like(a)
    a[10:50, 30:50] = True
    b[10:50, 50:70] = True  # touching a along column 50, both inside the overlap columns 40..60
    c = np.zeros_like(a)
    c[20:30, 42:58] = True  # same pixels region as a/b but another class
    tiles = [(0, 0, 60, 60), (0, 40, 60, 100)]
    merged = merge_instances(_tiles_view([(a, 1), (b, 1)], tiles, scores=[0.5, 0.7]))
    assert len(merged) == 2
    masks = sorted((_full(m, a.shape) for m in merged), key=lambda m: np.where(m)[1].min())
    np.testing.assert_array_equal(masks[0], a)
    np.testing.assert_array_equal(masks[1], b)
    assert len(merge_instances(_tiles_view([(a, 1), (c, 2)], tiles, scores=[0.5, 0.7]))) == 2


def test_object_spanning_three_tiles_merges_transitively():
    band = np.zeros((40, 160), dtype=bool)
    band[15:25, 5:155] = True
    tiles = [(0, 0, 40, 64), (0, 48, 40, 112), (0, 96, 40, 160)]
    parts = _tiles_view([(band, 3)], tiles, scores=[0.2, 0.4, 0.3])
    merged = merge_instances(parts)
    assert len(parts) == 3 and len(merged) == 1
    np.testing.assert_array_equal(_full(merged[0], band.shape), band)
    assert merged[0].score == 0.4
