"""The attention-mask replay of the export's check: the decoder's cross-attention thresholds as the exported graph
computes them (`graph_attention_masks`), and PyTorch's decoder run on them (`attention_masks_given`, through the
model's kernel registry). A mask cell whose logit lies within rounding of 0 may land on either side of the threshold,
and one such cell moves its query far beyond rounding: the check then compares PyTorch run on the graph's masks."""

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modeling_ita import aggregation_decoder, kernels

from .errors import ITAExportError
from .manifest import MODEL_FILE

__all__ = ["attention_masks_given", "graph_attention_masks"]


def graph_attention_masks(onnx_model: Any, inputs: dict[str, Any], vocabulary: Any) -> list[Tensor]:
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
        node.input[0]
        for node in graph.graph.node
        if node.op_type == "And"
        and "masked_attention_mask("
        in {entry.key: entry.value for entry in node.metadata_props}.get("pkg.torch.onnx.stack_trace", "")
    ]
    if not names:
        raise ITAExportError(f"{folder / MODEL_FILE} has no node traced from the decoder's attention masks")
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.BOOL, None))
    handle, name = tempfile.mkstemp(
        prefix=".attention-masks-", suffix=".onnx", dir=folder
    )  # a new file, never a user's
    os.close(handle)
    path = Path(name)
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
def attention_masks_given(masks: Sequence[Tensor], near_zero: float) -> Iterator[dict[str, int]]:
    """Within the block the PyTorch decoder thresholds its attention masks as `masks` say
    (`graph_attention_masks`), in order. Yields a dict filled as the decoder runs: `cells` where they differ from
    PyTorch's own threshold, of `of`, and `far`: those where PyTorch's logit is further than `near_zero` from 0
    (not a rounding flip: the graph computes something else)."""
    queue = list(masks)
    flipped = {"cells": 0, "of": 0, "far": 0}

    def given(mask_logits: Tensor, size: Sequence[int] | None = None) -> Tensor:
        if not queue:
            raise ITAExportError("The PyTorch decoder computes more attention masks than the exported graph")
        logits = aggregation_decoder.attention_mask_logits(mask_logits, size)
        blocked = queue.pop(0).to(logits.device)
        if blocked.shape != logits.shape:
            raise ITAExportError(
                f"The exported graph's attention mask has shape {tuple(blocked.shape)}, PyTorch's {tuple(logits.shape)}"
            )
        differ = blocked != (logits.sigmoid() < 0.5)
        flipped["cells"] += int(differ.sum())
        flipped["of"] += differ.numel()
        flipped["far"] += int((logits[differ].abs() > near_zero).sum())
        return aggregation_decoder.open_fully_blocked_queries(blocked)

    with kernels.replaced_kernels({"masked_attention_mask": given}):
        yield flipped
    if queue:
        raise ITAExportError("The exported graph computes more attention masks than the PyTorch decoder")
