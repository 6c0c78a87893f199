import pytest
from conftest import tiny_config
from transformers import AutoConfig

import modeling_ita  # noqa: F401  (registers the Auto classes)
from configuration_ita import COCO_PANOPTIC_VOCABULARY, VILD_PROMPT_TEMPLATES, ITAConfig


def test_defaults_are_ita_with_convnext_large():
    config = ITAConfig()
    assert config.model_type == "ita"
    assert (config.num_dominant_categories, config.num_queries, config.decoder_self_attention) == (20, 180, False)
    assert config.total_queries == 200
    assert config.clip_config["vision_cfg"]["timm_model_name"] == "convnext_large"
    assert config.clip_embed_dim == 768
    assert len(config.prompt_templates) == 14 and config.prompt_templates[0] == "a photo of a {}."
    assert len(config.train_vocabulary) == 133


def test_fcclip_variant():
    config = ITAConfig.fcclip()
    assert (config.num_dominant_categories, config.num_queries, config.decoder_self_attention) == (0, 250, True)
    assert config.total_queries == 250


def test_round_trip_through_auto_config(tmp_path):
    config = tiny_config(ensemble_alpha=0.3, num_queries=7)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ITAConfig)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}
    assert strip(loaded.to_dict()) == strip(config.to_dict())
    assert loaded.num_queries == 7 and loaded.ensemble_alpha == 0.3
    assert loaded.clip_config == config.clip_config


def test_defaults_do_not_share_mutable_state():
    a, b = ITAConfig(), ITAConfig()
    a.clip_config["embed_dim"] = 1
    a.train_vocabulary.append("x")
    assert b.clip_config["embed_dim"] == 768 and len(b.train_vocabulary) == 133
    assert len(COCO_PANOPTIC_VOCABULARY) == 133 and len(VILD_PROMPT_TEMPLATES) == 14


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_dominant_categories": -1}, "num_dominant_categories"),
        ({"num_queries": 0}, "num_queries"),
        ({"decoder_attention_heads": 3}, "decoder_attention_heads"),
        ({"pixel_decoder_attention_heads": 5}, "pixel_decoder_attention_heads"),
        ({"group_norm_groups": 7}, "group_norm_groups"),
        ({"hidden_dim": 64}, "hidden_dim"),
        ({"ensemble_alpha": 1.5}, "ensemble_alpha"),
        ({"prompt_templates": ["no placeholder"]}, "prompt_templates"),
        ({"prompt_templates": []}, "prompt_templates"),
        ({"train_vocabulary": []}, "train_vocabulary"),
        ({"clip_config": {"embed_dim": 8}}, "clip_config"),
        ({"num_feature_levels": 4}, "num_feature_levels"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"ITAConfig\.{field}"):
        tiny_config(**overrides)


def test_vision_tower_must_be_convnext():
    clip = dict(tiny_config().clip_config)
    clip["vision_cfg"] = dict(clip["vision_cfg"], timm_model_name="vit_base_patch16_224")
    with pytest.raises(ValueError, match="ConvNeXt"):
        tiny_config(clip_config=clip)


def test_generic_transformers_names_read_and_write_the_ita_fields():
    config = ITAConfig(hidden_dim=64, pixel_decoder_dim=64, mask_dim=64, decoder_layers=5, decoder_attention_heads=4)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 5, 4)
    config.num_hidden_layers = 7
    assert config.decoder_layers == 7
    assert ITAConfig(num_attention_heads=2).decoder_attention_heads == 2


def test_unknown_config_keys_are_named_in_a_warning(tmp_path):
    from transformers.testing_utils import CaptureLogger

    import configuration_ita

    config = tiny_config()
    config.register_for_auto_class()  # auto_map, as converted folders have it
    config.use_cache = False  # as the Trainer leaves it
    config.save_pretrained(tmp_path)
    with CaptureLogger(configuration_ita.logger) as quiet:
        AutoConfig.from_pretrained(tmp_path)
    assert quiet.out == ""  # what transformers writes (version, architectures, auto_map, dtype) is not reported

    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(
        text.replace('"decoder_layers"', '"decoder_layerz"', 1).replace("{", '{\n  "colour": "red",', 1)
    )
    with CaptureLogger(configuration_ita.logger) as captured:
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert "'colour'" in captured.out
    assert "'decoder_layerz' (did you mean 'decoder_layers'?)" in captured.out
    assert loaded.decoder_layers == ITAConfig().decoder_layers  # the misspelt value was not used


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("ensemble_alpha", "high", "a finite number"),
        ("ensemble_alpha", float("nan"), "a finite number"),
        ("num_queries", "12", "an integer"),
        ("num_queries", True, "an integer"),
        ("decoder_self_attention", "yes", "true or false"),
        ("prompt_templates", "a photo of {}", "a list of strings"),
        ("train_vocabulary", 5, "a list of strings"),
        ("clip_config", "convnext", "a JSON object"),
    ],
)
def test_a_value_of_the_wrong_type_names_field_value_and_type(field, value, expected):
    with pytest.raises(ValueError, match=rf"ITAConfig\.{field}: must be {expected}.*got {value!r:.8}") as error:
        tiny_config(**{field: value})
    assert not isinstance(error.value, TypeError)


def test_a_config_json_value_of_the_wrong_type_is_named_when_loading(tmp_path):
    import json

    tiny_config().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["ensemble_alpha"] = "high"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"ITAConfig\.ensemble_alpha: must be a finite number, got 'high' \(str\)"):
        AutoConfig.from_pretrained(tmp_path)
