"""segmentation-models-pytorch encoders for the arctic family, under the same names as in timm.

smp 0.6 accepts a plain ViT only in DPT (``encoder_name='tu-arctic_mae_vit_large'`` works as is). Registered here
with the simple feature pyramid, the arctic encoders also drive ``smp.UPerNet``, ``smp.Unet``, ``smp.FPN``:

    import arctic_vit, segmentation_models_pytorch as smp
    model = smp.UPerNet(encoder_name="arctic_mae_vit_large", encoder_weights=None, in_channels=4, classes=3)

- ``encoder_depth`` 1-5 (features at strides 1, 2, 4, ..., 2**depth); ``output_stride`` 32 only (no dilation).
- Any input size: the ViT sees the input zero-padded (bottom/right) to a multiple of max(16, 2**depth) and every
  feature map is cropped back to ceil(size / stride), so ``smp.Unet`` returns the input's size.
- TorchScript is refused with a message (timm's ``forward_intermediates`` is not scriptable); ``torch.export``,
  ``torch.compile`` and ONNX work.
- ``encoder_weights`` names a pretrained tag (``"mae_arctic"``) once its weights are pinned in
  ``arctic_vit/releases.py``; smp then downloads the pinned revision and this encoder loads it into the ViT trunk.
  Before that, any ``encoder_weights`` explains how to load a local export instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import timm
import torch
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn
from torch.nn import functional as F

from .models import ALIASES, STOCK_ARCHITECTURES
from .pyramid import PYRAMID_STRIDES, ViTPyramidEncoder
from .releases import PINS
from .weights import WeightsUnavailableError, filter_encoder_state_dict

__all__ = ["ArcticSmpEncoder", "register_smp_encoders"]

MAX_DEPTH = 5
LOCAL_EXPORT_HELP = (
    "To use a local export: model = smp.UPerNet(encoder_name={name!r}, encoder_weights=None, ...); "
    "model.encoder.load_state_dict(safetensors.torch.load_file('EXPORT_FOLDER/model.safetensors')) "
    "(the encoder takes timm-layout weights and loads them strictly into its ViT trunk)."
)


class ArcticPretrainedSettings(dict):
    """smp's ``pretrained_settings`` of one encoder: the pinned tags, as smp expects them; any other
    ``encoder_weights`` (a registered tag not published yet, or an unknown one) raises a message saying so and how
    to load a local export, instead of smp's ``KeyError ... Available options are: []``."""

    def __init__(self, name: str, pinned: Mapping[str, Mapping[str, Any]], tags: tuple[str, ...]) -> None:
        super().__init__(pinned)
        self.name = name
        self.tags = tags

    def __contains__(self, tag: object) -> bool:
        return True  # smp checks membership first; __getitem__ explains what is missing

    def __getitem__(self, tag: str) -> Any:
        if dict.__contains__(self, tag):
            return dict.__getitem__(self, tag)
        help_text = LOCAL_EXPORT_HELP.format(name=self.name)
        if tag in self.tags:
            raise WeightsUnavailableError(
                f"encoder_weights={tag!r} for {self.name}: weights not published yet (no pinned revision in "
                f"arctic_vit/releases.py). {help_text}")
        raise ValueError(f"encoder_weights={tag!r} is not a pretrained tag of {self.name}; registered tags: "
                         f"{list(self.tags)} (published: {sorted(dict.keys(self))}). {help_text}")


class ArcticSmpEncoder(nn.Module, EncoderMixin):
    """smp encoder: features at strides 1, 2, 4, 8, 16, 32 (stride 1 is the input, stride 2 the input averaged 2x2,
    strides 4-32 the ViT's simple feature pyramid)."""

    _is_torch_scriptable = False

    def __init__(self, model_name: str, depth: int = 5, output_stride: int = 32, pyramid_channels: int = 256,
                 out_indices: tuple[int, ...] | None = None, **model_kwargs: Any) -> None:
        super().__init__()
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"arctic smp encoders support encoder_depth 1..{MAX_DEPTH}, got {depth}")
        if output_stride != 32:
            raise ValueError(f"arctic smp encoders do not support dilated mode (output_stride={output_stride}); "
                             "use output_stride=32")
        model_kwargs.setdefault("dynamic_img_size", True)  # any input size that is a multiple of 16
        vit = timm.create_model(model_name, pretrained=False, **model_kwargs)
        self.encoder = ViTPyramidEncoder(vit, out_indices=out_indices, out_channels=pyramid_channels)
        self._depth = depth
        self._output_stride = output_stride
        self._in_channels = vit.patch_embed.proj.in_channels
        self._out_channels = [self._in_channels, self._in_channels] + [pyramid_channels] * len(PYRAMID_STRIDES)

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            "arctic smp encoders cannot be TorchScripted (timm's forward_intermediates and the feature pyramid are "
            "not scriptable): use torch.export.export, torch.compile, or ONNX (torch.onnx.export) instead")

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        """smp's ``in_channels``: a new patch embedding for random init; pretrained weights choose bands by name."""
        if in_channels == self._in_channels:
            return
        if pretrained:
            raise ValueError(
                f"pretrained arctic weights have {self._in_channels} bands; to use {in_channels}, build the timm "
                "model with bands=(...) by name (see arctic_vit.bands) instead of smp's in_channels"
            )
        proj = self.encoder.vit.patch_embed.proj
        self.encoder.vit.patch_embed.proj = nn.Conv2d(
            in_channels, proj.out_channels, proj.kernel_size, proj.stride, bias=proj.bias is not None
        )
        self._in_channels = in_channels
        self._out_channels[:2] = [in_channels, in_channels]

    def get_stages(self) -> dict[int, list[nn.Module]]:
        return {}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, C, H, W), any H, W -> [x, (N, C, ⌈H/2⌉, ⌈W/2⌉), (N, P, ⌈H/4⌉, ⌈W/4⌉), ...], depth + 1 maps."""
        h, w = x.shape[-2:]
        features = [x, F.avg_pool2d(x, 2, ceil_mode=True)]  # stride 2: the input averaged (a ViT has no such map)
        if self._depth >= 2:
            multiple = max(16, 2**self._depth)  # the patch, and the coarsest stride used
            padded = F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple))
            levels = self.encoder(padded)[: self._depth - 1]
            features += [f[..., : math.ceil(h / s), : math.ceil(w / s)] for f, s in zip(levels, PYRAMID_STRIDES)]
        return features

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Accept this encoder's own state dict, or encoder weights in timm layout (an export's model.safetensors),
        which are loaded strictly into the ViT trunk while the pyramid keeps its initialisation."""
        if any(k.startswith("encoder.") for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        return self.encoder.vit.load_state_dict(filter_encoder_state_dict(state_dict), strict=True, assign=assign)


def register_smp_encoders() -> None:
    """(Re)register every arctic encoder with smp, with a pretrained setting for each pinned tag."""
    names = {arch: arch for arch in STOCK_ARCHITECTURES} | ALIASES
    for name, arch in names.items():
        pinned = {
            key.split(".", 1)[1]: {"repo_id": pin.repo_id, "revision": pin.revision}
            for key, pin in PINS.items()
            if key.startswith(arch + ".") and pin.revision
        }
        tags = tuple(key.split(".", 1)[1] for key in PINS if key.startswith(arch + "."))
        smp_encoders[name] = {
            "encoder": ArcticSmpEncoder,
            "pretrained_settings": ArcticPretrainedSettings(name, pinned, tags),
            "params": {"model_name": name},
        }
