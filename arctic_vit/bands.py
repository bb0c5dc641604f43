"""Band names for multispectral VHSR imagery (Maxar/Vantor WorldView, GeoEye, QuickBird).

WorldView-2/3 have eight multispectral bands; 4-band products carry blue, green, red and nir (NIR1).
"""

from __future__ import annotations

from collections.abc import Sequence

CANONICAL_BANDS: tuple[str, ...] = ("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2")
"""Canonical band names, in WorldView-3 multispectral order."""

FOUR_BAND: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Band order of the 4-band (BGRN) products the released encoder is pretrained on."""

NEW_BAND_INIT = "zeros"
"""Initialisation of a requested band the pretrained weights lack: its patch-embedding slice is zero, so the
pretrained function is unchanged at the start of finetuning and the band's contribution is learned."""


def validate_bands(bands: Sequence[str] | str) -> tuple[str, ...]:
    """Return ``bands`` as a lower-case tuple; an unknown or repeated band is a ``ValueError`` naming the valid ones."""
    if isinstance(bands, str):
        bands = [b for b in bands.replace(" ", "").split(",") if b]
    names = tuple(str(b).lower() for b in bands)
    if not names:
        raise ValueError(f"bands must name at least one band; valid names: {', '.join(CANONICAL_BANDS)}")
    unknown = [b for b in names if b not in CANONICAL_BANDS]
    if unknown:
        raise ValueError(f"unknown band name(s) {unknown}; valid names: {', '.join(CANONICAL_BANDS)}")
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:
        raise ValueError(f"band(s) {repeated} requested more than once")
    return names
