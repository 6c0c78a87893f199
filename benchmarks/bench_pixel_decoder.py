"""The pixel decoder at full size (ConvNeXt-L channels, an 800x1088 input), before and after two speed-ups:

- the multi-scale deformable attention core against its first version (kept below as the baseline), on the
  shapes of one encoder layer;
- the whole pixel decoder with its encoder layers run on all tokens at once (as before) or in chunks of
  `ENCODER_TOKEN_CHUNK` tokens (the current code).

Both versions of each are timed alternately in one process and the script prints the ratios and the largest
difference of their outputs.

    python benchmarks/bench_pixel_decoder.py --threads 2 --repeats 3
"""

import argparse

import torch
import torch.nn.functional as F
from measure import alternate, machine_description, set_threads

from configuration_ita import ITAConfig
from modeling_ita import kernels
from modeling_ita.kernels import multi_scale_deformable_attention
from modeling_ita.pixel_decoder import ITAPixelDecoder

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
    heads, head_dim = (
        config.pixel_decoder_attention_heads,
        config.pixel_decoder_dim // config.pixel_decoder_attention_heads,
    )
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
    print(
        f"  first {core['first']:.3f}  current {core['current']:.3f}  "
        f"RATIO first/current {core['first'] / core['current']:.2f}  max abs diff {(first - current).abs().max():.2e}"
    )

    # The whole pixel decoder, its encoder layers run on all tokens at once or in chunks of tokens.
    decoder = ITAPixelDecoder(config, list(CONVNEXT_L_CHANNELS)).eval()
    with torch.no_grad():  # non-zero offsets and weights, as in a trained model (they start at zero)
        for layer in decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.01)
            layer.self_attn.attention_weights.weight.normal_(0, 0.01)
    features = [torch.randn(1, c, height // s, width // s) for c, s in zip(CONVNEXT_L_CHANNELS, STRIDES)]

    def run(chunked):
        # All tokens at once: the fast path with one chunk holding every token.
        chunk, kernels.ENCODER_TOKEN_CHUNK = (
            kernels.ENCODER_TOKEN_CHUNK,
            kernels.ENCODER_TOKEN_CHUNK if chunked else 10**9,
        )
        try:
            with torch.no_grad():
                decoded = decoder(features)
            return decoded.mask_features, decoded.multi_scale_features
        finally:
            kernels.ENCODER_TOKEN_CHUNK = chunk

    mask_unchunked, maps_unchunked = run(chunked=False)
    mask_chunked, maps_chunked = run(chunked=True)
    diff = max(
        (a - b).abs().max().item() for a, b in zip([mask_unchunked, *maps_unchunked], [mask_chunked, *maps_chunked])
    )
    whole = alternate({"all tokens at once": lambda: run(False), "token chunks": lambda: run(True)}, args.repeats)
    print(
        f"\nwhole pixel decoder ({config.pixel_decoder_encoder_layers} encoder layers + FPN), input {height}x{width} "
        f"(median s):"
    )
    print(
        f"  encoder layers on all tokens at once {whole['all tokens at once']:.2f}  in chunks of "
        f"{kernels.ENCODER_TOKEN_CHUNK} tokens (current) {whole['token chunks']:.2f}"
    )
    print(f"  RATIO {whole['all tokens at once'] / whole['token chunks']:.2f}  max abs diff of outputs {diff:.2e}")


if __name__ == "__main__":
    main()
