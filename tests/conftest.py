"""A tiny ITA configuration shared by the tests: a `test_convnext` CLIP trunk and a 2-layer text tower."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from configuration_ita import ITAConfig
from modeling_ita.training.synthetic import toy_clip_config

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each avoids oversubscription, which stalls torch.
    torch.set_num_threads(1)

TINY_CLIP_CONFIG = toy_clip_config(width=32, heads=2)

TINY_TRAIN_VOCABULARY = ["cat,kitty", "dog", "sofa,couch", "wall", "grass", "sky"]


def tiny_config(**overrides):
    """ITA at toy size; `tiny_config(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)`
    gives FC-CLIP."""
    values = dict(
        clip_config=TINY_CLIP_CONFIG,
        num_queries=6,
        num_dominant_categories=4,
        hidden_dim=32,
        pixel_decoder_dim=32,
        mask_dim=32,
        decoder_layers=3,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        pixel_decoder_encoder_layers=2,
        pixel_decoder_attention_heads=4,
        pixel_decoder_num_points=2,
        pixel_decoder_ffn_dim=64,
        group_norm_groups=8,
        dominant_category_image_size=32,
        train_vocabulary=TINY_TRAIN_VOCABULARY,
        prompt_templates=["a photo of a {}.", "There is a {} in the scene"],
        train_num_points=64,
    )
    values.update(overrides)
    return ITAConfig(**values)


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def fcclip_config():
    return tiny_config(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _vocabulary_cache(tmp_path_factory):
    """Encoded vocabularies go to a folder of this test session, never to the user's Hugging Face home (the
    variable reaches the commands the tests run in subprocesses too)."""
    previous = os.environ.get("ITA_VOCABULARY_CACHE")
    os.environ["ITA_VOCABULARY_CACHE"] = str(tmp_path_factory.mktemp("vocabulary-cache"))
    yield
    if previous is None:
        os.environ.pop("ITA_VOCABULARY_CACHE", None)
    else:
        os.environ["ITA_VOCABULARY_CACHE"] = previous


def save_tiny_model(folder, size=None, spread_weights=False, seed=0):
    """Save a tiny ITA and its processor into `folder`, loadable with AutoModel/AutoProcessor.

    `spread_weights` redraws the weight matrices with std 1: at their init scale the random tiny model gives
    every pixel one class, which hides bugs that only show with several classes."""
    from image_processing_ita import ITAImageProcessor
    from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

    torch.manual_seed(seed)
    model = ITAForOpenVocabSegmentation(tiny_config())
    if spread_weights:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim > 1:
                    parameter.normal_(0.0, 1.0)
    model.save_pretrained(folder)
    size = size or {"shortest_edge": 96, "longest_edge": 160}
    ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config, size=size)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny ITA + processor (shortest edge 96, longest 160), shared by the tests that load from disk."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-ita"))
