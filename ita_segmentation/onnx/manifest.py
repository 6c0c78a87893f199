"""The manifest of an exported folder (`onnx_export.json`): what its files are, their inputs and outputs, the
versions that wrote them and the check's numbers. `runtime.py` reads it."""

import json
import platform
from pathlib import Path
from typing import Any

import torch

from .graph import segmentation_input_names, segmentation_output_names
from .runtime import MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_VERSION

__all__ = ["CATEGORY_BANK_FILE", "MODEL_FILE", "OPSET", "TEXT_ENCODER_FILE", "build_manifest", "write_manifest"]

MODEL_FILE = "model.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
CATEGORY_BANK_FILE = "category_bank.safetensors"  # copied when the source folder has one (see hub/folder.py)
# ONNX opset of the graphs: torch.onnx's own (its onnxscript library's) default.
OPSET = 18


def build_manifest(model: Any, source: str, size_multiple: int, optimize: bool) -> dict[str, Any]:
    """The manifest of an export of `model` (an `ITAForOpenVocabSegmentation`), before the check adds its numbers."""
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


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` to the folder's `onnx_export.json`."""
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
