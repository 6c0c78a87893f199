"""`ita-segment --dataset NAME_OR_PATH [--split S] [--image-column C] [--id-column C]`: the images of a
`datasets` dataset, one record at a time, shared between the processes of a run.

Interface (what `segment_images` calls):

    source = open_dataset_source("photos.parquet", split=None, image_column=None, id_column=None)
    source.num_rows                          # rows of the split, or None for a stream of unknown length
    source.shard_size(index, count)          # rows one process gets, or None when unknown
    for record in source.records(process_index, num_processes, skip_ids=done):
        if record.error is not None:         # this image failed to decode: report it, go on with the next
            ...
        else:
            record.record_id, record.image   # id usable as a file stem; PIL image, upright, RGB
            record.image_bytes               # the encoded file as stored (or None), for parquet outputs

`open_dataset_source` checks everything that can be checked before the model loads and raises
`ITAUsageError` naming the problem: a name that is neither a file or folder here nor a dataset the Hub answers
for (saying both, and that `HF_HUB_OFFLINE` is set when it is), a split the dataset lacks (listing its splits),
a column it lacks (listing its columns), and, where the ids can be read up front, ids that cannot be file stems
or that repeat.

What a NAME_OR_PATH can be:
    - a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`), read memory-mapped;
    - a `.parquet` file, or a folder of them (splits by `datasets`' file-name rules, e.g. `train-*.parquet`),
      read with pyarrow one row group at a time: a million rows never sit in memory;
    - an `.arrow` file (`datasets`' own format), read memory-mapped;
    - any other folder `datasets.load_dataset` reads (an imagefolder of images with an optional
      `metadata.jsonl`, json/csv files naming images), or a Hub dataset id: read as a stream
      (`streaming=True`).

Sharding: `records(process_index, num_processes)` gives each row to exactly one process. Sources of known length
(save_to_disk, arrow, parquet) are cut into contiguous blocks, process k taking rows
`[k * n // N, (k + 1) * n // N)`, so each process reads only its part; streams give row `i` to process `i % N`.
Either way a record's id does not depend on the number of processes, so a run on N processes writes what a run
on one writes.

Ids: the `--id-column` value (strings or integers), else the row's position zero-padded to 8 digits
(`"00000042"`). An id must be usable as a file stem: not empty, no `/`, `\\`, NUL or control character, not
`.`/`..`, not starting with `.`, at most 200 characters. Bad or repeated ids are refused up front where the id
column can be read cheaply (save_to_disk, arrow, parquet), else reported per record.

Images: the `--image-column`, else the dataset's single `datasets.Image` column, else a column named `image`.
Its values may be `Image` features (bytes or a path), raw bytes, file paths or PIL images; each is decoded as
`ita-segment` reads files (`image_processing_ita.open_image`: fully decoded, EXIF orientation applied) and
converted to RGB. A value that does not decode is a per-record failure (`DatasetRecord.error`), not the end of
the run.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import pyarrow.parquet as pq
from PIL import Image

from image_processing_ita import open_image

from ..errors import ITAUsageError
from ..segmentation_data import unreachable_dataset_message

__all__ = [
    "ID_WIDTH",
    "DatasetRecord",
    "DatasetSource",
    "check_record_id",
    "decode_image_value",
    "open_dataset_source",
    "shard_bounds",
]

# Row positions as ids: zero-padded so that they sort like the rows, whatever the number of rows.
ID_WIDTH = 8
_MAX_ID_LENGTH = 200
_BAD_ID_CHARACTERS = re.compile(r"[/\\\x00-\x1f\x7f]")
_SAVED_DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


class DatasetRecord(NamedTuple):
    """One row of the source: its id, and its image or why it has none.

    `image` is None exactly when `error` is set (the value did not decode, or its id is unusable);
    `image_bytes` is the encoded image as stored in the dataset when it holds bytes (None for paths and PIL
    values), so that outputs can keep the original file instead of re-encoding it."""

    record_id: str
    position: int
    image: Image.Image | None
    error: str | None = None
    image_bytes: bytes | None = None


def check_record_id(value: Any) -> str:
    """`value` (a string or an integer) as a record id usable as a file stem; raises `ValueError` saying why not."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"id {value!r} is a {type(value).__name__}; ids must be strings or integers")
    record_id = str(value)
    if not record_id.strip():
        raise ValueError(f"id {record_id!r} is empty")
    if record_id in (".", "..") or record_id.startswith("."):
        raise ValueError(f"id {record_id!r} starts with '.'; ids become file names")
    bad = _BAD_ID_CHARACTERS.search(record_id)
    if bad is not None:
        raise ValueError(f"id {record_id!r} holds {bad.group()!r}; ids become file names (no '/', '\\' or controls)")
    if len(record_id) > _MAX_ID_LENGTH:
        raise ValueError(f"id {record_id[:40]!r}... is {len(record_id)} characters long (at most {_MAX_ID_LENGTH})")
    return record_id


def position_id(position: int) -> str:
    """The id of the row at `position` when the dataset has no id column."""
    return f"{position:0{ID_WIDTH}d}"


def shard_bounds(num_rows: int, process_index: int, num_processes: int) -> tuple[int, int]:
    """The contiguous rows `[start, stop)` of process `process_index` of `num_processes`."""
    _check_process(process_index, num_processes)
    return num_rows * process_index // num_processes, num_rows * (process_index + 1) // num_processes


def _check_process(process_index: int, num_processes: int) -> None:
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} of {num_processes} does not exist")


def decode_image_value(value: Any, where: str = "image", base: Path | None = None) -> tuple[Image.Image, bytes | None]:
    """A dataset's image value -> `(upright RGB PIL image, its encoded bytes or None)`.

    `value` may be an `Image` feature's `{"bytes", "path"}`, raw bytes, a file path (relative paths are looked
    up as given, then under `base`) or a PIL image. Raises `ValueError` naming what is wrong."""
    data: bytes | None = None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None:
            value = value.get("path")
        if data is None and value is None:
            raise ValueError(f"{where} is empty (neither bytes nor a path)")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    if data is not None:
        if not data:
            raise ValueError(f"{where}: empty image (0 bytes)")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = open_image(opened.copy() if opened.format is None else opened, where=where)
        except ValueError:
            raise
        except Exception as error:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
            raise ValueError(f"{where}: cannot read image: {error}") from error
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file() and base is not None and (base / path).is_file():
            path = base / path
        if not path.is_file():
            raise ValueError(f"{where}: image file {value} does not exist")
        image = open_image(path, where=where)
    elif isinstance(value, Image.Image):
        image = open_image(value, where=where)
    elif value is None:
        raise ValueError(f"{where} is empty (None)")
    else:
        raise ValueError(f"{where} is a {type(value).__name__}, not an image, image bytes or a path")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, data


def _pick_split(splits: Sequence[str], split: str | None, name: str) -> str:
    """The split to read: the one asked for, else the only one, else `train`; raises `ITAUsageError` listing
    the splits."""
    if split is not None:
        if split not in splits:
            raise ITAUsageError(f"--split: {name} has no split {split!r}; its splits: {', '.join(splits)}")
        return split
    if len(splits) == 1:
        return splits[0]
    if "train" in splits:
        return "train"
    raise ITAUsageError(f"--dataset {name} has several splits ({', '.join(splits)}); choose one with --split")


def _pick_columns(
    features: datasets.Features | None, image_column: str | None, id_column: str | None, name: str
) -> tuple[str, str | None]:
    """The image and id columns; raises `ITAUsageError` listing the columns. Without features (a stream of
    unknown columns) the names are taken as given (`image` by default) and checked on the first row."""
    if features is None:
        return image_column or "image", id_column
    columns = list(features)
    shown = ", ".join(columns) if columns else "none"
    for option, column in (("--image-column", image_column), ("--id-column", id_column)):
        if column is not None and column not in features:
            raise ITAUsageError(f"{option}: {name} has no column {column!r}; its columns: {shown}")
    if image_column is None:
        image_columns = [column for column, feature in features.items() if isinstance(feature, datasets.Image)]
        if len(image_columns) == 1:
            image_column = image_columns[0]
        elif "image" in features:
            image_column = "image"
        else:
            problem = f"several image columns ({', '.join(image_columns)})" if image_columns else "no image column"
            raise ITAUsageError(f"--dataset {name} has {problem}; name one with --image-column (columns: {shown})")
    if id_column is not None and id_column == image_column:
        raise ITAUsageError(f"--id-column {id_column!r} is the image column; name a column of ids")
    return image_column, id_column


def _check_ids(values: Sequence[Any], name: str, id_column: str) -> None:
    """Refuse ids that cannot be file stems or that repeat (`ITAUsageError`, naming the first few)."""
    bad: list[str] = []
    first: dict[str, int] = {}
    repeated: list[str] = []
    for position, value in enumerate(values):
        try:
            record_id = check_record_id(value)
        except ValueError as error:
            bad.append(f"row {position}: {error}")
            continue
        if record_id in first:
            repeated.append(f"{record_id!r} (rows {first[record_id]} and {position})")
        else:
            first[record_id] = position
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ITAUsageError(f"--id-column {id_column!r} of {name}: {'; '.join(bad[:3])}{more}")
    if repeated:
        more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
        raise ITAUsageError(
            f"--id-column {id_column!r} of {name} repeats ids: {', '.join(repeated[:3])}{more}; each image needs "
            "its own id (its outputs are named by it); leave --id-column out to number the rows"
        )


@dataclass
class DatasetSource:
    """An opened `--dataset` (see the module's docstring); made by `open_dataset_source`."""

    name: str
    split: str
    image_column: str
    id_column: str | None
    num_rows: int | None
    kind: str  # "table" (save_to_disk / arrow), "parquet" or "stream"
    features: datasets.Features | None = None
    _table: datasets.Dataset | None = field(default=None, repr=False)
    _parquet_files: list[Path] = field(default_factory=list, repr=False)
    _stream: datasets.IterableDataset | None = field(default=None, repr=False)
    _base: Path | None = field(default=None, repr=False)

    @property
    def columns(self) -> list[str]:
        """The dataset's columns (empty when a stream does not say)."""
        return list(self.features) if self.features is not None else []

    def shard_size(self, process_index: int = 0, num_processes: int = 1) -> int | None:
        """How many rows process `process_index` of `num_processes` gets, or None for a stream of unknown length."""
        if self.num_rows is None:
            return None
        if self.kind == "stream":
            _check_process(process_index, num_processes)
            return len(range(process_index, self.num_rows, num_processes))
        start, stop = shard_bounds(self.num_rows, process_index, num_processes)
        return stop - start

    def records(
        self, process_index: int = 0, num_processes: int = 1, skip_ids: Container[str] | None = None
    ) -> Iterator[DatasetRecord]:
        """The records of process `process_index` of `num_processes`, in row order; every row goes to exactly
        one process. Records whose id is in `skip_ids` (done in an earlier run) are passed over undecoded."""
        _check_process(process_index, num_processes)
        if self.kind == "table":
            rows = self._table_rows(process_index, num_processes)
        elif self.kind == "parquet":
            rows = self._parquet_rows(process_index, num_processes)
        else:
            rows = self._stream_rows(process_index, num_processes)
        seen: set[str] = set()
        for position, raw_id, value in rows:
            where = f"{self.name} row {position}"
            try:
                record_id = position_id(position) if self.id_column is None else check_record_id(raw_id)
            except ValueError as error:
                yield DatasetRecord(position_id(position), position, None, f"{where}: {error}")
                continue
            if skip_ids is not None and record_id in skip_ids:
                continue
            if self.kind == "stream" and self.id_column is not None:
                if record_id in seen:  # the ids of a stream cannot be checked up front
                    yield DatasetRecord(record_id, position, None, f"{where}: id {record_id!r} repeats an earlier row")
                    continue
                seen.add(record_id)
            try:
                image, data = decode_image_value(value, where=f"{where} ({record_id})", base=self._base)
            except ValueError as error:
                yield DatasetRecord(record_id, position, None, str(error))
                continue
            yield DatasetRecord(record_id, position, image, None, data)

    # -- the three ways of reading rows: (position, id value or None, image value) ------------------------------

    def _table_rows(self, process_index: int, num_processes: int) -> Iterator[tuple[int, Any, Any]]:
        assert self._table is not None and self.num_rows is not None
        start, stop = shard_bounds(self.num_rows, process_index, num_processes)
        columns = [self.image_column] + ([self.id_column] if self.id_column else [])
        table = self._table.select_columns(columns)
        batch_size = 64
        for batch_start in range(start, stop, batch_size):
            batch = table[batch_start : min(batch_start + batch_size, stop)]
            ids = batch[self.id_column] if self.id_column else [None] * len(batch[self.image_column])
            for offset, (raw_id, value) in enumerate(zip(ids, batch[self.image_column])):
                yield batch_start + offset, raw_id, value

    def _parquet_rows(self, process_index: int, num_processes: int) -> Iterator[tuple[int, Any, Any]]:
        assert self.num_rows is not None
        start, stop = shard_bounds(self.num_rows, process_index, num_processes)
        columns = [self.image_column] + ([self.id_column] if self.id_column else [])
        first = 0  # position of the current row group's first row
        for path in self._parquet_files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.metadata.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                if first + size <= start or first >= stop:
                    first += size
                    continue
                position = first
                for batch in parquet.iter_batches(batch_size=64, row_groups=[group], columns=columns):
                    values = batch.column(self.image_column).to_pylist()
                    ids = batch.column(self.id_column).to_pylist() if self.id_column else [None] * len(values)
                    for raw_id, value in zip(ids, values):
                        if start <= position < stop:
                            yield position, raw_id, value
                        position += 1
                first += size
            if first >= stop:
                return

    def _stream_rows(self, process_index: int, num_processes: int) -> Iterator[tuple[int, Any, Any]]:
        assert self._stream is not None
        checked = False
        for position, row in enumerate(self._stream):
            if position % num_processes != process_index:
                continue
            if not checked:  # a stream without features names its columns in its rows only
                missing = [column for column in (self.image_column, self.id_column) if column and column not in row]
                if missing:
                    raise ITAUsageError(f"{self.name} has no column {missing[0]!r}; its columns: {', '.join(row)}")
                checked = True
            yield position, row.get(self.id_column) if self.id_column else None, row[self.image_column]


def _undecoded(dataset: Any, features: datasets.Features | None, image_column: str) -> Any:
    """`dataset` with its image column left encoded (bytes or paths), so that a bad image fails on its own."""
    if features is not None and isinstance(features.get(image_column), datasets.Image):
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _parquet_splits(folder: Path) -> dict[str, list[Path]] | None:
    """The parquet files of `folder` by split (`datasets`' file-name rules), or None when its data files are
    not all parquet."""
    try:
        patterns = datasets.data_files.get_data_patterns(os.fspath(folder))
    except datasets.data_files.EmptyDatasetError:
        return None
    splits: dict[str, list[Path]] = {}
    for split, split_patterns in patterns.items():
        files = datasets.data_files.DataFilesList.from_patterns(split_patterns, base_path=os.fspath(folder))
        paths = [Path(str(file)) for file in files]
        if not paths or any(path.suffix != ".parquet" for path in paths):
            return None
        splits[split] = sorted(paths)
    return splits or None


def _is_parquet_results_folder(folder: Path) -> bool:
    return any(folder.glob("results-*.parquet"))


def open_dataset_source(
    name_or_path: str | os.PathLike[str],
    split: str | None = None,
    image_column: str | None = None,
    id_column: str | None = None,
) -> DatasetSource:
    """Open `--dataset` for reading (see the module's docstring); raises `ITAUsageError` naming the problem."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS):
            return _open_saved(name, path, split, image_column, id_column)
        if path.is_file():
            if path.suffix == ".parquet":
                return _open_parquet(name, [path], split or "train", image_column, id_column)
            if path.suffix == ".arrow":
                table = datasets.Dataset.from_file(os.fspath(path))
                return _open_table(name, table, split or "train", image_column, id_column)
            raise ITAUsageError(
                f"--dataset {name}: cannot tell the format of this file; give a .parquet or .arrow file, or a folder"
            )
        if path.is_dir():
            if _is_parquet_results_folder(path):  # ita-segment --format parquet's results: one split
                shards = sorted(path.glob("results-*.parquet"))
                return _open_parquet(name, shards, split or "train", image_column, id_column)
            parquet_splits = _parquet_splits(path)
            if parquet_splits is not None:
                chosen = _pick_split(list(parquet_splits), split, name)
                return _open_parquet(name, parquet_splits[chosen], chosen, image_column, id_column)
        return _open_stream(name, path, split, image_column, id_column)
    except ITAUsageError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise ITAUsageError(f"--dataset {name}: cannot read it: {error}") from error


def _open_saved(
    name: str, path: Path, split: str | None, image_column: str | None, id_column: str | None
) -> DatasetSource:
    loaded = datasets.load_from_disk(os.fspath(path))
    if isinstance(loaded, datasets.DatasetDict):
        chosen = _pick_split(list(loaded), split, name)
        return _open_table(name, loaded[chosen], chosen, image_column, id_column)
    return _open_table(name, loaded, split or "train", image_column, id_column)


def _open_table(
    name: str, table: datasets.Dataset, split: str, image_column: str | None, id_column: str | None
) -> DatasetSource:
    image_column, id_column = _pick_columns(table.features, image_column, id_column, name)
    if len(table) == 0:
        raise ITAUsageError(f"--dataset {name}: split {split!r} has no rows")
    if id_column is not None:
        _check_ids(table[id_column], name, id_column)
    features = table.features
    return DatasetSource(
        name,
        split,
        image_column,
        id_column,
        len(table),
        "table",
        features,
        _table=_undecoded(table, features, image_column),
    )


def _open_parquet(
    name: str, files: list[Path], split: str, image_column: str | None, id_column: str | None
) -> DatasetSource:
    schema = pq.read_schema(files[0])
    features = datasets.Features.from_arrow_schema(schema)
    image_column, id_column = _pick_columns(features, image_column, id_column, name)
    num_rows = 0
    for file in files:
        num_rows += pq.ParquetFile(file).metadata.num_rows
    if num_rows == 0:
        raise ITAUsageError(f"--dataset {name}: split {split!r} has no rows")
    if id_column is not None:
        ids = [value for file in files for value in pq.read_table(file, columns=[id_column]).column(0).to_pylist()]
        _check_ids(ids, name, id_column)
    return DatasetSource(
        name, split, image_column, id_column, num_rows, "parquet", features, _parquet_files=files, _base=files[0].parent
    )


def _open_stream(
    name: str, path: Path, split: str | None, image_column: str | None, id_column: str | None
) -> DatasetSource:
    if not path.exists():
        try:
            splits = datasets.load_dataset(name, streaming=True)
        except Exception as error:  # noqa: BLE001 - whatever the Hub client raises, the message says both
            raise ITAUsageError("--dataset " + unreachable_dataset_message(name, error)) from error
    else:
        splits = datasets.load_dataset(os.fspath(path), streaming=True)
    if not isinstance(splits, datasets.IterableDatasetDict):
        raise ITAUsageError(f"--dataset {name}: not a dataset of rows ({type(splits).__name__})")
    chosen = _pick_split(list(splits), split, name)
    stream = splits[chosen]
    features = stream.features
    image_column, id_column = _pick_columns(features, image_column, id_column, name)
    info_rows = None
    info = getattr(stream, "info", None)
    if info is not None and info.splits and chosen in info.splits:
        info_rows = info.splits[chosen].num_examples or None
    return DatasetSource(
        name,
        chosen,
        image_column,
        id_column,
        info_rows,
        "stream",
        features,
        _stream=_undecoded(stream, features, image_column),
        _base=path if path.is_dir() else None,
    )
