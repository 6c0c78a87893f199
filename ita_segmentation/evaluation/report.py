"""What an evaluation writes: each benchmark's `results.json` and `per_class.csv` (and its confusion matrix), and
`results.md`, the table over every benchmark in the output folder."""

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers.image_utils import SizeDict

from processing_ita import ITAProcessor

from .benchmark_names import PUBLISHED_FC_CLIP_MIOU
from .benchmarks import BENCHMARKS, SegmentationBenchmark
from .evaluator import BenchmarkEvaluation
from .output_check import TABLE_HEADING, check_output_folders, is_results_report

__all__ = [
    "PUBLISHED_FC_CLIP_MIOU",
    "benchmark_report",
    "check_output_folders",
    "write_benchmark_results",
    "write_results_table",
]


# results.json / results.md name -> `segmentation_scores` key.
_SCORE_NAMES = (
    ("mIoU", "mean_iou"),
    ("fwIoU", "frequency_weighted_iou"),
    ("mACC", "mean_accuracy"),
    ("pACC", "overall_accuracy"),
)


def _percent(value: float | None) -> float | None:
    """A score in percent, or None (JSON null) for NaN."""
    return None if value is None or math.isnan(value) else 100.0 * float(value)


def _vocabulary_source(vocabulary_file: str | os.PathLike[str] | None, registered: SegmentationBenchmark | None) -> str:
    if vocabulary_file:
        return str(vocabulary_file)
    if registered:
        return f"FC-CLIP class list with synonyms ({registered.vocabulary_file})"
    return "given class names"


def benchmark_report(
    evaluation: BenchmarkEvaluation,
    processor: ITAProcessor,
    model_name: str | os.PathLike[str],
    *,
    vocabulary_file: str | os.PathLike[str] | None = None,
    command: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    max_samples: int | None = None,
    data_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of a benchmark's results.json: scores in percent, per-class IoU and accuracy with the class
    names, the number of images, the model, the protocol and the command."""
    metadata = evaluation.metadata
    scores = evaluation.scores
    matrix = evaluation.confusion.matrix
    ground_truth, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    registered = BENCHMARKS.get(metadata["name"])
    image_processor = processor.image_processor
    size = cast(SizeDict, image_processor.size)  # a SizeDict once the processor is built
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


def write_benchmark_results(
    output_dir: str | os.PathLike[str], report: dict[str, Any], confusion_matrix: np.ndarray | None = None
) -> Path:
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


def _format_score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_results_table(output_dir: str | os.PathLike[str]) -> Path:
    """Write `output_dir/results.md`: one row per `output_dir/*/results.json` (this run's benchmarks and any
    earlier ones in the folder), in the registry's order, with FC-CLIP's published mIoU beside each for
    reference. Returns the path."""
    output_dir = Path(output_dir)
    reports = []
    for path in sorted(output_dir.glob("*/results.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not an evaluation's results.json: a file of the user's
            continue
        if is_results_report(report):
            reports.append(report)
    order = {name: index for index, name in enumerate(BENCHMARKS)}
    reports.sort(key=lambda report: (order.get(report["benchmark"], len(order)), report["benchmark"]))
    lines = [
        TABLE_HEADING,
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
        'only. ITA\'s own paper numbers are not available to us. Scores on a subset of a split ("N of M" images) '
        "are not comparable with it; nor are those of a run that was interrupted (its results.json says why).",
        "",
    ]
    path = output_dir / "results.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
