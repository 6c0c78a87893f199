"""Speed kernels of the model, each beside the plain formula it computes, and the one place that chooses between them.

The modules of the paper's figure (`pixel_decoder.py`, `aggregation_decoder.py`, `layers.py`, `dominant_categories.py`)
read as the paper computes: they call the kernels here by plain names (`kernels.deformable_attention(...)`,
`kernels.mask_pool(...)`), or carry `@use_kernel_forward(name)` on a module whose own `forward` is the plain formula
(as transformers' `use_kernel_forward_from_hub`). Each name has a reference, the plain formula, and may have a fast
path registered with `@fast_path(name)`. Which one runs is decided at call time, in this order:

1. an implementation put in place for a while with `replaced_kernels` (the ONNX exporter's export-friendly ones);
2. the fast path, while fast paths are on;
3. the reference.

Fast paths are on unless the environment sets `ITA_FAST_PATHS=0` (read at import); `use_fast_paths(False)` turns
every one of them off at once, for good or, as a context manager, for a block. Every fast path gives its
reference's numbers up to float rounding (`tests/test_kernels.py` pairs them); what each saves is measured in
`benchmarks/README.md`. The switch is process-wide, not per thread.
"""

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ENCODER_TOKEN_CHUNK",
    "FAST_PATHS_ENV",
    "MASK_POOL_QUERY_CHUNK",
    "REGISTRY",
    "KernelEntry",
    "conv2d",
    "conv2d_reference",
    "deformable_attention",
    "deformable_attention_on_maps",
    "deformable_attention_reference",
    "deformable_value_maps",
    "fast_path",
    "fast_paths_enabled",
    "implementation",
    "kernel",
    "mask_pool",
    "mask_pool_reference",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_reference",
    "replaced_kernels",
    "resize_to_levels",
    "resize_to_levels_reference",
    "queries_last_samples",
    "sample_value_maps",
    "token_chunked",
    "tokens_to_maps",
    "tokens_to_maps_reference",
    "use_fast_paths",
    "use_kernel_forward",
]

# Tokens per chunk of a deformable encoder layer (`token_chunked`); the result depends on it only through
# float rounding. Chosen by measurement (benchmarks/README.md).
ENCODER_TOKEN_CHUNK = 2048

# Queries binarised at a time by `mask_pool`: bounds the float copy of the masks.
MASK_POOL_QUERY_CHUNK = 32

# `ITA_FAST_PATHS=0` (or false, off, no) starts the process with every fast path off.
FAST_PATHS_ENV = "ITA_FAST_PATHS"

CallableT = TypeVar("CallableT", bound=Callable[..., Any])
ModuleT = TypeVar("ModuleT", bound=type[nn.Module])


# ----------------------------------------------------------------------------------------------------------
# The registry and the switch
# ----------------------------------------------------------------------------------------------------------


@dataclass
class KernelEntry:
    """What may run under one kernel name: the plain formula, and a fast path if one is registered."""

    reference: Callable[..., Any] | None = None
    fast: Callable[..., Any] | None = None


# Kernel name -> its implementations. Function kernels are named after their function, module forwards after
# their class.
REGISTRY: dict[str, KernelEntry] = {}
_REPLACED: dict[str, Callable[..., Any]] = {}


def _enabled_by_environment() -> bool:
    return os.environ.get(FAST_PATHS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


_fast_paths = _enabled_by_environment()


def fast_paths_enabled() -> bool:
    """Whether the fast paths run (else every kernel name runs its reference)."""
    return _fast_paths


class use_fast_paths:
    """Turn every fast path on or off: `use_fast_paths(False)` at once, or `with use_fast_paths(False): ...` for a
    block, after which the previous state returns (as `torch.set_grad_enabled`)."""

    def __init__(self, enabled: bool) -> None:
        global _fast_paths
        self.previous = _fast_paths
        _fast_paths = bool(enabled)

    def __enter__(self) -> "use_fast_paths":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        global _fast_paths
        _fast_paths = self.previous


def implementation(name: str) -> Callable[..., Any]:
    """The implementation a call of kernel `name` runs now (replaced, else fast if on, else reference)."""
    replaced = _REPLACED.get(name)
    if replaced is not None:
        return replaced
    entry = REGISTRY[name]
    if _fast_paths and entry.fast is not None:
        return entry.fast
    if entry.reference is None:
        raise LookupError(f"kernel {name!r} has a fast path but no reference: import the module that defines it")
    return entry.reference


def kernel(reference: CallableT, name: str | None = None) -> CallableT:
    """Register `reference` as the plain formula of kernel `name` (default: its own name) and return the function
    the figure calls, which runs the implementation the registry chooses (usable as a decorator)."""
    name = name or reference.__name__
    REGISTRY.setdefault(name, KernelEntry()).reference = reference

    @functools.wraps(reference)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return implementation(name)(*args, **kwargs)

    dispatch.__name__ = dispatch.__qualname__ = name
    return dispatch  # type: ignore[return-value]


def use_kernel_forward(name: str) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: the module's own `forward` becomes the reference of kernel `name`, and calls run the
    implementation the registry chooses (`fast(module, *args)` for a fast path)."""

    def decorate(cls: ModuleT) -> ModuleT:
        reference = cls.forward
        REGISTRY.setdefault(name, KernelEntry()).reference = reference

        @functools.wraps(reference)
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return implementation(name)(self, *args, **kwargs)

        cls.forward = forward
        return cls

    return decorate


def fast_path(name: str) -> Callable[[CallableT], CallableT]:
    """Register the decorated function as the fast path of kernel `name` (its reference may be registered later,
    by the module that defines it)."""

    def register(function: CallableT) -> CallableT:
        REGISTRY.setdefault(name, KernelEntry()).fast = function
        return function

    return register


@contextmanager
def replaced_kernels(implementations: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    """Within the block, kernel `name` runs `implementations[name]`, whether fast paths are on or off (the ONNX
    exporter's export-friendly implementations). Nested blocks stack; each restores what it replaced."""
    unknown = sorted(set(implementations) - set(REGISTRY))
    if unknown:
        raise KeyError(f"replaced_kernels: no kernel named {unknown}; known: {sorted(REGISTRY)}")
    previous = {name: _REPLACED.get(name) for name in implementations}
    _REPLACED.update(implementations)
    try:
        yield
    finally:
        for name, replaced in previous.items():
            if replaced is None:
                _REPLACED.pop(name, None)
            else:
                _REPLACED[name] = replaced


# ----------------------------------------------------------------------------------------------------------
# Multi-scale deformable attention (pixel decoder)
# ----------------------------------------------------------------------------------------------------------


def _int_pairs(spatial_shapes: Sequence[tuple[int, int]] | Tensor) -> list[tuple[Any, Any]]:
    """`(height, width)` pairs as Python ints; sizes that are already ints (or symbolic sizes while
    `torch.export` traces, which `int()` would freeze to the example's) are kept as they are."""
    return [
        (height, width) if isinstance(height, (int, torch.SymInt)) else (int(height), int(width))
        for height, width in spatial_shapes
    ]


def _level_normaliser(spatial_shapes: Sequence[tuple[int, int]] | Tensor, like: Tensor) -> Tensor:
    """`[levels, 2]` (width, height) of each level: divides offsets in pixels into [0, 1] units."""
    return torch.tensor([[width, height] for height, width in spatial_shapes], dtype=like.dtype, device=like.device)


def multi_scale_deformable_attention_reference(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinear samples taken from several feature levels: per level, `grid_sample` at a
    query-major grid, times the weights, summed over levels and points.

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
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = _int_pairs(spatial_shapes)
    levels = torch.split(value, [height * width for height, width in shapes], dim=1)
    output = value.new_zeros(batch * heads, head_dim, num_queries)
    for level, (height, width) in enumerate(shapes):
        maps = levels[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        grid = (
            (2 * sampling_locations[:, :, :, level] - 1)
            .transpose(1, 2)
            .reshape(batch * heads, num_queries, num_points, 2)
        )
        samples = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, num_points)
        output = output + (samples * weights).sum(dim=-1)  # [B*heads, head_dim, Lq]
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


multi_scale_deformable_attention = kernel(
    multi_scale_deformable_attention_reference, "multi_scale_deformable_attention"
)


def deformable_attention_reference(
    value: Tensor,
    reference_points: Tensor,
    sampling_offsets: Tensor,
    attention_logits: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """Deformable attention of a set of queries (Deformable DETR): the weights are a softmax over each head's
    levels and points; a point samples at its query's reference point plus its offset, in pixels of its level.

    Args:
        value: `[B, S, heads, head_dim]`, the levels flattened row-major and concatenated.
        reference_points: `[B or 1, Lq, 2]`, (x, y) in [0, 1], shared by all levels.
        sampling_offsets: `[B, Lq, heads, levels, points, 2]`, (x, y) in pixels of each level.
        attention_logits: `[B, Lq, heads, levels * points]`.
        spatial_shapes: `(height, width)` of each level.

    Returns:
        `[B, Lq, heads * head_dim]`.
    """
    batch, num_queries, heads, levels, points, _ = sampling_offsets.shape
    weights = attention_logits.softmax(dim=-1).view(batch, num_queries, heads, levels, points)
    normaliser = _level_normaliser(spatial_shapes, sampling_offsets)
    locations = reference_points[:, :, None, None, None, :] + sampling_offsets / normaliser[:, None, :]
    return multi_scale_deformable_attention_reference(value, spatial_shapes, locations, weights)


deformable_attention = kernel(deformable_attention_reference, "deformable_attention")


def deformable_value_maps(value: Tensor, spatial_shapes: Sequence[tuple[int, int]] | Tensor) -> list[Tensor]:
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
        for level, (height, width) in zip(
            torch.split(value, [height * width for height, width in shapes], dim=1), shapes
        )
    ]


def queries_last_samples(
    value_maps: list[Tensor], sampling_locations: Tensor, attention_weights: Tensor
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per level of the maps from `deformable_value_maps`: the bilinear samples at the sampling locations,
    `[B * heads, head_dim, points, Lq]`, and their attention weights, `[B * heads, 1, points, Lq]`, queries last
    (arguments as in `multi_scale_deformable_attention`). The weighted sum over levels and points is the
    caller's (`sample_value_maps`; the ONNX wing's export kernel sums differently)."""
    batch, num_queries, heads, num_levels, num_points, _ = sampling_locations.shape
    dtype = value_maps[0].dtype
    # grid_sample addresses a map with [-1, 1] corners; with align_corners=False, -1 and 1 are the outer pixel
    # edges, the convention of the [0, 1] locations.
    grids = (2 * sampling_locations - 1).to(dtype).permute(0, 2, 3, 4, 1, 5).contiguous()
    grids = grids.view(batch * heads, num_levels, num_points, num_queries, 2)
    weights = attention_weights.to(dtype).permute(0, 2, 3, 4, 1).contiguous()
    weights = weights.view(batch * heads, 1, num_levels, num_points, num_queries)
    for level, level_value in enumerate(value_maps):
        samples = F.grid_sample(
            level_value, grids[:, level], mode="bilinear", padding_mode="zeros", align_corners=False
        )
        yield samples, weights[:, :, level]


def sample_value_maps(value_maps: list[Tensor], sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples of the maps from `deformable_value_maps`; arguments and result as in
    `multi_scale_deformable_attention`.

    The queries go last: `grid_sample` then reads a contiguous grid and writes one contiguous row of queries per
    channel and point, and the sum over points is a few in-place multiply-adds. Inputs already laid out
    queries-last (as `deformable_attention_on_maps` builds them) are not copied.
    """
    batch, num_queries, heads = sampling_locations.shape[:3]
    head_dim = value_maps[0].shape[1]
    output = value_maps[0].new_zeros(batch * heads, head_dim, num_queries)
    for samples, weights in queries_last_samples(value_maps, sampling_locations, attention_weights):
        for point in range(samples.shape[2]):
            output.addcmul_(samples[:, :, point], weights[:, :, point])
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


@fast_path("multi_scale_deformable_attention")
def multi_scale_deformable_attention_fast(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """`multi_scale_deformable_attention` on channels-last value maps, queries last (`sample_value_maps`)."""
    return sample_value_maps(deformable_value_maps(value, spatial_shapes), sampling_locations, attention_weights)


def deformable_attention_on_maps(
    value_maps: list[Tensor],
    reference_points: Tensor,
    sampling_offsets: Tensor,
    attention_logits: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """`deformable_attention` over the maps from `deformable_value_maps` (other arguments and result alike): the
    maps are built once for all the chunks of queries that attend to them."""
    batch, num_queries, heads, levels, points, _ = sampling_offsets.shape
    # Laid out queries-last, as `sample_value_maps` reads them, before any arithmetic: the softmax then runs over
    # a non-innermost axis with the queries contiguous, and no copy follows. Same values, same order of operations.
    weights = attention_logits.permute(0, 2, 3, 1).contiguous().softmax(dim=2)  # [B, heads, levels * points, Lq]
    weights = weights.view(batch, heads, levels, points, num_queries).permute(0, 4, 1, 2, 3)
    offsets = sampling_offsets.permute(0, 2, 3, 4, 1, 5).contiguous()  # [B, heads, levels, points, Lq, 2]
    normaliser = _level_normaliser(spatial_shapes, offsets)
    locations = offsets.div_(normaliser[:, None, None, :]).add_(reference_points[:, None, None, None])
    return sample_value_maps(value_maps, locations.permute(0, 4, 1, 2, 3, 5), weights)


@fast_path("deformable_attention")
def deformable_attention_fast(
    value: Tensor,
    reference_points: Tensor,
    sampling_offsets: Tensor,
    attention_logits: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """`deformable_attention` on channels-last value maps, queries last (`deformable_attention_on_maps`)."""
    value_maps = deformable_value_maps(value, spatial_shapes)
    return deformable_attention_on_maps(
        value_maps, reference_points, sampling_offsets, attention_logits, spatial_shapes
    )


def token_chunked(function: Callable[..., Tensor], *per_token: Tensor, chunk_size: int | None = None) -> Tensor:
    """`function(*per_token)` computed on chunks of `chunk_size` tokens (dim 1, default `ENCODER_TOKEN_CHUNK`).

    For a function that computes every token on its own (a deformable encoder layer once its values are
    projected): the same result as one call on all tokens, but each chunk's intermediates stay small enough to
    live in the CPU's caches and the allocator's reused memory. Inputs may broadcast over the batch (dim 0).
    """
    chunk_size = chunk_size or ENCODER_TOKEN_CHUNK
    num_tokens = per_token[0].shape[1]
    output: Tensor | None = None
    for start in range(0, num_tokens, chunk_size):
        tokens = slice(start, start + chunk_size)
        result = function(*(tensor[:, tokens] for tensor in per_token))
        if output is None:
            if chunk_size >= num_tokens:
                return result
            output = result.new_empty((result.shape[0], num_tokens, *result.shape[2:]))
        output[:, tokens] = result
    assert output is not None, "token_chunked needs at least one token"
    return output


@fast_path("ITAPixelDecoderEncoderLayer")
def encoder_layer_in_token_chunks(
    layer: Any,
    hidden_states: Tensor,
    position_embeddings: Tensor,
    reference_points: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """`ITAPixelDecoderEncoderLayer.forward` with its values projected and laid out as maps once, then every token
    computed on its own, in chunks (`token_chunked`): the same arithmetic as the layer's own forward."""
    attention = layer.self_attn
    batch = hidden_states.shape[0]
    heads, levels, points = attention.num_heads, attention.num_levels, attention.num_points
    value = attention.value_proj(hidden_states).view(batch, -1, heads, attention.embed_dim // heads)
    value_maps = deformable_value_maps(value, spatial_shapes)

    def tokens(states: Tensor, positions: Tensor, references: Tensor) -> Tensor:
        query = states + positions
        num_queries = query.shape[1]
        offsets = attention.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        logits = attention.attention_weights(query).view(batch, num_queries, heads, levels * points)
        attended = attention.output_proj(
            deformable_attention_on_maps(value_maps, references, offsets, logits, spatial_shapes)
        )
        states = layer.norm1(states + layer.dropout(attended))
        ffn = layer.linear2(layer.dropout(F.relu(layer.linear1(states), inplace=True)))
        result: Tensor = layer.norm2(states + layer.dropout(ffn))
        return result

    return token_chunked(tokens, hidden_states, position_embeddings, reference_points)


# ----------------------------------------------------------------------------------------------------------
# Convolutions, layouts and resizes
# ----------------------------------------------------------------------------------------------------------


def conv2d_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | tuple[int, int] = 0
) -> Tensor:
    """`F.conv2d` at stride 1."""
    return F.conv2d(x, weight, bias, padding=padding)


conv2d = kernel(conv2d_reference, "conv2d")


@fast_path("conv2d")
def conv2d_fast(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int | tuple[int, int] = 0) -> Tensor:
    """`conv2d`; a 1x1 kernel runs as one matrix product per image, faster on CPU at stride 4."""
    if weight.shape[-2:] != (1, 1) or x.dim() != 4:
        return F.conv2d(x, weight, bias, padding=padding)
    batch, channels, height, width = x.shape
    matrix = weight.view(weight.shape[0], channels)
    products = [matrix @ image.reshape(channels, -1) for image in x]
    x = products[0][None] if batch == 1 else torch.stack(products)  # stacking one would copy it
    x = x.view(batch, weight.shape[0], height, width)
    # In place: `addmm` would first copy the broadcast bias into a fresh output.
    return x if bias is None else x.add_(bias[:, None, None])


def tokens_to_maps_reference(tokens: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Tokens `[B, S, d]` of levels flattened row-major and concatenated -> maps `[B, d, h, w]`."""
    levels = torch.split(tokens, [height * width for height, width in spatial_shapes], dim=1)
    return [
        level.transpose(1, 2).reshape(level.shape[0], -1, height, width)
        for level, (height, width) in zip(levels, spatial_shapes)
    ]


tokens_to_maps = kernel(tokens_to_maps_reference, "tokens_to_maps")


@fast_path("tokens_to_maps")
def tokens_to_maps_fast(tokens: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """`tokens_to_maps`, the maps copied channels-first: as views of the tokens they would be channels-last, on
    which PyTorch's CPU bilinear upsampling (the FPN's next step) is much slower."""
    return [level.contiguous() for level in tokens_to_maps_reference(tokens, spatial_shapes)]


def resize_to_levels_reference(features: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """`features` `[B, C, H, W]` resized bilinearly (align_corners=False) to each of `sizes`."""
    return [F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False) for size in sizes]


resize_to_levels = kernel(resize_to_levels_reference, "resize_to_levels")


@fast_path("resize_to_levels")
def resize_to_levels_fast(features: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """`resize_to_levels`. PyTorch's CPU kernel converts a channels-first input to channels-last on every call that
    shrinks it more than twofold; converting once for all such sizes gives the same maps for one copy instead of
    one per size. A size equal to the input's returns the input."""
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


def mask_pool_reference(features: Tensor, mask_logits: Tensor) -> Tensor:
    """Average of `features` `[B, C, H, W]` inside each binarised mask (`mask_logits > 0`) -> `[B, Q, C]`:
    area-normalised binary masks times the features.

    Masks are resized bilinearly to the feature size first and detached, so no gradient flows through the mask
    (as in FC-CLIP's `MaskPooling`). Float16 features are pooled in float32: the sums over up to H*W pixels pass
    float16's largest value (65504), and inf / inf would give NaN class scores.
    """
    if features.dtype == torch.float16:
        return mask_pool_reference(features.float(), mask_logits.float()).to(torch.float16)
    with torch.no_grad():
        mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
        masks = (mask_logits > 0).to(features.dtype)
        masks = masks / (masks.sum(dim=(-2, -1), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", features, masks)


mask_pool = kernel(mask_pool_reference, "mask_pool")


@fast_path("mask_pool")
def mask_pool_fast(features: Tensor, mask_logits: Tensor, query_chunk: int | None = None) -> Tensor:
    """`mask_pool`, the queries binarised `query_chunk` at a time (default `MASK_POOL_QUERY_CHUNK`), so the float
    copy of the masks stays small, and the pooled sums divided by the areas (no area-normalised mask copy)."""
    if features.dtype == torch.float16:  # as `mask_pool_reference`: float16 sums overflow
        return mask_pool_fast(features.float(), mask_logits.float(), query_chunk).to(torch.float16)
    query_chunk = query_chunk or MASK_POOL_QUERY_CHUNK
    with torch.no_grad():
        if mask_logits.shape[-2:] != features.shape[-2:]:
            mask_logits = F.interpolate(mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False)
        binary = mask_logits > 0
    pooled = []
    for start in range(0, binary.shape[1], query_chunk):
        mask = binary[:, start : start + query_chunk].to(features.dtype)
        area = mask.sum(dim=(-2, -1)) + 1e-8  # [B, q]
        pooled.append(torch.einsum("bchw,bqhw->bqc", features, mask) / area[..., None])
    return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]
