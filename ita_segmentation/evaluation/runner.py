"""Run a model over benchmark splits and write its scores: the logic behind `scripts/evaluate.py`.

The protocol (FC-CLIP's, behind its published numbers) and why batches only hold images of one padded input
size are described in `evaluator.py` and `batching.py`.

The parts: `model_loading.py` (model and processor), `data_source.py` (the splits and their pre-flight
check), `batching.py`, `evaluator.py` (the loop over one split), `report.py` (results.json, per_class.csv,
results.md); this module runs them over several benchmarks and keeps their names importable from here.
"""

import logging
import os
from collections.abc import Iterable
from typing import Any

import datasets

from processing_ita import ITAProcessor

from .batching import BenchmarkDataError, plan_batches
from .data_source import check_evaluation_data, load_benchmark_datasets, load_evaluation_dataset
from .evaluator import BenchmarkEvaluation, _distributed, evaluate_dataset
from .model_loading import load_model_and_processor
from .report import (
    PUBLISHED_FC_CLIP_MIOU,
    benchmark_report,
    check_output_folders,
    write_benchmark_results,
    write_results_table,
)

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


def evaluate_datasets(
    model: Any,
    processor: ITAProcessor,
    datasets_by_name: dict[str, datasets.Dataset],
    output_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    vocabulary_files: dict[str, str | os.PathLike[str]] | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    data_sources: dict[str, dict[str, Any]] | None = None,
    command: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
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

    def write(evaluation: BenchmarkEvaluation, name: str) -> dict[str, Any]:
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
            partial = getattr(error, "partial_evaluation", None)
            if partial is not None:
                write(partial, name)
            raise
        report = write(evaluation, name)
        logger.info("%s: mIoU %s on %d images", report["display_name"], report["scores"]["mIoU"], report["num_images"])
        reports.append(report)
    return reports


def evaluate_benchmarks(
    model: Any,
    processor: ITAProcessor,
    benchmarks: Iterable[str],
    output_dir: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    vocabulary_files: dict[str, str | os.PathLike[str]] | None = None,
    max_samples: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    hub_dataset: str | None = None,
    split: str = "validation",
    image_column: str = "image",
    label_column: str = "label",
    reduce_labels: bool = False,
    cache_dir: str | None = None,
    command: str | None = None,
    progress: bool = True,
    skip_bad_samples: bool = False,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
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
