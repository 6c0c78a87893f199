"""`ita-evaluate` (`scripts/evaluate.py`): the benchmarks, or any dataset with its class list, in one or several
processes. The arguments are parsed (`parse_args`)
with the standard library only; torch, `datasets` and the model are imported once they are well formed.

The order is the one a long run needs: everything that needs no model is checked first (the device, the output
folder, the model folder, the data: every label map, see `data_check`), then the model is loaded and the
datasets evaluated one after another, each one's results written as soon as it is done.

Data parallel: `accelerate launch --multi_gpu --num_processes N scripts/evaluate.py ...` (or `torchrun
--nproc_per_node N`) starts N processes; each predicts its share of the images and the confusion matrices are
summed, so the scores are those of one process. The first process writes the results.

Refusals are raised as the project's user errors (`ita_segmentation.errors`) and reported by `ita_cli.evaluate`'s
`run_door`: exit status 0 done; 1 the data, the model or the run failed (`ITADataError`; what was computed before is
written); 2 usage error (`ITAUsageError`, found before torch is imported where it can be: a missing model folder, a
device this machine lacks, a PyTorch folder given to `--backend onnxruntime` or the reverse, a
data path that does not exist, results already in the output folder); 70 a bug (its traceback).
"""

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends import add_backend_argument, check_backend_argument
from ..dtypes import DTYPES
from ..errors import ITADataError, ITAUsageError, ITAUserError, user_error
from ..locations import check_device_argument, check_model_argument, looks_like_hub_id
from .benchmark_names import BENCHMARK_DISPLAY_NAMES, benchmark_name, dataset_result_name
from .output_check import check_output_folders

__all__ = ["EVALUATION_LAYOUTS", "PROG", "build_parser", "check_arguments", "main", "parse_args", "run"]

logger = logging.getLogger(__name__)

PROG = "ita-evaluate"
# The dataset layouts `--dataset` offers (of `training.data`'s layouts, those that hold semantic label maps).
EVALUATION_LAYOUTS = ("auto", "label_folders")


def _benchmark_argument(value: str) -> str:
    try:
        return benchmark_name(value)
    except KeyError as error:
        raise argparse.ArgumentTypeError(error.args[0]) from None


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """`ita-evaluate`'s arguments."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Evaluate an ITA/FC-CLIP model (mIoU, fwIoU, mACC, pACC): on the open-vocabulary benchmarks,
or on any semantic segmentation dataset with its class list.

Writes OUTPUT/<name>/results.json (scores in percent, per-class IoU and accuracy, protocol, command),
OUTPUT/<name>/per_class.csv, OUTPUT/<name>/confusion_matrix.npy and OUTPUT/results.md (every result in OUTPUT).
Every label map is checked before the model is loaded; bad files are all listed, and stop the run unless
--skip-bad-samples is given. Data-parallel: accelerate launch --multi_gpu --num_processes N scripts/evaluate.py ...""",
        epilog="""examples:
  %(prog)s --model fcclip-convnext-large --benchmark ade150 pc59 --data-dir $DETECTRON2_DATASETS --output eval/fcclip
  %(prog)s --model runs/finetune --dataset data/my_dataset --dataset-layout label_folders \\
      --vocabulary-file classes.txt --output eval/mine""",
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id (ITAForOpenVocabSegmentation)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--benchmark",
        nargs="+",
        type=_benchmark_argument,
        metavar="NAME",
        help=f"one or more of: {', '.join(BENCHMARK_DISPLAY_NAMES)}",
    )
    what.add_argument(
        "--dataset",
        metavar="PATH_OR_ID",
        help="your own dataset, as scripts/train.py reads it: a Hub id, a parquet/arrow/imagefolder or "
        "save_to_disk folder, or label-map folders (ROOT/images/SPLIT + ROOT/annotations/SPLIT)",
    )
    parser.add_argument("--data-dir", type=Path, help="benchmarks: the prepared datasets root ($DETECTRON2_DATASETS)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace results already in OUTPUT for the same benchmark or dataset"
    )
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N images of each split")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (of one input size)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes decoding the images")
    parser.add_argument("--device", default="auto", help="torch device; auto: CUDA when available, else CPU")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    add_backend_argument(parser)
    parser.add_argument(
        "--vocabulary-file",
        nargs="+",
        metavar="[BENCHMARK=]FILE",
        help="the class list (`id:name,synonym,...` or `name,synonym,...` lines): required with --dataset (unless "
        "the dataset names its classes); with --benchmark it replaces FC-CLIP's (same number of classes), "
        "BENCHMARK=FILE when several benchmarks are evaluated",
    )
    parser.add_argument("--shortest-edge", type=int, help="test resolution: short side (default: the processor's)")
    parser.add_argument("--longest-edge", type=int, help="test resolution: long-side cap (default: the processor's)")
    parser.add_argument(
        "--skip-bad-samples",
        action="store_true",
        help="leave out the images whose label map fails the check (and say how many) instead of stopping",
    )
    own = parser.add_argument_group("your own dataset (--dataset)")
    own.add_argument(
        "--dataset-layout",
        choices=EVALUATION_LAYOUTS,
        default="auto",
        help="auto: what datasets.load_dataset reads, or label-map folders when the folder has them",
    )
    own.add_argument("--ignore-index", type=int, default=255, help="label of unlabelled pixels (default: 255)")
    own.add_argument("--name", help="results subfolder and table name (default: the dataset's folder or id)")
    own.add_argument("--image-subdir", default="images", help="label_folders layout: image folder (default: images)")
    own.add_argument("--label-subdir", default="annotations", help="label_folders layout: label folder")
    hub = parser.add_argument_group("reading with datasets.load_dataset (--dataset, or --hub-dataset for a benchmark)")
    hub.add_argument("--hub-dataset", help="a benchmark's copy on the Hub or in a local parquet folder (one benchmark)")
    hub.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    hub.add_argument("--image-column", default="image")
    hub.add_argument("--label-column", default="label")
    hub.add_argument(
        "--reduce-labels", action="store_true", help="labels use 0 for other/background and classes from 1"
    )
    hub.add_argument("--cache-dir", help="datasets cache folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    """`ita-evaluate`'s arguments, checked for everything that needs no data and no model."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.benchmark is not None:
        if (args.data_dir is None) == (args.hub_dataset is None):
            parser.error("with --benchmark, give either --data-dir or --hub-dataset")
        if args.hub_dataset is not None and len(args.benchmark) != 1:
            parser.error("--hub-dataset holds one benchmark: give one --benchmark name")
        if len(set(args.benchmark)) != len(args.benchmark):
            parser.error(f"a benchmark is listed twice: {' '.join(args.benchmark)}")
    else:
        for option in ("data_dir", "hub_dataset"):
            if getattr(args, option) is not None:
                parser.error(f"--{option.replace('_', '-')} goes with --benchmark; --dataset names the data itself")
        if args.vocabulary_file is not None and len(args.vocabulary_file) != 1:
            parser.error("--dataset takes one --vocabulary-file")
    for option in ("max_samples", "batch_size", "shortest_edge", "longest_edge"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    if args.num_workers < 0:
        parser.error(f"--num-workers must be at least 0, got {args.num_workers}")
    args.vocabulary_files = _vocabulary_files(parser, args.vocabulary_file or [], args.benchmark)
    for path in args.vocabulary_files.values():
        if path.is_dir():
            parser.error(f"--vocabulary-file {path} is a folder: give the class list file (one class per line)")
        if not path.is_file():
            parser.error(f"--vocabulary-file {path} does not exist")
    args.command = shlex.join([prog, *(sys.argv[1:] if argv is None else argv)])
    args.prog = prog
    return args


def _vocabulary_files(
    parser: argparse.ArgumentParser, values: list[str], benchmarks: list[str] | None
) -> dict[str | None, Path]:
    """`--vocabulary-file` values -> {benchmark name: path} (`{None: path}` for `--dataset`)."""
    if benchmarks is None:
        return {None: Path(values[0])} if values else {}
    files: dict[str | None, Path] = {}
    for value in values:
        name, separator, path = value.rpartition("=")
        if not separator:
            if len(benchmarks) != 1 or len(values) != 1:
                parser.error("with several benchmarks, give --vocabulary-file as BENCHMARK=FILE")
            name, path = benchmarks[0], value
        try:
            name = _benchmark_argument(name)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--vocabulary-file: {error}")
        if name not in benchmarks:
            parser.error(f"--vocabulary-file names {name!r}, which is not among --benchmark {' '.join(benchmarks)}")
        files[name] = Path(path)
    return files


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`ita-evaluate` with the arguments `argv` (default: `sys.argv[1:]`); returns 0 when done. A refusal is
    raised (`ITAUsageError`: exit status 2, found before any long work; `ITADataError`: 1, the data, the model
    or the run failed) for `ita_cli.evaluate`'s `run_door` to report."""
    args = parse_args(argv, prog)
    check_arguments(args)
    return run(args)


def _looks_like_a_path(value: str) -> bool:
    """Whether a `--dataset`/`--hub-dataset` value that does not exist here is meant as a path, not a Hub id."""
    return value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1 or not looks_like_hub_id(value)


def _check_data_arguments(args: argparse.Namespace) -> None:
    """The data's locations, before torch: a `--data-dir` that is missing or a file, a `--dataset` path that
    does not exist (a Hub id is for the loader to ask), label-map folders that are not a folder."""
    if args.data_dir is not None:
        data_dir = args.data_dir.expanduser()
        if not data_dir.exists():
            raise ITAUsageError(
                f"--data-dir {args.data_dir} does not exist: give the prepared datasets root ($DETECTRON2_DATASETS, "
                "the folder holding ADEChallengeData2016/, pascal_ctx_d2/, ...)"
            )
        if not data_dir.is_dir():
            raise ITAUsageError(f"--data-dir {args.data_dir} is a file: give the prepared datasets root (a folder)")
    for option, value in (("--dataset", args.dataset), ("--hub-dataset", args.hub_dataset)):
        if value is None or os.path.exists(os.path.expanduser(value)):
            continue
        if _looks_like_a_path(value):
            raise ITAUsageError(
                f"{option} {value} does not exist (no file or folder {Path(value).expanduser().resolve()}), and it "
                "is not a Hub dataset id (owner/name) either: check the path for typos"
            )
    dataset = Path(os.path.expanduser(args.dataset)) if args.dataset is not None else None
    if dataset is not None and dataset.is_dir() and not any(dataset.iterdir()):
        raise ITAUsageError(
            f"--dataset {args.dataset} is an empty folder: give the dataset's folder (label-map folders "
            f"{args.image_subdir}/{args.split} + {args.label_subdir}/{args.split}, parquet or arrow files, an "
            "imagefolder) or a Hub dataset id"
        )
    if args.dataset is not None and args.dataset_layout == "label_folders":
        if not os.path.isdir(os.path.expanduser(args.dataset)):
            raise ITAUsageError(
                f"--dataset {args.dataset} is not a folder: --dataset-layout label_folders reads "
                f"{args.dataset}/{args.image_subdir}/{args.split} and {args.dataset}/{args.label_subdir}/{args.split}"
            )


def _result_names(args: argparse.Namespace) -> list[str]:
    """The results subfolders this run writes: the benchmarks' names, or the dataset's."""
    if args.benchmark is not None:
        return list(args.benchmark)
    return [args.name or dataset_result_name(args.dataset)]


def check_arguments(args: argparse.Namespace) -> None:
    """Everything that needs neither torch nor the data, before either is imported (an `ITAUsageError` naming
    the value and the way out): the model's location and backend, the device, the
    data's locations, and the output folder (results are never replaced silently)."""
    check_model_argument(args.model)
    # The backend before the device: an exported folder with --device cuda is told that onnxruntime runs on the CPU.
    args.backend = check_backend_argument(args.model, args.backend, args.device, args.dtype)
    check_device_argument(args.device)
    if args.backend == "onnxruntime":
        args.device = "cpu"
    _check_data_arguments(args)
    check_output_folders(args.output, _result_names(args), args.overwrite)


def _process_state(device_name: str) -> tuple[int, int, Any]:
    """`(process index, number of processes, device)`: one process unless started by `accelerate launch` or
    `torchrun` (which set `WORLD_SIZE`), whose processes join accelerate's process group; in a multi-GPU run each
    process takes its own GPU."""
    from modeling_ita.loading import check_device

    device = check_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    if device.type == "cuda":
        device = state.device
    return state.process_index, state.num_processes, device


def _load_datasets(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`({name: dataset}, {name: unpaired files}, {name: vocabulary file}, {name: data source})`."""
    from .benchmarks import benchmark_metadata, load_segmentation_split
    from .runner import load_benchmark_datasets

    common = dict(
        max_samples=args.max_samples, split=args.split, image_column=args.image_column, label_column=args.label_column
    )
    if args.benchmark is not None:
        return load_benchmark_datasets(
            args.benchmark,
            data_dir=args.data_dir,
            vocabulary_files=args.vocabulary_files,
            hub_dataset=args.hub_dataset,
            reduce_labels=args.reduce_labels,
            cache_dir=args.cache_dir,
            **common,
        )
    unpaired: list[tuple[Path, str]] = []
    vocabulary_file = args.vocabulary_files.get(None)
    load_kwargs = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    dataset = load_segmentation_split(
        args.dataset,
        layout=args.dataset_layout,
        vocabulary_file=vocabulary_file,
        ignore_index=args.ignore_index,
        reduce_labels=args.reduce_labels,
        name=args.name,
        image_subdir=args.image_subdir,
        label_subdir=args.label_subdir,
        unpaired=unpaired,
        **common,
        **load_kwargs,
    )
    name = benchmark_metadata(dataset)["name"]
    source = {"dataset": str(args.dataset), "split": args.split, "layout": args.dataset_layout}
    return {name: dataset}, {name: unpaired}, {name: vocabulary_file} if vocabulary_file else {}, {name: source}


def run(args: argparse.Namespace) -> int:
    """Evaluate with parsed and checked arguments (`parse_args`, `check_arguments`); returns 0 when done, raises
    the user errors described in `main`."""
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    try:
        return _run(args)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def _load_model(args: argparse.Namespace, device: Any) -> tuple[Any, Any]:
    """The model and processor; what the model folder's loaders refuse in the user's folder (a config value of
    the wrong type, processor files that do not fit) becomes an `ITADataError` naming the folder."""
    from safetensors import SafetensorError

    from .runner import load_model_and_processor

    try:
        return load_model_and_processor(
            args.model,
            device,
            args.dtype,
            shortest_edge=args.shortest_edge,
            longest_edge=args.longest_edge,
            backend=args.backend,
        )
    except ITAUserError:
        raise
    except (ValueError, TypeError, OSError, SafetensorError) as problem:  # refusals of the folder's files
        if user_error(problem) is not None:  # a full disk, a missing permission: as it is
            raise
        raise ITADataError(f"cannot load model {args.model}: {problem}") from problem


def _run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from .runner import PUBLISHED_FC_CLIP_MIOU, check_evaluation_data, evaluate_datasets

    try:
        rank, num_processes, device = _process_state(args.device)
    except ValueError as problem:  # a device this machine lacks, found by torch
        raise ITAUsageError(f"--device {args.device}: {problem}") from problem
    main_process = rank == 0
    if args.no_progress or not main_process:
        transformers_logging.disable_progress_bar()  # the vocabulary encoding's bar too

    datasets_by_name, unpaired, vocabulary_files, data_sources = _load_datasets(args)
    check_output_folders(args.output, datasets_by_name, args.overwrite)  # the names the data gave
    datasets_by_name = check_evaluation_data(
        datasets_by_name,
        unpaired,
        skip_bad_samples=args.skip_bad_samples,
        num_workers=args.num_workers,
        progress=not args.no_progress,
        log=lambda message: main_process and print(message, file=sys.stderr),
    )
    model, processor = _load_model(args, device)
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
    except Exception as problem:
        kept = f"what was computed before is in {args.output}"
        found = user_error(problem)
        if found is None:  # a bug: run_door prints its traceback next
            print(f"{args.prog}: the evaluation failed; {kept}", file=sys.stderr)
            raise
        raise ITADataError(f"evaluation failed: {found}; {kept}") from problem
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
