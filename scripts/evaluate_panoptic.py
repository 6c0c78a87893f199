#!/usr/bin/env python
"""Panoptic quality (PQ / SQ / RQ, all / things / stuff) of an ITA/FC-CLIP model on COCO panoptic val2017 and
ADE20K panoptic, as detectron2's preparation scripts lay them out under $DETECTRON2_DATASETS:

    python scripts/evaluate_panoptic.py --model fcclip-convnext-large --benchmark ade20k_panoptic coco_panoptic \\
        --data-dir $DETECTRON2_DATASETS --output eval/pq

Writes OUTPUT/<benchmark>/results.json (scores in percent) and OUTPUT/<benchmark>/per_class.csv; refuses an
output folder that already holds results. Rules: FC-CLIP's panoptic inference, panopticapi's PQ (see
`ita_segmentation.evaluation.panoptic`). Each image is run alone at the processor's resolution.

Like the `ita-*` commands, it runs through `ita_segmentation.errors.run_door`: exit status 0 done, 1 the data or
the model was refused, 2 a usage error (found before torch is imported where it can be: a missing model folder,
an exported ONNX folder, a device this machine lacks, a missing --data-dir, results already in
the output folder), 70 a bug (its traceback).
"""

import argparse
import sys
from pathlib import Path

from ita_segmentation.backends import check_backend_argument
from ita_segmentation.dtypes import DTYPES
from ita_segmentation.errors import ITADataError, ITAUsageError, run_door
from ita_segmentation.evaluation.benchmark_names import PANOPTIC_BENCHMARK_NAMES
from ita_segmentation.locations import check_device_argument, check_model_argument

PROG = "evaluate_panoptic.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id (ITAForOpenVocabSegmentation)")
    parser.add_argument("--benchmark", required=True, nargs="+", choices=PANOPTIC_BENCHMARK_NAMES)
    parser.add_argument("--data-dir", required=True, type=Path, help="prepared datasets root ($DETECTRON2_DATASETS)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N images of each split")
    parser.add_argument("--device", default="auto", help="torch device; auto: CUDA when available, else CPU")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max-samples must be at least 1, got {args.max_samples}")
    if len(set(args.benchmark)) != len(args.benchmark):
        parser.error(f"a benchmark is listed twice: {' '.join(args.benchmark)}")
    return args


def check_arguments(args: argparse.Namespace) -> None:
    """What needs no torch: the model (a folder written by ita-export is refused: this evaluation runs PyTorch
    models), the device, the data root and the output folder."""
    check_model_argument(args.model)
    check_backend_argument(args.model, "pytorch", args.device, args.dtype)
    check_device_argument(args.device)
    if not args.data_dir.is_dir():
        raise ITAUsageError(
            f"--data-dir {args.data_dir} is not a folder: give the prepared datasets root ($DETECTRON2_DATASETS)"
        )
    if args.output.exists() and not args.output.is_dir():
        raise ITAUsageError(f"--output {args.output} is a file: give a new or empty folder for the results")
    for name in args.benchmark:
        for file in ("results.json", "per_class.csv"):
            if (args.output / name / file).exists():
                raise ITAUsageError(f"{args.output / name / file} exists; choose another --output")


def run(args: argparse.Namespace) -> int:
    from ita_segmentation.evaluation.panoptic import (
        PANOPTIC_BENCHMARKS,
        evaluate_panoptic,
        find_panoptic_split,
        write_panoptic_results,
    )
    from ita_segmentation.evaluation.runner import load_model_and_processor
    from modeling_ita.loading import check_device

    splits = {}
    for name in args.benchmark:
        splits[name] = find_panoptic_split(PANOPTIC_BENCHMARKS[name], args.data_dir)
        classes = len(PANOPTIC_BENCHMARKS[name].class_names())
        if classes != len(splits[name][1]):
            raise ITADataError(
                f"{name}: the split has {len(splits[name][1])} categories but the class list {classes} classes; "
                f"is --data-dir {args.data_dir} the root that detectron2's prepare scripts wrote?"
            )
    try:
        device = check_device(args.device)
    except ValueError as problem:  # a device this machine lacks, found by torch
        raise ITAUsageError(f"--device {args.device}: {problem}") from problem
    try:
        model, processor = load_model_and_processor(args.model, device=device, dtype=args.dtype, backend="pytorch")
    except (ValueError, TypeError) as problem:  # transformers' refusals of the folder's files
        raise ITADataError(f"cannot load model {args.model}: {problem}") from problem
    for name, (records, categories) in splits.items():
        benchmark = PANOPTIC_BENCHMARKS[name]
        print(f"{benchmark.display_name}: {min(len(records), args.max_samples or len(records))} images", flush=True)
        scores = evaluate_panoptic(
            model,
            processor,
            records,
            categories,
            benchmark.class_names(),
            args.max_samples,
            progress=not args.no_progress,
        )
        report = write_panoptic_results(
            args.output / name, scores, categories, extra={"benchmark": name, "model": args.model}
        )
        print(
            f"{benchmark.display_name}: PQ {report['all']['pq']}  SQ {report['all']['sq']}  RQ {report['all']['rq']}  "
            f"(things PQ {report['things']['pq']}, stuff PQ {report['stuff']['pq']})",
            flush=True,
        )
    return 0


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    check_arguments(args)
    return run(args)


def main(argv: list[str] | None = None) -> int:
    """The script with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    return run_door(PROG, lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
