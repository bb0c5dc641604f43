"""Typed schema of an evaluation recipe (``arctic_vit.config``); ``evaluation/recipes/defaults.yaml`` is the base the
recipes chain and is pinned equal to these defaults by tests/test_config.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from arctic_vit.config import ConfigModel

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]


class RecipeDataset(ConfigModel):
    card: str | None = Field(None, description="dataset card YAML (evaluation/datasets/cards/)")
    card_overrides: dict[str, Any] = Field({}, description="merged into the card, e.g. {root: /data/my_chips}")
    train_split: str = Field("train", description="split trained on")
    tune_split: str = Field("val", description="scored by every run; what an lr sweep chooses on")
    test_split: str = Field("test", description="scored once by final runs (else tune_split, named)")


class RecipeModel(ConfigModel):
    img_size: PositiveInt = Field(224, description="ViT input; chips cropped (train) / tiled (eval) to this size")
    pyramid_channels: PositiveInt = Field(256, description="simple feature pyramid width")
    decoder_channels: PositiveInt = Field(256, description="UPerNet decoder width")
    use_latlon: bool = Field(False, description="sin-cos lat/lon -> MLP added to every pyramid level")
    freeze_encoder: bool = Field(False, description="true: frozen ViT, train pyramid + head only")
    maskrcnn: dict[str, Any] = Field({}, description="instance task: torchvision MaskRCNN keyword arguments")


class RecipeBackbone(ConfigModel):
    weights: str = Field("hub", description="hub | none | local path; the CLI --weights wins")
    normalization: Literal["zscore", "native"] = Field("zscore", description="per-band z-score of train | native")
    arch: str | None = Field(None, description="replace the timm architecture of ImageNet/random backbones")
    rgb_bands: list[str] = Field(["red", "green", "blue"], description="what ImageNet models see, by band name")
    imagenet_all_bands: bool = Field(False, description="tile RGB kernels over every band")
    prithvi_num_heads: PositiveInt = Field(16, description="Prithvi encoder attention heads")


class RecipeTrain(ConfigModel):
    epochs: PositiveInt = Field(50, description="training epochs")
    batch_size: PositiveInt = Field(8, description="chips per step")
    crops_per_image: PositiveInt = Field(4, description="random crops per training chip per epoch")
    lr: PositiveFloat = Field(1.0e-4, description="peak learning rate")
    lr_sweep: list[PositiveFloat] | None = Field(None, description="compare picks one per backbone on tune_split")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.05, description="AdamW weight decay")
    layer_decay: Annotated[float, Field(gt=0, le=1)] = Field(0.75, description="layer-wise lr decay of ViT blocks")
    warmup_fraction: UnitFloat = Field(0.1, description="share of steps in linear warmup")
    flips: bool = Field(True, description="random flips")
    threads: PositiveInt = Field(8, description="torch CPU threads")
    device: str = Field("auto", description="auto (CUDA when present) | cpu | cuda | cuda:N; --device wins")


class RecipeEval(ConfigModel):
    score_threshold: UnitFloat = Field(0.5, description="instance predictions counted for object/detection F1")
    overlap: Annotated[int, Field(ge=0)] = Field(32, description="px between neighbouring evaluation tiles")
    merge_iou: UnitFloat = Field(0.5, description="instances of overlapping tiles merge at this IoU")
    panels: Annotated[int, Field(ge=0)] = Field(4, description="evaluation tiles kept for qualitative panels")


class RecipeOutput(ConfigModel):
    root: str = Field("outputs/evaluation", description="runs under <root>/<recipe>/<backbone>/seed<N>")
    save_model: bool = Field(True, description="final runs write <run>/model/ (evaluation.artefact)")


class RecipeConfig(ConfigModel):
    name: str | None = Field(None, description="recipe name (default: the file stem)")
    task: Literal["semantic", "instance"] = Field("semantic", description="semantic (UPerNet) | instance (Mask R-CNN)")
    dataset: RecipeDataset = Field(default_factory=RecipeDataset, description="card and splits")
    model: RecipeModel = Field(default_factory=RecipeModel, description="pyramid, decoder, heads")
    backbone: RecipeBackbone = Field(default_factory=RecipeBackbone, description="weights and normalisation")
    train: RecipeTrain = Field(default_factory=RecipeTrain, description="optimisation")
    eval: RecipeEval = Field(default_factory=RecipeEval, description="scoring")
    output: RecipeOutput = Field(default_factory=RecipeOutput, description="where runs go")
