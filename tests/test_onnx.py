"""python -m arctic_vit export-onnx: dynamic batch, opset named, Deepness metadata; onnxruntime matches PyTorch."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import arctic_vit
from arctic_vit.__main__ import main as cli
from arctic_vit.corpus import CorpusContract

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NAME = "arctic_mae_vit_tiny_patch16_224"
CORPUS = CorpusContract(("blue", "green", "red", "nir"), 11, (0.1, 0.2, 0.3, 0.4), (0.2,) * 4, gsd_m=0.5)


@pytest.mark.slow  # the dynamo ONNX export takes ~50 s on 2 busy cores
def test_export_onnx_matches_pytorch_with_dynamic_batch_and_metadata(tmp_path, capsys):
    torch.manual_seed(0)
    source = timm.create_model(NAME, img_size=64).eval()
    folder = arctic_vit.export_folder(NAME, source, tmp_path / "export", corpus=CORPUS)
    out = tmp_path / "encoder.onnx"
    assert cli(["export-onnx", f"onnx.folder={folder}", f"onnx.out={out}", "onnx.opset=18"]) == 0
    assert "exported ONNX encoder" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_type"] == "Recognition" and meta["resolution"] == "50" and meta["tiles_size"] == "64"
    assert json.loads(meta["standardization_mean"]) == list(CORPUS.mean)
    assert CorpusContract.from_dict(json.loads(meta["arctic_vit_corpus"])) == CORPUS
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis is dynamic
        x = torch.randn(batch, 4, 64, 64)
        (features,) = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(features), source(x), atol=1e-4, rtol=1e-4)


def test_export_onnx_cli_validates_keys_before_work(capsys):
    with pytest.raises(SystemExit):
        cli(["export-onnx", "onnx.folder=x", "onnx.colour=red"])
    assert "unknown key 'onnx.colour'" in capsys.readouterr().err
