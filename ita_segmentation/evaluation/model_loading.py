"""The model and processor an evaluation runs: a PyTorch model folder or Hub id, or an exported ONNX folder."""

import os
from typing import Any, cast

import torch
from transformers.image_utils import SizeDict

from modeling_ita.loading import check_device, load_segmentation_model
from processing_ita import ITAProcessor

from ..dtypes import torch_dtype
from ..errors import ITAUsageError
from ..onnx import ITAOnnxModel, resolve_backend

__all__ = ["load_model_and_processor"]


def load_model_and_processor(
    model_name_or_path: str | os.PathLike[str],
    device: str | torch.device = "auto",
    dtype: str = "float32",
    shortest_edge: int | None = None,
    longest_edge: int | None = None,
    backend: str = "auto",
) -> tuple[Any, ITAProcessor]:
    """Load `ITAForOpenVocabSegmentation` and `ITAProcessor` from a model folder or Hub id, in eval mode.

    Args:
        device: `"auto"` (CUDA when available, else CPU) or a torch device.
        dtype: `"float32"`, `"float16"` or `"bfloat16"`: the dtype of the weights and the input.
        backend: `"pytorch"`, `"onnxruntime"` (an `ITAOnnxModel` from a folder written by `ita-export`: CPU,
            float32) or `"auto"`: onnxruntime for such a folder.
        shortest_edge, longest_edge: override the processor's test resolution (defaults: its own, which for a
            converted FC-CLIP/ITA checkpoint is the published 800 / 1333).

    Raises:
        ModelLoadingError: no such model, or a checkpoint with missing or unexpected weights (named).
        ValueError: an unknown or unavailable device or dtype.
    """
    weights_dtype = torch_dtype(dtype)  # a ValueError naming the dtypes for another name
    backend, device = resolve_backend(model_name_or_path, backend, device, dtype)
    if backend == "onnxruntime":
        model = ITAOnnxModel.from_pretrained(model_name_or_path)
    else:
        model = load_segmentation_model(model_name_or_path, device=check_device(device), dtype=weights_dtype)
    processor = ITAProcessor.from_pretrained(model_name_or_path)
    if shortest_edge is not None or longest_edge is not None:
        size = cast(SizeDict, processor.image_processor.size)  # a SizeDict once the processor is built
        shortest_edge = shortest_edge if shortest_edge is not None else size.shortest_edge
        longest_edge = longest_edge if longest_edge is not None else size.longest_edge
        if not shortest_edge:
            raise ITAUsageError(
                f"The processor of {model_name_or_path} resizes to a fixed size; give --shortest-edge to resize by "
                "the short side"
            )
        # The face declares `size` as a dict; it holds a SizeDict.
        new_size = type(size)(shortest_edge=shortest_edge, longest_edge=longest_edge)
        processor.image_processor.size = new_size  # type: ignore[assignment]
    return model, processor
