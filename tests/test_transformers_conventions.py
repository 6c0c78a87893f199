"""ITA behaves as transformers users expect of a model: dtypes, input shapes, attention implementation, the
token-embedding methods and the task Auto class."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from transformers import AutoModel, AutoModelForUniversalSegmentation, AutoProcessor

from modeling_ita import ITAForOpenVocabSegmentation

VOCABULARY = ["cat,kitty", "sofa,couch", "wall", "sky"]
LOGITS = ("class_queries_logits", "masks_queries_logits", "out_vocabulary_logits", "ensemble_log_probs")


def processor_inputs(folder):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8))
    return AutoProcessor.from_pretrained(folder)(images=image, text=VOCABULARY, return_tensors="pt")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_reads_the_processors_float32_inputs(tiny_model_dir, dtype):
    inputs = processor_inputs(tiny_model_dir)
    assert inputs["pixel_values"].dtype == torch.float32
    assert inputs["dominant_category_pixel_values"].dtype == torch.float32
    model = AutoModel.from_pretrained(tiny_model_dir, dtype=dtype).eval()
    with torch.no_grad():
        out = model(**inputs)
    for name in LOGITS:
        logits = getattr(out, name)
        # The ensemble's log-probabilities are float32 by design (log(p + 1e-8) needs float32's range).
        assert logits.dtype == (torch.float32 if name == "ensemble_log_probs" else dtype), name
        assert torch.isfinite(logits).all(), name
    assert out.image_sizes.dtype == torch.long  # integer inputs keep their type


def test_float32_model_casts_other_floating_inputs_and_keeps_float32_ones(tiny_model_dir):
    inputs = processor_inputs(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    double = dict(inputs)
    double["pixel_values"] = inputs["pixel_values"].double()
    double["dominant_category_pixel_values"] = inputs["dominant_category_pixel_values"].double()
    with torch.no_grad():
        expected = model(**inputs)
        got = model(**double)
    for name in LOGITS:
        assert getattr(got, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=0, rtol=0)


def test_images_of_the_wrong_shape_are_refused_by_name(config):
    model = ITAForOpenVocabSegmentation(config).eval()
    image = torch.randn(3, 64, 64)
    unbatched = r"pixel_values must be \[batch, 3, height, width\].*\[3, 64, 64\].*pixel_values\[None\]"
    with pytest.raises(ValueError, match=unbatched):
        model(image, class_names=VOCABULARY)
    with pytest.raises(ValueError, match=r"pixel_values must be \[batch, 3, height, width\].*\[1, 1, 64, 64\]"):
        model(torch.randn(1, 1, 64, 64), class_names=VOCABULARY)
    with pytest.raises(ValueError, match=r"pixel_values.permute\(0, 3, 1, 2\)"):
        model(torch.randn(1, 64, 64, 3), class_names=VOCABULARY)
    with pytest.raises(ValueError, match=r"dominant_category_pixel_values must be .*\[3, 32, 32\]"):
        model(image[None], class_names=VOCABULARY, dominant_category_pixel_values=torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor"):
        model(image[None].numpy(), class_names=VOCABULARY)
    with torch.no_grad():  # the suggested fix works
        assert model(image[None], class_names=VOCABULARY).class_queries_logits.shape[0] == 1


def test_sdpa_is_declared_and_gives_the_default_outputs(tiny_model_dir):
    default = ITAForOpenVocabSegmentation.from_pretrained(tiny_model_dir).eval()
    sdpa = ITAForOpenVocabSegmentation.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    eager = ITAForOpenVocabSegmentation.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    assert sdpa.config._attn_implementation == "sdpa"
    assert default.config._attn_implementation == "sdpa"  # the default, now that it is declared
    inputs = processor_inputs(tiny_model_dir)
    with torch.no_grad():
        expected = default(**inputs)
        for model in (sdpa, eager):
            got = model(**inputs)
            for name in LOGITS:
                torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=0, rtol=0)


def test_attention_implementation_requested_in_the_config_is_accepted():
    assert ITAForOpenVocabSegmentation(tiny_config(attn_implementation="sdpa")).config._attn_implementation == "sdpa"
    # Attention weights asked for in the config come back under the default "sdpa" too: the decoder computes
    # them explicitly whenever they are asked for.
    model = ITAForOpenVocabSegmentation(tiny_config(output_attentions=True)).eval()
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), class_names=VOCABULARY)
    assert out.attentions is not None and len(out.attentions) == model.config.decoder_layers


def test_token_embedding_methods_say_why_there_are_none(config):
    model = ITAForOpenVocabSegmentation(config)
    for call in (
        model.get_input_embeddings,
        lambda: model.resize_token_embeddings(10),
        lambda: model.set_input_embeddings(torch.nn.Embedding(2, 2)),
    ):
        with pytest.raises(NotImplementedError, match="no token embeddings.*frozen CLIP.*class_names="):
            call()
    assert model.get_output_embeddings() is None  # transformers' own callers read the refusal as "none"


def test_universal_segmentation_auto_class_loads_ita(tiny_model_dir):
    model = AutoModelForUniversalSegmentation.from_pretrained(tiny_model_dir)
    assert isinstance(model, ITAForOpenVocabSegmentation)
    reference = AutoModel.from_pretrained(tiny_model_dir).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
