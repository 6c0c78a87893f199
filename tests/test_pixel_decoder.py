import math

import conftest
import pytest
import torch
from transformers.initialization import guard_torch_init_functions

from configuration_ita import ITAConfig
from modeling_ita.pixel_decoder import (
    ITAMultiScaleDeformableAttention,
    ITAPixelDecoder,
    ITAPixelDecoderEncoder,
    ITAPixelDecoderOutput,
)

TINY_CHANNELS = [8, 16, 24, 32]  # res2..res5
CONVNEXT_L_CHANNELS = [192, 384, 768, 1536]
STRIDES = [4, 8, 16, 32]


@pytest.fixture
def tiny_config():
    # The shared tiny configuration: 32 channels, 4 heads, 2 points, 2 encoder layers, feed-forward 64.
    return conftest.tiny_config()


def backbone_features(batch, height, width, channels=TINY_CHANNELS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, height // s, width // s, generator=generator) for c, s in zip(channels, STRIDES)]


def perturb_parameters(module, seed=0):
    """Move every parameter off its initial value: zero-initialised offsets would hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def test_offsets_are_in_pixels_of_each_level(tiny_config):
    """With one offset of (+1, 0) or (0, +1) pixel, a query reads its right or lower neighbour."""
    attention = ITAMultiScaleDeformableAttention(tiny_config)
    dim = tiny_config.pixel_decoder_dim
    shapes = [(3, 5), (2, 2), (1, 1)]  # a non-square first level catches a swapped (W, H) normaliser
    level0 = 3 * 5
    value = torch.randn(1, sum(h * w for h, w in shapes), dim)
    with torch.no_grad():
        for projection in (attention.value_proj, attention.output_proj):
            projection.weight.copy_(torch.eye(dim))
            projection.bias.zero_()
        attention.sampling_offsets.weight.zero_()
        attention.attention_weights.weight.zero_()
        # All the softmax mass on level 0 (logits are [heads, levels, points]).
        logits = torch.full((attention.num_heads, attention.num_levels, attention.num_points), -1e4)
        logits[:, 0] = 0.0
        attention.attention_weights.bias.copy_(logits.flatten())
    x = (torch.arange(5) + 0.5) / 5
    y = (torch.arange(3) + 0.5) / 3
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    reference = torch.stack([grid_x.flatten(), grid_y.flatten()], -1)[None]  # [1, 15, 2]
    query = torch.randn(1, level0, dim)
    level_map = value[0, :level0].view(3, 5, dim)
    for step, expected in (
        ((1.0, 0.0), torch.cat([level_map[:, 1:], torch.zeros(3, 1, dim)], dim=1)),
        ((0.0, 1.0), torch.cat([level_map[1:], torch.zeros(1, 5, dim)], dim=0)),
    ):
        with torch.no_grad():
            attention.sampling_offsets.bias.copy_(
                torch.tensor(step).repeat(attention.num_heads * attention.num_levels * attention.num_points)
            )
        output = attention(query, value, reference, shapes)
        torch.testing.assert_close(output[0], expected.reshape(level0, dim), atol=1e-5, rtol=1e-5)


def test_reference_points_are_pixel_centres_of_each_level():
    points = ITAPixelDecoderEncoder.reference_points([(2, 4), (1, 1)], torch.device("cpu"))
    expected = [
        [0.125, 0.25],
        [0.375, 0.25],
        [0.625, 0.25],
        [0.875, 0.25],  # row 0 of the 2 x 4 level, as (x, y)
        [0.125, 0.75],
        [0.375, 0.75],
        [0.625, 0.75],
        [0.875, 0.75],
        [0.5, 0.5],  # the single pixel of the 1 x 1 level
    ]
    torch.testing.assert_close(points, torch.tensor([expected]))


def test_output_shapes_and_strides(tiny_config):
    decoder = ITAPixelDecoder(tiny_config, TINY_CHANNELS).eval()
    features = backbone_features(2, 64, 96)
    decoded = decoder(features)
    assert isinstance(decoded, ITAPixelDecoderOutput) and isinstance(decoded.multi_scale_features, tuple)
    mask_features, multi_scale = decoded.mask_features, decoded.multi_scale_features
    assert mask_features.shape == (2, tiny_config.mask_dim, 64 // 4, 96 // 4)
    assert len(multi_scale) == tiny_config.num_feature_levels
    for level_map, stride in zip(multi_scale, (32, 16, 8)):
        assert level_map.shape == (2, tiny_config.pixel_decoder_dim, 64 // stride, 96 // stride)
    attention = decoder.transformer.encoder.layers[0].self_attn
    heads, levels, points = 4, 3, 2
    assert attention.sampling_offsets.out_features == heads * levels * points * 2
    assert attention.attention_weights.out_features == heads * levels * points
    assert len(decoder.transformer.encoder.layers) == tiny_config.pixel_decoder_encoder_layers


def test_full_size_parameter_count():
    with torch.device("meta"):
        decoder = ITAPixelDecoder(ITAConfig(), CONVNEXT_L_CHANNELS)
    assert sum(p.numel() for p in decoder.parameters()) == 5_790_144


# Mask2Former's `sem_seg_head.pixel_decoder.*` keys and shapes for the ConvNeXt-L FC-CLIP / ITA models.
ORIGINAL_KEYS = {
    "input_proj.0.0.weight": (256, 1536, 1, 1),
    "input_proj.0.0.bias": (256,),
    "input_proj.0.1.weight": (256,),
    "input_proj.0.1.bias": (256,),
    "input_proj.1.0.weight": (256, 768, 1, 1),
    "input_proj.1.0.bias": (256,),
    "input_proj.1.1.weight": (256,),
    "input_proj.1.1.bias": (256,),
    "input_proj.2.0.weight": (256, 384, 1, 1),
    "input_proj.2.0.bias": (256,),
    "input_proj.2.1.weight": (256,),
    "input_proj.2.1.bias": (256,),
    "transformer.level_embed": (3, 256),
    "mask_features.weight": (256, 256, 1, 1),
    "mask_features.bias": (256,),
    "adapter_1.weight": (256, 192, 1, 1),
    "adapter_1.norm.weight": (256,),
    "adapter_1.norm.bias": (256,),
    "layer_1.weight": (256, 256, 3, 3),
    "layer_1.norm.weight": (256,),
    "layer_1.norm.bias": (256,),
}
ORIGINAL_ENCODER_LAYER_KEYS = {
    "self_attn.sampling_offsets.weight": (192, 256),
    "self_attn.sampling_offsets.bias": (192,),
    "self_attn.attention_weights.weight": (96, 256),
    "self_attn.attention_weights.bias": (96,),
    "self_attn.value_proj.weight": (256, 256),
    "self_attn.value_proj.bias": (256,),
    "self_attn.output_proj.weight": (256, 256),
    "self_attn.output_proj.bias": (256,),
    "norm1.weight": (256,),
    "norm1.bias": (256,),
    "linear1.weight": (1024, 256),
    "linear1.bias": (1024,),
    "linear2.weight": (256, 1024),
    "linear2.bias": (256,),
    "norm2.weight": (256,),
    "norm2.bias": (256,),
}
for _layer in range(6):
    for _suffix, _shape in ORIGINAL_ENCODER_LAYER_KEYS.items():
        ORIGINAL_KEYS[f"transformer.encoder.layers.{_layer}.{_suffix}"] = _shape


def test_state_dict_matches_original_keys_and_shapes():
    with torch.device("meta"):
        decoder = ITAPixelDecoder(ITAConfig(), CONVNEXT_L_CHANNELS)
    state = {name: tuple(tensor.shape) for name, tensor in decoder.state_dict().items()}
    assert len(ORIGINAL_KEYS) == 12 + 1 + 6 * 16 + 2 + 3 + 3
    assert state == ORIGINAL_KEYS


def test_runs_in_float32_under_autocast(tiny_config):
    decoder = ITAPixelDecoder(tiny_config, TINY_CHANNELS).eval()
    perturb_parameters(decoder)
    features = [f.to(torch.bfloat16) for f in backbone_features(1, 64, 64)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        decoded = decoder(features)
    mask_features, multi_scale = decoded.mask_features, decoded.multi_scale_features
    reference = decoder([f.float() for f in features])
    reference_mask, reference_multi_scale = reference.mask_features, reference.multi_scale_features
    for output, reference in zip([mask_features, *multi_scale], [reference_mask, *reference_multi_scale]):
        assert output.dtype == torch.float32
        assert torch.isfinite(output).all()
        # Identical to the float32 run: nothing inside went through bfloat16.
        torch.testing.assert_close(output, reference, atol=1e-6, rtol=1e-6)


def test_batched_equals_one_by_one(tiny_config):
    decoder = ITAPixelDecoder(tiny_config, TINY_CHANNELS).eval()
    perturb_parameters(decoder)
    first, second = backbone_features(1, 64, 96, seed=1), backbone_features(1, 64, 96, seed=2)
    batched = decoder([torch.cat(pair) for pair in zip(first, second)])
    batched_mask, batched_levels = batched.mask_features, batched.multi_scale_features
    for index, features in enumerate((first, second)):
        decoded = decoder(features)
        mask, levels = decoded.mask_features, decoded.multi_scale_features
        torch.testing.assert_close(batched_mask[index : index + 1], mask, atol=1e-5, rtol=1e-5)
        for batched_level, level in zip(batched_levels, levels):
            torch.testing.assert_close(batched_level[index : index + 1], level, atol=1e-5, rtol=1e-5)


def test_gradients_reach_sampling_offsets(tiny_config):
    decoder = ITAPixelDecoder(tiny_config, TINY_CHANNELS)
    perturb_parameters(decoder)
    decoded = decoder(backbone_features(1, 64, 64))
    mask_features, multi_scale = decoded.mask_features, decoded.multi_scale_features
    (mask_features.square().mean() + sum(level.square().mean() for level in multi_scale)).backward()
    for layer in decoder.transformer.encoder.layers:
        gradient = layer.self_attn.sampling_offsets.weight.grad
        assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_initialisation_reproduces_sampling_offset_ring():
    config = ITAConfig()  # 8 heads, 3 levels, 4 points
    attention = ITAMultiScaleDeformableAttention(config)
    ring = attention.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    for level in range(3):
        for point in range(4):
            distance = point + 1.0
            torch.testing.assert_close(ring[0, level, point], torch.tensor([distance, 0.0]))  # angle 0
            torch.testing.assert_close(ring[1, level, point], torch.tensor([distance, distance]))  # 45 degrees
            torch.testing.assert_close(ring[2, level, point], torch.tensor([0.0, distance]), atol=1e-6, rtol=0)
            torch.testing.assert_close(ring[5, level, point], torch.tensor([-distance, -distance]))  # 225 degrees
    assert attention.sampling_offsets.weight.abs().sum() == 0
    assert attention.attention_weights.weight.abs().sum() == 0
    assert attention.attention_weights.bias.abs().sum() == 0
    assert attention.value_proj.bias.abs().sum() == 0
    # xavier_uniform bound for a square d x d matrix: sqrt(6 / 2d).
    assert attention.value_proj.weight.abs().max() <= math.sqrt(6 / (2 * config.pixel_decoder_dim))


def test_reset_parameters_restores_init_and_skips_loaded_weights(tiny_config):
    decoder = ITAPixelDecoder(tiny_config, TINY_CHANNELS)
    attention = decoder.transformer.encoder.layers[0].self_attn
    ring = attention.sampling_offsets.bias.detach().clone()
    perturb_parameters(decoder)
    loaded = decoder.transformer.encoder.layers[1].self_attn.sampling_offsets.bias
    loaded_value = loaded.detach().clone()
    loaded._is_hf_initialized = True  # what transformers marks on a weight read from a checkpoint
    # transformers' init walk: children first, then their parent.
    modules = list(decoder.modules())[::-1]
    with guard_torch_init_functions():
        for module in modules:
            if hasattr(module, "_reset_parameters"):
                module._reset_parameters()
    torch.testing.assert_close(attention.sampling_offsets.bias, ring)
    assert attention.sampling_offsets.weight.abs().sum() == 0
    torch.testing.assert_close(loaded, loaded_value)
    for conv, norm in decoder.input_proj:
        assert conv.bias.abs().sum() == 0 and (norm.weight == 1).all()
    assert decoder.mask_features.bias.abs().sum() == 0
    assert (decoder.layer_1.norm.weight == 1).all() and (decoder.adapter_1.norm.bias == 0).all()
