"""Evaluate an ITA/FC-CLIP model on the open-vocabulary semantic segmentation benchmarks (mIoU).

    python scripts/evaluate.py --model fcclip-convnext-large --benchmark ade150 pc59 pas21 \\
        --data-dir $DETECTRON2_DATASETS --output eval/fcclip
    python scripts/evaluate.py --model fcclip-convnext-large --benchmark ade150 --max-samples 100 \\
        --data-dir $DETECTRON2_DATASETS --output eval/smoke --batch-size 4 --dtype bfloat16
    python scripts/evaluate.py --model fcclip-convnext-large --benchmark ade150 --hub-dataset USER/ADE20K-val \\
        --split validation --image-column image --label-column annotation --reduce-labels --output eval/hub

Writes OUTPUT/<benchmark>/results.json (scores in percent, per-class IoU and accuracy, protocol, command),
OUTPUT/<benchmark>/per_class.csv, OUTPUT/<benchmark>/confusion_matrix.npy and OUTPUT/results.md (every
benchmark in OUTPUT, with FC-CLIP's published mIoU for reference). The protocol is FC-CLIP's: see
`modeling_ita.evaluation.runner`.
"""

import argparse
import shlex
import sys
from pathlib import Path

from modeling_ita.evaluation import BENCHMARKS, get_benchmark
from modeling_ita.evaluation.runner import PUBLISHED_FC_CLIP_MIOU, evaluate_benchmarks, load_model_and_processor


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id (ITAForOpenVocabSegmentation)")
    parser.add_argument(
        "--benchmark", required=True, nargs="+", metavar="NAME", help=f"one or more of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--data-dir", type=Path, help="prepared datasets root ($DETECTRON2_DATASETS)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N images of each split")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (of one input size)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes decoding the images")
    parser.add_argument("--device", default="auto", help="torch device; auto: CUDA when available, else CPU")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument(
        "--backend", default="auto", choices=("auto", "pytorch", "onnxruntime"),
        help="onnxruntime: a folder written by ita-export (CPU, float32); auto: onnxruntime for such a folder",
    )
    parser.add_argument(
        "--vocabulary-file",
        nargs="+",
        metavar="[BENCHMARK=]FILE",
        help="class list(s) replacing FC-CLIP's (`id:name,synonym,...` lines, same number of classes); "
        "BENCHMARK=FILE when several benchmarks are evaluated",
    )
    parser.add_argument("--shortest-edge", type=int, help="test resolution: short side (default: the processor's)")
    parser.add_argument("--longest-edge", type=int, help="test resolution: long-side cap (default: the processor's)")
    hub = parser.add_argument_group("reading the benchmark with datasets.load_dataset instead of --data-dir")
    hub.add_argument("--hub-dataset", help="Hub dataset id or local folder of parquet files (one benchmark)")
    hub.add_argument("--split", default="validation")
    hub.add_argument("--image-column", default="image")
    hub.add_argument("--label-column", default="label")
    hub.add_argument(
        "--reduce-labels", action="store_true", help="labels use 0 for other/background and classes from 1"
    )
    hub.add_argument("--cache-dir", help="datasets cache folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    for name in args.benchmark:
        try:
            get_benchmark(name)
        except KeyError as error:
            parser.error(error.args[0])
    if (args.data_dir is None) == (args.hub_dataset is None):
        parser.error("give either --data-dir or --hub-dataset")
    if args.hub_dataset is not None and len(args.benchmark) != 1:
        parser.error("--hub-dataset holds one benchmark: give one --benchmark name")
    for option in ("max_samples", "batch_size", "shortest_edge", "longest_edge"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be at least 0")
    args.vocabulary_files = _vocabulary_files(parser, args.vocabulary_file or [], args.benchmark)
    return args


def _vocabulary_files(parser, values, benchmarks):
    """`--vocabulary-file` values -> {benchmark name as given: path}."""
    files = {}
    for value in values:
        name, separator, path = value.rpartition("=")
        if not separator:
            if len(benchmarks) != 1 or len(values) != 1:
                parser.error("with several benchmarks, give --vocabulary-file as BENCHMARK=FILE")
            name, path = benchmarks[0], value
        if name not in benchmarks:
            parser.error(f"--vocabulary-file names {name!r}, which is not among --benchmark {' '.join(benchmarks)}")
        files[name] = Path(path)
    return files


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = shlex.join(["python", f"scripts/{Path(__file__).name}", *argv])
    try:
        model, processor = load_model_and_processor(
            args.model, args.device, args.dtype, shortest_edge=args.shortest_edge, longest_edge=args.longest_edge,
            backend=args.backend,
        )
        reports = evaluate_benchmarks(
            model,
            processor,
            args.benchmark,
            args.output,
            data_dir=args.data_dir,
            model_name=args.model,
            vocabulary_files=args.vocabulary_files,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            hub_dataset=args.hub_dataset,
            split=args.split,
            image_column=args.image_column,
            label_column=args.label_column,
            reduce_labels=args.reduce_labels,
            cache_dir=args.cache_dir,
            command=command,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, KeyError) as error:  # BenchmarkDataError is a ValueError
        print(f"Evaluation failed: {error}", file=sys.stderr)
        return 1
    for report in reports:
        published = PUBLISHED_FC_CLIP_MIOU.get(report["benchmark"])
        reference = f" (FC-CLIP published: {published:.1f})" if published is not None else ""
        miou = report["scores"]["mIoU"]
        print(
            f"{report['display_name']}: mIoU {'n/a' if miou is None else f'{miou:.2f}'} on {report['num_images']} "
            f"images{reference}"
        )
    print(f"Results in {args.output} (summary: {args.output / 'results.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
