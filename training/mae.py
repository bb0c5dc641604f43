"""Masked autoencoder (He et al. 2022, https://arxiv.org/abs/2111.06377) around the registered timm encoder.

The encoder is ``timm.create_model('arctic_mae_vit_<size>_patch16_224', ...)`` itself; its submodules and parameters
are attached at the top level of this module, so the state dict holds the encoder keys exactly as timm names them
(``patch_embed.*``, ``cls_token``, ``pos_embed``, ``blocks.*``, ``norm.*``) next to ``mask_token`` and
``decoder_*``: ``arctic_vit.hub.filter_encoder_state_dict`` of a checkpoint loads strictly into the timm encoder.
Both position embeddings are fixed 2-D sin-cos. The loss is the per-patch-normalised pixel error on masked patches,
over valid (non-nodata) pixels only, each masked patch weighted by its valid fraction (patches under
``min_valid_fraction`` not at all). ``forward(..., loss_terms=True)`` returns the weighted sum and the total weight
instead of their ratio, so a training step can divide once over all micro-batches and ranks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import timm
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

LOG = logging.getLogger("training.mae")


def create_encoder(name: str, bands: Sequence[str], img_size: int, **kwargs) -> nn.Module:
    """The timm encoder: the core's ``arctic_mae_vit_*`` when ``arctic_vit`` is installed, else stock timm ``vit_*``.

    Always at a fixed input size (``dynamic_img_size=False``): MAE masks a fixed patch grid. The exported weights are
    the same either way (the position embedding keeps its grid shape), so the released model may be dynamic.
    """
    kwargs.setdefault("dynamic_img_size", False)
    if name.startswith("arctic_"):
        with contextlib.suppress(ImportError):
            import arctic_vit  # noqa: F401  (registers arctic_mae_vit_*)
        if timm.is_model(name):
            return timm.create_model(name, pretrained=False, num_classes=0, bands=tuple(bands), img_size=img_size,
                                     **kwargs)
        stock = name.replace("arctic_mae_vit_", "vit_")
        stock = "vit_large_patch16_224" if stock == "vit_large" else stock
        LOG.warning("arctic_vit does not register %s here: using timm %s (same key layout)", name, stock)
        name = stock
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=len(bands), img_size=img_size, **kwargs)


def sincos_pos_embed(grid: tuple[int, int], dim: int, prefix_tokens: int = 1) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding -> (1, prefix_tokens + gh * gw, dim); prefix (class) tokens get zeros."""
    patches = build_sincos2d_pos_embed(list(grid), dim=dim)
    return torch.cat([torch.zeros(prefix_tokens, dim), patches], dim=0)[None]


class MaskedAutoencoder(nn.Module):
    """MAE: timm ViT encoder on the visible 1 - mask_ratio of patches + a light ViT decoder predicting all pixels."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        min_valid_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if getattr(encoder, "num_prefix_tokens", 1) != 1 or getattr(encoder, "no_embed_class", False):
            raise ValueError("MAE needs a ViT with exactly one class token inside pos_embed (no registers)")
        if getattr(encoder, "dynamic_img_size", False):
            raise ValueError("MAE needs a fixed image size (dynamic_img_size=False)")
        # Attach the encoder's children and direct parameters here so their state-dict keys stay timm's own.
        for name, child in encoder.named_children():
            self.add_module(name, child)
        for name, param in encoder.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.encoder_keys = tuple(encoder.state_dict().keys())

        patch_size = self.patch_embed.patch_size
        self.grid = tuple(self.patch_embed.grid_size)
        self.patch_size = int(patch_size[0])
        self.in_chans = int(self.patch_embed.proj.in_channels)
        self.img_size = tuple(self.patch_embed.img_size)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        if not 0.0 < min_valid_fraction <= 1.0:
            raise ValueError(f"model.min_valid_fraction must be in (0, 1], got {min_valid_fraction}")
        self.min_valid_fraction = min_valid_fraction
        embed_dim = self.pos_embed.shape[-1]
        num_patches = self.grid[0] * self.grid[1]

        self.pos_embed.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * self.in_chans)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Sin-cos position embeddings, xavier-uniform linear and patch-embedding weights, small normal tokens."""
        self.pos_embed.copy_(sincos_pos_embed(self.grid, self.pos_embed.shape[-1]))
        self.decoder_pos_embed.copy_(sincos_pos_embed(self.grid, self.decoder_pos_embed.shape[-1]))
        proj = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm's key names (what export writes)."""
        state = self.state_dict()
        return {key: state[key] for key in self.encoder_keys}

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, C, H, W) -> (N, L, p*p*C), patch pixels ordered (p, p, C)"""
        n, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(n, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """patches: (N, L, p*p*C) -> (N, C, H, W)"""
        c = channels or self.in_chans
        gh, gw = self.grid
        p = self.patch_size
        x = patches.reshape(patches.shape[0], gh, gw, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], c, gh * p, gw * p)

    def num_visible(self, length: int) -> int:
        """Visible patches of ``length``: ``int(length * (1 - mask_ratio))`` as official MAE, at least 1."""
        return max(1, int(length * (1 - self.mask_ratio)))

    def random_masking(self, tokens: torch.Tensor, noise: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens: (N, L, D), noise: (N, L) uniform or None -> visible (N, K, D), mask (N, L) 1 = masked, restore (N, L)

        Sorting one uniform random number per patch gives a random permutation; the first K of it are kept.
        ``restore`` is the inverse permutation, which puts decoder tokens back in patch order. ``noise=None`` draws
        from the global RNG; training passes noise from its own generator (see ``training.pretrain``).
        """
        n, length, dim = tokens.shape
        keep = self.num_visible(length)
        if noise is None:
            noise = torch.rand(n, length, device=tokens.device)
        shuffle = torch.argsort(noise, dim=1)
        restore = torch.argsort(shuffle, dim=1)
        visible = torch.gather(tokens, 1, shuffle[:, :keep, None].expand(-1, -1, dim))
        mask = torch.ones(n, length, device=tokens.device)
        mask[:, :keep] = 0
        return visible, torch.gather(mask, 1, restore), restore

    def forward_encoder(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (N, C, H, W), noise: (N, L) or None -> latent (N, 1 + K, D), mask (N, L), restore (N, L)"""
        tokens = self.patch_embed(images) + self.pos_embed[:, 1:]
        visible, mask, restore = self.random_masking(tokens, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(visible.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, visible], dim=1))
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, restore

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + K, D), restore: (N, L) -> predicted pixels (N, L, p*p*C)"""
        x = self.decoder_embed(latent)
        n, length = restore.shape
        masked = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target_patches(self, images: torch.Tensor, valid: torch.Tensor | None,
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """images: (N, C, H, W), valid: (N, H, W) or None -> target (N, L, P), weights (N, L, P) or None,
        mean (N, L, 1), std (N, L, 1)

        With ``norm_pix_loss`` each patch is standardised by the mean/variance of its valid pixels (all pixels, as
        official MAE, when ``valid`` is None).
        """
        target = self.patchify(images.float())
        weights = None if valid is None else self.patchify(valid[:, None].float().expand(-1, images.shape[1], -1, -1))
        mean = torch.zeros_like(target[..., :1])
        std = torch.ones_like(target[..., :1])
        if self.norm_pix_loss:
            if weights is None:
                mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            else:
                count = weights.sum(-1, keepdim=True).clamp_min(1.0)
                mean = (target * weights).sum(-1, keepdim=True) / count
                var = (((target - mean) * weights) ** 2).sum(-1, keepdim=True) / (count - 1).clamp_min(1.0)
            std = (var + 1e-6).sqrt()
            target = (target - mean) / std
        return target, weights, mean, std

    def forward_loss_terms(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                           valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """images: (N, C, H, W), pred: (N, L, P), mask: (N, L), valid: (N, H, W) or None -> (loss sum, weight sum)

        Per masked patch: mean squared error over its valid pixels, weighted by its valid fraction (0 under
        ``min_valid_fraction``). ``valid=None`` (no nodata in the batch) is official MAE's loss at no extra cost:
        weight = number of masked patches.
        """
        target, weights, _, _ = self.target_patches(images, valid)
        if weights is None:
            per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
            return (per_patch * mask).sum(), mask.sum()
        count = weights.sum(-1)
        per_patch = (((pred.float() - target) ** 2) * weights).sum(-1) / count.clamp_min(1.0)
        fraction = count / weights.shape[-1]
        patch_weight = mask * fraction * (fraction >= self.min_valid_fraction)
        return (per_patch * patch_weight).sum(), patch_weight.sum()

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     valid: torch.Tensor | None) -> torch.Tensor:
        """images: (N, C, H, W), pred: (N, L, P), mask: (N, L), valid: (N, H, W) or None -> scalar (0 if no weight)"""
        total, weight = self.forward_loss_terms(images, pred, mask, valid)
        return total / weight.clamp_min(1e-12)

    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                loss_terms: bool = False):
        """images: (N, C, H, W), valid: (N, H, W) bool or None (no nodata), noise: (N, L) or None
        -> loss, pred (N, L, p*p*C), mask (N, L); with ``loss_terms`` -> loss sum, weight sum, pred, mask"""
        latent, mask, restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, restore)
        total, weight = self.forward_loss_terms(images, pred, mask, valid)
        if loss_terms:
            return total, weight, pred, mask
        return total / weight.clamp_min(1e-12), pred, mask


def build_mae(model_cfg: dict, bands: Sequence[str], img_size: int) -> MaskedAutoencoder:
    """MAE from the ``model`` config section (encoder name, decoder sizes, mask ratio, norm_pix_loss)."""
    encoder_kwargs = {}
    if model_cfg.get("drop_path_rate"):
        encoder_kwargs["drop_path_rate"] = model_cfg["drop_path_rate"]
    encoder = create_encoder(model_cfg["encoder"], bands, img_size, **encoder_kwargs)
    return MaskedAutoencoder(
        encoder,
        decoder_embed_dim=model_cfg.get("decoder_embed_dim", 512),
        decoder_depth=model_cfg.get("decoder_depth", 8),
        decoder_num_heads=model_cfg.get("decoder_num_heads", 16),
        mask_ratio=model_cfg.get("mask_ratio", 0.75),
        norm_pix_loss=model_cfg.get("norm_pix_loss", True),
        min_valid_fraction=model_cfg.get("min_valid_fraction", 0.5),
    )
