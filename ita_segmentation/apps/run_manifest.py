"""What an `ita-segment` run keeps in its output folder so that it can be resumed and never touches a user's file:
the manifest, the run's summary, and outputs written under a temporary name and renamed once complete.

- `manifest.jsonl`: one JSON line per finished image: `id` (the output stem), `input`, `task`, `settings` (a
  fingerprint of what decides the outputs: model, vocabulary, task, ...), `outputs` (each file written, with its
  size, SHA-256 and modification time), `process` (the index of the process that wrote it) and `seconds`.
  While a run works, each process appends its lines to its own file under `.ita-segment/` (one `write()` per
  line, so a kill leaves at most one torn last line, which readers skip), which works on a folder shared by several
  machines as well; the main process merges them into `manifest.jsonl` at the start of the next run and at the
  end of this one. A line is appended once the image's files are complete under their temporary names and before
  they are renamed: a kill between the two leaves a line whose files are missing or older, which `--resume` redoes.
- `run_summary.json`: written by the main process at the end (counts, the failures, seconds, processes).
- Temporary names: `.<name>.<pid>.part` in the same folder (hidden, so never taken as an input), renamed with
  `os.replace` (atomic on one file system): a kill never leaves a file that looks complete under an output name.

Files this program wrote are the ones the manifest (or a part of it) names, the manifest and the summary
themselves, and outputs that an earlier version recognisably wrote (`inputs.recognised_outputs`); `--overwrite`
and `--resume` replace those and refuse to replace anything else.

Standard library only.
"""

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_NAME",
    "PARTS_FOLDER",
    "RESERVED_NAMES",
    "SUMMARY_NAME",
    "ManifestParts",
    "ProgressCounter",
    "Staged",
    "commit",
    "complete",
    "consolidate",
    "discard",
    "file_record",
    "owned_names",
    "is_temporary_name",
    "read_manifest",
    "remove_temporary_files",
    "settings_fingerprint",
    "stage",
    "write_json_atomically",
]

MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "run_summary.json"
PARTS_FOLDER = ".ita-segment"
RESERVED_NAMES = (MANIFEST_NAME, SUMMARY_NAME)
_TEMPORARY = re.compile(r"^\..+\.\d+\.part$")


def is_temporary_name(name: str) -> bool:
    """Whether `name` is one of this program's temporary output names (`.<name>.<pid>.part`)."""
    return bool(_TEMPORARY.match(name))


def _temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.part")


@dataclass
class Staged:
    """An output written completely under its temporary name, waiting to be renamed to `path`."""

    path: Path
    temporary: Path
    record: dict[str, Any]


def file_record(path: Path) -> dict[str, Any]:
    """What the manifest keeps of a file written: `bytes`, `sha256`, `mtime_ns`."""
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mtime_ns": path.stat().st_mtime_ns}


def stage(path: Path, write: Callable[[Path], None]) -> Staged:
    """Write one output with `write(temporary_path)` (it must not infer the format from the suffix); returns it
    staged, with its record (`bytes`, `sha256`, `mtime_ns`). A failed write leaves no temporary file."""
    temporary = _temporary_path(path)
    try:
        write(temporary)
        record = file_record(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return Staged(path, temporary, record)


def commit(staged: Iterable[Staged]) -> None:
    """Rename staged outputs to their names (`os.replace`: each appears complete or not at all)."""
    for item in staged:
        os.replace(item.temporary, item.path)


def discard(staged: Iterable[Staged]) -> None:
    """Remove staged outputs that will not be committed."""
    for item in staged:
        item.temporary.unlink(missing_ok=True)


def write_json_atomically(path: Path, value: Any) -> None:
    """Write `value` as indented JSON to `path` through a temporary name."""
    temporary = _temporary_path(path)
    temporary.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of what decides a run's outputs (model, vocabulary, task, ...): a manifest line written with
    other settings is not a finished image of this run."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ reading


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The well-formed JSON object lines of `path` (a torn last line, from a kill, is skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            entries.append(entry)
    return entries


def _part_files(folder: Path) -> list[Path]:
    parts = folder / PARTS_FOLDER
    return sorted(parts.glob("process-*.jsonl")) if parts.is_dir() else []


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The finished images the folder's manifest and its parts name, by id (a later line replaces an earlier one;
    the parts, written after `manifest.jsonl` was last merged, come last). Failure lines are left out."""
    entries: dict[str, dict[str, Any]] = {}
    for path in [folder / MANIFEST_NAME, *_part_files(folder)]:
        for entry in _read_lines(path):
            if "failed" in entry or not isinstance(entry.get("outputs"), dict):
                continue
            entries[entry["id"]] = entry
    return entries


def owned_names(folder: Path, entries: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The file names in `folder` that this program wrote according to its manifest: every output a line names,
    the manifest and the summary when they are recognisably ours."""
    names = {name for entry in entries.values() for name in entry["outputs"]}
    if (folder / MANIFEST_NAME).is_file() and (entries or _is_empty(folder / MANIFEST_NAME)):
        names.add(MANIFEST_NAME)
    try:
        summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
        if isinstance(summary, dict) and summary.get("program") == "ita-segment":
            names.add(SUMMARY_NAME)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    return names


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def complete(folder: Path, entry: Mapping[str, Any]) -> bool:
    """Whether every output of a manifest line is in `folder` as it was written (same size and modification time:
    renamed into place and not changed since)."""
    for name, record in entry["outputs"].items():
        try:
            status = (folder / name).stat()
        except OSError:
            return False
        if not isinstance(record, dict) or status.st_size != record.get("bytes"):
            return False
        if status.st_mtime_ns != record.get("mtime_ns"):
            return False
    return True


# ------------------------------------------------------------------------------------------------ writing


def consolidate(folder: Path, keep: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Merge the parts of earlier runs into `manifest.jsonl` (one line per image, the latest; failures dropped, and
    the lines `keep` refuses) and remove them. Called by the main process while no other process writes."""
    entries = {key: entry for key, entry in read_manifest(folder).items() if keep is None or keep(entry)}
    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in sorted(entries.values(), key=_order))
    temporary = _temporary_path(folder / MANIFEST_NAME)
    temporary.write_text(lines, encoding="utf-8")
    os.replace(temporary, folder / MANIFEST_NAME)
    for part in _part_files(folder):
        part.unlink(missing_ok=True)


def _order(entry: Mapping[str, Any]) -> tuple[int, str]:
    position = entry.get("position")
    return (position if isinstance(position, int) else 1 << 62, entry["id"])


def remove_temporary_files(folder: Path) -> int:
    """Remove the temporary outputs a killed run left in `folder`; returns how many."""
    removed = 0
    for path in folder.iterdir():
        if is_temporary_name(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@dataclass
class ManifestParts:
    """One process's part of the manifest: `.ita-segment/process-<index>.jsonl`, appended one line per `write()`."""

    folder: Path
    process_index: int
    _descriptor: int | None = field(default=None, init=False)

    def _open(self) -> int:
        if self._descriptor is None:
            parts = self.folder / PARTS_FOLDER
            parts.mkdir(exist_ok=True)
            path = parts / f"process-{self.process_index:05d}.jsonl"
            self._descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
                os.write(self._descriptor, b"\n")  # a torn line of a killed run stays on its own line
        return self._descriptor

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one line (a finished image, or `{"id", "failed", ...}` for a failure) in one `write()`."""
        data = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        written = os.write(self._open(), data)
        if written != len(data):  # a full disk mid-line: the reader skips the torn line
            raise OSError(f"could not append to the manifest of {self.folder} ({written} of {len(data)} bytes)")

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class ProgressCounter:
    """Counts the lines all processes have appended to the parts so far (the main process's view of the whole
    run), reading only what is new since the last call."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}
        self._lines = 0
        self._last = 0.0

    def count(self, every: float = 0.5) -> int | None:
        """The number of lines appended so far, or None when less than `every` seconds passed since the last
        count."""
        now = time.monotonic()
        if now - self._last < every:
            return None
        self._last = now
        for path in _part_files(self.folder):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            self._offsets[path] = offset + len(data)
            self._lines += data.count(b"\n")
        return self._lines
