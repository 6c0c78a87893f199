"""The runtimes that can run a model, as `--backend` of `ita-segment` and `ita-evaluate` offers them: PyTorch, or
onnxruntime for a folder written by `ita-export` (`onnx.resolve_backend` decides `auto`).

`check_backend_argument` refuses a model folder given to the wrong backend (a PyTorch folder with `--backend
onnxruntime`, an exported folder with `--backend pytorch`) and what onnxruntime cannot do (another device or dtype)
before torch is imported; `export_folder_suggestion` is the folder the messages suggest for an export: a new one
beside the model's, never the model's own.

Standard library only, so that the command lines offer and check them before torch is imported.
"""

import argparse
import json
import os
from pathlib import Path

from .errors import ITAUsageError

__all__ = [
    "BACKENDS",
    "ONNX_MANIFEST_FILE",
    "add_backend_argument",
    "check_backend_argument",
    "export_folder_suggestion",
    "is_exported_folder",
]

# auto: onnxruntime for a folder written by ita-export, else pytorch.
BACKENDS = ("auto", "pytorch", "onnxruntime")

# What `ita-export` writes into every folder it exports (`onnx.runtime.MANIFEST_FILE`).
ONNX_MANIFEST_FILE = "onnx_export.json"


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """`--backend`, as `ita-segment` and `ita-evaluate` take it."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="pytorch, or onnxruntime for a folder written by ita-export (CPU, float32); auto (default): "
        "onnxruntime when --model is such a folder",
    )


def is_exported_folder(model: str | os.PathLike[str]) -> bool:
    """Whether `model` is a local folder written by `ita-export` (it holds `onnx_export.json`)."""
    return (Path(os.path.expanduser(os.fspath(model))) / ONNX_MANIFEST_FILE).is_file()


def export_folder_suggestion(model: str | os.PathLike[str]) -> str:
    """A new folder to export `model` into, beside it (`MODEL-onnx`): never the model's own folder, whose files
    an export would mix with the PyTorch ones."""
    text = os.fspath(model).rstrip("/\\") or "model"
    return f"{text}-onnx"


def exported_from(folder: str | os.PathLike[str]) -> str | None:
    """The model an exported folder was exported from, as its manifest names it (None when it does not say)."""
    try:
        manifest = json.loads((Path(folder) / ONNX_MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = manifest.get("source") if isinstance(manifest, dict) else None
    return source if isinstance(source, str) and source else None


def check_backend_argument(model: str, backend: str = "auto", device: str | None = None, dtype: str = "float32") -> str:
    """The backend that runs `model` (`"pytorch"` or `"onnxruntime"`; `"auto"` is onnxruntime for a folder
    written by `ita-export`), after refusing with an `ITAUsageError`, before torch is imported:

    - `--backend onnxruntime` with a local folder that `ita-export` did not write (a PyTorch model folder): the
      message says how to export it into a new folder;
    - `--backend pytorch` with an exported folder (it holds ONNX graphs, no PyTorch weights);
    - onnxruntime with a `--device` other than cpu/auto or a `--dtype` other than float32.

    A Hub id with `--backend onnxruntime` passes: whether it holds an export is for the loader to say."""
    if backend not in BACKENDS:
        raise ITAUsageError(f"--backend {backend!r} is not a backend: use one of {', '.join(BACKENDS)}")
    local = Path(os.path.expanduser(model)).is_dir()
    exported = local and is_exported_folder(model)
    if backend == "auto":
        backend = "onnxruntime" if exported else "pytorch"
    elif backend == "onnxruntime" and local and not exported:
        raise ITAUsageError(
            f"--backend onnxruntime runs a folder written by ita-export, and {model} is not one (it has no "
            f"{ONNX_MANIFEST_FILE}; a PyTorch model folder, it seems): export it into a new folder with `ita-export "
            f"--model {model} --output {export_folder_suggestion(model)}` and give that folder as --model, or "
            "leave --backend out to run it with PyTorch"
        )
    elif backend == "pytorch" and exported:
        source = exported_from(model)
        origin = f" (the one it was exported from: {source})" if source else ""
        raise ITAUsageError(
            f"--backend pytorch needs a PyTorch model, and {model} is a folder written by ita-export (ONNX graphs, "
            f"no PyTorch weights): run it with --backend onnxruntime (or leave --backend out), or give the PyTorch "
            f"model folder{origin}"
        )
    if backend == "onnxruntime":
        if device is not None and device.strip().lower() not in ("auto", "cpu"):
            raise ITAUsageError(
                f"--device {device}: the onnxruntime backend runs on the CPU only; leave --device out (or give cpu), "
                "or run the PyTorch model folder with --backend pytorch on that device"
            )
        if dtype != "float32":
            raise ITAUsageError(
                f"--dtype {dtype}: the onnxruntime backend computes in float32 only; leave --dtype out (or give "
                "float32), or run the PyTorch model folder with --backend pytorch in that dtype"
            )
    return backend
