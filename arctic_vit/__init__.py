"""arctic_vit: the Arctic MAE ViT encoder family for timm, Hugging Face and segmentation-models-pytorch.

``import arctic_vit`` registers ``arctic_mae_vit_{large,base,small,tiny}_patch16_224`` (and the alias
``arctic_mae_vit_large``) with timm, and, when segmentation-models-pytorch is installed, with smp.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import bands, corpus, hub, models, transforms
from .bands import CANONICAL_BANDS, validate_bands
from .corpus import ContractError, CorpusContract, normalize_for
from .hub import export_folder, filter_encoder_state_dict, push_folder
from .pyramid import SimpleFeaturePyramid, ViTPyramidEncoder
from .transforms import MultispectralNormalize

try:
    __version__ = version("arctic-vit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

try:
    from .smp_encoders import register_smp_encoders
except ImportError:  # segmentation-models-pytorch is an optional extra
    pass
else:
    register_smp_encoders()

__all__ = [
    "CANONICAL_BANDS",
    "ContractError",
    "CorpusContract",
    "MultispectralNormalize",
    "SimpleFeaturePyramid",
    "ViTPyramidEncoder",
    "__version__",
    "bands",
    "corpus",
    "export_folder",
    "filter_encoder_state_dict",
    "hub",
    "models",
    "normalize_for",
    "push_folder",
    "transforms",
    "validate_bands",
]
