"""ONNX export of ITA / FC-CLIP and inference with onnxruntime (the `onnx` extra: onnx, onnxscript, onnxruntime).

- `export.py`: the inference graph and the CLIP text tower as ONNX files, written with `torch.onnx.export`
  (dynamo) into a model folder, checked against PyTorch (`export_onnx`).
- `runtime.py`: `ITAOnnxModel`, the exported folder run by onnxruntime behind the PyTorch model's call signature
  and output class.
- `cli.py`: the `ita-export` command.

Importing this package needs none of the `onnx` extra: each function imports what it uses and raises an
`ImportError` naming the extra when it is missing. The names below are imported on first use (they import
torch), so that `ita-export` (`onnx.cli`) parses its arguments before any of them is loaded.
"""

from typing import TYPE_CHECKING

from ita_segmentation.lazy_names import lazy_names

if TYPE_CHECKING:
    from ..backends import BACKENDS
    from .runtime import ITAOnnxModel, is_onnx_model_folder, resolve_backend

_HOMES = {
    "BACKENDS": "..backends",
    "ITAOnnxModel": "runtime",
    "is_onnx_model_folder": "runtime",
    "resolve_backend": "runtime",
}

__all__ = ["BACKENDS", "ITAOnnxModel", "is_onnx_model_folder", "resolve_backend"]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
