"""Typed configuration schemas of the training stages (``arctic_vit.config``): the schemas own the defaults.

YAML files under ``training/configs/`` hold only settings that differ from these defaults;
``python -m training.<stage> --show-config`` prints the resolved, validated result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictBool

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


# --- curation (python -m training.curate). Validated on the client; the Dask workers get the validated config as a
# plain dict (``model_dump``): unpickling a model there would import this module, arctic_vit and torch.

def _band_list(value: str) -> str:
    from arctic_vit.bands import validate_bands

    return ",".join(validate_bands(value))


def _dask_scheduler(value: str) -> str:
    if value in ("local", "synchronous", "sync", "none") or "://" in value:
        return value
    raise ValueError(f"must be 'local', 'synchronous' or an address tcp://host:8786, got {value!r}")


def _auto_or(kind: str, check: Callable[[Any], bool]) -> Callable[[Any], Any]:
    """A validator accepting 'auto', null, or a number passing ``check`` (one message, not one per union member)."""
    def validate(value: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not check(value):
            raise ValueError(f"must be 'auto' or {kind}, got {value!r}")
        return value
    return validate


def _preference(value: Any) -> Any:
    if value in ("median", "quantile", "target_k"):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value < 0):
        raise ValueError("must be 'median', 'quantile', 'target_k' or a finite negative number (similarities are "
                         f"-distance²), got {value!r}")
    return float(value)


BandList = Annotated[str, AfterValidator(_band_list)]
NonNegInt = Annotated[int, Field(ge=0)]


class CurateInput(ConfigModel):
    path: str | list[str] | None = Field(None, description="a folder (searched recursively), a file, or a list")
    patterns: list[str] = Field(["*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.png"], description="file globs")
    exclude: list[str] = Field(["*.labels.tif", "*.msk.tif", "*_mask.tif"], description="globs skipped")
    catalog: str | None = Field(None, description="CSV/Parquet with a path/scene/scene_id column and acquisition")
    band_counts: list[PositiveInt] = Field([3, 4, 8], description="other counts: a recorded source-level reject")
    band_names: dict[PositiveInt, BandList] = Field(
        {3: "red,green,blue", 4: "blue,green,red,nir", 8: "coastal,blue,green,yellow,red,rededge,nir,nir2"},
        description="band count -> canonical names, when the file's band descriptions are not canonical")
    chip_bands: BandList = Field("nir,green,red", description="JPEG/PNG chip folders (MAPLE false colour)")
    bit_depth: Annotated[Any, AfterValidator(_auto_or("1..32", lambda v: int(v) == v and 1 <= v <= 32))] = Field(
        "auto", description="auto: 8 for uint8, the file's BIT_DEPTH/NBITS tag, else uint16_bit_depth")
    uint16_bit_depth: Annotated[int, Field(ge=1, le=32)] = Field(11, description="uint16 files without a tag")
    scale: Annotated[Any, AfterValidator(_auto_or("a positive number", lambda v: math.isfinite(v) and v > 0))] = Field(
        "auto", description="descriptor pixel divisor: auto = 2**bit_depth - 1 for integer DNs, 1 for floats")
    nodata: Annotated[Any, AfterValidator(_auto_or("null or a number", lambda v: True))] = Field(
        "auto", description="auto: the file's nodata value (none for JPEG/PNG)")


class CurateTiling(ConfigModel):
    chip_size: Annotated[int, Field(ge=8)] = Field(256, description="chip side (pixels)")
    stride: PositiveInt = Field(256, description="chip step (pixels)")
    min_valid_fraction: UnitFloat = Field(0.9, description="share of pixels that are not nodata / NaN")
    min_std: Annotated[float, Field(ge=0)] = Field(0.002, description="brightness std below this: low_information")
    max_read_px: PositiveInt = Field(8192, description="widest strip read at once (columns); >= chip_size")
    gdal_threads: PositiveInt = Field(1, description="GDAL_NUM_THREADS for strip reads")


class DescriptorWeights(ConfigModel):
    spectral: Annotated[float, Field(ge=0)] = Field(1.0, description="weight of the spectral group")
    texture: Annotated[float, Field(ge=0)] = Field(1.0, description="weight of the texture group")
    metadata: Annotated[float, Field(ge=0)] = Field(0.5, description="weight of the metadata group")


class CurateDescriptors(ConfigModel):
    sample_step: PositiveInt = Field(8, description="spectral statistics on every Nth pixel each way")
    texture_step: PositiveInt = Field(4, description="texture on every Nth pixel")
    batch_size: PositiveInt = Field(32, description="chips per descriptor batch")
    weights: DescriptorWeights = Field(default_factory=DescriptorWeights, description="group weights")


class CurateAP(ConfigModel):
    preference: Annotated[Any, AfterValidator(_preference)] = Field(
        "median", description="median | quantile | target_k | a negative number; one value for every level")
    quantile: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="similarity quantile (preference=quantile)")
    target_k: PositiveInt | None = Field(None, description="cluster count sought (preference=target_k)")
    partition_size: Annotated[int, Field(ge=2)] = Field(512, description="exact AP per partition")
    max_partition_size: Annotated[int, Field(ge=2)] = Field(2048, description="partition doubling stops here")
    min_reduction: Annotated[float, Field(gt=0, lt=1)] = Field(0.1, description="a level cutting less doubles")
    damping: Annotated[float, Field(ge=0.5, lt=1)] = Field(0.6, description="AP message damping")
    max_iter: PositiveInt = Field(200, description="AP iterations per partition")
    convergence_iter: PositiveInt = Field(10, description="stable iterations that end AP")
    split: bool = Field(True, description="re-run AP inside each final cluster; keep splits that raise similarity")
    merge: bool = Field(True, description="drop exemplars whose cluster costs less than -preference to absorb")
    polish_rounds: NonNegInt = Field(3, description="large-neighbourhood search rounds")
    polish_group: PositiveInt = Field(512, description="points per polish group")
    polish_fixed: PositiveInt = Field(64, description="nearest outside exemplars each group may use for free")
    refine_iter: NonNegInt = Field(3, description="exemplar refinement iterations")
    chunk_size: PositiveInt = Field(16384, description="points per Dask task")


class CurateKMeans(ConfigModel):
    levels: list[PositiveInt] | None = Field(None, description="cluster counts fine -> coarse; null: sqrt(n), sqrt")


class CurateCluster(ConfigModel):
    method: Literal["ap", "kmeans"] = Field("ap", description="hierarchical affinity propagation | k-means")
    ap: CurateAP = Field(default_factory=CurateAP, description="affinity propagation")
    kmeans: CurateKMeans = Field(default_factory=CurateKMeans, description="k-means")


class CurateSelect(ConfigModel):
    budget: NonNegInt = Field(1000, description="chips selected")
    within: Literal["closest", "random", "farthest", "balanced"] = Field(
        "farthest", description="order in a cluster (farthest: the exemplar, then farthest-point sampling)")
    dedup: StrictBool = Field(True, description="exact duplicates (same pixels) rejected as 'duplicate'")
    bands: BandList | None = Field(None, description="only chips with these bands are candidates; null: all agree")


class CurateDask(ConfigModel):
    scheduler: Annotated[str, AfterValidator(_dask_scheduler)] = Field(
        "local", description="local (LocalCluster) | synchronous (no Dask) | tcp://host:8786")
    n_workers: PositiveInt = Field(2, description="LocalCluster worker processes")
    threads_per_worker: PositiveInt = Field(1, description="threads per worker")
    memory_limit: str | PositiveInt = Field("2GiB", description="per worker (Dask syntax)")


class CurateReport(ConfigModel):
    figures: bool = Field(True, description="report figures")
    mosaic_clusters: NonNegInt = Field(8, description="clusters shown as mosaics")


class CurateConfig(ConfigModel):
    input: CurateInput = Field(default_factory=CurateInput, description="sources")
    out: str = Field("outputs/curate", description="output folder")
    seed: NonNegInt = Field(0, description="seed of clustering and selection")
    progress: bool = Field(True, description="progress bars")
    tiling: CurateTiling = Field(default_factory=CurateTiling, description="chips")
    descriptors: CurateDescriptors = Field(default_factory=CurateDescriptors, description="chip descriptors")
    cluster: CurateCluster = Field(default_factory=CurateCluster, description="clustering")
    select: CurateSelect = Field(default_factory=CurateSelect, description="selection")
    dask: CurateDask = Field(default_factory=CurateDask, description="scheduler")
    report: CurateReport = Field(default_factory=CurateReport, description="report.html")
