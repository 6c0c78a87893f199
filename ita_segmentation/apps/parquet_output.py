"""`ita-segment --format parquet`: the results as a `datasets` dataset, sharded per process, written atomically.

Interface (what `segment_images` calls; one writer per process):

    with ParquetResultsWriter(output, vocabulary, task="semantic", process_index=rank, flush_every=256) as writer:
        for record in records:
            durable = writer.add(record.record_id, record.image, result, image_bytes=record.image_bytes)
            # `durable`: the ids whose rows are now in a complete shard on disk (empty until a flush)
        durable = writer.close()  # the rest (also called by `__exit__`; see `durable_ids`)

The folder then holds `results-<process:05d>-<chunk:05d>.parquet` shards and `classes.txt` (the vocabulary,
`id:name,synonym,...` lines as `vocabulary_files.read_vocabulary_file` reads them). Every `flush_every` rows, and at
`flush`/`close`, the pending rows become one new shard: written under a hidden temporary name
(`.results-...parquet.tmp-<pid>`), synced, then renamed, so a killed process never leaves a `results-*.parquet`
that is incomplete, and the ids `add`/`flush`/`close` return are exactly the rows that are safe on disk (write
manifest lines for those only, and `--resume` redoes the others). A writer numbers its shards after the ones its
process index already has in the folder, so a resumed run adds shards instead of replacing them.

Reading the results back:

    datasets.load_dataset("parquet", data_files="OUT/results-*.parquet", split="train")

One row per image (`results_features` is the schema, by task):
    - `id` (string): the record id (the file stem for file inputs);
    - `image` (`datasets.Image`): the source image, its original encoded bytes when the source had them, else
      a PNG of the upright RGB image the model saw;
    - `label` (`datasets.Image`): semantic: the label map as `apps.outputs.write_label_map` writes `_labels.png`
      (8-bit grey up to 256 classes, 16-bit above); panoptic: the COCO panoptic PNG (`write_panoptic_png`);
      instance: the 16-bit instance PNG (`write_instance_png`);
    - the segments, the fields of `<stem>.json`: semantic `segments` (`label`, `class_id`, `pixel_share`,
      `score`); panoptic `segments_info` (`id`, `category_id`, `label`, `score`, `iscrowd`, `area`, `bbox`,
      `was_fused`); instance `instances` (the same, with `segmentation`, COCO's uncompressed RLE, instead of `was_fused`).
      `class_id` / `category_id` are `ClassLabel`s over the vocabulary, so the classes travel with the data.

Fine-tuning on semantic results: `ita-train --dataset_name_or_path OUT --vocabulary_file OUT/classes.txt` (image
column `image` and label column `label` are `ita-train`'s defaults; `segmentation_data.load_segmentation_dataset`
reads a results folder); panoptic results add `--segments_column segments_info`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from postprocessing_ita import binary_mask_to_coco_rle

from ..errors import ITAUsageError
from .outputs import SEGMENT_FIELDS, bounding_box, write_instance_png, write_label_map, write_panoptic_png

__all__ = [
    "CLASS_FILE",
    "SEGMENTS_COLUMNS",
    "ParquetResultsWriter",
    "results_features",
    "segment_entries",
    "shard_name",
    "write_class_file",
]

CLASS_FILE = "classes.txt"
# The column of the segments, by task: the key of `<stem>.json` that holds them.
SEGMENTS_COLUMNS = {"semantic": "segments", "panoptic": "segments_info", "instance": "instances"}
_ROW_GROUP_SIZE = 64  # rows per parquet row group: readers (and `dataset_source`) hold one group at a time


def shard_name(process_index: int, chunk: int) -> str:
    """The file name of shard `chunk` of process `process_index`."""
    return f"results-{process_index:05d}-{chunk:05d}.parquet"


def results_features(vocabulary: Sequence[str], task: str = "semantic") -> datasets.Features:
    """The schema of a results shard for `task` (see the module's docstring)."""
    if task not in SEGMENTS_COLUMNS:
        raise ValueError(f"Unknown task {task!r}; choose one of {', '.join(SEGMENTS_COLUMNS)}")
    classes = datasets.ClassLabel(names=list(vocabulary))
    segment: dict[str, Any]
    if task == "semantic":
        segment = {
            "label": datasets.Value("string"),
            "class_id": classes,
            "pixel_share": datasets.Value("float64"),
            "score": datasets.Value("float64"),
        }
    else:
        segment = {
            "id": datasets.Value("int64"),
            "category_id": classes,
            "label": datasets.Value("string"),
            "score": datasets.Value("float64"),
            "iscrowd": datasets.Value("int64"),
            "area": datasets.Value("int64"),
            "bbox": datasets.List(datasets.Value("int64")),
        }
        if task == "panoptic":
            segment["was_fused"] = datasets.Value("bool")
        else:
            segment["segmentation"] = {
                "size": datasets.List(datasets.Value("int64")),
                "counts": datasets.List(datasets.Value("int64")),
            }
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "label": datasets.Image(),
            SEGMENTS_COLUMNS[task]: datasets.List(segment),
        }
    )


def _segment_masks(result: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(segment["mask"]) == 255 for segment in result["segments"]]


def segment_entries(
    result: dict[str, Any], task: str = "semantic", masks: Sequence[np.ndarray] | None = None
) -> list[dict[str, Any]]:
    """The segments of one pipeline result as `<stem>.json` lists them (and the results' segments column holds
    them): semantic `SEGMENT_FIELDS`; panoptic/instance `id`, `category_id`, `label`, `score`, `iscrowd`, `area`,
    `bbox` and `was_fused` (panoptic) or `segmentation` (instance, COCO's uncompressed RLE). `masks` are the
    segments' boolean masks when the caller has them already."""
    if task == "semantic":
        kinds = {"label": str, "class_id": int, "pixel_share": float, "score": float}
        return [{key: kinds[key](segment[key]) for key in SEGMENT_FIELDS} for segment in result["segments"]]
    if masks is None:
        masks = _segment_masks(result)
    entries = []
    for segment, mask in zip(result["segments"], masks):
        entry: dict[str, Any] = {
            "id": int(segment["id"]),
            "category_id": int(segment["class_id"]),
            "label": str(segment["label"]),
            "score": float(segment["score"]),
            "iscrowd": 0,
            "area": int(mask.sum()),
            "bbox": bounding_box(mask),
        }
        if task == "instance":
            entry["segmentation"] = binary_mask_to_coco_rle(torch.from_numpy(mask))
        else:
            entry["was_fused"] = bool(segment["was_fused"])
        entries.append(entry)
    return entries


class _NamedBuffer(io.BytesIO):
    """A byte buffer with a file name, so that PIL picks the format from its suffix as for a path: the writers of
    `apps.outputs` encode into it exactly what they write to `<stem>_labels.png` & co."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def _png_bytes(write: Any, *args: Any) -> bytes:
    """The bytes `write(*args, path)` (one of `apps.outputs`' PNG writers) would put in a `.png` file."""
    buffer = _NamedBuffer("label.png")
    write(*args, buffer)
    return buffer.getvalue()


def _image_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_class_file(folder: str | os.PathLike[str], vocabulary: Sequence[str]) -> Path:
    """Write `vocabulary` as `folder/classes.txt` (`id:name,synonym,...`, ids from 0), atomically. A class file
    already there must hold the same vocabulary (a resumed run): else `ITAUsageError`, as the shards would then mix
    two vocabularies."""
    path = Path(folder) / CLASS_FILE
    text = "".join(f"{index}:{name}\n" for index, name in enumerate(vocabulary))
    if path.is_file():
        existing = path.read_text(encoding="utf-8")
        if existing != text:
            raise ITAUsageError(
                f"{path} holds another vocabulary than this run's; results of two vocabularies cannot share a "
                "folder: choose another --output"
            )
        return path
    temporary = path.with_name(f".{CLASS_FILE}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


class ParquetResultsWriter:
    """The results of one process as parquet shards (see the module's docstring)."""

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        vocabulary: Sequence[str],
        task: str = "semantic",
        process_index: int = 0,
        flush_every: int = 256,
        write_classes: bool = True,
    ) -> None:
        """`flush_every` rows per shard (at most); `write_classes`: write `classes.txt` (any process may: it is
        written atomically, and refused when it holds another vocabulary)."""
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        if process_index < 0:
            raise ValueError(f"process_index must be >= 0, got {process_index}")
        self.output_dir = Path(output_dir)
        self.vocabulary = list(vocabulary)
        self.task = task
        self.process_index = process_index
        self.flush_every = flush_every
        self.features = results_features(self.vocabulary, task)
        self.segments_column = SEGMENTS_COLUMNS[task]
        self.shards: list[Path] = []
        self._rows: dict[str, list[Any]] = {column: [] for column in self.features}
        self._closed = False
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if write_classes:
            write_class_file(self.output_dir, self.vocabulary)
        prefix = f"results-{process_index:05d}-"
        for stale in self.output_dir.glob(f".{prefix}*.parquet.tmp-*"):  # a killed run's unfinished shard
            stale.unlink(missing_ok=True)
        taken = [path.name[len(prefix) : -len(".parquet")] for path in self.output_dir.glob(f"{prefix}*.parquet")]
        self._next_chunk = max((int(chunk) for chunk in taken if chunk.isdigit()), default=-1) + 1

    @property
    def pending_ids(self) -> list[str]:
        """The ids added since the last flush: not yet on disk."""
        return list(self._rows["id"])

    def add(
        self, record_id: str, image: Image.Image, result: dict[str, Any], image_bytes: bytes | None = None
    ) -> list[str]:
        """Add one image's pipeline `result` (of this writer's task); returns the ids made durable by the flush
        this row triggered (every `flush_every` rows), else `[]`. `image_bytes`: the source's encoded file, kept
        as is (else `image` is stored as a PNG)."""
        if self._closed:
            raise ValueError("this writer is closed")
        label_map, entries = self._encode_result(image, result)
        self._rows["id"].append(str(record_id))
        self._rows["image"].append({"bytes": image_bytes if image_bytes else _image_bytes(image), "path": None})
        self._rows["label"].append({"bytes": label_map, "path": None})
        self._rows[self.segments_column].append(entries)
        if len(self._rows["id"]) >= self.flush_every:
            return self.flush()
        return []

    def _encode_result(self, image: Image.Image, result: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
        if self.task == "semantic":
            label_png = _png_bytes(write_label_map, result["label_map"], len(self.vocabulary))
            return label_png, segment_entries(result, "semantic")
        masks = _segment_masks(result)
        if self.task == "panoptic":
            label_png = _png_bytes(write_panoptic_png, result["segment_map"])
        else:
            label_png = _png_bytes(write_instance_png, result["segments"], masks, (image.height, image.width))
        return label_png, segment_entries(result, self.task, masks)

    def flush(self) -> list[str]:
        """Write the pending rows as one new shard (temporary name, synced, renamed); returns their ids."""
        ids = list(self._rows["id"])
        if not ids:
            return []
        encoded = self.features.encode_batch(self._rows)
        table = pa.Table.from_pydict(encoded, schema=self.features.arrow_schema)
        name = shard_name(self.process_index, self._next_chunk)
        final = self.output_dir / name
        temporary = self.output_dir / f".{name}.tmp-{os.getpid()}"
        try:
            with open(temporary, "wb") as file:
                pq.write_table(table, file, row_group_size=_ROW_GROUP_SIZE)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_folder(self.output_dir)
        self._next_chunk += 1
        self.shards.append(final)
        self._rows = {column: [] for column in self.features}
        return ids

    def close(self) -> list[str]:
        """Flush the rest; returns the ids it made durable. Closing twice is harmless."""
        if self._closed:
            return []
        ids = self.flush()
        self._closed = True
        return ids

    def __enter__(self) -> ParquetResultsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        # Rows added are complete results: keep them even when the run stops on an error. The ids are lost to
        # the caller here: call `close()` yourself to write their manifest lines.
        if error is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the error that stopped the run is the one to report
            self._closed = True


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the system lets a folder be synced)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
