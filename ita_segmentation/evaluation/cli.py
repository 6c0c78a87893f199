"""`ita-evaluate` (`scripts/evaluate.py`): the benchmarks, or any dataset with its class list, in one or several
processes. The arguments are parsed by `ita_cli.parse_evaluate_args` before torch is imported.

The order is the one a long run needs: everything that needs no model is checked first (the device, the output
folder, the model folder, the data: every label map, see `data_check`), then the model is loaded and the
datasets evaluated one after another, each one's results written as soon as it is done.

Data parallel: `accelerate launch --multi_gpu --num_processes N scripts/evaluate.py ...` (or `torchrun
--nproc_per_node N`) starts N processes; each predicts its share of the images and the confusion matrices are
summed, so the scores are those of one process. The first process writes the results.

Exit status: 0 done; 1 the data, the model or the run failed (what was computed before is written); 2 usage
error (including a device this machine lacks, results already in the output folder, no such model folder).
"""

import logging
import os
import sys

from transformers.utils import logging as transformers_logging

from modeling_ita.loading import ModelLoadingError, check_device, check_model_location
from ..onnx import resolve_backend
from .benchmarks import benchmark_metadata, load_segmentation_split
from .data_check import DataCheckError
from .runner import (
    PUBLISHED_FC_CLIP_MIOU,
    check_evaluation_data,
    check_output_folders,
    evaluate_datasets,
    load_benchmark_datasets,
    load_model_and_processor,
)

__all__ = ["main", "run"]

logger = logging.getLogger(__name__)


def main(argv=None, prog="ita-evaluate"):
    """`ita-evaluate` with the arguments `argv` (default: `sys.argv[1:]`); returns the exit status."""
    from ita_cli import parse_evaluate_args

    return run(parse_evaluate_args(argv, prog))


def _resolve_backend(args):
    """`--backend auto` -> onnxruntime for a folder written by ita-export, else pytorch; with onnxruntime,
    `--device auto` means the CPU. Raises `ValueError` for a device or dtype that backend lacks."""
    args.backend, device = resolve_backend(args.model, args.backend, args.device, args.dtype)
    if args.backend == "onnxruntime":
        args.device = device


def _process_state(device_name):
    """`(process index, number of processes, device)`: one process unless started by `accelerate launch` or
    `torchrun` (which set `WORLD_SIZE`), whose processes join accelerate's process group; in a multi-GPU run each
    process takes its own GPU."""
    device = check_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    if device.type == "cuda":
        device = state.device
    return state.process_index, state.num_processes, device


def _load_datasets(args):
    """`({name: dataset}, {name: unpaired files}, {name: vocabulary file}, {name: data source})`."""
    common = dict(max_samples=args.max_samples, split=args.split, image_column=args.image_column,
                  label_column=args.label_column)
    if args.benchmark is not None:
        return load_benchmark_datasets(
            args.benchmark, data_dir=args.data_dir, vocabulary_files=args.vocabulary_files,
            hub_dataset=args.hub_dataset, reduce_labels=args.reduce_labels, cache_dir=args.cache_dir, **common,
        )
    unpaired = []
    vocabulary_file = args.vocabulary_files.get(None)
    load_kwargs = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    dataset = load_segmentation_split(
        args.dataset, layout=args.dataset_layout, vocabulary_file=vocabulary_file, ignore_index=args.ignore_index,
        reduce_labels=args.reduce_labels, name=args.name, image_subdir=args.image_subdir,
        label_subdir=args.label_subdir, unpaired=unpaired, **common, **load_kwargs,
    )
    name = benchmark_metadata(dataset)["name"]
    source = {"dataset": str(args.dataset), "split": args.split, "layout": args.dataset_layout}
    return {name: dataset}, {name: unpaired}, {name: vocabulary_file} if vocabulary_file else {}, {name: source}


def run(args):
    """Evaluate with parsed arguments (`ita_cli.parse_evaluate_args`); returns the exit status."""
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    try:
        return _run(args)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def _run(args):
    def error(message):
        print(f"{args.prog}: error: {message}", file=sys.stderr)

    try:
        _resolve_backend(args)
    except ValueError as problem:
        error(problem)
        return 2
    try:
        rank, num_processes, device = _process_state(args.device)
    except ValueError as problem:
        error(f"--device: {problem}")
        return 2
    try:
        check_model_location(args.model)
    except ModelLoadingError as problem:
        error(f"--model: {problem}")
        return 2
    main_process = rank == 0
    if args.no_progress or not main_process:
        transformers_logging.disable_progress_bar()  # the vocabulary encoding's bar too

    try:
        datasets_by_name, unpaired, vocabulary_files, data_sources = _load_datasets(args)
        check_output_folders(args.output, datasets_by_name, args.overwrite)
    except FileExistsError as problem:
        error(problem)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as problem:
        error(problem)
        return 1
    try:
        datasets_by_name = check_evaluation_data(
            datasets_by_name, unpaired, skip_bad_samples=args.skip_bad_samples, num_workers=args.num_workers,
            progress=not args.no_progress, log=lambda message: main_process and print(message, file=sys.stderr),
        )
    except DataCheckError as problem:
        error(problem)
        return 1

    try:
        model, processor = load_model_and_processor(
            args.model, device, args.dtype, shortest_edge=args.shortest_edge, longest_edge=args.longest_edge,
            backend=args.backend,
        )
    except (ModelLoadingError, ValueError) as problem:
        error(f"cannot load model {args.model}: {problem}")
        return 1
    try:
        reports = evaluate_datasets(
            model,
            processor,
            datasets_by_name,
            args.output,
            model_name=args.model,
            vocabulary_files=vocabulary_files,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            data_sources=data_sources,
            command=args.command,
            progress=not args.no_progress,
        )
    except (ValueError, OSError, RuntimeError) as problem:  # BenchmarkDataError is a ValueError
        error(f"evaluation failed: {problem}; what was computed before is in {args.output}")
        return 1
    if main_process:
        for report in reports:
            published = PUBLISHED_FC_CLIP_MIOU.get(report["benchmark"])
            reference = f" (FC-CLIP published: {published:.1f})" if published is not None else ""
            miou = report["scores"]["mIoU"]
            print(
                f"{report['display_name']}: mIoU {'n/a' if miou is None else f'{miou:.2f}'} on "
                f"{report['num_images']} images{reference}"
            )
        print(f"Results in {args.output} (summary: {args.output / 'results.md'})")
    return 0
