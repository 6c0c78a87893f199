"""`ita-segment`'s work, once `cli` has parsed the arguments: check everything that needs no model, load the
pipeline, segment the images batch by batch and write each one's files (see `cli` for what they are), on one
process or on each of those `accelerate launch` started (`distributed`), keeping the manifest that makes a run
resumable and never lets it replace a file it did not write (`run_manifest`).

The order of a run, on every process: the checks (arguments, vocabulary, inputs, output names against the inputs
and the files in the output folder: `plan`), loading the model (the main process first encodes the vocabulary,
the others then read it from the disk cache), this process's share of the images, and at the end the counts of
all processes, from which the main process writes `run_summary.json` and every process takes its exit status.
"""

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from image_processing_ita import open_image
from modeling_ita.loading import ModelLoadingError, check_model_location
from modeling_ita.pipeline import DEFAULT_THRESHOLDS, SUBTASKS, ZERO_SHOT_IMAGE_SEGMENTATION_TASK
from postprocessing_ita import binary_mask_to_coco_rle
from processing_ita import parse_vocabulary

from ..dtypes import torch_dtype
from ..errors import EXIT_DATA, EXIT_OK, ITADataError, ITAUsageError
from ..onnx import ITAOnnxModel, resolve_backend
from ..vocabulary_files import read_vocabulary_file
from . import run_manifest
from .distributed import Processes, Stopped, start_processes
from .inputs import find_images, output_names, recognised_outputs
from .outputs import (
    MAX_LABEL_MAP_CLASSES,
    SEGMENT_FIELDS,
    bounding_box,
    write_instance_png,
    write_label_map,
    write_panoptic_png,
)
from .run_manifest import MANIFEST_NAME, PARTS_FOLDER, RESERVED_NAMES, SUMMARY_NAME, ManifestParts
from .visualization import overlay, segment_overlay

__all__ = ["PAUSE_ENV", "UsageError", "read_image", "read_vocabulary", "segment_images"]

# `--format parquet`'s shards (`parquet_output.shard_name`) and class list (`parquet_output.CLASS_FILE`); named here
# so that the checks need not import pyarrow.
_SHARD = re.compile(r"^results-\d{5}-\d{5}\.parquet$")
CLASS_FILE = "classes.txt"

# For tests and benchmarks only: seconds each process sleeps after each image, so that a kill lands mid-run.
PAUSE_ENV = "ITA_SEGMENT_PAUSE_PER_IMAGE"
_FAIL_FAST_FLAG = "fail-fast"


class UsageError(ITAUsageError):
    """A problem with the command line or its inputs, found before any image is segmented (exit 2)."""


def read_vocabulary(args: argparse.Namespace) -> list[str]:
    """The vocabulary from `--labels` or `--labels-file`, validated; raises `UsageError`."""
    if args.labels_file is not None:
        if args.labels_file.is_dir():
            raise UsageError(f"labels file {args.labels_file} is a folder; give a text file, one class per line")
        try:
            vocabulary = read_vocabulary_file(args.labels_file)
        except FileNotFoundError:
            raise UsageError(f"labels file {args.labels_file} does not exist") from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise UsageError(f"cannot read labels file {args.labels_file}: {error}") from None
    else:
        vocabulary = args.labels
    try:
        parsed = parse_vocabulary(vocabulary)  # the one parse: byte-order marks gone, empty names refused, ...
    except ValueError as error:
        raise UsageError(str(error)) from None
    # The same spelling as read_vocabulary_file: "sofa , couch " -> "sofa,couch".
    return [",".join(name.strip() for name in label.split(",")) for label in parsed.names]


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file (upright, as the model sees it); raises `ValueError` naming what is
    wrong (empty, truncated, not an image, zero size)."""
    image: Image.Image = open_image(Path(path), where="image")
    return image


# ------------------------------------------------------------------------------------------------------------
# The plan: everything checked before the model is loaded
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One image of the run: the stem of its outputs, the input as the outputs name it, its place in the run and
    how to read it."""

    key: str
    input: str
    position: int
    path: Path | None = None
    image: Image.Image | None = None
    error: str | None = None
    image_bytes: bytes | None = None

    def read(self) -> Image.Image:
        if self.path is not None:
            return read_image(self.path)
        if self.image is None:
            raise ValueError(self.error or "no image")
        return self.image


@dataclass
class Plan:
    """What the checks found: the device, the vocabulary, the images still to segment (all processes'), the
    inputs that are missing, and what `--resume` found done."""

    device: torch.device
    vocabulary: list[str]
    to_do: list[Item]
    problems: list[tuple[str, str]]
    total: int
    done_before: int
    settings: str
    owned: set[str]
    source: Any = None  # a dataset_source.DatasetSource with --dataset
    done_ids: set[str] = field(default_factory=set)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.task not in SUBTASKS:  # the parser leaves --task to the pipeline's list (it imports torch)
        raise UsageError(f"--task: invalid choice {args.task!r} (choose from {', '.join(SUBTASKS)})")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must lie in [0, 1], got {args.alpha}")
    try:
        check_model_location(args.model)
    except ModelLoadingError as error:
        raise UsageError(f"--model: {error}") from None


def _check_vocabulary_fits(args: argparse.Namespace, vocabulary: list[str]) -> None:
    """Refuse up front a vocabulary the outputs cannot hold (the label map PNG is at most 16-bit)."""
    if args.task == "semantic" and len(vocabulary) > MAX_LABEL_MAP_CLASSES:
        raise UsageError(
            f"{len(vocabulary):,} classes do not fit the label map PNG (16-bit: at most {MAX_LABEL_MAP_CLASSES:,} "
            "classes); split the vocabulary into several runs"
        )


def _settings(args: argparse.Namespace, vocabulary: list[str]) -> str:
    """The fingerprint of what decides the outputs: a manifest line with another one is not done for this run."""
    return run_manifest.settings_fingerprint(
        {
            "model": str(args.model),
            "backend": args.backend,
            "dtype": args.dtype,
            "task": args.task,
            "vocabulary": vocabulary,
            "stuff": args.stuff,
            "threshold": args.threshold,
            "alpha": args.alpha,
            "format": args.format,
        }
    )


def _plan(args: argparse.Namespace, processes: Processes) -> Plan:
    """Everything that can be checked before loading the model; raises `UsageError`. Missing inputs are problems
    (reported, counted as failures) that let the others run."""
    _check_backend(args)
    _check_arguments(args)
    device = processes.device(args.device)
    vocabulary = read_vocabulary(args)
    _check_task_arguments(args, vocabulary)
    _check_vocabulary_fits(args, vocabulary)
    settings = _settings(args, vocabulary)
    output: Path = args.output
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    if args.dataset is not None:
        return _plan_dataset(args, processes, device, vocabulary, settings)

    skipped: list[Path] = []
    images, missing = find_images(args.inputs, skipped)
    if skipped and processes.is_main:
        print(
            f"{args.prog}: leaving out {len(skipped)} file(s) that ita-segment wrote earlier (overlays, label maps)",
            file=sys.stderr,
        )
    problems = [(str(path), message) for path, message in missing]
    if processes.is_main:
        for path, message in missing:
            print(f"{args.prog}: error: {path}: {message}", file=sys.stderr)
    if not images:
        raise UsageError("no input images")
    stems: dict[str, list[Path]] = {}
    for path in images:
        stems.setdefault(path.stem, []).append(path)
    clashes = [paths for paths in stems.values() if len(paths) > 1]
    if clashes:
        names = "; ".join(" and ".join(str(path) for path in paths) for paths in clashes)
        raise UsageError(
            f"these inputs would write the same output files (same file stem): {names}; rename one of them, or "
            "segment them into separate --output folders"
        )
    items = [Item(path.stem, str(path), position, path=path) for position, path in enumerate(images)]
    inputs = {path.resolve() for path in images}
    for item in items:
        for name in output_names(item.key, args.task):
            target = (output / name).resolve()
            if target in inputs:
                raise UsageError(
                    f"the output {target} of {item.input} would replace an input image; choose another --output"
                )
    entries, owned = _check_output_folder(args, items)
    to_do, done = _still_to_do(args, items, entries, settings)
    _make_output_folder(output)
    return Plan(device, vocabulary, to_do, problems, len(items), len(done), settings, owned, done_ids=done)


def _plan_dataset(
    args: argparse.Namespace, processes: Processes, device: torch.device, vocabulary: list[str], settings: str
) -> Plan:
    """`--dataset`: the rows' ids name the outputs; they are checked against the folder's files as each row is
    written (a stream's ids are not known up front)."""
    from .dataset_source import open_dataset_source

    dataset_path = Path(args.dataset)
    if dataset_path.is_dir() and args.output.resolve() == dataset_path.resolve():
        raise UsageError(f"--output {args.output} is the dataset's own folder; choose another --output")
    source = open_dataset_source(
        args.dataset, split=args.split, image_column=args.image_column, id_column=args.id_column
    )
    entries, owned = _check_output_folder(args, [])
    done = {
        key
        for key, entry in entries.items()
        if entry.get("settings") == settings and run_manifest.complete(args.output, entry)
    }
    _make_output_folder(args.output)
    total = source.num_rows if source.num_rows is not None else 0
    return Plan(device, vocabulary, [], [], total, len(done), settings, owned, source=source, done_ids=done)


def _make_output_folder(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create output folder {output}: {error}") from None


def _check_output_folder(args: argparse.Namespace, items: Sequence[Item]) -> tuple[dict[str, Any], set[str]]:
    """Refuse a folder that is not empty unless `--overwrite` or `--resume`; with them, refuse any output name (of
    every image, and the manifest and the summary) held by a file this program did not write. Returns the
    folder's manifest entries and the names of the files it wrote."""
    output: Path = args.output
    for item in items if args.format == "png" else ():
        for name in output_names(item.key, args.task):
            if name in RESERVED_NAMES:
                raise UsageError(
                    f"{item.input} would write {name}, the name of the run's own {name.split('.')[0]} file; "
                    "rename the image"
                )
    if not output.is_dir():
        return {}, set()
    content = sorted(path for path in output.iterdir() if path.name != PARTS_FOLDER)
    if content and not (args.overwrite or args.resume):
        shown = ", ".join(path.name for path in content[:5]) + (
            f" and {len(content) - 5} more" if len(content) > 5 else ""
        )
        raise UsageError(
            f"output folder {output} is not empty ({shown}); choose a new or empty folder, give --resume to finish "
            "the run that wrote it, or --overwrite to replace the outputs ita-segment wrote there"
        )
    entries = run_manifest.read_manifest(output)
    owned = run_manifest.owned_names(output, entries) | {path.name for path in recognised_outputs(output)}
    existing = {path.name for path in content}
    if args.format == "parquet":  # the shards (named as only ita-segment names them) and the class list
        owned |= {name for name in existing if _SHARD.match(name)}
        if any(_SHARD.match(name) for entry in entries.values() for name in entry["outputs"]):
            owned.add(CLASS_FILE)
        planned = [CLASS_FILE]
    else:
        planned = [name for item in items for name in output_names(item.key, args.task)]
    for name in [*RESERVED_NAMES, *planned]:
        if name in existing and name not in owned:
            raise UsageError(
                f"{output / name} exists and was not written by ita-segment (its {MANIFEST_NAME} does not name it): "
                "--overwrite and --resume only replace ita-segment's own outputs; move the file away or choose "
                "another --output"
            )
    return entries, owned


def _still_to_do(
    args: argparse.Namespace, items: list[Item], entries: dict[str, Any], settings: str
) -> tuple[list[Item], set[str]]:
    """With `--resume`, the images whose outputs are complete as the manifest recorded them (same settings) are
    done; the others, and every image without `--resume`, are still to do."""
    if not args.resume:
        return items, set()
    to_do, done = [], set()
    for item in items:
        entry = entries.get(item.key)
        if (
            entry is not None
            and entry.get("settings") == settings
            and entry.get("input") == item.input
            and (
                sorted(entry["outputs"]) == sorted(output_names(item.key, args.task))
                if args.format == "png"
                else all(_SHARD.match(name) for name in entry["outputs"])
            )
            and run_manifest.complete(args.output, entry)
        ):
            done.add(item.key)
        else:
            to_do.append(item)
    return to_do, done


def _check_backend(args: argparse.Namespace) -> None:
    """Resolve `--backend auto` (onnxruntime for a folder written by ita-export) and refuse a device or dtype the
    onnxruntime backend lacks; raises `UsageError`."""
    try:
        args.backend, device = resolve_backend(args.model, args.backend, args.device, args.dtype)
    except ValueError as error:
        raise UsageError(f"--backend {args.backend}: {error}") from None
    if args.backend == "onnxruntime":
        args.device = device


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------


def _load_segmenter(args: argparse.Namespace, device: torch.device) -> Any:
    """The pipeline: the PyTorch model of `--model`, or with `--backend onnxruntime` its exported folder; raises
    `ITADataError` when it cannot be loaded."""
    build: Callable[..., Any] = pipeline  # the task is registered at run time: no overload of `pipeline` names it
    try:
        if args.backend == "onnxruntime":
            model = ITAOnnxModel.from_pretrained(args.model)
            return build(ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=model, device=device)
        return build(ZERO_SHOT_IMAGE_SEGMENTATION_TASK, model=args.model, device=device, dtype=torch_dtype(args.dtype))
    except ModelLoadingError as error:  # weights missing from the checkpoint, unreadable files, ...
        raise ITADataError(f"cannot load model {args.model}: {error}") from error
    except (OSError, ValueError) as error:  # an unknown Hub id, no network, ...
        raise ITADataError(f"cannot load model {args.model}: {type(error).__name__}: {error}") from error


def _encode_vocabulary(segmenter: Any, vocabulary: list[str]) -> None:
    """Encode the vocabulary now (into the model's memory cache, and for a large one the disk cache), so that the
    images do not wait for it."""
    segmenter.model.encode_vocabulary(vocabulary)


# ------------------------------------------------------------------------------------------------------------
# The work
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One process's counts: images segmented, failures `(input, message)`, seconds."""

    process: int
    done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    without_segments: int = 0  # panoptic / instance: images where no segment reached the threshold


class _Writer:
    """Writes one image's outputs: with `--format png` its files, through temporary names, recorded in this
    process's manifest part, then renamed into place; with `--format parquet` a row of this process's shards, its
    manifest line written once the shard holding it is complete on disk."""

    def __init__(self, args: argparse.Namespace, plan: Plan, processes: Processes) -> None:
        self.args = args
        self.plan = plan
        self.process = processes.index
        self.parts = ManifestParts(args.output, processes.index)
        self.check_names = args.dataset is not None  # file inputs were checked up front
        self.pending: dict[str, tuple[Item, float]] = {}
        self.parquet: Any = None
        if args.format == "parquet":
            from .parquet_output import ParquetResultsWriter

            self.parquet = ParquetResultsWriter(
                args.output, plan.vocabulary, task=args.task, process_index=self.process
            )

    def _line(self, item: Item, outputs: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {
            "id": item.key,
            "input": item.input,
            "position": item.position,
            "task": self.args.task,
            "settings": self.plan.settings,
            "outputs": outputs,
            "process": self.process,
            "seconds": round(seconds, 4),
        }

    def write(self, item: Item, image: Image.Image, result: dict[str, Any], seconds: float) -> None:
        started = time.perf_counter()
        if self.parquet is not None:
            if item.image_bytes is None and item.path is not None:
                item.image_bytes = item.path.read_bytes()  # the file as it is, not re-encoded
            durable = self.parquet.add(item.key, image, result, image_bytes=item.image_bytes)
            self.pending[item.key] = (item, seconds + time.perf_counter() - started)
            self._record(durable)
            return
        renderers = _renderers(image, item, result, self.plan.vocabulary, self.args)
        if self.check_names:
            for name in renderers:
                path = self.args.output / name
                if name not in self.plan.owned and path.exists():
                    raise ITADataError(
                        f"{path} exists and was not written by ita-segment; move it away or choose another --output"
                    )
        staged: list[run_manifest.Staged] = []
        try:
            for name, render in renderers.items():
                staged.append(run_manifest.stage(self.args.output / name, render))
            outputs = {entry.path.name: entry.record for entry in staged}
            self.parts.append(self._line(item, outputs, seconds + time.perf_counter() - started))
        except BaseException:
            run_manifest.discard(staged)
            raise
        run_manifest.commit(staged)

    def _record(self, durable: list[str]) -> None:
        """Manifest lines for the rows of the shard just written."""
        if not durable:
            return
        shard = self.parquet.shards[-1]
        record = run_manifest.file_record(shard)
        for key in durable:
            item, seconds = self.pending.pop(key)
            self.parts.append(self._line(item, {shard.name: record}, seconds))

    def close(self) -> None:
        try:
            if self.parquet is not None:
                self._record(self.parquet.close())
        finally:
            self.parts.close()

    def failed(self, item: Item, message: str) -> None:
        self.parts.append({"id": item.key, "input": item.input, "failed": message, "process": self.process})


def _items_of_this_process(plan: Plan, processes: Processes) -> Iterator[Item]:
    if plan.source is None:
        yield from processes.share(plan.to_do)
        return
    for record in plan.source.records(processes.index, processes.count, skip_ids=plan.done_ids):
        yield Item(
            record.record_id,
            f"{plan.source.name}#{record.record_id}",
            record.position,
            image=record.image,
            error=record.error,
            image_bytes=record.image_bytes,
        )


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _segment_share(segmenter: Any, plan: Plan, args: argparse.Namespace, processes: Processes) -> Outcome:
    """Segment this process's share of the images batch by batch, writing each one's outputs; a failed image is
    reported and recorded, and the others go on (unless `--fail-fast`)."""
    outcome = Outcome(processes.index)
    writer = _Writer(args, plan, processes)
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    flag = args.output / PARTS_FOLDER / _FAIL_FAST_FLAG
    counter = run_manifest.ProgressCounter(args.output) if processes.count > 1 else None
    to_do = len(plan.to_do) if plan.source is None else max(plan.total - plan.done_before, 0) or None
    started = time.perf_counter()
    show = not (args.quiet or not processes.is_main)
    with tqdm(total=to_do, unit="image", disable=not show or None, file=sys.stderr) as progress:

        def advance(count: int) -> None:
            if counter is None:
                progress.update(count)
                return
            lines = counter.count()
            if lines is not None:
                progress.update(lines - progress.n)

        def fail(item: Item, message: str) -> None:
            tqdm.write(f"{args.prog}: error: {item.input}: {message}", file=sys.stderr)  # keeps the bar intact
            outcome.failures.append((item.input, message))
            writer.failed(item, message)
            if args.fail_fast:
                flag.parent.mkdir(exist_ok=True)
                flag.touch()
            advance(1)

        try:
            for batch_items in _batches(_items_of_this_process(plan, processes), args.batch_size):
                if args.fail_fast and (outcome.failures or flag.exists()):
                    break
                batch_started = time.perf_counter()
                batch: list[tuple[Item, Image.Image]] = []
                for item in batch_items:
                    try:
                        batch.append((item, item.read()))
                    except (OSError, ValueError) as error:
                        fail(item, str(error))
                if (args.fail_fast and outcome.failures) or not batch:
                    continue
                try:
                    results = segmenter(
                        [image for _, image in batch],
                        candidate_labels=plan.vocabulary,
                        batch_size=len(batch),
                        **_task_arguments(args, plan.vocabulary),
                    )
                except Exception as error:  # the model failed on this batch (out of memory, ...): go on
                    for item, _ in batch:
                        fail(item, f"segmentation failed: {error}")
                    continue
                seconds = (time.perf_counter() - batch_started) / len(batch)
                for (item, image), result in zip(batch, results):
                    try:
                        writer.write(item, image, result, seconds)
                    except (OSError, ITADataError) as error:
                        fail(item, f"cannot write outputs: {error}")
                        continue
                    outcome.done += 1
                    outcome.without_segments += args.task != "semantic" and not result["segments"]
                    advance(1)
                    if pause:
                        time.sleep(pause)
        finally:
            writer.close()
    outcome.seconds = time.perf_counter() - started
    return outcome


# ------------------------------------------------------------------------------------------------------------
# --task semantic | panoptic | instance: what each image's files hold
# ------------------------------------------------------------------------------------------------------------


def _json_writer(value: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")

    return write


def _png_writer(image: Image.Image) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image.save(path, format="PNG")

    return write


def _renderers(
    image: Image.Image, item: Item, result: dict[str, Any], vocabulary: list[str], args: argparse.Namespace
) -> dict[str, Callable[[Path], None]]:
    """`{file name: writer}` of one image's outputs, in the order they are written (the summary last)."""
    if args.task != "semantic":
        return _segment_renderers(image, item, result, vocabulary, args)
    stem = item.key
    label_map = result["label_map"]
    summary = {
        "image": item.input,
        "image_size": {"height": int(label_map.shape[0]), "width": int(label_map.shape[1])},
        "model": args.model,
        "vocabulary": list(vocabulary),
        "segments": [{key: segment[key] for key in SEGMENT_FIELDS} for segment in result["segments"]],
        "label_map": f"{stem}_labels.png",
        "overlay": f"{stem}_overlay.png",
    }
    return {
        f"{stem}_overlay.png": _png_writer(overlay(image, label_map, vocabulary, alpha=args.alpha)),
        f"{stem}_labels.png": lambda path: write_label_map(label_map, len(vocabulary), path),
        f"{stem}.json": _json_writer(summary),
    }


def _check_task_arguments(args: argparse.Namespace, vocabulary: list[str]) -> None:
    if args.task == "semantic":
        given = [name for name in ("stuff", "threshold") if getattr(args, name) is not None]
        if given:
            raise UsageError(f"--{' and --'.join(given)} apply to --task panoptic or instance")
        return
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must lie in [0, 1], got {args.threshold}")
    spelled = {",".join(name.strip() for name in label.split(",")): label for label in vocabulary}
    for label in args.stuff or ():
        if ",".join(name.strip() for name in label.split(",")) not in spelled:
            raise UsageError(f"--stuff {label!r} is not a class of the vocabulary {vocabulary}")


def _task_arguments(args: argparse.Namespace, vocabulary: list[str]) -> dict[str, Any]:
    """The pipeline's keyword arguments for `--task` (none for semantic segmentation)."""
    if args.task == "semantic":
        return {}
    arguments: dict[str, Any] = {"subtask": args.task}
    if args.stuff:
        spelled = {",".join(name.strip() for name in label.split(",")): label for label in vocabulary}
        arguments["stuff_labels"] = [
            spelled[",".join(name.strip() for name in label.split(","))] for label in args.stuff
        ]
    if args.threshold is not None:
        arguments["threshold"] = args.threshold
    return arguments


def _segment_renderers(
    image: Image.Image, item: Item, result: dict[str, Any], vocabulary: list[str], args: argparse.Namespace
) -> dict[str, Callable[[Path], None]]:
    """`--task panoptic` / `instance` outputs of one image."""
    stem = item.key
    stuff = set(_task_arguments(args, vocabulary).get("stuff_labels", ()))
    segments = result["segments"]
    masks = [np.asarray(segment["mask"]) == 255 for segment in segments]
    names = [f"{segment['label'].split(',')[0].strip()} {segment['score']:.2f}" for segment in segments]
    height, width = image.height, image.width
    if args.task == "instance":  # lowest score first, so that the best instance is drawn on top
        drawn = segment_overlay(image, masks[::-1], names[::-1], alpha=args.alpha)
    else:
        drawn = segment_overlay(image, masks, names, alpha=args.alpha)
    categories = [
        {"id": index, "name": label.split(",")[0].strip(), "synonyms": label, "isthing": int(label not in stuff)}
        for index, label in enumerate(vocabulary)
    ]
    entries = []
    for segment, mask in zip(segments, masks):
        entry = {
            "id": int(segment["id"]),
            "category_id": int(segment["class_id"]),
            "label": segment["label"],
            "score": float(segment["score"]),
            "iscrowd": 0,
            "area": int(mask.sum()),
            "bbox": bounding_box(mask),
        }
        if args.task == "instance":
            entry["segmentation"] = binary_mask_to_coco_rle(torch.from_numpy(mask))
        else:
            entry["was_fused"] = bool(segment["was_fused"])
        entries.append(entry)
    summary: dict[str, Any] = {
        "image": item.input,
        "image_size": {"height": height, "width": width},
        "model": args.model,
        "task": args.task,
        "vocabulary": list(vocabulary),
        "categories": categories,
        "overlay": f"{stem}_overlay.png",
    }
    renderers: dict[str, Callable[[Path], None]] = {f"{stem}_overlay.png": _png_writer(drawn)}
    if args.task == "panoptic":
        summary.update(file_name=f"{stem}_panoptic.png", segments_info=entries)
        renderers[f"{stem}_panoptic.png"] = lambda path: write_panoptic_png(result["segment_map"], path)
    else:
        summary.update(file_name=f"{stem}_instances.png", instances=entries)
        renderers[f"{stem}_instances.png"] = lambda path: write_instance_png(segments, masks, (height, width), path)
    renderers[f"{stem}.json"] = _json_writer(summary)
    return renderers


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------


def segment_images(args: argparse.Namespace, prog: str) -> int:
    """`ita-segment` with parsed arguments (`cli.build_parser`); returns the exit status (0 done, 1 some image
    failed) or raises `ITAUsageError` (exit 2) / `ITADataError` (exit 1, e.g. the model cannot be loaded)."""
    args.prog = prog
    for name, default in (("resume", False), ("dataset", None), ("format", "png")):
        if not hasattr(args, name):
            setattr(args, name, default)
    processes = start_processes(args.device)
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    if args.quiet or not processes.is_main:
        transformers_logging.disable_progress_bar()  # the vocabulary encoding's bar too
    try:
        return _run(args, processes)
    except Stopped as stop:  # another process failed; the main process reported it
        return stop.status
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        processes.close()


def _run(args: argparse.Namespace, processes: Processes) -> int:
    started = time.perf_counter()
    plan = processes.agree(lambda: _plan(args, processes))
    if plan.problems and args.fail_fast:
        return EXIT_DATA

    def load() -> Any:
        segmenter = _load_segmenter(args, plan.device)
        if processes.is_main:  # first: a vocabulary large enough for the disk cache is encoded once, here
            _encode_vocabulary(segmenter, plan.vocabulary)
        return segmenter

    segmenter = processes.agree(load)

    def prepare() -> None:
        if processes.is_main:  # nobody writes yet: merge earlier runs' parts, drop their temporary files
            run_manifest.remove_temporary_files(args.output)
            run_manifest.consolidate(args.output)
            if args.format == "parquet":
                _drop_stale_shards(args)
            (args.output / PARTS_FOLDER / _FAIL_FAST_FLAG).unlink(missing_ok=True)
        else:  # reads what the main process stored in the disk cache
            _encode_vocabulary(segmenter, plan.vocabulary)

    processes.agree(prepare)
    loaded = time.perf_counter()
    outcome = processes.agree(lambda: _segment_share(segmenter, plan, args, processes))
    outcomes: list[Outcome] = processes.gather(outcome)
    failures = [failure for item in outcomes for failure in item.failures] + plan.problems
    done = sum(item.done for item in outcomes)
    if processes.is_main:
        _finish(args, plan, processes, outcomes, failures, done, loaded - started, time.perf_counter() - started)
    return EXIT_DATA if failures else EXIT_OK


def _drop_stale_shards(args: argparse.Namespace) -> None:
    """`--format parquet`, before writing: remove the shards that a killed run renamed into place but never
    recorded (their rows are done again), and with `--overwrite` every earlier shard and its manifest lines, so that
    no row is in the results twice."""
    entries = run_manifest.read_manifest(args.output)
    recorded = {name for entry in entries.values() for name in entry["outputs"]}
    for shard in args.output.iterdir():
        if _SHARD.match(shard.name) and (args.overwrite or shard.name not in recorded):
            shard.unlink()
    if args.overwrite:
        run_manifest.consolidate(
            args.output, keep=lambda entry: not any(_SHARD.match(name) for name in entry["outputs"])
        )


def _finish(
    args: argparse.Namespace,
    plan: Plan,
    processes: Processes,
    outcomes: list[Outcome],
    failures: list[tuple[str, str]],
    done: int,
    start_seconds: float,
    seconds: float,
) -> None:
    """The main process, once every process is done: `manifest.jsonl` merged, `run_summary.json`, a last line."""
    run_manifest.consolidate(args.output)
    (args.output / PARTS_FOLDER / _FAIL_FAST_FLAG).unlink(missing_ok=True)
    try:
        (args.output / PARTS_FOLDER).rmdir()
    except OSError:
        pass
    work_seconds = max(outcome.seconds for outcome in outcomes)
    summary = {
        "program": "ita-segment",
        "model": args.model,
        "task": args.task,
        "format": args.format,
        "processes": processes.count,
        "images": plan.total,
        "segmented": done,
        "already_done": plan.done_before,
        "failed": len(failures),
        "failures": [{"input": name, "error": message} for name, message in failures],
        "without_segments": sum(outcome.without_segments for outcome in outcomes),
        "seconds": round(seconds, 3),
        "start_seconds": round(start_seconds, 3),
        "images_per_second": round(done / work_seconds, 3) if work_seconds > 0 else None,
        "per_process": [
            {"process": outcome.process, "segmented": outcome.done, "failed": len(outcome.failures)}
            for outcome in outcomes
        ],
    }
    run_manifest.write_json_atomically(args.output / SUMMARY_NAME, summary)
    if summary["without_segments"]:
        threshold = args.threshold if args.threshold is not None else DEFAULT_THRESHOLDS[args.task]
        print(
            f"{args.prog}: {summary['without_segments']} of {done} image(s) have no {args.task} segment: none reached "
            f"the score threshold {threshold:g}; lower it with --threshold to see weaker segments (a briefly trained "
            "model scores low)",
            file=sys.stderr,
        )
    already = f", {plan.done_before} already done" if plan.done_before else ""
    if failures:
        print(
            f"{args.prog}: {done} image(s) segmented, {len(failures)} failed{already}; outputs in {args.output} "
            f"(failures listed in {SUMMARY_NAME})",
            file=sys.stderr,
        )
    elif plan.done_before:
        print(f"{args.prog}: {done} image(s) segmented{already}; outputs in {args.output}", file=sys.stderr)
