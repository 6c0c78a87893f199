"""`ita-export`'s checks of its `--model` and `--output` that need no model: made before torch is imported, so
that a refused export answers at once and leaves every file as it was.

Standard library only.
"""

import os
from pathlib import Path

from ..backends import ONNX_MANIFEST_FILE, export_folder_suggestion, exported_from, is_exported_folder
from .errors import ITAExportUsageError

__all__ = ["check_export_model", "check_output_dir"]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_export_model(model: str | os.PathLike[str]) -> None:
    """Refuse (`ITAExportUsageError`) a `--model` that is itself a folder written by `ita-export`: it holds ONNX
    graphs, not the PyTorch weights an export traces."""
    if Path(os.path.expanduser(os.fspath(model))).is_dir() and is_exported_folder(model):
        source = exported_from(model)
        origin = f" ({source}, as its {ONNX_MANIFEST_FILE} says)" if source else ""
        raise ITAExportUsageError(
            f"--model {model} is already an ONNX export (it holds {ONNX_MANIFEST_FILE}); ita-export needs the PyTorch "
            f"model folder it was exported from{origin}. To run this folder, give it to ita-segment or ita-evaluate "
            "as --model"
        )


def check_output_dir(
    output_dir: str | os.PathLike[str], overwrite: bool, model: str | os.PathLike[str] | None = None
) -> Path:
    """`output_dir` as an absolute path, after refusing (`ITAExportUsageError`):

    - a file;
    - the model's own folder, a folder inside it or one that holds it (even with `overwrite`: the export would
      mix its files with the model's, or replace its config.json);
    - a non-empty folder without `overwrite`;
    - with `overwrite`, a non-empty folder that `ita-export` did not write (no `onnx_export.json`): `--overwrite`
      replaces an earlier export, never files of the user's."""
    given = os.fspath(output_dir)
    output_dir = Path(os.path.expanduser(given)).resolve()
    if model is not None:
        model_dir = Path(os.path.expanduser(os.fspath(model))).resolve()
        if model_dir.is_dir() and (_inside(output_dir, model_dir) or _inside(model_dir, output_dir)):
            where = (
                "is the model's own folder"
                if output_dir == model_dir
                else "is inside the model's folder"
                if _inside(output_dir, model_dir)
                else f"holds the model's folder {model}"
            )
            raise ITAExportUsageError(
                f"--output {given} {where}: the export would mix its files with the model's (and replace its "
                f"config.json); write it into a separate new folder, e.g. --output {export_folder_suggestion(model)}"
            )
    if output_dir.exists() and not output_dir.is_dir():
        raise ITAExportUsageError(
            f"--output {given} is a file, not a folder: give a new or empty folder for the export"
        )
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise ITAExportUsageError(
                f"--output {given} is not empty: choose an empty or new folder, or pass --overwrite to replace an "
                "earlier export there"
            )
        if not (output_dir / ONNX_MANIFEST_FILE).is_file():
            raise ITAExportUsageError(
                f"--output {given} is not empty and holds no earlier export (no {ONNX_MANIFEST_FILE}), so --overwrite "
                "would replace files that ita-export did not write: choose an empty or new folder"
            )
    return output_dir
