"""The conversion's checks of its output folder, standard library only: `ita-convert` makes them before torch is
imported, and `convert_checkpoint` again for its Python callers."""

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import ITAUsageError

__all__ = ["WRITTEN_FILES", "OutputFolderError", "check_output_folder"]

# The files a conversion writes at the top of its folder, besides the model's source files.
WRITTEN_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processor_config.json",
        "README.md",
        "category_bank.safetensors",
    }
)


class OutputFolderError(ITAUsageError, FileExistsError):
    """The output folder is taken (not empty, a file, or it would replace an input); found before reading."""


def check_output_folder(
    output_dir: str | os.PathLike[str],
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    written: Iterable[str] = WRITTEN_FILES,
) -> None:
    """Refuse, with `OutputFolderError`, an output that is one of `inputs` (the checkpoint, the category bank, ...),
    a file, a folder that is not empty (unless `overwrite`), or one where a file of the `written` names would
    replace an input."""
    output_dir = Path(output_dir)
    given = [Path(path) for path in inputs if path is not None]
    if output_dir.exists():
        for path in given:
            if path.exists() and path.resolve() == output_dir.resolve():
                raise OutputFolderError(f"--output {output_dir} is the input {path}; choose a new or empty folder")
        for path in given:
            if path.exists() and path.resolve().parent == output_dir.resolve():
                raise OutputFolderError(
                    f"--output {output_dir} holds the input {path}: the conversion would write its model files beside "
                    "it (even with --overwrite); choose a new or empty folder"
                )
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputFolderError(f"output {output_dir} is a file, not a folder; choose a new or empty folder")
    content = sorted(path.name for path in output_dir.iterdir()) if output_dir.is_dir() else []
    if content and not overwrite:
        shown = ", ".join(content[:6]) + (f" and {len(content) - 6} more" if len(content) > 6 else "")
        raise OutputFolderError(
            f"output folder {output_dir} is not empty ({shown}); choose a new or empty folder, or overwrite "
            "(--overwrite) to replace its model files"
        )
