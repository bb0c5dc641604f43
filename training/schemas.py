"""Typed configuration schemas of the training stages (``arctic_vit.config``): the schemas own the defaults.

YAML files under ``training/configs/`` hold only settings that differ from these defaults;
``python -m training.<stage> --show-config`` prints the resolved, validated result.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from arctic_vit.config import ConfigModel

PositiveInt = Annotated[int, Field(gt=0)]


class PackOptions(ConfigModel):
    out_dir: str = Field("outputs/shards", description="folder the shards and index are written to")
    manifest: str | None = Field(None, description="curation manifest.parquet (selected rows; corpus.json beside it)")
    chip_dir: str | None = Field(None, description="or a folder of JPEG/PNG/TIF chips")
    bands: list[str] | None = Field(None, description="chip folder: band names in stored order, e.g. [nir, green, red]")
    bit_depth: Annotated[int, Field(ge=1, le=32)] | None = Field(
        None, description="chip folder: required unless the chips are 8-bit image files")
    gsd_m: Annotated[float, Field(gt=0)] | None = Field(None, description="ground sample distance in metres")
    chip_size: PositiveInt | None = Field(None, description="null: native size (all must agree); N: resize to N x N")
    shard_size: PositiveInt = Field(1024, description="chips per shard")
    nodata: float | None = Field(0, description="pixel value (all bands) excluded from stats and loss; null: none")
    seed: int = Field(0, description="seed of the global permutation the chips are written in")
    workers: PositiveInt = Field(1, description="shards written in parallel processes")


class PackConfig(ConfigModel):
    pack: PackOptions = Field(default_factory=PackOptions, description="python -m training.pack")


class ExportOptions(ConfigModel):
    checkpoint: str | None = Field(None, description="a checkpoint file, or a folder (its newest checkpoint-*.pt)")
    out_dir: str = Field("outputs/export", description="hub folder written")
    model_name: str | None = Field(None, description="null: the checkpoint's model.encoder")


class ExportConfig(ConfigModel):
    export: ExportOptions = Field(default_factory=ExportOptions, description="python -m training.export")


UnitFloat = Annotated[float, Field(ge=0, le=1)]
Pair = Annotated[list[float], Field(min_length=2, max_length=2)]


class PretrainData(ConfigModel):
    shards: str = Field("outputs/shards", description="folder written by `python -m training.pack`")
    img_size: PositiveInt = Field(224, description="chip side fed to the model (pixels)")
    batch_size: PositiveInt = Field(64, description="per rank and micro-step")
    num_workers: Annotated[int, Field(ge=0)] = Field(4, description="DataLoader worker processes")
    prefetch_factor: PositiveInt = Field(2, description="batches prefetched per worker")
    shuffle_buffer: PositiveInt = Field(1024, description="chips shuffled within windows of the shard stream")
    augment: bool = Field(True, description="random resized crop + flips + 90-degree rotations")
    scale: Pair = Field([0.2, 1.0], description="random-resized-crop area range")
    hflip: bool = Field(True, description="random horizontal flips")
    vflip: bool = Field(True, description="random vertical flips")
    rot90: bool = Field(True, description="random 90-degree rotations")


class PretrainModel(ConfigModel):
    encoder: str = Field("arctic_mae_vit_large_patch16_224", description="timm name of the encoder")
    decoder_embed_dim: PositiveInt = Field(512, description="MAE decoder width")
    decoder_depth: PositiveInt = Field(8, description="MAE decoder blocks")
    decoder_num_heads: PositiveInt = Field(16, description="MAE decoder attention heads")
    mask_ratio: Annotated[float, Field(gt=0, lt=1)] = Field(0.75, description="share of patches masked")
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets")
    min_valid_fraction: UnitFloat = Field(0.5, description="a masked patch under this valid fraction does not count")
    drop_path_rate: Annotated[float, Field(ge=0, lt=1)] = Field(0.0, description="encoder stochastic depth")


class PretrainOptim(ConfigModel):
    epochs: PositiveInt = Field(800, description="epochs the schedule spans")
    warmup_epochs: Annotated[float, Field(ge=0)] = Field(40, description="linear warmup length (epochs)")
    blr: Annotated[float, Field(gt=0)] = Field(1.5e-4, description="lr = blr x effective batch / 256")
    lr: Annotated[float, Field(gt=0)] | None = Field(None, description="set to override the scaling rule")
    min_lr: Annotated[float, Field(ge=0)] = Field(0.0, description="cosine floor")
    weight_decay: Annotated[float, Field(ge=0)] = Field(0.05, description="none on norms and biases")
    betas: Pair = Field([0.9, 0.95], description="AdamW betas")
    effective_batch: PositiveInt | None = Field(None, description="accumulation = effective_batch / (batch x ranks)")
    accum_iter: PositiveInt = Field(1, description="used when effective_batch is null")
    clip_grad: Annotated[float, Field(gt=0)] | None = Field(None, description="max grad norm, null = off")


class PretrainRun(ConfigModel):
    out_dir: str = Field("outputs/pretrain", description="checkpoints, logs, vis, summary")
    seed: int = Field(0, description="seed of model init, masking and data order")
    device: str = Field("auto", description="auto: cuda:<LOCAL_RANK> when CUDA exists, else cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="autocast dtype; auto by device")
    compile: bool = Field(False, description="torch.compile the training model")
    deterministic: bool = Field(False, description="GPU deterministic algorithms (slower; PRETRAIN.md)")
    attention: Literal["auto", "fused", "math"] = Field("auto", description="auto: math for bf16 on CPU, else fused")
    threads: PositiveInt | None = Field(None, description="torch.set_num_threads per process")
    max_steps: PositiveInt | None = Field(None, description="stop early (the schedule still spans all epochs)")
    resume: bool | str = Field(True, description="true: newest checkpoint in <out_dir>/checkpoints; a path; false")
    allow_reshape: bool = Field(False, description="resume with another world size / effective batch")
    ckpt_every_steps: PositiveInt = Field(1000, description="checkpoint period (steps)")
    keep_last: PositiveInt = Field(3, description="checkpoints kept")
    log_every: PositiveInt = Field(10, description="log period (steps)")
    vis_every: Annotated[int, Field(ge=0)] | None = Field(1000, description="reconstruction PNG period; 0/null: off")
    vis_count: PositiveInt = Field(4, description="chips in the reconstruction PNG")
    progress: bool = Field(True, description="progress bar")
    kill_at_step: PositiveInt | None = Field(None, description="fault injection: SIGKILL rank 0 after this step")


class PretrainConfig(ConfigModel):
    data: PretrainData = Field(default_factory=PretrainData, description="shards and augmentation")
    model: PretrainModel = Field(default_factory=PretrainModel, description="MAE encoder and decoder")
    optim: PretrainOptim = Field(default_factory=PretrainOptim, description="AdamW + warmup-cosine schedule")
    run: PretrainRun = Field(default_factory=PretrainRun, description="devices, checkpoints, logging")
