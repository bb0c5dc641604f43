"""The corpus contract: strict round trips, errors that name the field and the file, one normaliser."""

from __future__ import annotations

import json

import pytest
import torch

from arctic_vit.corpus import ContractError, CorpusContract, normalize_for


def test_round_trip_through_file_is_identical(tmp_path):
    contract = CorpusContract(("blue", "green", "red", "nir"), 11, (0.1, 0.2, 0.3, 0.4), (0.05, 0.06, 0.07, 0.08),
                              gsd_m=0.5, nodata=0)
    path = contract.write(tmp_path / "corpus.json")
    assert CorpusContract.read(path) == contract
    assert CorpusContract.read(tmp_path) == contract  # a folder holding corpus.json
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bands": ["blue"]}, "bit_depth"),
        ({"bit_depth": 11}, "bands"),
        ({"bands": ["blue", "infrared"], "bit_depth": 11}, "infrared"),
        ({"bands": ["blue"], "bit_depth": 12.5}, "bit_depth"),
        ({"bands": ["blue"], "bit_depth": 32}, "bit_depth"),
        ({"bands": ["blue", "red"], "bit_depth": 11, "mean": [0.1], "std": [0.1]}, "mean has 1 values"),
        ({"bands": ["blue"], "bit_depth": 11, "mean": [0.1], "std": [0.0]}, "std must be positive"),
        ({"bands": ["blue"], "bit_depth": 11, "mean": [0.1]}, "measured together"),
        ({"bands": ["blue"], "bit_depth": 11, "scale": 2}, "unknown"),
    ],
)
def test_bad_contract_names_the_field_and_source(data, message):
    with pytest.raises(ContractError, match=message) as info:
        CorpusContract.from_dict(data, source="shards/corpus.json")
    assert "shards/corpus.json" in str(info.value)


def test_normaliser_hand_computed():
    contract = CorpusContract(("red", "nir"), 11, (0.5, 0.25), (0.25, 0.5))
    x = torch.tensor([2047.0, 0.0]).view(1, 2, 1, 1)
    out = contract.normalizer()(x).flatten().tolist()
    assert out == pytest.approx([(1.0 - 0.5) / 0.25, (0.0 - 0.25) / 0.5])


def test_normaliser_needs_measured_stats():
    with pytest.raises(ContractError, match="no mean/std"):
        CorpusContract(("red",), 11).normalizer()


def test_check_same_names_what_differs():
    a = CorpusContract(("red", "nir"), 11)
    a.check_same(CorpusContract(("red", "nir"), 11), "shard-00001")
    with pytest.raises(ContractError, match="shard-00001: corpus bit_depth 8"):
        a.check_same(CorpusContract(("red", "nir"), 8), "shard-00001")


def test_normalize_for_never_guesses_the_bit_depth():
    cfg = {"mean": (0.5,), "std": (0.25,)}
    with pytest.raises(ContractError, match="bit_depth"):
        normalize_for(cfg)
    assert normalize_for(cfg, bit_depth=8).max_value == 255
    cfg = {"mean": (0.5,), "std": (0.25,), "bands": ("red",), "bit_depth": 11}
    assert normalize_for(cfg).max_value == 2047


def test_contract_json_is_plain(tmp_path):
    contract = CorpusContract(("nir", "green", "red"), 8, (0.1, 0.2, 0.3), (0.1, 0.1, 0.1))
    data = json.loads(contract.write(tmp_path / "c.json").read_text())
    assert data["bands"] == ["nir", "green", "red"] and data["bit_depth"] == 8 and data["version"] == 1
