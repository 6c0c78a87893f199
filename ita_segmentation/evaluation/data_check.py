"""A pre-flight pass over a segmentation dataset: every label map checked before any model work.

A bad label map found halfway through an evaluation loses the work done so far; in training, label ids are
read only inside the random crop, so a small bad region trains silently and a large one stops the run after
hours. `check_segmentation_data` reads every pair once (image headers only, label maps decoded), with a
progress bar, and reports every problem with the file it is in:

- a label or image file that is missing or cannot be read (empty, truncated, not an image);
- a label map that is not one channel of class ids (an RGB image, say);
- a label map whose size differs from its image's (upright, as the model sees it);
- class ids outside the vocabulary that are not the ignore label (after `reduce_labels` when it applies);
- for panoptic annotations, segments of a category outside the vocabulary.

Files without their pair in folder layouts (an image without a label map, or the reverse) are found by the
loaders (`unpaired=` lists) and reported here with the rest. `DataCheckReport.raise_or_keep_good` then stops
with the whole list, or, when asked, keeps the good rows and says how many it left out.

Under `torch.distributed` (an `accelerate launch` or `torchrun` run) each process checks its share of the rows
and all processes get the whole report.
"""

import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..errors import ITADataError
from ..label_maps import label_map_array

__all__ = ["DataCheckError", "DataCheckReport", "DataProblem", "check_segmentation_data"]

# EXIF orientations that turn the image by 90 degrees (its upright width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_SHOWN_IDS = 10


@dataclass(frozen=True)
class DataProblem:
    """One problem: the file it is in (or the row, for data without files), what is wrong, and the dataset row
    (None for a file that has no row, such as an image without a label map)."""

    file: str
    message: str
    row: int | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class DataCheckError(ITADataError, ValueError):
    """The data has problems; `report` holds them all and the message lists them."""

    def __init__(self, report: "DataCheckReport", what: str = "the dataset") -> None:
        self.report = report
        super().__init__(
            f"{len(report.problems)} problem(s) in {report.num_files(what)} of {what}; nothing was computed. "
            "Fix the files, or leave them out with --skip-bad-samples (--skip_bad_samples for training):\n"
            + "\n".join(f"  {problem}" for problem in report.problems)
            + report.vocabulary_hint()
        )


@dataclass
class DataCheckReport:
    """What `check_segmentation_data` found: `problems` in row order, then the files without a row."""

    num_rows: int
    problems: list[DataProblem] = field(default_factory=list)
    vocabulary: str | None = None  # where the class list came from, e.g. "--vocabulary-file two.txt (2 classes)"

    def vocabulary_hint(self) -> str:
        """A closing line naming the class list when some label maps hold ids outside it (the list may be the
        problem, not the files), else ''."""
        if self.vocabulary is None or not any("outside the" in problem.message for problem in self.problems):
            return ""
        return (
            f"\nThe class list is {self.vocabulary}: if the label maps use more classes than it lists, the class "
            "list is what to fix (one class per line, in the order of the label ids)."
        )

    @property
    def bad_rows(self) -> list[int]:
        """The rows with at least one problem, sorted."""
        return sorted({problem.row for problem in self.problems if problem.row is not None})

    def num_files(self, what: str = "the dataset") -> str:
        unpaired = sum(problem.row is None for problem in self.problems)
        return f"{len(self.bad_rows)} of the {self.num_rows} samples" + (
            f" and {unpaired} unpaired file(s)" if unpaired else ""
        )

    def raise_or_keep_good(
        self,
        dataset: datasets.Dataset,
        skip_bad_samples: bool = False,
        what: str = "the dataset",
        log: Callable[[str], object] = print,
    ) -> datasets.Dataset:
        """No problem: `dataset` as it is. Problems: raise `DataCheckError` listing them, or with
        `skip_bad_samples`, log them and how many samples are left out, and return the good rows."""
        if not self.problems:
            return dataset
        if not skip_bad_samples:
            raise DataCheckError(self, what)
        bad = set(self.bad_rows)
        log(
            f"Leaving out {len(bad)} of the {self.num_rows} samples of {what} (--skip-bad-samples); the problems:\n"
            + "\n".join(f"  {problem}" for problem in self.problems)
        )
        return dataset.select([index for index in range(len(dataset)) if index not in bad])


def _source_and_name(value: Any, row: int, file_name: str | None) -> tuple[Any, str]:
    """(what to open, what to call it) for an undecoded `datasets.Image` value, a path or an array."""
    if isinstance(value, dict) and ("path" in value or "bytes" in value):
        path, data = value.get("path"), value.get("bytes")
        name = path or f"row {row}" + (f" ({file_name})" if file_name else "")
        return (io.BytesIO(data) if data is not None else path), name
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value), os.fspath(value)
    return value, f"row {row}" + (f" ({file_name})" if file_name else "")


def _upright_size(source: str | io.BytesIO) -> tuple[int, int]:
    with Image.open(source) as image:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        width, height = image.size
    return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)


def _label_array(source: Any, panoptic: bool) -> np.ndarray:
    """The label map's class ids (`label_maps.label_map_array`); for a panoptic PNG (segment ids as RGB,
    described by the segments column) only an array of its size, from the header: decoding every PNG of a large
    split (COCO's 118k) would cost far more than reading headers."""
    if panoptic and isinstance(source, (str, io.BytesIO)):
        with Image.open(source) as image:
            return np.empty((image.height, image.width), dtype=np.uint8)
    if panoptic:
        array = np.asarray(source)
        if array.ndim == 3 and array.shape[-1] == 3:
            array = array[..., 0]  # only the size matters
        return label_map_array(array, where="the label map")
    return label_map_array(source, where="the label map")


def _present_ids(array: np.ndarray) -> np.ndarray:
    """The distinct values of an integer map (a bincount for 8- and 16-bit maps: much faster than np.unique)."""
    if array.dtype in (np.uint8, np.uint16, np.bool_):
        return np.flatnonzero(np.bincount(array.ravel().astype(np.int64)))
    return np.unique(array)


class _RowChecker(torch.utils.data.Dataset):
    """The problems of each row, as a map-style dataset so that DataLoader workers can share the work."""

    def __init__(
        self,
        rows: datasets.Dataset,
        indices: Iterable[int],
        num_labels: int,
        ignore_index: int,
        reduce_labels: bool,
        image_column: str,
        label_column: str,
        segments_column: str | None,
    ) -> None:
        self.rows = rows
        self.indices = list(indices)
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        self.image_column = image_column
        self.label_column = label_column
        self.segments_column = segments_column

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> list[DataProblem]:
        index = self.indices[position]
        row = self.rows[index]
        file_name = row.get("file_name")
        problems = []

        image_source, image_name = _source_and_name(row[self.image_column], index, file_name)
        label_source, label_name = _source_and_name(row[self.label_column], index, file_name)
        image_size = None
        try:
            image_size = _upright_size(image_source) if isinstance(image_source, (str, io.BytesIO)) else None
            if image_size is None:
                image_size = tuple(np.asarray(image_source).shape[:2])
        except FileNotFoundError:
            problems.append(DataProblem(image_name, "the image file is missing", index))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            problems.append(DataProblem(image_name, f"the image cannot be read ({error})", index))
        try:
            label = _label_array(label_source, panoptic=self.segments_column is not None)
        except FileNotFoundError:
            problems.append(DataProblem(label_name, "the label map file is missing", index))
            return problems
        except (OSError, UnidentifiedImageError, ValueError) as error:
            problems.append(DataProblem(label_name, f"the label map cannot be read: {error}", index))
            return problems

        if image_size is not None and tuple(label.shape) != tuple(image_size):
            problems.append(
                DataProblem(
                    label_name,
                    f"the label map is {label.shape[0]}x{label.shape[1]} (height x width) but its image "
                    f"{image_name} is {image_size[0]}x{image_size[1]}",
                    index,
                )
            )
        if self.segments_column is not None:
            categories = [segment["category_id"] for segment in row[self.segments_column] or []]
            bad = sorted({int(c) for c in categories if not 0 <= int(c) < self.num_labels})
            if bad:
                problems.append(
                    DataProblem(
                        label_name, f"segments of categories {bad} outside the {self.num_labels} classes", index
                    )
                )
            return problems

        ids = _present_ids(label).astype(np.int64)
        if self.reduce_labels:
            ids = np.array(
                sorted({self.ignore_index if value in (0, self.ignore_index) else value - 1 for value in ids})
            )
        bad = ids[(ids != self.ignore_index) & ((ids < 0) | (ids >= self.num_labels))]
        if bad.size:
            shown = bad[:_SHOWN_IDS].tolist() + (["..."] if bad.size > _SHOWN_IDS else [])
            problems.append(
                DataProblem(
                    label_name,
                    f"class ids {shown} are outside the vocabulary of {self.num_labels} classes (0..{self.num_labels - 1}) "
                    f"and are not the ignore label {self.ignore_index}"
                    + (
                        " (ids after reduce_labels: 0 is ignored, the others move down by one)"
                        if self.reduce_labels
                        else ""
                    ),
                    index,
                )
            )
        return problems


def _as_list(items: list[list[DataProblem]]) -> list[list[DataProblem]]:
    return items


def _undecoded(dataset: datasets.Dataset, columns: Iterable[str | None]) -> datasets.Dataset:
    """`dataset` with its image columns read as `{path, bytes}` (no pixel decoding)."""
    for column in columns:
        if column and isinstance(dataset.features.get(column), datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_segmentation_data(
    dataset: datasets.Dataset,
    num_labels: int,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    image_column: str = "image",
    label_column: str = "label",
    segments_column: str | None = None,
    unpaired: Iterable[tuple[str | os.PathLike[str], str]] = (),
    num_workers: int = 0,
    description: str = "Checking label maps",
    progress: bool = True,
    vocabulary: str | None = None,
) -> DataCheckReport:
    """Check every row of a segmentation dataset (see the module docstring); returns a `DataCheckReport`.

    Args:
        dataset: a `datasets.Dataset` whose `image_column` holds images and `label_column` label maps (files,
            bytes or arrays), or panoptic PNGs with `segments_column`.
        num_labels / ignore_index / reduce_labels: the label space: ids in `[0, num_labels)` or `ignore_index`.
        unpaired: `(file, message)` pairs for files the loader found without their pair; reported as they are.
        num_workers: DataLoader processes sharing the work.
        vocabulary: where the class list came from, named in `DataCheckError`'s message when ids fall outside it.
    """
    for column in (image_column, label_column, segments_column):
        if column and column not in dataset.column_names:
            raise KeyError(f"The dataset has no column {column!r}; its columns are {dataset.column_names}")
    rank, world_size = _distributed()
    rows = _undecoded(dataset, (image_column, label_column))
    checker = _RowChecker(
        rows,
        range(rank, len(dataset), world_size),
        num_labels,
        ignore_index,
        reduce_labels,
        image_column,
        label_column,
        segments_column,
    )
    # A generator of its own: a DataLoader draws its workers' seed from the global one, and a check made before
    # the model is built must not change how a seeded run initialises it.
    loader = DataLoader(
        checker, batch_size=8, num_workers=num_workers, collate_fn=_as_list, generator=torch.Generator()
    )
    problems = []
    with tqdm(total=len(checker), desc=description, unit="sample", disable=not progress or rank != 0) as bar:
        for items in loader:
            for item in items:
                problems.extend(item)
            bar.update(len(items))
    if world_size > 1:
        gathered: list[list[DataProblem]] = [[] for _ in range(world_size)]
        torch.distributed.all_gather_object(gathered, problems)
        problems = [problem for part in gathered for problem in part]
    problems.sort(key=lambda problem: problem.row)
    problems += [DataProblem(os.fspath(path), message) for path, message in unpaired]
    return DataCheckReport(num_rows=len(dataset), problems=problems, vocabulary=vocabulary)
