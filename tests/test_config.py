"""The typed configuration mechanism (arctic_vit.config) and the training stage schemas."""

from __future__ import annotations

import pickle

import pytest
import yaml
from pydantic import Field

from arctic_vit.config import ConfigError, ConfigModel, load_config, validate_config, write_resolved
from training.schemas import ExportConfig, PackConfig, PretrainConfig


class Optim(ConfigModel):
    lr: float = Field(1e-3, gt=0, description="learning rate")
    betas: list[float] = Field([0.9, 0.95], description="Adam betas")
    warmup: int | None = Field(None, ge=0, description="warmup steps")


class Toy(ConfigModel):
    optim: Optim = Field(default_factory=Optim)
    budget: int = Field(10, gt=0, description="chips selected")


def test_overrides_are_typed_by_the_schema(tmp_path):
    cfg = load_config(overrides=["optim.lr=1e-4", "optim.betas=[0.5, 0.6]", "optim.warmup=null", "budget=7"],
                      schema=Toy)
    # YAML 1.1 reads '1e-4' as a string; the schema makes it the float
    assert yaml.safe_load("1e-4") == "1e-4" and cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.optim.betas == [0.5, 0.6] and cfg.optim.warmup is None and cfg.budget == 7
    assert load_config(schema=Toy) == Toy()  # defaults from the schema


def test_defaults_chain_later_files_and_overrides_win(tmp_path):
    (tmp_path / "base.yaml").write_text("budget: 3\noptim: {lr: 0.5}\n")
    (tmp_path / "child.yaml").write_text("defaults: base.yaml\noptim: {warmup: 4}\n")
    (tmp_path / "last.yaml").write_text("budget: 5\n")
    cfg = load_config(tmp_path / "child.yaml", tmp_path / "last.yaml", overrides=["optim.lr=0.25"], schema=Toy)
    assert (cfg.budget, cfg.optim.lr, cfg.optim.warmup, cfg.optim.betas) == (5, 0.25, 4, [0.9, 0.95])
    (tmp_path / "loop.yaml").write_text("defaults: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


def test_errors_are_one_line_naming_key_and_source(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("budget: -3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, schema=Toy)
    assert str(error.value) == f"budget: must be > 0, got -3 (config {path})"
    with pytest.raises(ConfigError) as error:
        load_config(path, overrides=["budget=2", "optim.lrr=1"], schema=Toy)
    assert str(error.value) == f"optim.lrr: unknown key; did you mean 'optim.lr'? (config {path} + overrides)"
    with pytest.raises(ConfigError, match=r"^optim\.lr: input should be a valid number.*got 'fast'"):
        validate_config(Toy, {"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"zzz: unknown key; known keys: \['budget', 'optim'\]"):
        validate_config(Toy, {"zzz": 1})
    assert "\n" not in str(error.value)


def test_config_pickles_and_resolved_round_trips(tmp_path):
    cfg = load_config(overrides=["optim.lr=2e-4"], schema=Toy)
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # travels to torchrun / multiprocessing workers
    path = write_resolved(cfg, tmp_path)
    assert path.name == "resolved_config.yaml"
    assert load_config(path, schema=Toy) == cfg
    with pytest.raises(ValueError, match="budget"):
        cfg.budget = 0  # assignments validated too


def test_stage_yaml_files_hold_only_non_defaults():
    """The schema owns the defaults: a shipped stage YAML restating a default would be a second owner."""
    for schema, path in ((PackConfig, "training/configs/pretrain_pack.yaml"),
                         (ExportConfig, "training/configs/pretrain_export.yaml")):
        raw, defaults = load_config(path), schema().model_dump()
        for section, values in raw.items():
            for key, value in (values or {}).items():
                assert value != defaults[section][key], f"{path}: {section}.{key} restates the schema default"
        load_config(path, schema=schema)


def test_stage_cli_show_config_and_one_line_error(capsys):
    from training import pack

    with pytest.raises(SystemExit) as done:
        pack.main(["--show-config", "pack.seed=3"])
    assert done.value.code == 0 and yaml.safe_load(capsys.readouterr().out)["pack"]["seed"] == 3
    with pytest.raises(SystemExit) as done:
        pack.main(["pack.shard_size=0"])
    assert done.value.code == 2
    assert "pack.shard_size: must be > 0, got 0" in capsys.readouterr().err.splitlines()[-1]


def test_pretrain_defaults_yaml_equals_the_schema_and_every_recipe_validates():
    """pretrain.yaml is the ``defaults:`` base the recipes chain (and dict readers load): pinned to the schema."""
    assert load_config("training/configs/pretrain.yaml") == PretrainConfig().model_dump(mode="json")
    for name in ("pretrain_demo", "pretrain_small", "pretrain_maple", "pretrain_vit_large_paper"):
        cfg = load_config(f"training/configs/{name}.yaml", schema=PretrainConfig)
        assert isinstance(cfg.data.batch_size, int) and 0 < cfg.model.mask_ratio < 1
    with pytest.raises(ConfigError, match=r"^run\.precision: input should be 'auto', 'fp32', 'bf16' or 'fp16'"):
        load_config("training/configs/pretrain_demo.yaml", overrides=["run.precision=bf15"], schema=PretrainConfig)


def test_recipe_defaults_yaml_equals_the_schema_and_every_recipe_validates():
    from pathlib import Path

    from evaluation.recipe_schema import RecipeConfig

    defaults = RecipeConfig().model_dump(mode="json")
    assert defaults.pop("name") is None
    assert load_config("evaluation/recipes/defaults.yaml") == defaults
    recipes = sorted(Path("evaluation/recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for path in recipes:
        cfg = load_config(path, overrides=["train.lr=3e-4"], schema=RecipeConfig)
        assert cfg.train.lr == pytest.approx(3e-4) and cfg.task in ("semantic", "instance")


def test_curate_show_config_validates_and_prints(capsys, tmp_path):
    from training.curate.__main__ import main

    main(["--show-config", f"input.path={tmp_path}", f"out={tmp_path / 'out'}", "select.budget=7"])
    assert yaml.safe_load(capsys.readouterr().out)["select"]["budget"] == 7
    with pytest.raises(SystemExit) as done:
        main(["--show-config", f"input.path={tmp_path}", f"out={tmp_path / 'out'}", "select.budgt=7"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "select.budgt: unknown key; did you mean 'select.budget'?" in err


def test_curate_yaml_equals_the_schema_and_validation_fills_defaults():
    """curate.yaml (the CLI's default, with comments) is pinned to CurateConfig: the schema owns the defaults."""
    from training.curate.validate import validate_config as validate_curation
    from training.schemas import CurateConfig

    assert load_config("training/configs/curate.yaml") == CurateConfig().model_dump()
    cfg = validate_curation({"input": {"path": "x"}, "select": {"budget": 5}, "cluster": {"ap": {"damping": 0.9}}})
    expected = CurateConfig().model_dump()
    expected["input"]["path"], expected["select"]["budget"], expected["cluster"]["ap"]["damping"] = "x", 5, 0.9
    assert cfg == expected
    assert validate_curation(cfg) == cfg  # the validated dict validates to itself (what the pipeline reads)
    from training.curate.select import WITHIN

    assert CurateConfig.model_fields["select"].annotation.model_fields["within"].annotation.__args__ == WITHIN
