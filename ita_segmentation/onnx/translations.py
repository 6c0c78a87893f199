"""Translations of aten operators to ONNX that replace torch.onnx's own: the same values up to rounding, graphs that
onnxruntime runs faster (GELU in the order onnxruntime fuses, convolutions without a bias without a zero bias, the
model's einsums over map pixels as matrix products). Measured speed in benchmarks/README.md."""

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["TRANSLATIONS"]


def _gelu(self: Any, approximate: str = "none") -> Any:
    """`aten.gelu` as `(x * 0.5) * (1 + erf(x / sqrt(2)))`: the same values as torch.onnx's own translation,
    `x * (0.5 * (1 + erf(x / sqrt(2))))` (a product by 0.5 is exact), in the order onnxruntime's optimiser fuses
    into one Gelu node (and with the linear layer's bias before it, BiasGelu): the ConvNeXt trunk's activations are
    then read and written once per block instead of five times (speed in benchmarks/README.md)."""
    import onnx_ir as ir
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.nn import aten_gelu

    if approximate != "none":
        return aten_gelu(self, approximate=approximate)
    half = op.Mul(self, ir.tensor(0.5, dtype=self.dtype))
    erf = op.Erf(op.Div(self, ir.tensor(1.4142135623730951, dtype=self.dtype)))
    return op.Mul(half, op.Add(erf, ir.tensor(1.0, dtype=self.dtype)))


def _conv2d(
    input: Any,
    weight: Any,
    bias: Any = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> Any:
    """`aten.conv2d` without a bias as a Conv node without one. torch.onnx's own translation gives it a zero bias
    made at run time (`Expand(CastLike(0, input), ...)`), which onnxruntime cannot fold into a constant, and a
    convolution whose bias is not a constant misses onnxruntime's blocked (NCHWc) kernels (benchmarks/README.md
    has the measurement)."""
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.core import aten_conv2d

    kernel = list(weight.shape[2:]) if weight.shape is not None else []
    if bias is not None or len(input.shape) != 4 or not all(isinstance(size, int) for size in kernel):
        return aten_conv2d(input, weight, bias, stride, padding, dilation, groups)

    def pair(value: Any) -> list[Any]:
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        return value * 2 if len(value) == 1 else value

    return op.Conv(
        input,
        weight,
        strides=pair(stride),
        pads=pair(padding) * 2,
        dilations=pair(dilation),
        group=groups,
        kernel_shape=kernel,
    )


def _einsum(equation: str, tensors: Sequence[Any], path: Any = None) -> Any:
    """The model's two contractions over the pixels of a map as matrix products: the decoder's mask logits
    (`bqc,bchw->bqhw`) and mask pooling (`bchw,bqhw->bqc`). torch.onnx writes an Einsum node, which onnxruntime
    computes with copies of the `[B, C, H, W]` maps around its product. Other equations keep torch.onnx's."""
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.core import aten_einsum

    def flat(maps: Any) -> Any:  # [B, C, H, W] -> [B, C, H * W]
        shape = op.Concat(op.Shape(maps, start=0, end=2), op.Constant(value_ints=[-1]), axis=0)  # type: ignore[type-var]
        return op.Reshape(maps, shape)  # type: ignore[arg-type]

    equation = equation.replace(" ", "")
    if equation == "bqc,bchw->bqhw" and len(tensors[1].shape) == 4:
        queries, maps = tensors
        shape = op.Concat(op.Shape(queries, start=0, end=2), op.Shape(maps, start=2), axis=0)
        return op.Reshape(op.MatMul(queries, flat(maps)), shape)
    if equation == "bchw,bqhw->bqc" and len(tensors[0].shape) == 4:
        maps, masks = tensors
        return op.MatMul(flat(masks), op.Transpose(flat(maps), perm=[0, 2, 1]))
    return aten_einsum(equation, tensors, path)


# Translations of aten operators that replace torch.onnx's own (same values up to rounding, faster graphs).
TRANSLATIONS: dict[Any, Callable[..., Any]] = {
    torch.ops.aten.gelu.default: _gelu,
    torch.ops.aten.conv2d.default: _conv2d,
    torch.ops.aten.einsum.default: _einsum,
}
