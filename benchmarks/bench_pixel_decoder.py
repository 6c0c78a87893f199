"""The pixel decoder at full size (ConvNeXt-L channels, an 800x1088 input): the current multi-scale deformable
attention against its first version (kept below as the baseline), alone and inside the whole pixel decoder (where
the first version also handed channels-last views of the encoded maps to the FPN's upsampling).

Both versions are timed alternately in one process and the script prints the ratios and the largest
difference of their outputs.

    python benchmarks/bench_pixel_decoder.py --threads 2 --repeats 3
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from measure import machine_description, set_threads

from configuration_ita import ITAConfig
from modeling_ita import pixel_decoder as pixel_decoder_module
from modeling_ita.pixel_decoder import ITAPixelDecoder, multi_scale_deformable_attention

CONVNEXT_L_CHANNELS = (192, 384, 768, 1536)
STRIDES = (4, 8, 16, 32)


def first_multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights):
    """The first version (commit a7b64cd): query-major grids, samples [B*heads, head_dim, Lq, points] weighted
    by a broadcast product and summed over the last axis."""
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(height), int(width)) for height, width in spatial_shapes]
    value_per_level = value.split([height * width for height, width in shapes], dim=1)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    weights = attention_weights.to(value.dtype).transpose(1, 2).flatten(0, 1)
    output = None
    for level, (height, width) in enumerate(shapes):
        level_value = value_per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_output = (samples * weights[:, None, :, level]).sum(-1)
        output = level_output if output is None else output + level_output
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def alternate(functions, repeats):
    """Median seconds of each function, runs interleaved (after one warm-up each) so drift hits all alike."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1088), metavar=("HEIGHT", "WIDTH"))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print(machine_description(args.threads))
    torch.manual_seed(0)
    config = ITAConfig()
    height, width = args.size

    # The core alone, on the shapes of one encoder layer.
    shapes = [(height // s, width // s) for s in (32, 16, 8)]
    num_tokens = sum(h * w for h, w in shapes)
    heads, head_dim = config.pixel_decoder_attention_heads, config.pixel_decoder_dim // config.pixel_decoder_attention_heads
    levels, points = config.num_feature_levels, config.pixel_decoder_num_points
    value = torch.randn(1, num_tokens, heads, head_dim)
    locations = torch.rand(1, num_tokens, heads, levels, points, 2) * 1.2 - 0.1  # some fall outside
    weights = torch.rand(1, num_tokens, heads, levels, points).softmax(-1)
    with torch.no_grad():
        first = first_multi_scale_deformable_attention(value, shapes, locations, weights)
        current = multi_scale_deformable_attention(value, shapes, locations, weights)
        core = alternate(
            {
                "first": lambda: first_multi_scale_deformable_attention(value, shapes, locations, weights),
                "current": lambda: multi_scale_deformable_attention(value, shapes, locations, weights),
            },
            args.repeats,
        )
    print(f"\ndeformable attention core, {num_tokens} queries, levels {shapes} (median s):")
    print(f"  first {core['first']:.3f}  current {core['current']:.3f}  "
          f"RATIO first/current {core['first'] / core['current']:.2f}  max abs diff {(first - current).abs().max():.2e}")

    # The whole pixel decoder with either core.
    decoder = ITAPixelDecoder(config, list(CONVNEXT_L_CHANNELS)).eval()
    features = [torch.randn(1, c, height // s, width // s) for c, s in zip(CONVNEXT_L_CHANNELS, STRIDES)]

    transformer_forward = decoder.transformer.forward

    def channels_last_maps(*inputs):
        # The first version returned the encoded maps as views of the [B, S, d] tokens (channels-last strides);
        # bilinear upsampling of such a map to stride 4 was the slow part. Rebuilt here from the current
        # output the way the first version made them (the extra concatenation costs a few milliseconds).
        maps = transformer_forward(*inputs)
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        levels = tokens.split([m.shape[-2] * m.shape[-1] for m in maps], dim=1)
        return [level.transpose(1, 2).reshape(m.shape) for level, m in zip(levels, maps)]

    def run_with(core_function, first_layout=False):
        pixel_decoder_module.multi_scale_deformable_attention = core_function
        if first_layout:
            decoder.transformer.forward = channels_last_maps
        try:
            with torch.no_grad():
                return decoder(features)
        finally:
            pixel_decoder_module.multi_scale_deformable_attention = multi_scale_deformable_attention
            decoder.transformer.forward = transformer_forward

    mask_first, maps_first = run_with(first_multi_scale_deformable_attention, first_layout=True)
    mask_current, maps_current = run_with(multi_scale_deformable_attention)
    diff = max((a - b).abs().max().item() for a, b in zip([mask_first, *maps_first], [mask_current, *maps_current]))
    whole = alternate(
        {
            "first": lambda: run_with(first_multi_scale_deformable_attention, first_layout=True),
            "first core, contiguous maps": lambda: run_with(first_multi_scale_deformable_attention),
            "current": lambda: run_with(multi_scale_deformable_attention),
        },
        args.repeats,
    )
    print(f"\nwhole pixel decoder ({config.pixel_decoder_encoder_layers} encoder layers + FPN), input {height}x{width} "
          f"(median s):")
    print(f"  first {whole['first']:.2f}  first core with contiguous maps {whole['first core, contiguous maps']:.2f}  "
          f"current {whole['current']:.2f}")
    print(f"  RATIO first/current {whole['first'] / whole['current']:.2f}  max abs diff of outputs {diff:.2e}")


if __name__ == "__main__":
    main()
