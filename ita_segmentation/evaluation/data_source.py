"""The data an evaluation reads: each benchmark's split (prepared folders or a Hub copy), checked before any
model work."""

import logging
import os
from collections.abc import Callable, Iterable

import datasets

from ..segmentation_data import Unpaired
from .benchmarks import _with_metadata, benchmark_metadata, get_benchmark, load_benchmark, load_hub_benchmark
from .data_check import DataCheckError, DataCheckReport, check_segmentation_data
from .errors import EvaluationDataError

__all__ = ["check_evaluation_data", "load_benchmark_datasets", "load_evaluation_dataset"]

logger = logging.getLogger(__name__)


def load_evaluation_dataset(
    benchmark: str,
    data_dir: str | os.PathLike[str] | None = None,
    vocabulary_file: str | os.PathLike[str] | None = None,
    max_samples: int | None = None,
    hub_dataset: str | None = None,
    split: str = "validation",
    image_column: str = "image",
    label_column: str = "label",
    reduce_labels: bool = False,
    cache_dir: str | None = None,
    unpaired: Unpaired | None = None,
) -> datasets.Dataset:
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


def check_evaluation_data(
    datasets_by_name: dict[str, datasets.Dataset],
    unpaired_by_name: dict[str, Unpaired] | None = None,
    skip_bad_samples: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    log: Callable[[str], object] = logger.warning,
) -> dict[str, datasets.Dataset]:
    """The pre-flight pass (`data_check.check_segmentation_data`) over every dataset to evaluate, before any
    model work: `{name: dataset}` with the bad samples left out when `skip_bad_samples`, else a
    `DataCheckError` listing every problem of every dataset. The datasets' `skipped_samples` metadata then
    lists what was left out, for the results."""
    unpaired_by_name = unpaired_by_name or {}
    reports: dict[str, DataCheckReport] = {}
    checked: dict[str, datasets.Dataset] = {}
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
            vocabulary=f"{metadata.get('vocabulary_source', 'the class list')} ({metadata['num_labels']} classes)",
        )
    failed = {name: report for name, report in reports.items() if report.problems}
    if failed and not skip_bad_samples:
        combined = DataCheckReport(
            num_rows=sum(report.num_rows for report in failed.values()),
            problems=[problem for report in failed.values() for problem in report.problems],
            vocabulary="; ".join(report.vocabulary for report in failed.values() if report.vocabulary) or None,
        )
        raise DataCheckError(
            combined, " and ".join(benchmark_metadata(datasets_by_name[name])["display_name"] for name in failed)
        )
    for name, dataset in datasets_by_name.items():
        report = reports[name]
        metadata = benchmark_metadata(dataset)
        kept = report.raise_or_keep_good(dataset, True, metadata["display_name"], log=log)
        if report.problems:
            metadata["skipped_samples"] = [
                {"file": problem.file, "problem": problem.message} for problem in report.problems
            ]
            kept = _with_metadata(kept, metadata)
        if len(kept) == 0:
            raise EvaluationDataError(
                f"every one of the {len(dataset)} samples of {metadata['display_name']} was left out "
                "(--skip-bad-samples), so there is nothing to evaluate: fix the files listed above"
            )
        checked[name] = kept
    return checked


def load_benchmark_datasets(
    benchmarks: Iterable[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    vocabulary_files: dict[str, str | os.PathLike[str]] | None = None,
    max_samples: int | None = None,
    hub_dataset: str | None = None,
    split: str = "validation",
    image_column: str = "image",
    label_column: str = "label",
    reduce_labels: bool = False,
    cache_dir: str | None = None,
) -> tuple[
    dict[str, datasets.Dataset], dict[str, Unpaired], dict[str, str | os.PathLike[str]], dict[str, dict[str, str]]
]:
    """Every benchmark's split, before any of them is evaluated: `({name: dataset}, {name: unpaired files},
    {name: vocabulary file}, {name: data source})`."""
    names = [get_benchmark(name).name for name in benchmarks]
    if not names:
        raise ValueError("Give at least one benchmark")
    if len(set(names)) != len(names):
        raise ValueError(f"A benchmark is listed twice: {names}")
    if hub_dataset is not None and len(names) != 1:
        raise ValueError("hub_dataset holds one benchmark; give exactly one benchmark name with it")
    vocabulary_files = {get_benchmark(name).name: path for name, path in (vocabulary_files or {}).items()}
    unknown = sorted(set(vocabulary_files) - set(names))
    if unknown:
        raise ValueError(f"Vocabulary files given for benchmarks that are not evaluated: {unknown}")
    datasets_by_name: dict[str, datasets.Dataset] = {}
    unpaired: dict[str, Unpaired] = {}
    for name in names:
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
        {name: {"hub_dataset": str(hub_dataset), "split": split} for name in names} if hub_dataset is not None else {}
    )
    return datasets_by_name, unpaired, vocabulary_files, data_sources
