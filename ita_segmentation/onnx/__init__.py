"""ONNX export of ITA / FC-CLIP and inference with onnxruntime (the `onnx` extra: onnx, onnxscript, onnxruntime).

- `export.py`: the inference graph and the CLIP text tower as ONNX files, written with `torch.onnx.export`
  (dynamo) into a model folder, checked against PyTorch (`export_onnx`).
- `runtime.py`: `ITAOnnxModel`, the exported folder run by onnxruntime behind the PyTorch model's call signature
  and output class.
- `cli.py`: the `ita-export` command.

Importing this package needs none of the `onnx` extra: each function imports what it uses and raises an
`ImportError` naming the extra when it is missing.
"""

from .runtime import BACKENDS, ITAOnnxModel, is_onnx_model_folder, resolve_backend

__all__ = ["BACKENDS", "ITAOnnxModel", "is_onnx_model_folder", "resolve_backend"]
