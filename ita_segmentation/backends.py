"""The runtimes that can run a model, as `--backend` of `ita-segment` and `ita-evaluate` offers them: PyTorch, or
onnxruntime for a folder written by `ita-export` (`onnx.resolve_backend` decides `auto`).

Standard library only, so that the command lines offer them before torch is imported.
"""

import argparse

__all__ = ["BACKENDS", "add_backend_argument"]

# auto: onnxruntime for a folder written by ita-export, else pytorch.
BACKENDS = ("auto", "pytorch", "onnxruntime")


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--backend`, as `ita-segment` and `ita-evaluate` take it."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="pytorch, or onnxruntime for a folder written by ita-export (CPU, float32); auto (default): "
        "onnxruntime when --model is such a folder",
    )
