"""A tiny ITA configuration shared by the tests: a `test_convnext` CLIP trunk and a 2-layer text tower."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from configuration_ita import ITAConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each avoids oversubscription, which stalls torch.
    torch.set_num_threads(1)

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "test_convnext",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "mlp",
        "timm_drop": 0.0,
        "timm_drop_path": 0.0,
        "image_size": 64,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

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
