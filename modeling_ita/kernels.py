"""Speed kernels of the model, each beside the plain formula it computes.

The modules of the paper's figure (`pixel_decoder.py`, `aggregation_decoder.py`, `layers.py`) and the image
call these by plain names and read as the paper computes. Every kernel gives its reference's numbers
up to float rounding: a `*_reference` function here, or the torch function its docstring names
(`tests/test_kernels.py` checks each pair). What each one saves is measured in `benchmarks/README.md`.
"""

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ENCODER_TOKEN_CHUNK",
    "MASK_POOL_QUERY_CHUNK",
    "deformable_value_maps",
    "sample_value_maps",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_reference",
    "deformable_attention",
    "deformable_attention_reference",
    "token_chunked",
    "conv2d",
    "tokens_to_maps",
    "resize_to_levels",
    "mask_pool",
    "mask_pool_reference",
]

# Tokens per chunk of a deformable encoder layer (`token_chunked`); the result depends on it only through
# float rounding. Chosen by measurement (benchmarks/README.md).
ENCODER_TOKEN_CHUNK = 2048

# Queries binarised at a time by `mask_pool`: bounds the float copy of the masks.
MASK_POOL_QUERY_CHUNK = 32


# ----------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (pixel decoder)
# ----------------------------------------------------------------------------------------------------------


def deformable_value_maps(value: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """The levels of `value` `[B, S, heads, head_dim]` (flattened row-major, concatenated) as maps
    `[B * heads, head_dim, h, w]`, the input of `sample_value_maps`: built once, sampled by every chunk of queries.

    The maps are channels-last in memory (a head's channels contiguous at each pixel), so a bilinear sample reads
    each corner's channels from one or two cache lines.
    """
    batch, _, heads, head_dim = value.shape
    shapes = _int_pairs(spatial_shapes)
    return [
        level.view(batch, height, width, heads, head_dim)
        .permute(0, 3, 1, 2, 4)
        .reshape(batch * heads, height, width, head_dim)
        .permute(0, 3, 1, 2)
        for level, (height, width) in zip(value.split([height * width for height, width in shapes], dim=1), shapes)
    ]


def _int_pairs(spatial_shapes: Sequence[tuple[int, int]] | Tensor) -> list[tuple[int, int]]:
    """`(height, width)` pairs as Python ints; sizes that are already ints (or symbolic sizes while
    `torch.export` traces, which `int()` would freeze to the example's) are kept as they are."""
    return [
        (height, width) if isinstance(height, (int, torch.SymInt)) else (int(height), int(width))
        for height, width in spatial_shapes
    ]


def sample_value_maps(value_maps: list[Tensor], sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples of the maps from `deformable_value_maps`; arguments and result as in
    `multi_scale_deformable_attention`.

    The queries go last: `grid_sample` then reads a contiguous grid and writes one contiguous row of queries per
    channel and point, and the sum over points is a few in-place multiply-adds. Inputs already laid out
    queries-last (as `deformable_attention` builds them) are not copied.
    """
    batch, num_queries, heads, num_levels, num_points, _ = sampling_locations.shape
    head_dim = value_maps[0].shape[1]
    dtype = value_maps[0].dtype
    # grid_sample addresses a map with [-1, 1] corners; with align_corners=False, -1 and 1 are the outer pixel
    # edges, the convention of the [0, 1] locations.
    grids = (2 * sampling_locations - 1).to(dtype).permute(0, 2, 3, 4, 1, 5).contiguous()
    grids = grids.view(batch * heads, num_levels, num_points, num_queries, 2)
    weights = attention_weights.to(dtype).permute(0, 2, 3, 4, 1).contiguous()
    weights = weights.view(batch * heads, 1, num_levels, num_points, num_queries)
    output = value_maps[0].new_zeros(batch * heads, head_dim, num_queries)
    for level, level_value in enumerate(value_maps):
        samples = F.grid_sample(
            level_value, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )  # [B*heads, head_dim, points, Lq]
        if torch.compiler.is_exporting():
            # One product and one sum over the points per level: exported, each in-place multiply-add below
            # becomes a slice, a product and a sum (onnxruntime: 1.3 s of the full-size pixel decoder's 3.8 s).
            output = output + (samples * weights[:, :, level]).sum(dim=2)
            continue
        for point in range(num_points):
            output.addcmul_(samples[:, :, point], weights[:, :, level, point])
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def multi_scale_deformable_attention(
    value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Weighted sum of bilinear samples taken from several feature levels.

    Args:
        value: `[B, S, heads, head_dim]`, the levels flattened row-major and concatenated.
        spatial_shapes: `(height, width)` of each level, in the order of `value`; int pairs or a `[levels, 2]`
            tensor.
        sampling_locations: `[B, Lq, heads, levels, points, 2]`, (x, y) in [0, 1] relative to each level (0 and 1
            are the outer edges of the border pixels); points outside read zeros.
        attention_weights: `[B, Lq, heads, levels, points]`.

    Returns:
        `[B, Lq, heads * head_dim]`, the heads concatenated.
    """
    return sample_value_maps(deformable_value_maps(value, spatial_shapes), sampling_locations, attention_weights)


def multi_scale_deformable_attention_reference(
    value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """The plain formula of `multi_scale_deformable_attention`: per level, `grid_sample` at a query-major grid,
    times the weights, summed over levels and points."""
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(height), int(width)) for height, width in spatial_shapes]
    levels = value.split([height * width for height, width in shapes], dim=1)
    output = value.new_zeros(batch * heads, head_dim, num_queries)
    for level, (height, width) in enumerate(shapes):
        maps = levels[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        grid = (2 * sampling_locations[:, :, :, level] - 1).transpose(1, 2).reshape(batch * heads, num_queries, num_points, 2)
        samples = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, num_points)
        output = output + (samples * weights).sum(dim=-1)  # [B*heads, head_dim, Lq]
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def _level_normaliser(spatial_shapes: Sequence[tuple[int, int]], like: Tensor) -> Tensor:
    """`[levels, 2]` (width, height) of each level: divides offsets in pixels into [0, 1] units."""
    return torch.tensor([[width, height] for height, width in spatial_shapes], dtype=like.dtype, device=like.device)


def deformable_attention(
    value_maps: list[Tensor],
    reference_points: Tensor,
    sampling_offsets: Tensor,
    attention_logits: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """Deformable attention of a set of queries over the maps from `deformable_value_maps`.

    The weights are a softmax over each head's levels and points; a point samples at its query's reference point
    plus its offset, in pixels of its level.

    Args:
        value_maps: from `deformable_value_maps`.
        reference_points: `[B or 1, Lq, 2]`, (x, y) in [0, 1], shared by all levels.
        sampling_offsets: `[B, Lq, heads, levels, points, 2]`, (x, y) in pixels of each level.
        attention_logits: `[B, Lq, heads, levels * points]`.
        spatial_shapes: `(height, width)` of each level.

    Returns:
        `[B, Lq, heads * head_dim]`.
    """
    batch, num_queries, heads, levels, points, _ = sampling_offsets.shape
    # Laid out queries-last, as `sample_value_maps` reads them, before any arithmetic: the softmax then runs over
    # a non-innermost axis with the queries contiguous, and no copy follows. Same values, same order of operations.
    weights = attention_logits.permute(0, 2, 3, 1).contiguous().softmax(dim=2)  # [B, heads, levels * points, Lq]
    weights = weights.view(batch, heads, levels, points, num_queries).permute(0, 4, 1, 2, 3)
    if torch.compiler.is_exporting():
        # The same arithmetic on rows of [B, Lq, heads * levels * points * 2] offsets, with the normaliser and the
        # reference points repeated to the rows' length: exported, the broadcasts below become loops over (x, y)
        # pairs (onnxruntime: 26 ms of each full-size encoder layer's 320 ms), these become whole rows.
        rows = sampling_offsets.reshape(batch, num_queries, -1)
        normaliser = _level_normaliser(spatial_shapes, rows)[None, :, None, :].expand(heads, levels, points, 2)
        reference = reference_points.repeat(1, 1, heads * levels * points)  # (x, y) pairs, as the offsets
        locations = (rows / normaliser.reshape(-1) + reference).view(sampling_offsets.shape)
        return sample_value_maps(value_maps, locations, weights)
    offsets = sampling_offsets.permute(0, 2, 3, 4, 1, 5).contiguous()  # [B, heads, levels, points, Lq, 2]
    normaliser = _level_normaliser(spatial_shapes, offsets)
    locations = offsets.div_(normaliser[:, None, None, :]).add_(reference_points[:, None, None, None])
    return sample_value_maps(value_maps, locations.permute(0, 4, 1, 2, 3, 5), weights)


def deformable_attention_reference(
    value: Tensor,
    reference_points: Tensor,
    sampling_offsets: Tensor,
    attention_logits: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """The plain formula of `deformable_attention`, from the values `[B, S, heads, head_dim]`."""
    batch, num_queries, heads, levels, points, _ = sampling_offsets.shape
    weights = attention_logits.softmax(dim=-1).view(batch, num_queries, heads, levels, points)
    normaliser = _level_normaliser(spatial_shapes, sampling_offsets)
    locations = reference_points[:, :, None, None, None, :] + sampling_offsets / normaliser[:, None, :]
    return multi_scale_deformable_attention_reference(value, spatial_shapes, locations, weights)


# ----------------------------------------------------------------------------------------------------------
# Token-wise layers, convolutions, layouts and resizes
# ----------------------------------------------------------------------------------------------------------


def token_chunked(function: Callable[..., Tensor], *per_token: Tensor, chunk_size: int | None = None) -> Tensor:
    """`function(*per_token)` computed on chunks of `chunk_size` tokens (dim 1, default `ENCODER_TOKEN_CHUNK`).

    For a function that computes every token on its own (a deformable encoder layer once its values are
    projected): the same result as one call on all tokens, but each chunk's intermediates stay small enough to
    live in the CPU's caches and the allocator's reused memory. Inputs may broadcast over the batch (dim 0).
    """
    chunk_size = chunk_size or ENCODER_TOKEN_CHUNK
    if torch.compiler.is_exporting():  # one call: a loop over a symbolic token count would freeze it
        return function(*per_token)
    num_tokens = per_token[0].shape[1]
    output = None
    for start in range(0, num_tokens, chunk_size):
        tokens = slice(start, start + chunk_size)
        result = function(*(tensor[:, tokens] for tensor in per_token))
        if output is None:
            if chunk_size >= num_tokens:
                return result
            output = result.new_empty((result.shape[0], num_tokens, *result.shape[2:]))
        output[:, tokens] = result
    return output


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | tuple[int, int] = 0) -> Tensor:
    """`F.conv2d` (stride 1); a 1x1 kernel runs as one matrix product per image, faster on CPU at stride 4."""
    # Exported graphs take the plain convolution: the loop over images would freeze the batch size.
    if weight.shape[-2:] != (1, 1) or x.dim() != 4 or torch.compiler.is_exporting():
        return F.conv2d(x, weight, bias, padding=padding)
    batch, channels, height, width = x.shape
    matrix = weight.view(weight.shape[0], channels)
    products = [matrix @ image.reshape(channels, -1) for image in x]
    x = products[0][None] if batch == 1 else torch.stack(products)  # stacking one would copy it
    x = x.view(batch, weight.shape[0], height, width)
    # In place: `addmm` would first copy the broadcast bias into a fresh output.
    return x if bias is None else x.add_(bias[:, None, None])


def tokens_to_maps(tokens: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Tokens `[B, S, d]` of levels flattened row-major and concatenated -> maps `[B, d, h, w]`.

    The maps are copied channels-first: as views of the tokens they would be channels-last, on which PyTorch's
    CPU bilinear upsampling (the FPN's next step) is much slower.
    """
    levels = tokens.split([height * width for height, width in spatial_shapes], dim=1)
    return [
        level.transpose(1, 2).reshape(level.shape[0], -1, height, width).contiguous()
        for level, (height, width) in zip(levels, spatial_shapes)
    ]


def resize_to_levels(features: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """`features` `[B, C, H, W]` resized bilinearly (align_corners=False) to each of `sizes`: `F.interpolate`.

    PyTorch's CPU kernel converts a channels-first input to channels-last on every call that shrinks it more than
    twofold; converting once for all such sizes gives the same maps for one copy instead of one per size.
    """
    height, width = features.shape[-2:]
    channels_last = None
    resized = []
    for size in sizes:
        if tuple(size) == (height, width):
            resized.append(features)
            continue
        source = features
        if 2 * size[0] < height or 2 * size[1] < width:
            if channels_last is None:
                channels_last = features.contiguous(memory_format=torch.channels_last)
            source = channels_last
        resized.append(F.interpolate(source, size=tuple(size), mode="bilinear", align_corners=False))
    return resized


# ----------------------------------------------------------------------------------------------------------
# Mask pooling (class head, out-of-vocabulary classifier)
# ----------------------------------------------------------------------------------------------------------


def mask_pool(features: Tensor, mask_logits: Tensor, query_chunk: int | None = None) -> Tensor:
    """Average of `features` `[B, C, H, W]` inside each binarised mask (`mask_logits > 0`) -> `[B, Q, C]`.

    Masks are resized bilinearly to the feature size first and detached, so no gradient flows through the mask
    (as in FC-CLIP's `MaskPooling`). Queries are binarised `query_chunk` at a time (default
    `MASK_POOL_QUERY_CHUNK`), so the float copy of the masks stays small.
    """
    query_chunk = query_chunk or MASK_POOL_QUERY_CHUNK
    with torch.no_grad():
        if mask_logits.shape[-2:] != features.shape[-2:]:
            mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
        binary = mask_logits > 0
    pooled = []
    for start in range(0, binary.shape[1], query_chunk):
        mask = binary[:, start : start + query_chunk].to(features.dtype)
        area = mask.sum(dim=(-2, -1)) + 1e-8  # [B, q]
        # The pooled sums divided by the areas: no second, area-normalised copy of the masks.
        pooled.append(torch.einsum("bchw,bqhw->bqc", features, mask) / area[..., None])
    return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]


def mask_pool_reference(features: Tensor, mask_logits: Tensor) -> Tensor:
    """The plain formula of `mask_pool`: area-normalised binary masks times the features."""
    with torch.no_grad():
        mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
        masks = (mask_logits > 0).to(features.dtype)
        masks = masks / (masks.sum(dim=(-2, -1), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", features, masks)
