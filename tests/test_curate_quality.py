"""Selection-quality metrics against hand-computed values and a brute-force reference."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from training.curate import quality
from training.curate.quality import nearest_selected_distance, selection_quality


def test_hand_computed_case():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])
    types = np.array(["water", "iwp", "iwp", "water"])
    low = np.array([True, False, False, True])
    got = selection_quality(x, np.array([True, True, False, False]), types, low)
    # distances to {x0, x1}: 0, 0, 5, 1 -> mean 1.5; p95 by linear interpolation = 1 + 0.85 * 4 = 4.4
    assert got["selected"] == 2
    assert got["coverage_mean"] == pytest.approx(1.5)
    assert got["coverage_p95"] == pytest.approx(4.4)
    assert got["balance_entropy"] == pytest.approx(1.0)  # one water, one iwp out of two types
    assert got["types_covered"] == 2
    assert got["low_information_share"] == pytest.approx(0.5)
    one_type = selection_quality(x, np.array([1, 2]), types, low)
    assert one_type["balance_entropy"] == 0.0 and one_type["types_covered"] == 1
    assert one_type["low_information_share"] == 0.0


def test_blocked_distances_equal_brute_force(monkeypatch):
    monkeypatch.setattr(quality, "QUERY_BLOCK", 7)
    monkeypatch.setattr(quality, "SELECTED_BLOCK", 5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((103, 6))
    chosen = rng.choice(103, 23, replace=False)
    expected = cdist(x, x[chosen]).min(axis=1)
    np.testing.assert_allclose(nearest_selected_distance(x, chosen), expected, atol=1e-6)
    three = np.repeat([0, 1, 2], [50, 50, 3])
    p = np.bincount(three[chosen], minlength=3) / len(chosen)
    p = p[p > 0]
    assert selection_quality(x, chosen, three)["balance_entropy"] == pytest.approx(
        -(p * np.log(p)).sum() / math.log(3))


def test_bad_selections_are_errors():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="empty"):
        selection_quality(x, np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        selection_quality(x, np.array([0, 4]))
    with pytest.raises(ValueError, match="scene_types has 3 rows"):
        selection_quality(x, np.array([0]), np.array([1, 2, 3]))
