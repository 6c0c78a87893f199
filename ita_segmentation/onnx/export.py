"""Export ITA / FC-CLIP to an ONNX model folder and check it against PyTorch: the logic behind `ita-export`.

`export_onnx(model, output_dir)` writes `model.onnx` (the inference graph, see `graph.py`), `text_encoder.onnx`
(the CLIP text tower), each with its weights in a `.data` file beside it, `config.json`, the processor's files and
`onnx_export.json` (the manifest). Its parts, each in its own module:

- `tracing.py`: the graph export (`torch.export` with dynamic sizes, then `torch.onnx.export(dynamo=True)`), with
  the operator translations of `translations.py` and the model's export-friendly kernels (`export_kernels.py`);
- `check.py`: before anything is written to the output folder, the export runs on a sample (a generated 240x320
  scene through the processor, batch 1) in PyTorch and in onnxruntime, and the outputs must agree within
  `DEFAULT_TOLERANCES`; `replay.py` replays the graph's decoder attention masks in PyTorch where they flip;
- `manifest.py`: `onnx_export.json`.

The names of those modules that the command line and the tests use are importable from here too.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from modeling_ita.loading import ModelLoadingError, load_segmentation_model
from modeling_ita.modeling import ITAForOpenVocabSegmentation
from modeling_ita.remote_code import describe_folder
from modeling_ita.vocabulary import STORED_VOCABULARIES_DIR
from processing_ita import ITAProcessor

from .check import (
    CHECK_CLASS_NAMES,
    CHECK_IMAGE_SIZE,
    DEFAULT_TOLERANCES,
    Tolerances,
    check_export,
    pooling_flips,
    top_two_margin,
)
from .errors import ITAExportError, ITAExportMismatchError, ITAExportUsageError
from .manifest import CATEGORY_BANK_FILE, MODEL_FILE, TEXT_ENCODER_FILE, build_manifest, write_manifest
from .output_folder import check_export_model, check_output_dir
from .replay import attention_masks_given, graph_attention_masks
from .runtime import ITAOnnxModel, import_onnx_extra
from .tracing import export_segmentation_graph, export_text_encoder

__all__ = [
    "CHECK_CLASS_NAMES",
    "DEFAULT_TOLERANCES",
    "Tolerances",
    "ITAExportError",
    "ITAExportMismatchError",
    "ITAExportUsageError",
    "attention_masks_given",
    "check_export",
    "check_export_model",
    "check_output_dir",
    "export_onnx",
    "export_segmentation_graph",
    "export_text_encoder",
    "graph_attention_masks",
    "load_model_and_processor",
    "pooling_flips",
    "top_two_margin",
]


def _log_to(log: Callable[[str], Any] | None) -> Callable[[str], None]:
    start = time.perf_counter()

    def say(message: str) -> None:
        if log is not None:
            log(f"[{time.perf_counter() - start:6.1f} s] {message}")

    return say


def load_model_and_processor(
    model_name_or_path: str | os.PathLike[str], log: Callable[[str], Any] | None = None
) -> tuple[ITAForOpenVocabSegmentation, ITAProcessor]:
    """The PyTorch model (float32, CPU, eval) and its processor; the processor defaults to the model config's
    when the folder has none. Raises `ITAExportError` for a missing folder or a model that cannot be loaded."""
    say = log or (lambda message: None)
    try:
        model = load_segmentation_model(model_name_or_path, device="cpu", dtype=torch.float32)
    except (ModelLoadingError, ValueError) as error:  # no such folder or Hub id, missing or unexpected weights
        raise ITAExportError(f"--model: {error}") from error
    except SafetensorError as error:  # a truncated or damaged weights file
        raise ITAExportError(
            f"--model {model_name_or_path}: its weights file cannot be read ({error}); save or download the model again"
        ) from error
    model.cpu().eval()
    try:
        processor = ITAProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        say("no processor files in the model folder: using the processor that fits its config")
        processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(cast(ITAConfig, model.config)))
    return model, processor


def export_onnx(
    model: Any,
    output_dir: str | os.PathLike[str],
    *,
    processor: ITAProcessor | None = None,
    overwrite: bool = False,
    optimize: bool = False,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    check_class_names: Sequence[str] = CHECK_CLASS_NAMES,
    source: str | None = None,
    log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
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
    `ITAExportUsageError` (the output folder is the model's, or not empty, or holds files of another program with
    `overwrite`; the model is already an export), `ITAExportError` (the model cannot be loaded) or
    `ITAExportMismatchError` (the check failed).
    """
    import_onnx_extra("onnx", "onnxscript", "onnxruntime", purpose="ita-export")
    say = _log_to(log)
    model_name_or_path = None
    if not isinstance(model, ITAForOpenVocabSegmentation):
        check_export_model(model)
    output_dir = check_output_dir(
        output_dir, overwrite, model=None if isinstance(model, ITAForOpenVocabSegmentation) else model
    )
    if not isinstance(model, ITAForOpenVocabSegmentation):
        model_name_or_path = model
        say(f"loading {model_name_or_path}")
        model, folder_processor = load_model_and_processor(model_name_or_path, log=say)
        processor = processor or folder_processor
    elif processor is None:
        processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(cast(ITAConfig, model.config)))
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
        # The configuration and the processor load without the package (no PyTorch weights: no AutoModel entry).
        describe_folder(staging, with_model=False)
        bank = Path(model_name_or_path) / CATEGORY_BANK_FILE if model_name_or_path is not None else None
        if bank is not None and bank.is_file():
            shutil.copy2(bank, staging / CATEGORY_BANK_FILE)
        manifest = build_manifest(model, source, size_multiple, optimize)
        write_manifest(staging, manifest)

        say(f"checking the graphs against PyTorch on a {CHECK_IMAGE_SIZE[0]}x{CHECK_IMAGE_SIZE[1]} sample")
        onnx_model = ITAOnnxModel.from_pretrained(staging)
        manifest["check"] = check_export(model, processor, onnx_model, check_class_names, tolerances=tolerances)
        del onnx_model
        # Only after the check, which must encode with the exported text tower and no cache: the PyTorch tower's
        # fingerprint (its encodings are the export's, within the check's tolerance), so that the disk cache and
        # the vocabularies stored in the model folder serve the export too.
        manifest["text_tower_fingerprint"] = model.vocabulary_encoder.text_tower_fingerprint(model.backbone)
        stored = Path(model_name_or_path) / STORED_VOCABULARIES_DIR if model_name_or_path is not None else None
        if stored is not None and stored.is_dir():
            shutil.copytree(stored, staging / STORED_VOCABULARIES_DIR)
        manifest["files"] = sorted(path.name for path in staging.iterdir())
        write_manifest(staging, manifest)
        output_dir.mkdir(parents=True, exist_ok=True)
        for path in staging.iterdir():
            if path.is_dir() and (output_dir / path.name).is_dir():  # an earlier export's (--overwrite)
                shutil.rmtree(output_dir / path.name)
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = ", ".join(f"{name} {(output_dir / name).stat().st_size / 2**20:.1f} MiB" for name in manifest["files"])
    say(f"wrote {output_dir}: {sizes}")
    return manifest
