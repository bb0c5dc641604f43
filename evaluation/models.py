"""The location-aware framework: multi-level ViT features -> simple feature pyramid -> UPerNet (semantic) or
Mask R-CNN (instances), with an optional lat/lon embedding added to every pyramid level.

Pyramid: ``arctic_vit.pyramid.ViTPyramidEncoder`` (ViTDet-style ×4, ×2, ×1, ×½ from blocks 5, 11, 17, 23 of a
ViT-L). Semantic head: smp's ``UPerNetDecoder`` + ``SegmentationHead``. Instance head: torchvision ``MaskRCNN`` on the
same pyramid. Raw digital numbers go in; each model normalises with its backbone's ``prepare``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from timm.optim import param_groups_layer_decay
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign

from arctic_vit.pyramid import ViTPyramidEncoder
from evaluation.backbones import Backbone


class LatLonEmbedding(nn.Module):
    """latlon: (N, 2) degrees -> (N, out_channels); sin-cos features of several frequencies -> MLP.

    Unknown locations (NaN) embed to exactly zero, so a chip without coordinates sees the plain pyramid.
    """

    def __init__(self, out_channels: int, num_frequencies: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("frequencies", 2.0 ** torch.arange(num_frequencies, dtype=torch.float32),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * num_frequencies, hidden), nn.GELU(), nn.Linear(hidden, out_channels))

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        """latlon: (N, 2) -> (N, out_channels)."""
        known = ~torch.isnan(latlon).any(dim=1, keepdim=True)
        radians = torch.deg2rad(torch.nan_to_num(latlon, nan=0.0))
        angles = radians.unsqueeze(-1) * self.frequencies  # (N, 2, F)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
        return self.mlp(features) * known


class LocationAwarePyramid(nn.Module):
    """Backbone (normalisation + ViT) -> pyramid maps, plus the lat/lon embedding; optional frozen ViT."""

    def __init__(self, backbone: Backbone, out_channels: int = 256, use_latlon: bool = False,
                 freeze_encoder: bool = False) -> None:
        super().__init__()
        self.prepare = backbone.normalize
        self.band_indices = list(backbone.band_indices)
        self.encoder = ViTPyramidEncoder(backbone.encoder, backbone.out_indices, out_channels)
        self.out_channels = out_channels
        self.latlon = LatLonEmbedding(out_channels) if use_latlon else None
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            backbone.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> LocationAwarePyramid:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.vit.eval()
        return self

    def forward(self, image: torch.Tensor, latlon: torch.Tensor | None = None) -> list[torch.Tensor]:
        """image: (N, C_dataset, H, W) raw DN, latlon: (N, 2) -> [(N, out, H/s, W/s) for s in (4, 8, 16, 32)]."""
        x = self.prepare(image[:, self.band_indices])
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            maps = self.encoder.forward_vit(x)
        pyramid = self.encoder.pyramid(maps)
        if self.latlon is not None:
            if latlon is None:
                raise ValueError("this model was built with use_latlon=True: pass latlon (NaN where unknown)")
            embedding = self.latlon(latlon)[:, :, None, None]
            pyramid = [level + embedding for level in pyramid]
        return pyramid


class SemanticSegmentationModel(nn.Module):
    """Raw DN (N, C, H, W) -> class logits (N, K, H, W): pyramid -> smp UPerNet decoder -> segmentation head."""

    def __init__(self, backbone: Backbone, num_classes: int, pyramid_channels: int = 256,
                 decoder_channels: int = 256, use_latlon: bool = False, freeze_encoder: bool = False) -> None:
        super().__init__()
        self.features = LocationAwarePyramid(backbone, pyramid_channels, use_latlon, freeze_encoder)
        # smp decoders take features at strides 1, 2, 4, ..., 32 and skip the first two.
        self.decoder = UPerNetDecoder([len(backbone.band_indices), 0] + [pyramid_channels] * 4, encoder_depth=5,
                                      decoder_channels=decoder_channels)
        self.head = SegmentationHead(decoder_channels, num_classes, upsampling=4)

    def forward(self, image: torch.Tensor, latlon: torch.Tensor | None = None) -> torch.Tensor:
        """image: (N, C, H, W), latlon: (N, 2) -> (N, K, H, W)."""
        pyramid = self.features(image, latlon)
        logits = self.head(self.decoder([image, image, *pyramid]))
        if logits.shape[-2:] != image.shape[-2:]:
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits


class _PyramidForDetection(nn.Module):
    """torchvision detection backbone: OrderedDict of the pyramid levels plus a stride-64 'pool' level for the RPN."""

    def __init__(self, features: LocationAwarePyramid) -> None:
        super().__init__()
        self.features = features
        self.out_channels = features.out_channels
        self.latlon: torch.Tensor | None = None  # set per batch by InstanceSegmentationModel

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        levels = self.features(x, self.latlon)
        out = OrderedDict((str(i), level) for i, level in enumerate(levels))
        out["pool"] = F.max_pool2d(levels[-1], 1, 2)
        return out


def _as_float32(value):
    """Floating tensors in ``value`` (tensor, ImageList, dict, list, tuple) -> float32; everything else as is."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, ImageList):
        return ImageList(value.tensors.float(), value.image_sizes)
    if isinstance(value, dict):
        return type(value)((k, _as_float32(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(v) for v in value)
    return value


class _Float32Forward:
    """Mixin: ``forward`` runs with autocast off on float32 inputs (the detection heads, see
    ``InstanceSegmentationModel``)."""

    def forward(self, *args, **kwargs):
        device_type = next(self.parameters()).device.type
        with torch.autocast(device_type, enabled=False):
            return super().forward(*_as_float32(args), **_as_float32(kwargs))


class Float32RegionProposalNetwork(_Float32Forward, RegionProposalNetwork):
    pass


class Float32RoIHeads(_Float32Forward, RoIHeads):
    pass


class InstanceSegmentationModel(nn.Module):
    """torchvision Mask R-CNN on the location-aware pyramid; images are raw DN of exactly ``img_size``.

    ``maskrcnn_kwargs`` go to ``torchvision.models.detection.MaskRCNN`` (proposal counts, detections per image).
    """

    def __init__(self, backbone: Backbone, num_classes: int, img_size: int, pyramid_channels: int = 256,
                 use_latlon: bool = False, freeze_encoder: bool = False,
                 anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128), **maskrcnn_kwargs) -> None:
        super().__init__()
        features = LocationAwarePyramid(backbone, pyramid_channels, use_latlon, freeze_encoder)
        self.band_indices = features.band_indices  # selected here, before torchvision's transform
        channels = len(self.band_indices)
        features.band_indices = list(range(channels))
        self.detector = MaskRCNN(
            _PyramidForDetection(features), num_classes=num_classes,
            min_size=img_size, max_size=img_size,  # no resizing: chips are already the ViT's input size
            image_mean=[0.0] * channels, image_std=[1.0] * channels,  # the backbone normalises
            rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * 5),
            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
            mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2),
            **{"box_detections_per_img": 200, **maskrcnn_kwargs},  # e.g. rpn_post_nms_top_n_test for CPU runs
        )
        # Under autocast (bf16 on a GPU) only the ViT and pyramid run in bf16: torchvision decodes boxes in its heads'
        # dtype, and bf16 has 8 significant bits, so box corners would move by up to 1 px at 224 px and masks and
        # scores come back in bf16. The heads keep their parameters and state_dict keys; only the class changes.
        self.detector.rpn.__class__ = Float32RegionProposalNetwork
        self.detector.roi_heads.__class__ = Float32RoIHeads

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None, latlon: torch.Tensor | None = None):
        """images: (N, C, H, W) raw DN; targets: torchvision dicts (boxes, labels, masks) when training.

        -> loss dict (training) or a list of {boxes, labels, scores, masks (K, 1, H, W)} (eval)."""
        self.detector.backbone.latlon = latlon
        try:
            return self.detector(list(images[:, self.band_indices]), targets)
        finally:
            self.detector.backbone.latlon = None


def masks_to_targets(instances: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"masks": (K, H, W), "labels": (K,)} -> torchvision target with boxes (K, 4) xyxy; empty masks dropped."""
    masks = instances["masks"].bool()
    keep = masks.flatten(1).any(dim=1)
    masks, labels = masks[keep], instances["labels"][keep]
    boxes = torch.zeros(len(masks), 4, device=masks.device)  # on the masks' device: no CPU tensor on a GPU path
    if len(masks):
        rows, cols = masks.any(dim=2), masks.any(dim=1)  # (K, H), (K, W)
        h, w = torch.arange(rows.shape[1], device=masks.device), torch.arange(cols.shape[1], device=masks.device)
        boxes[:, 0] = torch.where(cols, w, cols.shape[1]).amin(1)
        boxes[:, 1] = torch.where(rows, h, rows.shape[1]).amin(1)
        boxes[:, 2] = torch.where(cols, w, -1).amax(1) + 1
        boxes[:, 3] = torch.where(rows, h, -1).amax(1) + 1
    return {"boxes": boxes, "labels": labels, "masks": masks.to(torch.uint8)}


def param_groups(model: nn.Module, encoder: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: the ViT with layer-wise lr decay (timm; ``lr_scale`` per group), the rest at scale 1.

    No weight decay on biases, norms, position embeddings and tokens. Frozen parameters are left out.
    """
    encoder_ids = {id(p) for p in encoder.parameters()}
    groups = param_groups_layer_decay(encoder, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=list(encoder.no_weight_decay()))
    for group in groups:  # timm gives the last block scale 1; with the head one layer above it: decay^1 (MAE, BEiT)
        group["lr_scale"] *= layer_decay
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad and id(param) not in encoder_ids:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups += [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
               {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    return [g for g in groups if g["params"]]


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Per-iteration warmup then cosine decay, as a factor of the base lr."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
