"""Class-list files: one class per line, `id:name,synonym,...` (FC-CLIP's format) or `name,synonym,...`.

Shared by the wings: evaluation's benchmark vocabularies, training's `--vocabulary_file` and the demo's
`--labels_file` all read their classes with `read_vocabulary_file`.
"""

import codecs
import os
import re
from pathlib import Path

from processing_ita import shared_synonyms

__all__ = ["read_vocabulary_file"]

# FC-CLIP's class files start with a placeholder for the ignored label 0.
_PLACEHOLDER_CLASS = "invalid_class_id"
_ID_LINE = re.compile(r"^\s*(-?\d+)\s*:(.*)$")


def read_vocabulary_file(path: str | os.PathLike[str], allow_shared_synonyms: bool = False) -> list[str]:
    """Read a class list: one class per line, either `id:name,synonym,...` (FC-CLIP's format) or
    `name,synonym,...` without ids (one style per file).

    Returns one string per class, its synonyms joined by commas with surrounding spaces removed, in id order
    for files with ids and in line order otherwise. Blank lines and lines starting with `#` are skipped, as
    are FC-CLIP's `0:invalid_class_id` placeholders. Raises `ValueError` naming the file and line for a
    malformed line, an empty class name or synonym, a duplicate id, a gap in the ids, a duplicate class, or
    (unless `allow_shared_synonyms`, which the shipped A-847 and PC-459 lists need) a synonym of two classes.
    The file is UTF-8 (a byte-order mark is removed) or UTF-16 with its mark; `FileNotFoundError` for a missing
    file, `IsADirectoryError` for a folder, `ValueError` for other text.
    """
    path = Path(path)
    entries: list[tuple[int | None, int, str]] = []  # (id or None, line number, class)
    with_ids: bool | None = None
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        where = f"{path}, line {number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ID_LINE.match(line)
        if match is None and ":" in line:
            raise ValueError(f"{where}: {line!r} is malformed; expected `id:name,synonym,...` with an integer id")
        if with_ids is None:
            with_ids = match is not None
        elif with_ids != (match is not None):
            raise ValueError(
                f"{where}: {line!r} mixes the two styles; write every line as `id:name,synonym,...` "
                "or every line as `name,synonym,...`"
            )
        class_id, names = (int(match.group(1)), match.group(2)) if match else (None, line)
        synonyms = [synonym.strip() for synonym in names.split(",")]
        if not names.strip():
            raise ValueError(f"{where}: the class name is empty")
        if any(not synonym for synonym in synonyms):
            raise ValueError(f"{where}: {names.strip()!r} has an empty synonym (two commas or a trailing comma)")
        if synonyms == [_PLACEHOLDER_CLASS]:
            continue
        entries.append((class_id, number, ",".join(synonyms)))
    if not entries:
        raise ValueError(f"Vocabulary file {path} holds no class")

    if with_ids:
        numbered = [(class_id, number, name) for class_id, number, name in entries if class_id is not None]
        first_line: dict[int, int] = {}
        for class_id, number, _ in numbered:
            if class_id in first_line:
                raise ValueError(
                    f"{path}, line {number}: duplicate id {class_id} (already on line {first_line[class_id]})"
                )
            first_line[class_id] = number
        numbered.sort(key=lambda entry: entry[0])
        for previous, (class_id, number, _) in zip(numbered, numbered[1:]):
            if class_id != previous[0] + 1:
                raise ValueError(
                    f"{path}, line {number}: id {class_id} follows id {previous[0]}; ids must be consecutive so "
                    "that the n-th class is label n"
                )
        entries = list(numbered)
    seen: dict[str, int] = {}
    for _, number, name in entries:
        if name in seen:
            raise ValueError(f"{path}, line {number}: class {name!r} is already on line {seen[name]}")
        seen[name] = number
    if not allow_shared_synonyms:
        for synonym, first, other in shared_synonyms([name.split(",") for _, _, name in entries]):
            (_, first_number, first_name), (_, number, name) = entries[first], entries[other]
            raise ValueError(
                f"{path}, line {number}: synonym {synonym!r} of class {name!r} also names class {first_name!r} "
                f"(line {first_number}); give each synonym to one class"
            )
    return [name for _, _, name in entries]


def _read_text(path: Path) -> str:
    """The text of a class file: UTF-8, with or without a byte-order mark, or UTF-16 with its mark (what Windows
    editors save as "Unicode"). Byte-order marks are removed wherever they are (a file concatenated from files
    saved with one has them inside). Raises `FileNotFoundError` for a missing file, `IsADirectoryError` for a
    folder, and `ValueError` for text that is neither, each naming the file."""
    if path.is_dir():
        raise IsADirectoryError(f"Vocabulary file {path} is a folder; give a text file with one class per line")
    if not path.exists():
        raise FileNotFoundError(f"Vocabulary file {path} does not exist")
    data = path.read_bytes()
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Vocabulary file {path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8"
        ) from None
    return text.replace("\ufeff", "")
