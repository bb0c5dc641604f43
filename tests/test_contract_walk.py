"""The corpus contract walks from a synthetic archive to a plain-timm load unchanged (issue 12 A).

synthetic archive (training.synthetic) -> curate (corpus.json beside the manifest) -> pack (shards/corpus.json, with
statistics) -> 2 pretraining steps (checkpoint['corpus']) -> export (config.json['corpus'], pretrained_cfg) ->
``timm.create_model('local-dir:...')`` and the arctic registry. At each hop the ``CorpusContract`` read from the
artefact is compared with the one before: curation's facts (bands, bit depth, GSD, nodata) never change, pack adds the
statistics, and nothing after pack changes anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch

from arctic_vit.corpus import CONTRACT_FILENAME, CorpusContract
from tests.test_pretrain import CONFIGS, tiny_overrides
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.export import export_checkpoint
from training.pack import pack
from training.pretrain import pretrain
from training.shards import read_contract

torch.set_num_threads(1)


def without_stats(contract: CorpusContract) -> CorpusContract:
    return dataclasses.replace(contract, mean=None, std=None)


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict[str, Path]:
    from training.curate import run_curation
    from training.synthetic import generate_archive

    root = tmp_path_factory.mktemp("walk")
    generate_archive(root / "archive", n_scenes=2, size=256, seed=0, labels=False, zone_size=64)
    cfg = load_config(CONFIGS / "curate.yaml", overrides=[
        f"input.path={root / 'archive'}", f"out={root / 'curate'}", "tiling.chip_size=64", "tiling.stride=64",
        "select.budget=12", "dask.scheduler=synchronous", "report.figures=false", "progress=false"])
    manifest = run_curation(cfg)
    paths = {"root": root, "manifest": Path(manifest), "curated": Path(manifest).parent / CONTRACT_FILENAME}
    pack(root / "shards", manifest=manifest, shard_size=4)
    run = load_config(CONFIGS / "pretrain_demo.yaml", overrides=tiny_overrides(
        root / "shards", root / "run", **{"optim.epochs": 1, "optim.accum_iter": 1, "run.max_steps": 2,
                                          "run.vis_every": 0, "data.batch_size": 2}))
    paths["checkpoint"] = Path(pretrain(run)["checkpoint"])
    paths["export"] = export_checkpoint(paths["checkpoint"], root / "export")
    return paths


def test_curation_to_pack_keeps_the_facts_and_adds_statistics(walk):
    curated = CorpusContract.read(walk["curated"])  # written by training.curate beside the manifest
    assert not curated.has_stats  # curation knows bands, bit depth, GSD, nodata; pack measures mean/std
    shards = read_contract(walk["root"] / "shards")
    assert without_stats(shards) == curated
    assert shards.bands == ("blue", "green", "red", "nir") and shards.bit_depth == 11


def test_pack_to_checkpoint_to_export_to_timm_is_one_contract(walk):
    shards = read_contract(walk["root"] / "shards")
    checkpoint = CorpusContract.from_dict(load_checkpoint(walk["checkpoint"])["corpus"], str(walk["checkpoint"]))
    assert checkpoint == shards

    config_path = walk["export"] / "config.json"
    assert "corpus" in json.loads(config_path.read_text())  # the export keeps the contract once, under 'corpus'
    exported = CorpusContract.read(config_path)
    assert exported == checkpoint

    plain = timm.create_model(f"local-dir:{walk['export']}")  # stock timm: no arctic code needed to read it
    plain_cfg = plain.pretrained_cfg  # timm's own fields: the contract's statistics, in its band order
    assert (tuple(plain_cfg["mean"]), tuple(plain_cfg["std"])) == (exported.mean, exported.std)
    assert tuple(plain_cfg["input_size"]) == (len(exported.bands), 32, 32)
    if "bit_depth" in plain_cfg:  # the core may also expose the whole contract to plain timm
        assert CorpusContract.from_pretrained_cfg(plain_cfg) == dataclasses.replace(exported, nodata=None)
    import arctic_vit

    ours = timm.create_model("arctic_mae_vit_tiny_patch16_224", pretrained=True, img_size=32,
                             pretrained_cfg_overlay=dict(file=str(walk["export"])))
    # pretrained_cfg has no nodata field: every other fact is the contract's, unchanged
    assert CorpusContract.from_pretrained_cfg(ours.pretrained_cfg) == dataclasses.replace(exported, nodata=None)
    torch.testing.assert_close(ours.state_dict()["patch_embed.proj.weight"],
                               load_checkpoint(walk["checkpoint"])["model"]["patch_embed.proj.weight"])
    image = torch.randint(0, 2048, (1, 4, 32, 32)).float()
    normalize = arctic_vit.normalize_for(ours)
    expected = (image / 2047 - torch.tensor(shards.mean).view(1, 4, 1, 1)) / torch.tensor(shards.std).view(1, 4, 1, 1)
    torch.testing.assert_close(normalize(image), expected)
