"""Export ITA / FC-CLIP to an ONNX model folder and check it against PyTorch: the logic behind `ita-export`.

`export_onnx(model, output_dir)` writes `model.onnx` (the inference graph, see `graph.py`), `text_encoder.onnx`
(the CLIP text tower), each with its weights in a `.data` file beside it, `config.json`, the processor's files and
`onnx_export.json` (inputs, outputs, dynamic axes, versions and the check's numbers). Both graphs are traced by
`torch.export` with dynamic sizes (batch, image height and width in multiples of the processor's `size_divisor`,
synonyms, classes, candidates; texts and tokens) and translated by `torch.onnx.export(dynamo=True)`.

The graphs are written without onnxscript's optimizer: its no-op rule for `x + 0` also removes `x + 1e-8` (it
compares constants with an absolute tolerance of 1e-8; onnxscript 0.7.2), which turns the mask-pooling average of an
empty mask into 0/0 = NaN and the ensemble's log(p + 1e-8) into -inf. onnxruntime optimises the graphs itself when it
loads them (measured speed in benchmarks/README.md). Three translations replace torch.onnx's own (`TRANSLATIONS`,
same values up to rounding): GELU in the order onnxruntime fuses, convolutions without a bias without a zero bias,
the model's einsums over map pixels as matrix products.

Before anything is written to the output folder, the export runs on a sample (a generated 240x320 scene through the
processor, batch 1) in PyTorch and in onnxruntime and the outputs must agree within `DEFAULT_TOLERANCES`.
"""

import json
import os
import platform
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from image_processing_ita import ITAImageProcessor, padded_size
from processing_ita import ITAProcessor

from modeling_ita.loading import ModelLoadingError, load_segmentation_model
from modeling_ita.modeling import ITAForOpenVocabSegmentation
from .graph import (
    TEXT_ENCODER_INPUT,
    TEXT_ENCODER_OUTPUT,
    ITASegmentationGraph,
    ITATextEncoderGraph,
    segmentation_input_names,
    segmentation_output_names,
    truncate_context,
)
from .runtime import MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION, ITAOnnxModel, import_onnx_extra

__all__ = [
    "CHECK_CLASS_NAMES",
    "DEFAULT_TOLERANCES",
    "Tolerances",
    "ITAExportError",
    "ITAExportMismatchError",
    "attention_masks_given",
    "check_export",
    "check_output_dir",
    "export_onnx",
    "export_segmentation_graph",
    "export_text_encoder",
    "graph_attention_masks",
    "load_model_and_processor",
    "pooling_flips",
    "top_two_margin",
]

MODEL_FILE = "model.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
CATEGORY_BANK_FILE = "category_bank.safetensors"  # copied when the source folder has one (see hub/folder.py)
# ONNX opset of the graphs: torch.onnx's own (its onnxscript library's) default.
OPSET = 18
# Bounds of the dynamic axes. The image axes count blocks of the processor's `size_divisor` (32: the CLIP trunk's
# stride), from 2 (a size-1 axis would be frozen by torch.export) to 8192 px.
MAX_BATCH = 1024
MAX_BLOCKS = 256
MAX_VOCABULARY = 1_000_000
# The vocabulary the check encodes and segments with (ITA's 20 text-query slots cycle through its candidates).
CHECK_CLASS_NAMES = (
    "wall", "floor", "ceiling", "sky", "tree", "grass", "road", "person", "car", "building", "sofa,couch",
    "table", "chair", "bed,cot", "water,sea",
)
CHECK_IMAGE_SIZE = (240, 320)


@dataclass(frozen=True)
class Tolerances:
    """What "the export matches PyTorch" means. The defaults leave room for float32 rounding through the full-size
    model (measured on a 600x800 input: up to 1.1e-3 in the class logits, 0.07% of their largest value, and 7.2e-3 in
    the mask logits, 0.1%; about 3e-6 on the tiny test models), and catch what a wrong graph does (NaN, -inf,
    another resize or tie-break: differences of the order of the values). An output matches when `max |onnx - torch| <= atol + rtol *
    max |torch|` over the output; text embeddings likewise; the dominant categories when they are the same, or
    differ only between candidates whose PyTorch probabilities are within `ranking_atol` (a near-tie that rounding
    may flip: the other outputs are then compared with PyTorch run on the graph's choice); when the class or mask
    logits differ beyond the tolerance, PyTorch is run again on the graph's decoder attention masks
    (`graph_attention_masks`), which may differ only where PyTorch's mask logit lies within the mask logits'
    tolerance of 0 (random full-size FC-CLIP weights leave hundreds of such cells, and a flipped cell moves its
    query far beyond rounding); the out-of-vocabulary logits and ensemble of the queries whose mask the classifier
    binarises differently (a cell within rounding of 0, `pooling_flips`) are left out; label maps where PyTorch's
    top two class scores differ by more than `label_margin`."""

    atol: float = 1e-3
    rtol: float = 5e-3
    ranking_atol: float = 1e-5
    label_margin: float = 1e-3

    def allowed(self, expected) -> float:
        """The largest `|onnx - torch|` allowed for an output whose PyTorch values are `expected`."""
        expected = torch.as_tensor(expected)
        return self.atol + self.rtol * (float(expected.abs().max()) if expected.numel() else 0.0)


DEFAULT_TOLERANCES = Tolerances()


class ITAExportError(RuntimeError):
    """The export cannot be done: a missing model, an output folder that is not empty, a model that does not trace."""


class ITAExportMismatchError(ITAExportError):
    """The exported graphs do not compute what the PyTorch model computes (the message names each difference)."""


def _log_to(log):
    start = time.perf_counter()

    def say(message):
        if log is not None:
            log(f"[{time.perf_counter() - start:6.1f} s] {message}")

    return say


# ------------------------------------------------------------------------------------------------ tracing
def _example_segmentation_inputs(model, size_multiple):
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


def _segmentation_dynamic_shapes(config, size_multiple):
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


def _name_dynamic_axes(onnx_model, dynamic_shapes):
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

    def rename(dim):
        if isinstance(dim, ir.SymbolicDim) and isinstance(dim.value, str):
            return ir.SymbolicDim(re.sub(r"\bs\d+\b", lambda match: names.get(match.group(0), match.group(0)), dim.value))
        return dim

    values = list(onnx_model.graph.inputs) + list(onnx_model.graph.outputs)
    values += [output for node in ir.traversal.RecursiveGraphIterator(onnx_model.graph) for output in node.outputs]
    for value in values:
        if value.shape is not None:
            value.shape = ir.Shape([rename(dim) for dim in value.shape])


def _gelu(self, approximate: str = "none"):
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


def _conv2d(input, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """`aten.conv2d` without a bias as a Conv node without one. torch.onnx's own translation gives it a zero bias
    made at run time (`Expand(CastLike(0, input), ...)`), which onnxruntime cannot fold into a constant, and a
    convolution whose bias is not a constant misses onnxruntime's blocked (NCHWc) kernels (measured on the pixel
    decoder's 3x3 output convolution at stride 4: 0.45 s, 0.39 s with them)."""
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.core import aten_conv2d

    kernel = list(weight.shape[2:]) if weight.shape is not None else []
    if bias is not None or len(input.shape) != 4 or not all(isinstance(size, int) for size in kernel):
        return aten_conv2d(input, weight, bias, stride, padding, dilation, groups)

    def pair(value):
        value = list(value) if isinstance(value, (list, tuple)) else [value]
        return value * 2 if len(value) == 1 else value

    return op.Conv(
        input, weight, strides=pair(stride), pads=pair(padding) * 2, dilations=pair(dilation), group=groups,
        kernel_shape=kernel,
    )


def _einsum(equation, tensors, path=None):
    """The model's two contractions over the pixels of a map as matrix products: the decoder's mask logits
    (`bqc,bchw->bqhw`) and mask pooling (`bchw,bqhw->bqc`). torch.onnx writes an Einsum node, which onnxruntime
    computes with copies of the `[B, C, H, W]` maps around its product. Other equations keep torch.onnx's."""
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops.core import aten_einsum

    def flat(maps):  # [B, C, H, W] -> [B, C, H * W]
        return op.Reshape(maps, op.Concat(op.Shape(maps, start=0, end=2), op.Constant(value_ints=[-1]), axis=0))

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
TRANSLATIONS = {
    torch.ops.aten.gelu.default: _gelu,
    torch.ops.aten.conv2d.default: _conv2d,
    torch.ops.aten.einsum.default: _einsum,
}


def _to_onnx(module, args, kwargs, dynamic_shapes, output_names, path, optimize, translations=None):
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
    _name_dynamic_axes(program.model, dynamic_shapes)
    program.save(os.fspath(path), external_data=True)
    return path


def _trunk_stride(model):
    """The CLIP trunk's total stride (32 for ConvNeXt): its last features' cells are this many pixels wide."""
    return model.backbone.clip_model.visual.trunk.feature_info[-1]["reduction"]


def export_segmentation_graph(model, path, size_multiple=32, optimize=False):
    """Write the segmentation graph of `model` (float32, eval mode) to `path` (see `graph.py`)."""
    import_onnx_extra("onnx", "onnxscript", purpose="Exporting to ONNX")
    stride = _trunk_stride(model)
    if size_multiple % stride:
        raise ITAExportError(
            f"The processor pads images to multiples of {size_multiple}, which the CLIP trunk's stride {stride} does "
            "not divide: set its size_divisor to a multiple of the stride"
        )
    config = model.config
    return _to_onnx(
        ITASegmentationGraph(model).eval(),
        (),
        _example_segmentation_inputs(model, size_multiple),
        _segmentation_dynamic_shapes(config, size_multiple),
        segmentation_output_names(config),
        path,
        optimize,
    )


def export_text_encoder(model, path, optimize=False):
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


# ------------------------------------------------------------------------------------------------ checking
def top_two_margin(processor, outputs, index, target_size):
    """`[H_t, W_t]`: how far apart the best two class scores of image `index` are at each pixel, in FC-CLIP's
    semantic scores (the plain formula that `post_process_semantic_segmentation` computes); infinite with one
    class. Where it is within rounding, the label may flip between two computations of the same model."""
    image_size = tuple(int(v) for v in outputs.image_sizes[index])
    frame = padded_size(*image_size, processor.image_processor.size_divisor)
    mask_logits = outputs.masks_queries_logits[index][None].float()
    masks = F.interpolate(mask_logits, size=frame, mode="bilinear", align_corners=False)[0]
    masks = masks[:, : image_size[0], : image_size[1]].sigmoid()
    probabilities = outputs.ensemble_log_probs[index].float().softmax(-1)[:, :-1]
    scores = torch.einsum("qk,qhw->khw", probabilities, masks)
    scores = F.interpolate(scores[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]
    if scores.shape[0] == 1:
        return torch.full(scores.shape[1:], float("inf"))
    top_two = scores.topk(2, dim=0).values
    return top_two[0] - top_two[1]


def pooling_flips(model, pixel_values, got, expected):
    """`[B, Q]` the queries whose mask the out-of-vocabulary classifier binarises differently in `got` and
    `expected` (model outputs): it resizes the mask logits to the CLIP features' size and pools over `logit > 0`.

    A mask logit within rounding of 0 can land on either side, and one such cell moves the query's pooled CLIP
    feature, hence its out-of-vocabulary logits and ensemble, far beyond rounding (measured: 3.4e-6 from 0 at one
    cell moved a query's out-of-vocabulary logit by 0.017). How far the flipped cells are from 0 is bounded by the
    comparison of the mask logits themselves (bilinear resizing does not widen their difference)."""
    stride = _trunk_stride(model)
    size = (pixel_values.shape[-2] // stride, pixel_values.shape[-1] // stride)
    got_masks, expected_masks = (
        F.interpolate(outputs.masks_queries_logits.float(), size=size, mode="bilinear", align_corners=False) > 0
        for outputs in (got, expected)
    )
    return (got_masks != expected_masks).flatten(2).any(dim=-1)


def graph_attention_masks(onnx_model, inputs, vocabulary):
    """The threshold of the decoder's cross-attention masks as the exported graph of `onnx_model` computes it on
    `inputs` (the processor's outputs) with `vocabulary`: bool `[B, Q, h * w]` per decoder layer, in order, True
    where the mask's sigmoid is below 0.5 (`masked_attention_mask` before its rule for fully blocked queries).

    A copy of the graph with those values among its outputs is written beside the graph (its weights file then
    resolves), loaded and removed; they are the first inputs of the graph's `And` nodes traced from the decoder's
    `masked_attention_mask(...)` call."""
    import onnx
    import onnxruntime

    folder = Path(onnx_model.folder)
    graph = onnx.load(folder / MODEL_FILE, load_external_data=False)
    names = [
        node.input[0] for node in graph.graph.node
        if node.op_type == "And"
        and "masked_attention_mask(" in {entry.key: entry.value for entry in node.metadata_props}.get("pkg.torch.onnx.stack_trace", "")
    ]
    if not names:
        raise ITAExportError(f"{folder / MODEL_FILE} has no node traced from the decoder's attention masks")
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, None))
    handle, path = tempfile.mkstemp(prefix=".attention-masks-", suffix=".onnx", dir=folder)  # a new file, never a user's
    os.close(handle)
    path = Path(path)
    try:
        onnx.save(graph, path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    finally:
        path.unlink(missing_ok=True)
    _, feeds = onnx_model.graph_feeds(**inputs, vocabulary=vocabulary)
    return [torch.from_numpy(mask) for mask in session.run(names, feeds)]


@contextmanager
def attention_masks_given(masks, near_zero):
    """Within the block the PyTorch decoder thresholds its attention masks as `masks` say
    (`graph_attention_masks`), in order. Yields a dict filled as the decoder runs: `cells` where they differ from
    PyTorch's own threshold, of `of`, and `far`: those where PyTorch's logit is further than `near_zero` from 0
    (not a rounding flip: the graph computes something else)."""
    from modeling_ita import aggregation_decoder

    own, queue = aggregation_decoder.masked_attention_mask, list(masks)
    flipped = {"cells": 0, "of": 0, "far": 0}

    def given(mask_logits, size=None):
        if not queue:
            raise ITAExportError("The PyTorch decoder computes more attention masks than the exported graph")
        logits = aggregation_decoder.attention_mask_logits(mask_logits, size)
        blocked = queue.pop(0).to(logits.device)
        if blocked.shape != logits.shape:
            raise ITAExportError(f"The exported graph's attention mask has shape {tuple(blocked.shape)}, PyTorch's {tuple(logits.shape)}")
        differ = blocked != (logits.sigmoid() < 0.5)
        flipped["cells"] += int(differ.sum())
        flipped["of"] += differ.numel()
        flipped["far"] += int((logits[differ].abs() > near_zero).sum())
        return own(mask_logits, size, blocked=blocked)

    aggregation_decoder.masked_attention_mask = given
    try:
        yield flipped
    finally:
        aggregation_decoder.masked_attention_mask = own
    if queue:
        raise ITAExportError("The exported graph computes more attention masks than the PyTorch decoder")


def _beyond(got, expected, tolerances):
    """Whether an output of the same shape differs beyond `tolerances` (NaN does; `_compare` reports shapes)."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    if got.shape != expected.shape or not got.numel():
        return False
    return not float((got - expected).abs().max()) <= tolerances.allowed(expected)


def _compare(name, got, expected, tolerances, report, problems, keep=None):
    """Compare one output (the `[B, Q]` entries of `keep` only, when given) and note the result."""
    got, expected = torch.as_tensor(got).double(), torch.as_tensor(expected).double()
    if got.shape != expected.shape:
        problems.append(f"{name}: shape {tuple(got.shape)} instead of PyTorch's {tuple(expected.shape)}")
        return
    if keep is not None:
        got, expected = got[keep], expected[keep]
    difference = float((got - expected).abs().max()) if got.numel() else 0.0
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    bound = tolerances.allowed(expected)
    report[name] = {"max_abs_diff": difference, "max_abs_pytorch": scale, "allowed": bound}
    if not difference <= bound:  # NaN fails too
        problems.append(f"{name}: max |onnx - pytorch| = {difference:.3g} > {bound:.3g} allowed")


@torch.no_grad()
def check_export(model, processor, onnx_model, class_names=CHECK_CLASS_NAMES, image=None, tolerances=DEFAULT_TOLERANCES):
    """Compare `onnx_model` (an `ITAOnnxModel`) with the PyTorch `model` on a sample: the text tower on
    `class_names`, the segmentation graph on `image` (default: a generated 240x320 scene) through `processor`,
    and the label maps of `post_process_semantic_segmentation`. Returns the numbers as a dict; raises
    `ITAExportMismatchError` listing every difference beyond `tolerances`."""
    from ..synthetic import draw_synthetic_scene

    report, problems = {"tolerances": tolerances.__dict__}, []
    expected_vocabulary = model.encode_vocabulary(list(class_names))
    got_vocabulary = onnx_model.encode_vocabulary(list(class_names))
    for name in ("text_classifier", "name_embeddings"):
        if getattr(expected_vocabulary, name) is not None:
            _compare(f"text_encoder:{name}", getattr(got_vocabulary, name), getattr(expected_vocabulary, name), tolerances, report, problems)

    if image is None:
        image = draw_synthetic_scene(np.random.default_rng(0), *CHECK_IMAGE_SIZE)[0]
    inputs = processor(images=image, return_tensors="pt")
    inputs = {key: value for key, value in inputs.items() if key != "pixel_mask"}
    report["sample"] = {"image": list(np.asarray(image).shape[:2]), "input": list(inputs["pixel_values"].shape)}
    got = onnx_model(**inputs, vocabulary=expected_vocabulary)  # the same vocabulary: the graph alone is compared
    expected = model(**inputs, vocabulary=expected_vocabulary)
    choices = {}  # the graph's choices that PyTorch is run on, when they differ by rounding
    if got.dominant_category_ids is not None and not torch.equal(got.dominant_category_ids, expected.dominant_category_ids):
        probabilities = model.dominant_categories.ranking_probabilities(
            model.backbone, inputs["pixel_values"], inputs["image_sizes"], expected_vocabulary.name_embeddings,
            views=inputs.get("dominant_category_pixel_values"),
        )
        gap = float((probabilities.gather(1, got.dominant_category_ids) - probabilities.gather(1, expected.dominant_category_ids)).abs().max())
        report["dominant_categories"] = {"equal": False, "max_probability_gap": gap}
        if gap > tolerances.ranking_atol:
            problems.append(
                f"dominant categories: {got.dominant_categories} instead of PyTorch's {expected.dominant_categories} "
                f"(probabilities {gap:.3g} apart)"
            )
        choices["dominant_category_ids"] = got.dominant_category_ids
        expected = model(**inputs, vocabulary=expected_vocabulary, **choices)
    elif got.dominant_category_ids is not None:
        report["dominant_categories"] = {"equal": True}
    if any(_beyond(getattr(got, name), getattr(expected, name), tolerances) for name in ("class_queries_logits", "masks_queries_logits")):
        # A decoder attention mask cell within rounding of the 0.5 threshold may land on either side: PyTorch is then
        # run on the graph's masks, which may differ from its own only where its logit is within the mask logits'
        # tolerance of 0; the cells that differ are counted.
        masks = graph_attention_masks(onnx_model, inputs, expected_vocabulary)
        near_zero = tolerances.allowed(expected.masks_queries_logits)
        with attention_masks_given(masks, near_zero) as attention_flips:
            expected = model(**inputs, vocabulary=expected_vocabulary, **choices)
        report["attention_mask_flips"] = attention_flips
        if attention_flips["far"]:
            problems.append(
                f"decoder attention masks: {attention_flips['far']} cells blocked differently where PyTorch's mask "
                f"logit is further than {near_zero:.3g} from 0"
            )
    for name in ("class_queries_logits", "masks_queries_logits"):
        _compare(name, getattr(got, name), getattr(expected, name), tolerances, report, problems)
    # The out-of-vocabulary logits and the ensemble of queries whose pooled mask flips at a near-zero cell are not
    # compared (their masks are, above); the label maps below still are.
    flipped = pooling_flips(model, inputs["pixel_values"], got, expected)
    report["pooling_flips"] = {"queries": int(flipped.sum()), "of": int(flipped.numel())}
    for name in ("out_vocabulary_logits", "ensemble_log_probs"):
        _compare(name, getattr(got, name), getattr(expected, name), tolerances, report, problems, keep=~flipped)

    target = tuple(np.asarray(image).shape[:2])
    got_labels = processor.post_process_semantic_segmentation(got, target_sizes=[target])[0]
    expected_labels = processor.post_process_semantic_segmentation(expected, target_sizes=[target])[0]
    clear = top_two_margin(processor, expected, 0, target) > tolerances.label_margin
    differ = (got_labels != expected_labels) & clear
    report["labels"] = {"pixels": int(got_labels.numel()), "compared": int(clear.sum()), "different": int(differ.sum())}
    if differ.any():
        problems.append(f"label maps: {int(differ.sum())} of {int(clear.sum())} clearly decided pixels differ")
    if problems:
        raise ITAExportMismatchError("The exported graphs do not match PyTorch: " + "; ".join(problems))
    return report


# ------------------------------------------------------------------------------------------------ the folder
def check_output_dir(output_dir, overwrite):
    """`output_dir` as an absolute path, after refusing a file or (without `overwrite`) a non-empty folder."""
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise ITAExportError(f"--output {output_dir} is a file, not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ITAExportError(
            f"--output {output_dir} is not empty: choose an empty or new folder, or pass --overwrite to replace its "
            "files of the same names"
        )
    return output_dir


def load_model_and_processor(model_name_or_path, log=None):
    """The PyTorch model (float32, CPU, eval) and its processor; the processor defaults to the model config's
    when the folder has none. Raises `ITAExportError` for a missing folder or a model that cannot be loaded."""
    say = log or (lambda message: None)
    try:
        model = load_segmentation_model(model_name_or_path, device="cpu", dtype=torch.float32)
    except (ModelLoadingError, ValueError) as error:  # no such folder or Hub id, missing or unexpected weights
        raise ITAExportError(f"--model: {error}") from error
    model.cpu().eval()
    try:
        processor = ITAProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        say("no processor files in the model folder: using the processor that fits its config")
        processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config))
    return model, processor


def export_onnx(
    model,
    output_dir,
    *,
    processor=None,
    overwrite=False,
    optimize=False,
    tolerances=DEFAULT_TOLERANCES,
    check_class_names=CHECK_CLASS_NAMES,
    source=None,
    log=print,
):
    """Export a model to an ONNX model folder `output_dir`, checked against PyTorch.

    Args:
        model: a model folder or Hub id, or an `ITAForOpenVocabSegmentation` (float32, on the CPU).
        processor: its `ITAProcessor`; read from the model's folder (or the processor fitting its config) when
            None.
        overwrite: allow a non-empty `output_dir`; files of the same names are replaced.
        optimize: run onnxscript's optimizer on the graphs (see the module docstring: it breaks them in 0.7.2).
        tolerances, check_class_names: the check (see `check_export`).
        source: how the manifest names the exported model (default: the folder or Hub id, or the class name).
        log: receives progress messages (None: silent).

    The files are written to a temporary folder beside `output_dir` and moved into it only when the check passes,
    so a failed export leaves `output_dir` as it was. Returns the manifest written to `onnx_export.json`. Raises
    `ITAExportError` (missing model, non-empty output folder) or `ITAExportMismatchError` (the check failed).
    """
    import_onnx_extra("onnx", "onnxscript", "onnxruntime", purpose="ita-export")
    say = _log_to(log)
    output_dir = check_output_dir(output_dir, overwrite)
    model_name_or_path = None
    if not isinstance(model, ITAForOpenVocabSegmentation):
        model_name_or_path = model
        say(f"loading {model_name_or_path}")
        model, folder_processor = load_model_and_processor(model_name_or_path, log=say)
        processor = processor or folder_processor
    elif processor is None:
        processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config))
    if next(model.parameters()).dtype != torch.float32 or next(model.parameters()).device.type != "cpu":
        raise ITAExportError("Export a float32 model on the CPU (model.float().cpu())")
    model.eval()
    source = source or (str(model_name_or_path) if model_name_or_path is not None else type(model).__name__)
    variant = "ITA" if model.config.num_dominant_categories else "FC-CLIP"
    size_multiple = processor.image_processor.size_divisor

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        say(f"tracing and writing the {variant} segmentation graph (torch.export + torch.onnx; minutes at full size)")
        export_segmentation_graph(model, staging / MODEL_FILE, size_multiple, optimize=optimize)
        say("tracing and writing the CLIP text tower")
        export_text_encoder(model, staging / TEXT_ENCODER_FILE, optimize=optimize)
        model.config.save_pretrained(staging)
        processor.save_pretrained(staging)
        bank = Path(model_name_or_path) / CATEGORY_BANK_FILE if model_name_or_path is not None else None
        if bank is not None and bank.is_file():
            shutil.copy2(bank, staging / CATEGORY_BANK_FILE)
        manifest = _manifest(model, source, size_multiple, optimize)
        _write_manifest(staging, manifest)

        say(f"checking the graphs against PyTorch on a {CHECK_IMAGE_SIZE[0]}x{CHECK_IMAGE_SIZE[1]} sample")
        onnx_model = ITAOnnxModel.from_pretrained(staging)
        manifest["check"] = check_export(model, processor, onnx_model, check_class_names, tolerances=tolerances)
        del onnx_model
        manifest["files"] = sorted(path.name for path in staging.iterdir())
        _write_manifest(staging, manifest)
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = ", ".join(f"{name} {(output_dir / name).stat().st_size / 2**20:.1f} MiB" for name in manifest["files"])
    say(f"wrote {output_dir}: {sizes}")
    return manifest


def _manifest(model, source, size_multiple, optimize):
    import onnx
    import onnxruntime
    import onnxscript

    config = model.config
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "model_file": MODEL_FILE,
        "text_encoder_file": TEXT_ENCODER_FILE,
        "variant": "ita" if config.num_dominant_categories else "fcclip",
        "inputs": segmentation_input_names(config),
        "outputs": segmentation_output_names(config),
        "size_multiple": size_multiple,
        "min_size": 2 * size_multiple,
        "text_context_length": model.backbone.context_length,
        "text_embed_dim": model.backbone.embed_dim,
        "opset": OPSET,
        "onnxscript_optimizer": optimize,
        "exported_from": str(source),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def _write_manifest(folder, manifest):
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
