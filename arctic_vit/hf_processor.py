"""A transformers image processor for multispectral digital numbers: ``AutoImageProcessor`` for arctic-vit exports.

Self-contained (numpy + transformers only): ``arctic_vit.hub.export_folder`` copies this file into every export as
``image_processing_arctic.py``, and the export's ``config.json`` names it in ``auto_map``. transformers reads a timm
folder's ``config.json`` as the processor config, so the processor takes bands, bit depth and mean/std from its
``corpus`` section, the one place an export states them:

    processor = AutoImageProcessor.from_pretrained(FOLDER_OR_REPO, trust_remote_code=True)
    model = AutoModel.from_pretrained(FOLDER_OR_REPO)
    features = model(**processor(dn, return_tensors="pt")).pooler_output

computes ``(DN / (2**bit_depth - 1) - mean) / std`` exactly as ``arctic_vit.normalize_for(model)`` does.
It refuses what would be silently wrong: a channel count other than the bands', values beyond the bit depth,
sizes that are not a multiple of the patch, and PIL images whose mode is not those bands (RGBA's alpha is no band).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

PIL_MODE_BANDS = {"L": None, "RGB": ("red", "green", "blue")}
"""PIL modes that can hold bands: one grey band (any name) or red, green, blue in that order; both 8-bit."""


class ArcticImageProcessor(BaseImageProcessor):
    """DN (C, H, W) or (N, C, H, W), numpy or torch, any dtype -> ``pixel_values`` (N, C, H, W) float32."""

    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(self, corpus: dict[str, Any] | None = None, patch_size: int = 16, **config: Any) -> None:
        """``corpus``: the export's corpus contract (config.json["corpus"]); the rest of config.json is ignored."""
        super().__init__()
        corpus = corpus or {}
        missing = [k for k in ("bands", "bit_depth", "mean", "std") if corpus.get(k) is None]
        if missing:
            raise ValueError(f"config.json 'corpus' (the corpus contract) lacks {missing}: re-export the model with "
                             "arctic_vit.export_folder(..., corpus=...)")
        if not len(corpus["bands"]) == len(corpus["mean"]) == len(corpus["std"]):
            raise ValueError(f"config.json 'corpus': bands, mean and std differ in length: {corpus}")
        self.corpus = dict(corpus)
        self.bands = list(corpus["bands"])
        self.bit_depth = int(corpus["bit_depth"])
        self.image_mean = [float(v) for v in corpus["mean"]]
        self.image_std = [float(v) for v in corpus["std"]]
        self.patch_size = int(patch_size)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> ArcticImageProcessor:
        """Read ``config.json`` (the export's), not a ``preprocessor_config.json``: the contract lives there."""
        kwargs.setdefault("image_processor_filename", "config.json")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def max_value(self) -> float:
        return float(2**self.bit_depth - 1)

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: Any, return_tensors: str | None = None, input_data_format: str | None = None,
                   **kwargs: Any) -> BatchFeature:
        """images: (C, H, W) / (N, C, H, W) array or tensor, a list of (C, H, W), or an 8-bit PIL image whose mode
        holds exactly the bands -> BatchFeature(pixel_values=(N, C, H, W) float32)."""
        if kwargs:
            raise ValueError(f"unsupported argument(s) {sorted(kwargs)}: this processor only rescales by the bit "
                             "depth and standardises per band (no resize, crop or RGB conversion)")
        batch = self._as_batch(images, input_data_format or "channels_first")
        n_bands = len(self.bands)
        if batch.shape[1] != n_bands:
            raise ValueError(f"input has {batch.shape[1]} channels, this model takes {n_bands} bands {self.bands} "
                             f"(channels first; pass input_data_format='channels_last' for (H, W, C))")
        if batch.shape[2] % self.patch_size or batch.shape[3] % self.patch_size:
            raise ValueError(f"image size {batch.shape[2]}x{batch.shape[3]} is not a multiple of the "
                             f"{self.patch_size}-px patch: pad or crop it")
        if not np.isfinite(batch).all():
            raise ValueError("input has NaN or infinite values: fill nodata before preprocessing")
        low, high = float(batch.min()), float(batch.max())
        if low < 0 or high > self.max_value:
            raise ValueError(f"values span [{low:g}, {high:g}] but this model takes {self.bit_depth}-bit digital "
                             f"numbers in [0, {self.max_value:g}]")
        mean = np.asarray(self.image_mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.image_std, dtype=np.float32).reshape(1, -1, 1, 1)
        pixel_values = (batch / np.float32(self.max_value) - mean) / std
        return BatchFeature(data={"pixel_values": pixel_values.astype(np.float32)}, tensor_type=return_tensors)

    def _as_batch(self, images: Any, data_format: str) -> np.ndarray:
        """-> (N, C, H, W) float32."""
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        arrays = []
        for item in items:
            if hasattr(item, "getbands") and hasattr(item, "mode"):  # a PIL image
                arrays.append(self._from_pil(item))
                continue
            array = item.detach().cpu().numpy() if hasattr(item, "detach") else np.asarray(item)
            if array.ndim not in (3, 4) or array.dtype.kind not in "uif":
                raise ValueError(f"expected a (C, H, W) or (N, C, H, W) array of numbers, got shape "
                                 f"{array.shape} dtype {array.dtype}")
            array = array[None] if array.ndim == 3 else array
            if data_format == "channels_last":
                array = array.transpose(0, 3, 1, 2)
            arrays.append(array.astype(np.float32))
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"images of different shapes in one batch: {sorted(shapes)}")
        return np.concatenate(arrays)

    def _from_pil(self, image: Any) -> np.ndarray:
        """An 8-bit PIL image whose mode is exactly this model's bands -> (1, C, H, W)."""
        mode = image.mode
        expected = PIL_MODE_BANDS.get(mode, ())
        fits = mode in PIL_MODE_BANDS and self.bit_depth == 8 and (
            len(self.bands) == 1 if expected is None else tuple(self.bands) == expected)
        if not fits:
            alpha = " (its alpha channel is not a band)" if "A" in mode else ""
            raise ValueError(f"a PIL image of mode {mode}{alpha} cannot feed this model, which takes "
                             f"{self.bit_depth}-bit digital numbers of bands {self.bands}: pass a "
                             f"({len(self.bands)}, H, W) numpy array or tensor of those bands")
        array = np.asarray(image, dtype=np.float32)
        return (array[None, None] if array.ndim == 2 else array.transpose(2, 0, 1)[None]).copy()
