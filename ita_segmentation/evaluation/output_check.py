"""The output folder of an evaluation, checked before any work: results are never replaced silently, and
`--overwrite` replaces only results that `ita-evaluate` wrote, never a file of the user's.

Standard library only, so that `ita-evaluate` refuses a taken output folder before torch is imported.
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputFolderTakenError

__all__ = ["RESULT_FILES", "TABLE_FILE", "TABLE_HEADING", "check_output_folders", "is_results_report"]

# What an evaluation writes into OUTPUT/<name>/, and the table it keeps in OUTPUT.
RESULT_FILES = ("results.json", "per_class.csv", "confusion_matrix.npy")
TABLE_FILE = "results.md"
TABLE_HEADING = "# Evaluation results"


def is_results_report(report: object) -> bool:
    """Whether `report` (a parsed results.json) is one that `ita-evaluate` wrote."""
    return isinstance(report, dict) and all(key in report for key in ("benchmark", "display_name", "scores"))


def _written_by_us(folder: Path) -> bool:
    try:
        return is_results_report(json.loads((folder / "results.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def _first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\n")
    except (OSError, ValueError):
        return None


def _table_written_by_us(path: Path) -> bool:
    return _first_line(path) == TABLE_HEADING


def check_output_folders(output_dir: str | os.PathLike[str], names: Iterable[str], overwrite: bool = False) -> None:
    """Raise `OutputFolderTakenError` (an `ITAUsageError` and a `FileExistsError`) when the results of `names`
    cannot be written into `output_dir` without replacing something:

    - `output_dir` (or `output_dir/<name>`) is a file;
    - `output_dir/results.md` exists and is not the table an evaluation writes (it is rewritten after each
      result), even with `overwrite`;
    - `output_dir/<name>` holds files already, unless `overwrite`; with `overwrite`, when its results.json,
      per_class.csv or confusion_matrix.npy were not written by an evaluation.

    Other results in `output_dir` are kept, and `results.md` lists them all."""
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise OutputFolderTakenError(f"--output {output} is a file, not a folder: give a new or empty folder")
    table = output / TABLE_FILE
    if table.exists() and (not table.is_file() or not _table_written_by_us(table)):
        first = _first_line(table) if table.is_file() else None
        found = "it is a folder" if table.is_dir() else f"it starts {first!r}, not {TABLE_HEADING!r}"
        raise OutputFolderTakenError(
            f"{table} exists and was not written by ita-evaluate ({found}); ita-evaluate rewrites {TABLE_FILE} "
            f"after each result, so it would replace this file (--overwrite does not change that): choose another "
            f"--output, or move the file out of {output}"
        )
    taken, foreign = [], []
    for name in names:
        folder = output / name
        if folder.exists() and not folder.is_dir():
            raise OutputFolderTakenError(
                f"{folder} is a file, where the results of {name} would go: choose another output folder"
            )
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        taken.append(folder)
        present = [file for file in RESULT_FILES if (folder / file).exists()]
        if present and not _written_by_us(folder):
            foreign.append(f"{folder} ({', '.join(present)})")
    if taken and not overwrite:
        raise OutputFolderTakenError(
            f"{output} holds an earlier evaluation's results ({', '.join(str(path) for path in taken)} already "
            "hold(s) results); give --overwrite to replace them, or another --output"
        )
    if foreign:
        raise OutputFolderTakenError(
            f"{'; '.join(foreign)}: files of these names that ita-evaluate did not write, which --overwrite would "
            "replace; choose another output folder"
        )
