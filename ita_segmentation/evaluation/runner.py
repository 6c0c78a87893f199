"""Run a model over benchmark splits and write its scores: the logic behind `scripts/evaluate.py`.

The protocol is the one behind FC-CLIP's published numbers:

- one scale, no flip, no sliding window, at the processor's resolution (published: shortest side 800,
  longest at most 1333, padded to a multiple of 32);
- the benchmark's class list with FC-CLIP's synonyms (or a replacement with as many classes), encoded once
  per benchmark;
- each image predicted at its label's size (the label defines the output size), reduced to an argmax label
  map right away and added to a `SegmentationConfusionMatrix`, so memory stays at classes x classes
  whatever the split size;
- the order of post-processing of FC-CLIP's config for that benchmark
  (`SegmentationBenchmark.sem_seg_postprocess_before_inference`);
- detectron2's `SemSegEvaluator` scores (mIoU, fwIoU, mACC, pACC), in percent as it reports them.

Batches only hold images that share one padded input size. The decoder and the pixel decoder attend over the
whole padded input, padding included, so batching an image with a larger one would change its prediction;
grouped this way every image sees exactly the input it has alone, as in the original's batch of one.
"""

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_ita.loading import check_device, load_segmentation_model
from ..onnx import ITAOnnxModel, resolve_backend
from image_processing_ita import open_image, padded_size
from processing_ita import ITAProcessor
from .benchmarks import (
    BENCHMARKS,
    _with_metadata,
    benchmark_metadata,
    get_benchmark,
    load_benchmark,
    load_hub_benchmark,
)
from .data_check import DataCheckError, DataCheckReport, check_segmentation_data
from .metric import SegmentationConfusionMatrix

logger = logging.getLogger(__name__)

__all__ = [
    "PUBLISHED_FC_CLIP_MIOU",
    "BenchmarkDataError",
    "BenchmarkEvaluation",
    "check_evaluation_data",
    "check_output_folders",
    "evaluate_datasets",
    "load_model_and_processor",
    "load_evaluation_dataset",
    "plan_batches",
    "evaluate_dataset",
    "benchmark_report",
    "write_benchmark_results",
    "write_results_table",
    "evaluate_benchmarks",
    "load_benchmark_datasets",
]

# mIoU (percent) of FC-CLIP ConvNeXt-L with its released COCO weights on the full validation splits, from the
# FC-CLIP paper. A reference for readers of results.md, never a score of the evaluated model.
PUBLISHED_FC_CLIP_MIOU = {"ade847": 14.8, "pc459": 18.2, "ade150": 34.1, "pc59": 58.4, "pas20": 95.4, "pas21": 81.8}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# EXIF orientations that turn the image by 90 degrees (its upright width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# results.json / results.md name -> `segmentation_scores` key.
_SCORE_NAMES = (
    ("mIoU", "mean_iou"),
    ("fwIoU", "frequency_weighted_iou"),
    ("mACC", "mean_accuracy"),
    ("pACC", "overall_accuracy"),
)


class BenchmarkDataError(ValueError):
    """A benchmark file that cannot be scored: an image and its label of different sizes, a label that is not
    a single-channel map."""


def load_model_and_processor(
    model_name_or_path, device="auto", dtype="float32", shortest_edge=None, longest_edge=None, backend="auto"
):
    """Load `ITAForOpenVocabSegmentation` and `ITAProcessor` from a model folder or Hub id, in eval mode.

    Args:
        device: `"auto"` (CUDA when available, else CPU) or a torch device.
        dtype: `"float32"`, `"float16"` or `"bfloat16"`: the dtype of the weights and the input.
        backend: `"pytorch"`, `"onnxruntime"` (an `ITAOnnxModel` from a folder written by `ita-export`: CPU,
            float32) or `"auto"`: onnxruntime for such a folder.
        shortest_edge, longest_edge: override the processor's test resolution (defaults: its own, which for a
            converted FC-CLIP/ITA checkpoint is the published 800 / 1333).

    Raises:
        ModelLoadingError: no such model, or a checkpoint with missing or unexpected weights (named).
        ValueError: an unknown or unavailable device or dtype.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    backend, device = resolve_backend(model_name_or_path, backend, device, dtype)
    if backend == "onnxruntime":
        model = ITAOnnxModel.from_pretrained(model_name_or_path)
    else:
        model = load_segmentation_model(model_name_or_path, device=check_device(device), dtype=_DTYPES[dtype])
    processor = ITAProcessor.from_pretrained(model_name_or_path)
    if shortest_edge is not None or longest_edge is not None:
        size = processor.image_processor.size
        shortest_edge = shortest_edge if shortest_edge is not None else size.shortest_edge
        longest_edge = longest_edge if longest_edge is not None else size.longest_edge
        if not shortest_edge:
            raise ValueError("The processor resizes to a fixed size; give --shortest-edge to resize by the short side")
        processor.image_processor.size = type(size)(shortest_edge=shortest_edge, longest_edge=longest_edge)
    return model, processor


def load_evaluation_dataset(
    benchmark,
    data_dir=None,
    vocabulary_file=None,
    max_samples=None,
    hub_dataset=None,
    split="validation",
    image_column="image",
    label_column="label",
    reduce_labels=False,
    cache_dir=None,
    unpaired=None,
):
    """A benchmark's validation split: from its prepared folders under `data_dir` (`load_benchmark`), or
    from `hub_dataset`, a Hub id or a local folder of parquet/arrow files (`load_hub_benchmark`), with the
    registered benchmark's classes and ignore index. `reduce_labels` only applies to `hub_dataset`: local
    layouts know whether their labels still need it. `unpaired` receives the images without a label map (and
    the reverse) of a folder layout."""
    if hub_dataset is not None:
        return load_hub_benchmark(
            hub_dataset,
            split,
            image_column,
            label_column,
            benchmark=benchmark,
            vocabulary_file=vocabulary_file,
            reduce_labels=reduce_labels,
            max_samples=max_samples,
            cache_dir=cache_dir,
        )
    if data_dir is None:
        raise ValueError("Give data_dir (the prepared datasets root) or hub_dataset")
    return load_benchmark(
        benchmark, data_dir, vocabulary_file=vocabulary_file, max_samples=max_samples, unpaired=unpaired
    )


def check_evaluation_data(datasets_by_name, unpaired_by_name=None, skip_bad_samples=False, num_workers=0,
                          progress=True, log=logger.warning):
    """The pre-flight pass (`data_check.check_segmentation_data`) over every dataset to evaluate, before any
    model work: `{name: dataset}` with the bad samples left out when `skip_bad_samples`, else a
    `DataCheckError` listing every problem of every dataset. The datasets' `skipped_samples` metadata then
    lists what was left out, for the results."""
    unpaired_by_name = unpaired_by_name or {}
    reports, checked = {}, {}
    for name, dataset in datasets_by_name.items():
        metadata = benchmark_metadata(dataset)
        reports[name] = check_segmentation_data(
            dataset,
            metadata["num_labels"],
            ignore_index=metadata["ignore_index"],
            reduce_labels=metadata["reduce_labels"],
            unpaired=unpaired_by_name.get(name, ()),
            num_workers=num_workers,
            description=f"Checking {metadata['display_name']} label maps",
            progress=progress,
        )
    failed = {name: report for name, report in reports.items() if report.problems}
    if failed and not skip_bad_samples:
        combined = DataCheckReport(
            num_rows=sum(report.num_rows for report in failed.values()),
            problems=[problem for report in failed.values() for problem in report.problems],
        )
        raise DataCheckError(combined, " and ".join(benchmark_metadata(datasets_by_name[name])["display_name"]
                                                    for name in failed))
    for name, dataset in datasets_by_name.items():
        report = reports[name]
        metadata = benchmark_metadata(dataset)
        kept = report.raise_or_keep_good(dataset, True, metadata["display_name"], log=log)
        if report.problems:
            metadata["skipped_samples"] = [{"file": problem.file, "problem": problem.message}
                                           for problem in report.problems]
            kept = _with_metadata(kept, metadata)
        checked[name] = kept
    return checked


def _upright_image_sizes(dataset):
    """(height, width) of every image once turned upright by its EXIF orientation, read from the file headers
    without decoding any pixels."""
    sizes = []
    for chunk in dataset.select_columns(["image"]).with_format("arrow").iter(batch_size=256):
        for value in chunk.column("image").to_pylist():
            source = value["path"] if value["bytes"] is None else io.BytesIO(value["bytes"])
            with Image.open(source) as image:
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                transposed = orientation in _TRANSPOSING_ORIENTATIONS
                sizes.append((image.width, image.height) if transposed else (image.height, image.width))
    return sizes


def _padded_input_size(image_size, image_processor):
    """The size of the padded model input an image of `image_size` gets when processed alone."""
    height, width = image_size
    if image_processor.do_resize:
        height, width = image_processor.resized_size(height, width, image_processor.size)
    if not image_processor.do_pad:
        return height, width
    return padded_size(height, width, image_processor.size_divisor)


def plan_batches(image_sizes, batch_size, image_processor):
    """Split image indices into batches of at most `batch_size` images that share one padded input size.

    Args:
        image_sizes: (height, width) of each (upright) image.
        image_processor: the `ITAImageProcessor` whose resize and padding decide the input sizes.

    Returns:
        A list of lists of indices; groups keep the order in which their size first appears.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups = {}
    for index, image_size in enumerate(image_sizes):
        groups.setdefault(_padded_input_size(image_size, image_processor), []).append(index)
    return [
        indices[start : start + batch_size]
        for indices in groups.values()
        for start in range(0, len(indices), batch_size)
    ]


class _BatchPreparer:
    """DataLoader collate function: decodes a batch of rows, turns the images upright, runs the image
    processor and keeps each label as an array. Picklable, so it runs in DataLoader workers."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, rows):
        images = [open_image(row["image"]) for row in rows]
        encoded = self.image_processor(images, return_tensors="pt")
        views = {}
        if "dominant_category_pixel_values" in encoded:
            views["dominant_category_pixel_values"] = encoded["dominant_category_pixel_values"]
        return {
            **views,
            "pixel_values": encoded["pixel_values"],
            "image_sizes": encoded["image_sizes"],
            "labels": [np.asarray(row["label"]) for row in rows],
            "original_sizes": [(image.height, image.width) for image in images],
            "image_files": [getattr(row["image"], "filename", "") or row["file_name"] for row in rows],
            "label_files": [getattr(row["label"], "filename", "") or f"label of {row['file_name']}" for row in rows],
        }


def _check_labels(batch):
    for label, image_size, image_file, label_file in zip(
        batch["labels"], batch["original_sizes"], batch["image_files"], batch["label_files"]
    ):
        if label.ndim != 2:
            raise BenchmarkDataError(
                f"{label_file}: the label has shape {label.shape}; expected a single-channel map of class ids"
            )
        if tuple(label.shape) != tuple(image_size):
            raise BenchmarkDataError(
                f"{image_file}: the image is {image_size[0]}x{image_size[1]} (height x width) but its label "
                f"{label_file} is {label.shape[0]}x{label.shape[1]}; predictions are made at the label's size, so "
                "each image and its label must have the same size"
            )


@dataclass
class BenchmarkEvaluation:
    """The outcome of `evaluate_dataset`.

    Attributes:
        metadata: the dataset's benchmark metadata (`benchmark_metadata`).
        confusion: the filled `SegmentationConfusionMatrix` (summed over processes in a distributed run).
        num_images: images scored.
        seconds: wall time of the loop (vocabulary encoding included).
        sem_seg_postprocess_before_inference: the post-processing order used.
        batch_size: the largest batch.
        num_processes: processes that shared the images.
        interrupted: None for a complete run, else why it stopped (the scores then cover `num_images` only).
    """

    metadata: dict
    confusion: SegmentationConfusionMatrix
    num_images: int
    seconds: float
    sem_seg_postprocess_before_inference: bool
    batch_size: int
    num_processes: int = 1
    interrupted: str | None = None
    scores: dict = field(init=False)

    def __post_init__(self):
        self.scores = self.confusion.compute()


def _distributed():
    """(rank, world size) of a `torch.distributed` run (`accelerate launch`, `torchrun`), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def evaluate_dataset(
    model,
    processor,
    dataset,
    batch_size=1,
    num_workers=0,
    sem_seg_postprocess_before_inference=None,
    progress=True,
):
    """Predict every image of a benchmark dataset and accumulate the confusion matrix.

    In a `torch.distributed` run each process predicts every `world_size`-th batch, and the confusion matrices
    are summed at the end: the scores equal those of a single process.

    Args:
        model: an `ITAForOpenVocabSegmentation` in eval mode, or an `ITAOnnxModel`.
        processor: its `ITAProcessor` (the image processor sets the resolution).
        dataset: from `load_benchmark`/`load_hub_benchmark`/`load_segmentation_split` (columns `image`, `label`,
            `file_name`, and the benchmark metadata: classes, ignore index, label reduction).
        batch_size: at most this many images per forward pass, all of one padded input size.
        num_workers: DataLoader processes that decode and preprocess the images.
        sem_seg_postprocess_before_inference: the post-processing order; by default the registered
            benchmark's (FC-CLIP's config for it), else False.
        progress: show a progress bar.

    Raises:
        BenchmarkDataError: an image and its label differ in size (the message names both files). Any error (or
            Ctrl-C) in the loop of a single process carries what was scored before it as its
            `partial_evaluation` attribute (a `BenchmarkEvaluation` marked interrupted).
    """
    metadata = benchmark_metadata(dataset)
    if sem_seg_postprocess_before_inference is None:
        registered = BENCHMARKS.get(metadata["name"])
        sem_seg_postprocess_before_inference = bool(registered and registered.sem_seg_postprocess_before_inference)
    start = time.perf_counter()
    rank, world_size = _distributed()
    device, dtype = model.device, model.dtype  # a PyTorch model's, or an ITAOnnxModel's (CPU, float32)
    if world_size > 1 and rank > 0:
        torch.distributed.barrier()  # the first process encodes the vocabulary (and fills the disk cache) first
    vocabulary = model.encode_vocabulary(metadata["class_names"])
    if world_size > 1 and rank == 0:
        torch.distributed.barrier()
    confusion = SegmentationConfusionMatrix(
        metadata["num_labels"], ignore_index=metadata["ignore_index"], reduce_labels=metadata["reduce_labels"]
    )

    if batch_size > 1:
        batches = plan_batches(_upright_image_sizes(dataset), batch_size, processor.image_processor)
    else:
        batches = [[index] for index in range(len(dataset))]
    batches = batches[rank::world_size]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=_BatchPreparer(processor.image_processor),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    bar = tqdm(
        total=sum(len(batch) for batch in batches),
        desc=metadata["display_name"] + (f" (process 1 of {world_size})" if world_size > 1 else ""),
        unit="img",
        disable=not progress or rank > 0,
    )
    num_images = 0

    def outcome(interrupted=None):
        return BenchmarkEvaluation(
            metadata=metadata,
            confusion=confusion,
            num_images=num_images,
            seconds=time.perf_counter() - start,
            sem_seg_postprocess_before_inference=sem_seg_postprocess_before_inference,
            batch_size=batch_size,
            num_processes=world_size,
            interrupted=interrupted,
        )

    with torch.inference_mode(), bar:
        try:
            for batch in loader:
                _check_labels(batch)
                views = batch.get("dominant_category_pixel_values")
                outputs = model(
                    pixel_values=batch["pixel_values"].to(device, dtype, non_blocking=True),
                    image_sizes=batch["image_sizes"].to(device),
                    vocabulary=vocabulary,
                    dominant_category_pixel_values=None if views is None else views.to(device, dtype, non_blocking=True),
                )
                label_maps = processor.post_process_semantic_segmentation(
                    outputs,
                    target_sizes=[label.shape for label in batch["labels"]],
                    sem_seg_postprocess_before_inference=sem_seg_postprocess_before_inference,
                )
                del outputs  # only the label maps outlive the batch
                for label_map, label in zip(label_maps, batch["labels"]):
                    confusion.update(label_map.cpu().numpy(), label)
                num_images += len(label_maps)
                bar.update(len(label_maps))
        except (Exception, KeyboardInterrupt) as error:
            if world_size > 1:  # the other processes wait in the sum below: nothing partial to merge
                raise
            reason = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
            error.partial_evaluation = outcome(reason)
            raise
    if world_size > 1:
        counts = torch.from_numpy(confusion.matrix).to(torch.int64)
        counts = torch.cat([counts.flatten(), torch.tensor([num_images], dtype=torch.int64)])
        if torch.distributed.get_backend() == "nccl":
            counts = counts.to(device)
        torch.distributed.all_reduce(counts)
        counts = counts.cpu()
        confusion.matrix[...] = counts[:-1].view_as(torch.from_numpy(confusion.matrix)).numpy()
        num_images = int(counts[-1])
    return outcome()


def _percent(value):
    """A score in percent, or None (JSON null) for NaN."""
    return None if value is None or math.isnan(value) else 100.0 * float(value)


def _vocabulary_source(vocabulary_file, registered):
    if vocabulary_file:
        return str(vocabulary_file)
    if registered:
        return f"FC-CLIP class list with synonyms ({registered.vocabulary_file})"
    return "given class names"


def benchmark_report(
    evaluation,
    processor,
    model_name,
    *,
    vocabulary_file=None,
    command=None,
    device=None,
    dtype=None,
    max_samples=None,
    data_source=None,
):
    """The content of a benchmark's results.json: scores in percent, per-class IoU and accuracy with the class
    names, the number of images, the model, the protocol and the command."""
    metadata = evaluation.metadata
    scores = evaluation.scores
    matrix = evaluation.confusion.matrix
    ground_truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    registered = BENCHMARKS.get(metadata["name"])
    image_processor = processor.image_processor
    size = image_processor.size
    before = evaluation.sem_seg_postprocess_before_inference
    per_class = [
        {
            "id": index,
            "name": name,
            "iou": _percent(scores["per_category_iou"][index]),
            "accuracy": _percent(scores["per_category_accuracy"][index]),
            "ground_truth_pixels": int(ground_truth[index]),
            "predicted_pixels": int(predicted[index]),
        }
        for index, name in enumerate(metadata["class_names"])
    ]
    if data_source is None:
        data_source = {key: metadata[key] for key in ("image_dir", "label_dir", "source") if key in metadata}
    return {
        "benchmark": metadata["name"],
        "display_name": metadata["display_name"],
        "model": str(model_name),
        "complete": evaluation.interrupted is None,
        "interrupted": evaluation.interrupted,
        "num_images": evaluation.num_images,
        "skipped_samples": metadata.get("skipped_samples", []),
        "full_split_images": registered.num_images if registered else None,
        "scores": {short: _percent(scores[key]) for short, key in _SCORE_NAMES},
        "units": "percent",
        "num_classes": metadata["num_labels"],
        "num_classes_with_ground_truth": int((ground_truth > 0).sum()),
        "per_class": per_class,
        "published_fc_clip_miou": PUBLISHED_FC_CLIP_MIOU.get(metadata["name"]),
        "protocol": {
            "resolution": {
                "shortest_edge": size.shortest_edge,
                "longest_edge": size.longest_edge,
                "height": size.height,
                "width": size.width,
                "size_divisor": image_processor.size_divisor if image_processor.do_pad else None,
            },
            "scales": [1.0],
            "flip": False,
            "sliding_window": False,
            "prediction_size": "the label's size",
            "vocabulary": _vocabulary_source(vocabulary_file, registered),
            "ignore_index": metadata["ignore_index"],
            "reduce_labels": metadata["reduce_labels"],
            "sem_seg_postprocess_before_inference": before,
            "post_processing": (
                "mask logits cropped and resized to the label size, then sigmoid and class sum"
                if before
                else "sigmoid and class sum on the padded input, cropped, class scores resized to the label size"
            ),
            "metric": (
                "detectron2 SemSegEvaluator: one confusion matrix over the split; IoU = TP / (GT + Pred - TP); "
                "means over the classes with ground-truth pixels"
            ),
            "batch_size": evaluation.batch_size,
            "batching": "images grouped by padded input size (each sees the input it has alone)",
            "num_processes": evaluation.num_processes,
            "device": None if device is None else str(device),
            "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
            "max_samples": max_samples,
            "data": data_source,
        },
        "seconds": evaluation.seconds,
        "command": command,
    }


def write_benchmark_results(output_dir, report, confusion_matrix=None):
    """Write `output_dir/<benchmark>/results.json` and `per_class.csv` (and `confusion_matrix.npy`, rows:
    reference, columns: prediction, when given). Returns the benchmark's folder."""
    folder = Path(output_dir) / report["benchmark"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with open(folder / "per_class.csv", "w", newline="", encoding="utf-8") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(["id", "name", "iou", "accuracy", "ground_truth_pixels", "predicted_pixels"])
        for row in report["per_class"]:
            writer.writerow(
                [row["id"], row["name"]]
                + ["" if row[key] is None else f"{row[key]:.4f}" for key in ("iou", "accuracy")]
                + [row["ground_truth_pixels"], row["predicted_pixels"]]
            )
    if confusion_matrix is not None:
        np.save(folder / "confusion_matrix.npy", confusion_matrix)
    return folder


def _format_score(value):
    return "n/a" if value is None else f"{value:.2f}"


def write_results_table(output_dir):
    """Write `output_dir/results.md`: one row per `output_dir/*/results.json` (this run's benchmarks and any
    earlier ones in the folder), in the registry's order, with FC-CLIP's published mIoU beside each for
    reference. Returns the path."""
    output_dir = Path(output_dir)
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(output_dir.glob("*/results.json"))]
    order = {name: index for index, name in enumerate(BENCHMARKS)}
    reports.sort(key=lambda report: (order.get(report["benchmark"], len(order)), report["benchmark"]))
    lines = [
        "# Evaluation results",
        "",
        "mIoU, fwIoU, mACC and pACC in percent (detectron2's SemSegEvaluator; means over the classes present in "
        "the split). One scale, no flip; see each benchmark's results.json for the full protocol.",
        "",
        "| Benchmark | Model | Images | mIoU | fwIoU | mACC | pACC | FC-CLIP published mIoU (reference) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        scores = report["scores"]
        images = str(report["num_images"])
        if report.get("full_split_images") and report["num_images"] != report["full_split_images"]:
            images += f" of {report['full_split_images']}"
        if report.get("skipped_samples"):
            images += f" ({len(report['skipped_samples'])} bad left out)"
        if report.get("interrupted"):
            images += " (interrupted)"
        published = report.get("published_fc_clip_miou")
        lines.append(
            f"| {report['display_name']} | `{report['model']}` | {images} | "
            + " | ".join(_format_score(scores[short]) for short, _ in _SCORE_NAMES)
            + f" | {'n/a' if published is None else f'{published:.1f}'} |"
        )
    lines += [
        "",
        "The last column is not a result of this evaluation: it is the mIoU published for FC-CLIP ConvNeXt-L with "
        "its released COCO weights on the full validation split (FC-CLIP paper), for reference "
        "only. ITA's own paper numbers are not available to us. Scores on a subset of a split (\"N of M\" images) "
        "are not comparable with it; nor are those of a run that was interrupted (its results.json says why).",
        "",
    ]
    path = output_dir / "results.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def check_output_folders(output_dir, names, overwrite=False):
    """Raise `FileExistsError` when `output_dir/<name>` already holds results for one of `names`, unless
    `overwrite`: results are never replaced silently (other results in `output_dir` are kept, and
    `results.md` lists them all)."""
    taken = [Path(output_dir) / name for name in names if (Path(output_dir) / name).is_dir() and any((Path(output_dir) / name).iterdir())]
    if taken and not overwrite:
        raise FileExistsError(
            f"{', '.join(str(path) for path in taken)} already hold(s) results; choose another output folder, or "
            "give --overwrite to replace them"
        )


def evaluate_datasets(
    model,
    processor,
    datasets_by_name,
    output_dir,
    *,
    model_name=None,
    vocabulary_files=None,
    max_samples=None,
    batch_size=1,
    num_workers=0,
    data_sources=None,
    command=None,
    progress=True,
):
    """Evaluate `model` on each (checked) dataset in turn; each one's results, and `results.md`, are written as
    soon as it is done, so that a later failure loses nothing computed before. A dataset whose loop fails is
    written too, marked interrupted, with the images scored until then; the error is then raised again.

    In a distributed run every process evaluates its share and only the first writes.

    Args:
        datasets_by_name: `{name: dataset}` from `load_evaluation_dataset`/`load_segmentation_split`, checked by
            `check_evaluation_data`.
        vocabulary_files: `{name: path}` of the class lists in use, for the results.
        data_sources: `{name: dict}` describing where each dataset came from, for the results.

    Returns:
        The results.json contents, one dict per dataset.
    """
    vocabulary_files = vocabulary_files or {}
    data_sources = data_sources or {}
    rank, _ = _distributed()
    model_name = model_name if model_name is not None else getattr(model, "name_or_path", type(model).__name__)
    reports = []

    def write(evaluation, name):
        report = benchmark_report(
            evaluation,
            processor,
            model_name,
            vocabulary_file=vocabulary_files.get(name),
            command=command,
            device=model.device,
            dtype=model.dtype,
            max_samples=max_samples,
            data_source=data_sources.get(name),
        )
        if rank == 0:
            write_benchmark_results(output_dir, report, evaluation.confusion.matrix)
            write_results_table(output_dir)
        return report

    for name, dataset in datasets_by_name.items():
        try:
            evaluation = evaluate_dataset(
                model, processor, dataset, batch_size=batch_size, num_workers=num_workers, progress=progress
            )
        except (Exception, KeyboardInterrupt) as error:
            if getattr(error, "partial_evaluation", None) is not None:
                write(error.partial_evaluation, name)
            raise
        report = write(evaluation, name)
        logger.info("%s: mIoU %s on %d images", report["display_name"], report["scores"]["mIoU"], report["num_images"])
        reports.append(report)
    return reports


def evaluate_benchmarks(
    model,
    processor,
    benchmarks,
    output_dir,
    *,
    data_dir=None,
    model_name=None,
    vocabulary_files=None,
    max_samples=None,
    batch_size=1,
    num_workers=0,
    hub_dataset=None,
    split="validation",
    image_column="image",
    label_column="label",
    reduce_labels=False,
    cache_dir=None,
    command=None,
    progress=True,
    skip_bad_samples=False,
    overwrite=False,
):
    """Evaluate `model` on each benchmark in turn and write the results (see `write_benchmark_results` and
    `write_results_table`): `load_benchmark_datasets`, the pre-flight check, then `evaluate_datasets`.

    Args:
        benchmarks: registered benchmark names (`"ade150"`, `"pc59"`, ...).
        output_dir: the folder receiving `<benchmark>/results.json`, `<benchmark>/per_class.csv` and `results.md`.
        data_dir: the prepared datasets root (`$DETECTRON2_DATASETS`).
        model_name: how results name the model (its path or Hub id).
        vocabulary_files: `{benchmark: path}` class lists replacing FC-CLIP's (same number of classes).
        hub_dataset: read the (single) benchmark from this Hub id or parquet folder instead of `data_dir`.
        skip_bad_samples: leave out the images whose label map fails the check instead of stopping.
        overwrite: replace results already in `output_dir` for these benchmarks.
        The other arguments go to `load_evaluation_dataset` and `evaluate_dataset`.

    Returns:
        The results.json contents, one dict per benchmark.
    """
    datasets_by_name, unpaired, vocabulary_files, data_sources = load_benchmark_datasets(
        benchmarks,
        data_dir=data_dir,
        vocabulary_files=vocabulary_files,
        max_samples=max_samples,
        hub_dataset=hub_dataset,
        split=split,
        image_column=image_column,
        label_column=label_column,
        reduce_labels=reduce_labels,
        cache_dir=cache_dir,
    )
    check_output_folders(output_dir, datasets_by_name, overwrite)
    datasets_by_name = check_evaluation_data(
        datasets_by_name, unpaired, skip_bad_samples=skip_bad_samples, num_workers=num_workers, progress=progress
    )
    return evaluate_datasets(
        model,
        processor,
        datasets_by_name,
        output_dir,
        model_name=model_name,
        vocabulary_files=vocabulary_files,
        max_samples=max_samples,
        batch_size=batch_size,
        num_workers=num_workers,
        data_sources=data_sources,
        command=command,
        progress=progress,
    )


def load_benchmark_datasets(
    benchmarks,
    *,
    data_dir=None,
    vocabulary_files=None,
    max_samples=None,
    hub_dataset=None,
    split="validation",
    image_column="image",
    label_column="label",
    reduce_labels=False,
    cache_dir=None,
):
    """Every benchmark's split, before any of them is evaluated: `({name: dataset}, {name: unpaired files},
    {name: vocabulary file}, {name: data source})`."""
    benchmarks = [get_benchmark(name).name for name in benchmarks]
    if not benchmarks:
        raise ValueError("Give at least one benchmark")
    if len(set(benchmarks)) != len(benchmarks):
        raise ValueError(f"A benchmark is listed twice: {benchmarks}")
    if hub_dataset is not None and len(benchmarks) != 1:
        raise ValueError("hub_dataset holds one benchmark; give exactly one benchmark name with it")
    vocabulary_files = {get_benchmark(name).name: path for name, path in (vocabulary_files or {}).items()}
    unknown = sorted(set(vocabulary_files) - set(benchmarks))
    if unknown:
        raise ValueError(f"Vocabulary files given for benchmarks that are not evaluated: {unknown}")
    datasets_by_name, unpaired = {}, {}
    for name in benchmarks:
        unpaired[name] = []
        datasets_by_name[name] = load_evaluation_dataset(
            name,
            data_dir,
            vocabulary_file=vocabulary_files.get(name),
            max_samples=max_samples,
            hub_dataset=hub_dataset,
            split=split,
            image_column=image_column,
            label_column=label_column,
            reduce_labels=reduce_labels,
            cache_dir=cache_dir,
            unpaired=unpaired[name],
        )
    data_sources = (
        {name: {"hub_dataset": str(hub_dataset), "split": split} for name in benchmarks}
        if hub_dataset is not None
        else {}
    )
    return datasets_by_name, unpaired, vocabulary_files, data_sources
