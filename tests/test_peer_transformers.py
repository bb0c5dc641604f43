"""transformers as its users call it: AutoImageProcessor + AutoModel on an export folder give the features of
``arctic_vit.normalize_for`` + timm; the processor refuses inputs that would be silently wrong; the pipeline's limit
is stated in the card."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import arctic_vit
from arctic_vit.corpus import CorpusContract

transformers = pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

NAME = "arctic_mae_vit_tiny_patch16_224"
CORPUS = CorpusContract(("blue", "green", "red", "nir"), 11, (0.12, 0.15, 0.1, 0.3), (0.05, 0.06, 0.07, 0.1))
TOLERANCE = dict(atol=1e-5, rtol=1e-5)  # float32, the same ops in a different order of modules


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(3)
    source = timm.create_model(NAME, img_size=32).eval()
    return arctic_vit.export_folder(NAME, source, tmp_path_factory.mktemp("export"), corpus=CORPUS)


@pytest.fixture(scope="module")
def processor(folder):
    return transformers.AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=True)


def test_processor_and_automodel_match_normalize_for_and_timm(folder, processor):
    """11-bit DN -> the same pooled and token features through both stacks (tolerance 1e-5)."""
    dn = torch.randint(0, 2048, (2, 4, 48, 32), generator=torch.Generator().manual_seed(0)).to(torch.int16)
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    inputs = processor(dn.numpy(), return_tensors="pt")
    expected_input = arctic_vit.normalize_for(timm_model)(dn)
    torch.testing.assert_close(inputs["pixel_values"], expected_input, **TOLERANCE)
    with torch.no_grad():
        out = model(**inputs)
        torch.testing.assert_close(out.pooler_output, timm_model(expected_input), **TOLERANCE)
        torch.testing.assert_close(out.last_hidden_state, timm_model.forward_features(expected_input), **TOLERANCE)
    # hand-computed: DN 2047 in band 0 -> (1 - 0.12) / 0.05 = 17.6
    one = np.zeros((4, 16, 16), dtype=np.uint16)
    one[0] = 2047
    assert processor(one)["pixel_values"][0, 0, 0, 0] == pytest.approx(17.6, rel=1e-6)
    assert processor(one.transpose(1, 2, 0), input_data_format="channels_last")["pixel_values"][0, 0, 0, 0] == \
        pytest.approx(17.6, rel=1e-6)


@pytest.mark.parametrize(("image", "message"), [
    (lambda: PIL.new("RGBA", (32, 32)), "alpha channel is not a band"),
    (lambda: PIL.new("RGB", (32, 32)), "mode RGB"),
    (lambda: np.zeros((3, 32, 32), dtype=np.uint16), "3 channels"),
    (lambda: np.full((4, 32, 32), 4000, dtype=np.uint16), "11-bit"),
    (lambda: np.zeros((4, 30, 32), dtype=np.uint16), "multiple of the 16-px patch"),
    (lambda: np.full((4, 32, 32), np.nan, dtype=np.float32), "NaN"),
])
def test_processor_refuses_inputs_that_would_be_silently_wrong(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor(image())


def test_processor_reads_the_contract_from_config_json(folder, processor):
    """No second copy: the processor's bands, bit depth and statistics are config.json's corpus contract."""
    assert "preprocessor_config.json" not in {p.name for p in folder.iterdir()}
    contract = CorpusContract.read(folder / "config.json")
    assert contract == CORPUS
    assert (processor.bands, processor.bit_depth) == (list(CORPUS.bands), 11)
    assert (tuple(processor.image_mean), tuple(processor.image_std)) == (CORPUS.mean, CORPUS.std)


def test_pipeline_limit_is_stated_in_the_card(folder, processor):
    """The image-feature-extraction pipeline opens every input as an RGB PIL image: a 4-band array is refused by
    transformers, an RGBA image (converted to RGB by the pipeline) by our processor; the card tells users to call
    processor + model instead."""
    pipe = transformers.pipeline("image-feature-extraction", model=str(folder), trust_remote_code=True)
    with pytest.raises((TypeError, ValueError)):
        pipe(np.zeros((4, 32, 32), dtype=np.uint16))
    with pytest.raises(ValueError, match="PIL image of mode RGB cannot feed this model"):
        pipe(PIL.new("RGBA", (32, 32)))
    card = (folder / "README.md").read_text()
    assert 'pipeline("image-feature-extraction")` does not work' in card
    assert 'AutoImageProcessor.from_pretrained("PATH_OR_REPO", trust_remote_code=True)' in card
