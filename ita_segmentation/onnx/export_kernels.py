"""Export-friendly implementations of the model's kernels, put in place while the segmentation graph is traced.

The model's fast paths loop over images, tokens or points in Python, which `torch.export` would unroll or freeze to
the example's sizes, and some of its plain formulas need values as Python numbers (`tolist`). These compute the same
values as whole-tensor operations with symbolic sizes, and `export_kernels()` hands them to the model's kernel
registry (`modeling_ita.kernels.replaced_kernels`) for the time of a call; `ITASegmentationGraph` traces under it.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from modeling_ita import kernels

__all__ = [
    "EXPORT_KERNELS",
    "deformable_attention_for_export",
    "export_kernels",
    "image_region_means_for_export",
    "sample_value_maps_for_export",
    "top_k_cycled_for_export",
]


def sample_value_maps_for_export(
    value_maps: list[Tensor], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """`kernels.sample_value_maps` with one product and one sum over the points per level: exported, each in-place
    multiply-add of the eager kernel becomes a slice, a product and a sum (measured in benchmarks/README.md)."""
    batch, num_queries, heads = sampling_locations.shape[:3]
    head_dim = value_maps[0].shape[1]
    output = value_maps[0].new_zeros(batch * heads, head_dim, num_queries)
    for samples, weights in kernels.queries_last_samples(value_maps, sampling_locations, attention_weights):
        output = output + (samples * weights).sum(dim=2)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


def deformable_attention_for_export(
    value: Tensor,
    reference_points: Tensor,
    sampling_offsets: Tensor,
    attention_logits: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
) -> Tensor:
    """`kernels.deformable_attention` on rows of `[B, Lq, heads * levels * points * 2]` offsets, with the normaliser and
    the reference points repeated to the rows' length: exported, the eager kernel's broadcasts become loops over
    (x, y) pairs, these become whole rows (measured in benchmarks/README.md)."""
    value_maps = kernels.deformable_value_maps(value, spatial_shapes)
    batch, num_queries, heads, levels, points, _ = sampling_offsets.shape
    weights = attention_logits.permute(0, 2, 3, 1).contiguous().softmax(dim=2)  # [B, heads, levels * points, Lq]
    weights = weights.view(batch, heads, levels, points, num_queries).permute(0, 4, 1, 2, 3)
    rows = sampling_offsets.reshape(batch, num_queries, -1)
    level_sizes = torch.tensor(
        [[width, height] for height, width in spatial_shapes], dtype=rows.dtype, device=rows.device
    )
    normaliser = level_sizes[None, :, None, :].expand(heads, levels, points, 2)
    reference = reference_points.repeat(1, 1, heads * levels * points)  # (x, y) pairs, as the offsets
    locations = (rows / normaliser.reshape(-1) + reference).view(sampling_offsets.shape)
    return sample_value_maps_for_export(value_maps, locations, weights)


def image_region_means_for_export(dense_features: Tensor, image_sizes: Tensor, padded_size: tuple[int, int]) -> Tensor:
    """`dominant_categories.image_region_means` without a loop over images: masked sums over the cell counts."""
    padded_height, padded_width = padded_size
    grid_height, grid_width = dense_features.shape[-2:]
    sizes = image_sizes.to(dense_features.device)
    rows = (sizes[:, 0] * grid_height + padded_height - 1) // padded_height  # ceil, in integers
    columns = (sizes[:, 1] * grid_width + padded_width - 1) // padded_width
    inside = (torch.arange(grid_height, device=sizes.device)[None, :, None] < rows[:, None, None]) & (
        torch.arange(grid_width, device=sizes.device)[None, None, :] < columns[:, None, None]
    )
    inside_cells = inside[:, None].float()  # [B, 1, h, w]
    return (dense_features.float() * inside_cells).sum(dim=(-2, -1)) / inside_cells.sum(dim=(-2, -1))


def top_k_cycled_for_export(scores: Tensor, k: int) -> Tensor:
    """`dominant_categories.top_k_cycled` with TopK: ONNX has no stable sort, and its TopK puts the lower index first
    among ties, the stable sort's order. Tiling the ranking k times cycles it without a remainder by the symbolic
    candidate count."""
    order = torch.topk(scores, scores.shape[-1], dim=-1).indices
    return order.repeat(1, k)[:, :k]


def _encoder_layer_in_one_call(layer: Any, *args: Any, **kwargs: Any) -> Any:
    """The pixel decoder's encoder layer as the figure writes it, one call on all tokens: a loop over chunks of a
    symbolic token count would freeze it."""
    reference = kernels.REGISTRY["ITAPixelDecoderEncoderLayer"].reference
    assert reference is not None, "import modeling_ita.pixel_decoder first"
    return reference(layer, *args, **kwargs)


# Kernel name -> what the traced graph computes instead. The 1x1 convolution as a loop of matrix products per image
# would freeze the batch size: the plain convolution is exported.
EXPORT_KERNELS: dict[str, Callable[..., Any]] = {
    "ITAPixelDecoderEncoderLayer": _encoder_layer_in_one_call,
    "deformable_attention": deformable_attention_for_export,
    "conv2d": kernels.conv2d_reference,
    "image_region_means": image_region_means_for_export,
    "top_k_cycled": top_k_cycled_for_export,
}


@contextmanager
def export_kernels() -> Iterator[None]:
    """Within the block the model computes with `EXPORT_KERNELS` (the other kernels as the fast-path switch says)."""
    with kernels.replaced_kernels(EXPORT_KERNELS):
        yield
