"""The image files `ita-segment` reads: files named on the command line, and the image files of folders.

Standard library only, so that the command line can name the extensions in its `--help` before torch is imported.
"""

import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .run_manifest import read_manifest

__all__ = ["IMAGE_EXTENSIONS", "OUTPUT_SUFFIXES", "find_images", "output_names", "recognised_outputs"]

# The suffixes by which a folder's files are taken as images (files named explicitly are read whatever theirs).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# The files `ita-segment` writes for the image `<stem>.*`, by task: `<stem><suffix>`; the summary `.json` names
# the others (`overlay`, and `label_map` or `file_name`).
OUTPUT_SUFFIXES = {
    "semantic": ("_overlay.png", "_labels.png", ".json"),
    "panoptic": ("_overlay.png", "_panoptic.png", ".json"),
    "instance": ("_overlay.png", "_instances.png", ".json"),
}


def output_names(stem: str, task: str) -> list[str]:
    """The file names `ita-segment --task task` writes for the image (or dataset row) `stem`."""
    return [stem + suffix for suffix in OUTPUT_SUFFIXES[task]]


def recognised_outputs(folder: Path) -> set[Path]:
    """The files in `folder` that an earlier `ita-segment` run wrote, of any task: those its manifest names
    (`run_manifest`), and, for folders written before there was a manifest, each `<stem>.json` summary that names
    its overlay and its map as that task writes them, and those files."""
    outputs: set[Path] = {folder / name for entry in read_manifest(folder).values() for name in entry["outputs"]}
    for summary_path in folder.glob("*.json"):
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(summary, dict):
            continue
        stem = summary_path.stem
        named = (summary.get("overlay"), summary.get("label_map") or summary.get("file_name"), summary_path.name)
        for suffixes in OUTPUT_SUFFIXES.values():
            expected = tuple(stem + suffix for suffix in suffixes)
            if named == expected:
                outputs.update(folder / name for name in expected)
    return outputs


def find_images(
    inputs: Iterable[str | Path], skipped: list[Path] | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into image files. Returns `(images, problems)`: folders contribute their
    image files (by extension, not recursive, sorted by name, hidden files left out), except the overlays and label
    maps an earlier run of `ita-segment` wrote there (`recognised_outputs`) (added to the list `skipped` when given); a path that does not exist is a
    problem `(path, message)`. Files named explicitly are kept whatever their extension."""
    images: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            own_outputs = recognised_outputs(path)
            found = []
            for child in sorted(path.iterdir()):
                if child.name.startswith(".") or child.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                if child.is_symlink() and not child.exists():  # an image name that leads nowhere: said, not skipped
                    problems.append((child, _broken_link(child)))
                    continue
                if not child.is_file():
                    continue
                if child in own_outputs:
                    if skipped is not None:
                        skipped.append(child)
                    continue
                found.append(child)
            if not found:
                problems.append((path, f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder"))
            images.extend(found)
        elif path.is_file():
            images.append(path)
        elif path.is_symlink():
            problems.append((path, _broken_link(path)))
        else:
            problems.append((path, "no such file or folder"))
    # The same file named twice (directly, or by a folder and by name) is segmented once, and said once.
    unique: dict[Path, Path] = {}
    for image in images:
        unique.setdefault(image.resolve(), image)
    return list(unique.values()), list(dict.fromkeys(problems))


def _broken_link(path: Path) -> str:
    """What is wrong with a symbolic link that leads to no file: a loop, or a target that is not there."""
    try:
        target = os.readlink(path)
    except OSError:
        return "a symbolic link that cannot be read"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13
        return f"a symbolic link in a loop (it leads to {target}, which leads back)"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"a symbolic link in a loop (it leads to {target}, which leads back)"
    return f"a symbolic link to {target}, which does not exist"
