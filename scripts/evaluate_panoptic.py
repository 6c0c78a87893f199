#!/usr/bin/env python
"""Panoptic quality (PQ / SQ / RQ, all / things / stuff) of an ITA/FC-CLIP model on COCO panoptic val2017 and
ADE20K panoptic, as detectron2's preparation scripts lay them out under $DETECTRON2_DATASETS:

    python scripts/evaluate_panoptic.py --model fcclip-convnext-large --benchmark ade20k_panoptic coco_panoptic \\
        --data-dir $DETECTRON2_DATASETS --output eval/pq

Writes OUTPUT/<benchmark>/results.json (scores in percent) and OUTPUT/<benchmark>/per_class.csv; refuses an
output folder that already holds results. Rules: FC-CLIP's panoptic inference, panopticapi's PQ (see
`ita_segmentation.evaluation.panoptic`). Each image is run alone at the processor's resolution.
"""

import argparse
import sys
from pathlib import Path

from ita_segmentation.dtypes import DTYPES
from ita_segmentation.evaluation.panoptic import (
    PANOPTIC_BENCHMARKS,
    evaluate_panoptic,
    find_panoptic_split,
    write_panoptic_results,
)
from ita_segmentation.evaluation.runner import load_model_and_processor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id (ITAForOpenVocabSegmentation)")
    parser.add_argument("--benchmark", required=True, nargs="+", choices=list(PANOPTIC_BENCHMARKS))
    parser.add_argument("--data-dir", required=True, type=Path, help="prepared datasets root ($DETECTRON2_DATASETS)")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results")
    parser.add_argument("--max-samples", type=int, help="evaluate only the first N images of each split")
    parser.add_argument("--device", default="auto", help="torch device; auto: CUDA when available, else CPU")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in args.benchmark:
        if (args.output / name / "results.json").exists():
            print(f"{args.output / name / 'results.json'} exists; choose another --output", file=sys.stderr)
            return 2
    splits = {}
    for name in args.benchmark:
        try:
            splits[name] = find_panoptic_split(PANOPTIC_BENCHMARKS[name], args.data_dir)
        except (FileNotFoundError, ValueError) as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 2
        classes = len(PANOPTIC_BENCHMARKS[name].class_names())
        if classes != len(splits[name][1]):
            print(
                f"{name}: the split has {len(splits[name][1])} categories but the class list {classes} classes",
                file=sys.stderr,
            )
            return 2
    model, processor = load_model_and_processor(args.model, device=args.device, dtype=args.dtype)
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


if __name__ == "__main__":
    sys.exit(main())
