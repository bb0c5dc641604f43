"""torch.hub entry points: ``torch.hub.load('arctic-vit/arctic-vit', 'arctic_mae_vit_large', pretrained=True)``."""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

import timm  # noqa: E402

import arctic_vit  # noqa: E402, F401  (registers the family with timm)


def _entry(name: str):
    def create(pretrained: bool = False, **kwargs):
        return timm.create_model(name, pretrained=pretrained, **kwargs)

    create.__name__ = name
    create.__doc__ = f"timm.create_model({name!r}, pretrained=..., **kwargs); see arctic_vit.models."
    return create


arctic_mae_vit_large = _entry("arctic_mae_vit_large")
arctic_mae_vit_large_patch16_224 = _entry("arctic_mae_vit_large_patch16_224")
arctic_mae_vit_base_patch16_224 = _entry("arctic_mae_vit_base_patch16_224")
arctic_mae_vit_small_patch16_224 = _entry("arctic_mae_vit_small_patch16_224")
arctic_mae_vit_tiny_patch16_224 = _entry("arctic_mae_vit_tiny_patch16_224")
