"""ONNX export of an arctic-vit encoder, with the metadata the QGIS Deepness plugin and other runtimes read.

``python -m arctic_vit export-onnx onnx.folder=EXPORT onnx.out=encoder.onnx [onnx.opset=18] [onnx.img_size=224]``

The graph is the encoder as plain timm loads the export folder: input ``pixel_values`` (batch, C, H, W) already
normalised (``(DN / (2**bit_depth - 1) - mean) / std``, see the metadata), output ``features`` (batch, D), the pooled
token; the batch axis is dynamic, the opset is named in the file. Metadata (``metadata_props``): Deepness' keys
(``model_type`` = "Recognition": an embedding model; ``resolution`` in cm/px; ``tiles_size``; ``tiles_overlap``;
``standardization_mean`` / ``standardization_std``) and ``arctic_vit_corpus``, the corpus contract as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch

from .corpus import CorpusContract, contract_for

__all__ = ["DEFAULT_OPSET", "export_onnx", "onnx_metadata"]

DEFAULT_OPSET = 18
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "features"


def onnx_metadata(contract: CorpusContract, img_size: int, opset: int) -> dict[str, str]:
    """Key -> string value (ONNX metadata_props hold strings; Deepness parses JSON where it expects structures)."""
    meta = {
        "model_type": "Recognition",
        "tiles_size": str(img_size),
        "tiles_overlap": "0",
        "standardization_mean": json.dumps(list(contract.mean)),
        "standardization_std": json.dumps(list(contract.std)),
        "arctic_vit_corpus": json.dumps(contract.to_dict()),
        "arctic_vit_input": f"{INPUT_NAME} = (DN / {contract.max_value:g} - mean) / std, bands "
                            f"{', '.join(contract.bands)}; {OUTPUT_NAME}: pooled class token",
        "opset": str(opset),
    }
    if contract.gsd_m is not None:
        meta["resolution"] = f"{contract.gsd_m * 100:g}"
    return meta


def export_onnx(folder: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET,
                img_size: int | None = None) -> Path:
    """Export folder -> ONNX file (dynamic batch, ``opset``); return ``out``."""
    try:
        import onnx  # optional: pip install onnx (the check needs onnxruntime)
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx package: pip install onnx onnxscript") from err
    folder, out = Path(folder), Path(out)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    contract = contract_for(model)
    size = int(img_size or model.pretrained_cfg["input_size"][-1])
    if size % 16:
        raise ValueError(f"onnx.img_size={size} is not a multiple of the 16-px patch")
    example = torch.zeros(2, len(contract.bands), size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamic_shapes=({0: batch},), dynamo=True)
    program.save(str(out))
    proto = onnx.load(str(out))
    for key, value in onnx_metadata(contract, size, opset).items():
        entry: Any = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out
