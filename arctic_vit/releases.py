"""The one place where released weights are pinned: hub repository, revision and sha256 of ``model.safetensors``.

A release sets ``revision`` (a commit hash) and ``sha256`` from the output of ``python -m arctic_vit push``.
Until weights are published these stay ``None``: ``pretrained=True`` then explains how to load a local export
instead of downloading anything unverified.
"""

from __future__ import annotations

from dataclasses import dataclass

HUB_ORG = "arctic-vit"
WEIGHTS_FILENAME = "model.safetensors"


@dataclass(frozen=True)
class WeightsPin:
    repo_id: str
    revision: str | None = None
    sha256: str | None = None


def _pin(arch: str, tag: str) -> WeightsPin:
    return WeightsPin(repo_id=f"{HUB_ORG}/{arch}.{tag}")


PINS: dict[str, WeightsPin] = {
    f"{arch}.mae_arctic": _pin(arch, "mae_arctic")
    for arch in (
        "arctic_mae_vit_large_patch16_224",
        "arctic_mae_vit_base_patch16_224",
        "arctic_mae_vit_small_patch16_224",
        "arctic_mae_vit_tiny_patch16_224",
    )
}
