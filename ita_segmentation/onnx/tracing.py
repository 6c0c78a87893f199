"""Graph export: the segmentation graph and the CLIP text tower traced by `torch.export` with dynamic sizes (batch,
image height and width in multiples of the processor's `size_divisor`, synonyms, classes, candidates; texts and
tokens) and translated to ONNX by `torch.onnx.export(dynamo=True)` with the translations of `translations.py`.

The graphs are written without onnxscript's optimizer: its no-op rule for `x + 0` also removes `x + 1e-8` (it
compares constants with an absolute tolerance of 1e-8; onnxscript 0.7.2), which turns the mask-pooling average of an
empty mask into 0/0 = NaN and the ensemble's log(p + 1e-8) into -inf. onnxruntime optimises the graphs itself when it
loads them (measured speed in benchmarks/README.md).
"""

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ITAExportError
from .graph import (
    TEXT_ENCODER_INPUT,
    TEXT_ENCODER_OUTPUT,
    ITASegmentationGraph,
    ITATextEncoderGraph,
    segmentation_input_names,
    segmentation_output_names,
    truncate_context,
    trunk_stride,
)
from .manifest import OPSET
from .runtime import import_onnx_extra
from .translations import TRANSLATIONS

__all__ = [
    "MAX_BATCH",
    "MAX_BLOCKS",
    "MAX_VOCABULARY",
    "example_segmentation_inputs",
    "export_segmentation_graph",
    "export_text_encoder",
    "segmentation_dynamic_shapes",
]

# Bounds of the dynamic axes. The image axes count blocks of the processor's `size_divisor` (32: the CLIP trunk's
# stride), from 2 (a size-1 axis would be frozen by torch.export) to 8192 px.
MAX_BATCH = 1024
MAX_BLOCKS = 256
MAX_VOCABULARY = 1_000_000


def example_segmentation_inputs(model: Any, size_multiple: int) -> dict[str, Tensor]:
    """Inputs of the segmentation graph for tracing: random values, every dynamic axis a different size >= 2
    (torch.export freezes axes of size 0 or 1, and may merge axes of equal sizes)."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    batch, height, width = 2, 3 * size_multiple, 4 * size_multiple
    num_classes, num_synonyms, num_candidates = 3, 5, 7
    dim = model.backbone.embed_dim
    values = {
        "pixel_values": torch.randn(batch, 3, height, width, generator=generator),
        "image_sizes": torch.tensor([[height, width], [height - size_multiple // 2, width - size_multiple]]),
        "text_classifier": F.normalize(torch.randn(num_synonyms, dim, generator=generator), dim=-1),
        "synonym_to_class": torch.arange(num_synonyms) % num_classes,
        "overlap_mask": torch.tensor([1.0, 0.0, 1.0]),
        "name_embeddings": F.normalize(torch.randn(num_candidates, dim, generator=generator), dim=-1),
        "text_query_embeddings": F.normalize(torch.randn(num_candidates, dim, generator=generator), dim=-1),
    }
    view = config.dominant_category_image_size
    values["dominant_category_pixel_values"] = torch.randn(batch, 3, view, view, generator=generator)
    return {name: values[name] for name in segmentation_input_names(config)}


def segmentation_dynamic_shapes(config: Any, size_multiple: int) -> dict[str, dict[int, Any]]:
    Dim = torch.export.Dim
    batch = Dim("batch", min=1, max=MAX_BATCH)
    height = Dim("height_blocks", min=2, max=MAX_BLOCKS)  # height = size_multiple * height_blocks
    width = Dim("width_blocks", min=2, max=MAX_BLOCKS)
    synonyms = Dim("synonyms", min=1, max=MAX_VOCABULARY)
    candidates = Dim("candidates", min=1, max=MAX_VOCABULARY)
    shapes = {
        "pixel_values": {0: batch, 2: size_multiple * height, 3: size_multiple * width},
        "image_sizes": {0: batch},
        "text_classifier": {0: synonyms},
        "synonym_to_class": {0: synonyms},
        "overlap_mask": {0: Dim("classes", min=1, max=MAX_VOCABULARY)},
        "name_embeddings": {0: candidates},
        "text_query_embeddings": {0: candidates},
        "dominant_category_pixel_values": {0: batch},
    }
    return {name: shapes[name] for name in segmentation_input_names(config)}


def _name_dynamic_axes(onnx_model: Any, dynamic_shapes: dict[str, dict[int, Any]]) -> None:
    """Give the ONNX files' symbolic axes the names of the dynamic dimensions (`batch`, `32*height_blocks`, ...)
    instead of torch's symbols (`s97`, `32*s39`), in the inputs, the outputs and every intermediate shape."""
    import onnx_ir as ir

    names = {}
    for value in onnx_model.graph.inputs:
        for axis, dim in (dynamic_shapes.get(value.name) or {}).items():
            symbols = re.findall(r"\bs\d+\b", str(value.shape[axis]))
            if len(symbols) == 1:
                names[symbols[0]] = getattr(dim, "root", dim).__name__
    if not names:
        return

    def rename(dim: Any) -> Any:
        if isinstance(dim, ir.SymbolicDim) and isinstance(dim.value, str):
            return ir.SymbolicDim(
                re.sub(r"\bs\d+\b", lambda match: names.get(match.group(0), match.group(0)), dim.value)
            )
        return dim

    values = list(onnx_model.graph.inputs) + list(onnx_model.graph.outputs)
    values += [output for node in ir.traversal.RecursiveGraphIterator(onnx_model.graph) for output in node.outputs]
    for value in values:
        if value.shape is not None:
            value.shape = ir.Shape([rename(dim) for dim in value.shape])


def _to_onnx(
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    dynamic_shapes: dict[str, dict[int, Any]],
    output_names: Sequence[str],
    path: Path,
    optimize: bool,
    translations: dict[Any, Callable[..., Any]] | None = None,
) -> Path:
    """`torch.export` `module`, translate it to ONNX and write it to `path` (weights in `path` + `.data`).
    `translations` replace torch.onnx's own for some operators (default `TRANSLATIONS`; `{}` for none)."""
    with torch.no_grad():
        exported = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
        program = torch.onnx.export(
            exported,
            args,
            kwargs=kwargs,
            dynamo=True,
            opset_version=OPSET,
            output_names=list(output_names),
            optimize=optimize,
            verify=False,
            custom_translation_table=TRANSLATIONS if translations is None else translations,
        )
    assert program is not None
    _name_dynamic_axes(program.model, dynamic_shapes)
    program.save(os.fspath(path), external_data=True)
    return path


def export_segmentation_graph(model: Any, path: Path, size_multiple: int = 32, optimize: bool = False) -> Path:
    """Write the segmentation graph of `model` (float32, eval mode) to `path` (see `graph.py`)."""
    import_onnx_extra("onnx", "onnxscript", purpose="Exporting to ONNX")
    stride = trunk_stride(model)
    if size_multiple % stride:
        raise ITAExportError(
            f"The processor pads images to multiples of {size_multiple}, which the CLIP trunk's stride {stride} does "
            "not divide: set its size_divisor to a multiple of the stride"
        )
    config = model.config
    return _to_onnx(
        ITASegmentationGraph(model).eval(),
        (),
        example_segmentation_inputs(model, size_multiple),
        segmentation_dynamic_shapes(config, size_multiple),
        segmentation_output_names(config),
        path,
        optimize,
    )


def export_text_encoder(model: Any, path: Path, optimize: bool = False) -> Path:
    """Write the CLIP text tower of `model` to `path`: `input_ids` `[texts, tokens]` -> `text_embeds`."""
    import_onnx_extra("onnx", "onnxscript", purpose="Exporting to ONNX")
    backbone = model.backbone
    input_ids = truncate_context(backbone.tokenize(["a photo of a cat.", "There is a sofa in the scene", "dog"]))
    Dim = torch.export.Dim
    # Traced for contexts shorter than the full one: torch.export would otherwise special-case the full length in
    # `positional_embedding[:length]`. The ONNX slice is the same for the full context (tested).
    tokens = Dim("tokens", min=2, max=backbone.context_length - 1)
    dynamic = {TEXT_ENCODER_INPUT: {0: Dim("texts", min=1, max=MAX_VOCABULARY), 1: tokens}}
    return _to_onnx(
        ITATextEncoderGraph(backbone).eval(), (input_ids,), None, dynamic, [TEXT_ENCODER_OUTPUT], path, optimize
    )
