"""segmentation-models-pytorch encoders for the arctic family, under the same names as in timm.

smp 0.6 accepts a plain ViT only in DPT (``encoder_name='tu-arctic_mae_vit_large'`` works as is). Registered here
with the simple feature pyramid, the arctic encoders also drive ``smp.UPerNet``, ``smp.Unet``, ``smp.FPN``:

    import arctic_vit, segmentation_models_pytorch as smp
    model = smp.UPerNet(encoder_name="arctic_mae_vit_large", encoder_weights=None, in_channels=4, classes=3)

``encoder_weights`` names a pretrained tag (``"mae_arctic"``) once its weights are pinned in
``arctic_vit/releases.py``; smp then downloads the pinned revision and this encoder loads it into the ViT trunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn

from .models import ALIASES, STOCK_ARCHITECTURES
from .pyramid import PYRAMID_STRIDES, ViTPyramidEncoder
from .releases import PINS
from .weights import filter_encoder_state_dict

__all__ = ["ArcticSmpEncoder", "register_smp_encoders"]


class ArcticSmpEncoder(nn.Module, EncoderMixin):
    """smp encoder: features at strides 1, 2, 4, 8, 16, 32 (stride 1 is the input, stride 2 is empty)."""

    _is_torch_scriptable = False

    def __init__(self, model_name: str, depth: int = 5, output_stride: int = 32, pyramid_channels: int = 256,
                 out_indices: tuple[int, ...] | None = None, **model_kwargs: Any) -> None:
        super().__init__()
        if depth != 5 or output_stride != 32:
            raise ValueError(f"arctic smp encoders support depth=5 and output_stride=32, got {depth}, {output_stride}")
        model_kwargs.setdefault("dynamic_img_size", True)  # any input size that is a multiple of 16
        vit = timm.create_model(model_name, pretrained=False, **model_kwargs)
        self.encoder = ViTPyramidEncoder(vit, out_indices=out_indices, out_channels=pyramid_channels)
        self._depth = depth
        self._output_stride = output_stride
        self._in_channels = vit.patch_embed.proj.in_channels
        self._out_channels = [self._in_channels, 0] + [pyramid_channels] * len(PYRAMID_STRIDES)

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
        self._out_channels[0] = in_channels

    def get_stages(self) -> dict[int, list[nn.Module]]:
        return {}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, C, H, W) -> [x, (N, 0, H/2, W/2), (N, P, H/4, W/4), ..., (N, P, H/32, W/32)]."""
        n, _, h, w = x.shape
        empty = x.new_zeros((n, 0, h // 2, w // 2))
        return [x, empty, *self.encoder(x)]

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
        settings = {
            key.split(".", 1)[1]: {"repo_id": pin.repo_id, "revision": pin.revision}
            for key, pin in PINS.items()
            if key.startswith(arch + ".") and pin.revision
        }
        smp_encoders[name] = {
            "encoder": ArcticSmpEncoder,
            "pretrained_settings": settings,
            "params": {"model_name": name},
        }
