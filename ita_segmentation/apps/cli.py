"""`ita-segment` (also `python -m ita_segmentation`): segment images into an open vocabulary from the command line.

For every image it writes, in the output folder:

- `<stem>_overlay.png`: the image blended with the class colours, and beside it a legend of the classes present;
- `<stem>_labels.png`: the label map, each pixel's class id (position in the vocabulary); 8-bit grey for up to
  256 classes, 16-bit above;
- `<stem>.json`: the image, its size, the model, the vocabulary, and each present class's pixel share and score
  (`SUMMARY_FIELDS` says what each field is).

The output folder must be new or empty unless `--overwrite` or `--resume` is given. It also holds
`manifest.jsonl` (one line per finished image: its input, the files written with their sizes and hashes, the
process that wrote them, seconds) and `run_summary.json` (counts, the failures, seconds, processes). Every file is
written under a temporary name and renamed once complete. `--overwrite` replaces only files that ita-segment wrote
(those its manifest names, or recognisably its own), never a file of yours: a planned output name held by another
file is refused before the model is loaded. `--resume` finishes a run that was stopped (killed, preempted): the
images whose files are complete as the manifest recorded them, with the same settings, are left untouched; the
others are done (again). The two are exclusive: `--resume` already writes into a folder that is not empty. Files
this command wrote are never read back as inputs, even when the output folder is an input folder.

Many processes: `accelerate launch [--multi_gpu] --num_processes N -m ita_segmentation ...` (or the console
script's path) shares the images between the processes, each written by exactly one, the same files as one
process writes; each process uses its own device unless `--device` is given; the main process encodes the
vocabulary first (the others read it from the disk cache) and shows the one progress bar.

`--dataset NAME_OR_PATH` reads the images of a `datasets` dataset instead (a Hub id, a parquet/arrow file or
folder, a `save_to_disk` folder, an imagefolder); each row's id (`--id-column`, else its position) names its
outputs. `--format parquet` writes the results as parquet shards that `datasets.load_dataset("parquet", ...)` reads.

With `--task panoptic`: `<stem>_overlay.png` (one colour per segment, outlined), `<stem>_panoptic.png` (COCO
panoptic's PNG: segment id = R + 256 G + 256^2 B, 0 where no segment) and `<stem>.json` (its `segments_info`:
id, category_id = class index, area, bbox, score, plus the categories with `isthing`). With `--task instance`:
`<stem>_overlay.png`, `<stem>_instances.png` (16-bit: 1 + the id of the highest-scoring instance covering each
pixel, 0 where none) and `<stem>.json` (each instance's class, score, area, bbox and mask as COCO run-length
encoding, overlaps kept).

Exit status (from every process of a run): 0 when every image was segmented; 1 when some image could not be read
or segmented (the others are still written; `--fail-fast` stops at the first) or the model could not be loaded; 2
for a usage error (bad arguments, an empty or unreadable vocabulary, more classes than a label map holds, no input
images, clashing output names, a non-empty output folder, a file of yours where an output would go, a model
folder that does not exist, a device this machine lacks), reported before the model is loaded.
This module parses the arguments with the standard library only (`--help` and usage errors answer at once);
`segment_images` does the work, imported once the arguments are well formed.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..backends import add_backend_argument, check_backend_argument
from ..dtypes import DTYPES
from ..locations import check_device_argument, check_model_argument
from .inputs import IMAGE_EXTENSIONS

__all__ = ["OUTPUT_FORMATS", "PROG", "build_parser", "main", "run"]

PROG = "ita-segment"
OUTPUT_FORMATS = ("png", "parquet")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """`ita-segment`'s arguments."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Open-vocabulary semantic segmentation with ITA / FC-CLIP: label every pixel of each image with one of "
            "the classes you name. Writes <stem>_overlay.png, <stem>_labels.png and <stem>.json per image."
        ),
        epilog=(
            "Example: ita-segment photos/ cat.jpg --model path/to/checkpoint --labels cat 'sofa,couch' wall "
            "--output out/. Many processes: accelerate launch --num_processes N -m ita_segmentation ... . "
            "Exit status: 0 all images done, 1 some image or the model failed, 2 usage error."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="IMAGE_OR_DIR",
        help=f"image files, or folders whose image files ({', '.join(IMAGE_EXTENSIONS)}) are segmented in name "
        "order (or --dataset)",
    )
    parser.add_argument("--model", required=True, help="a checkpoint folder or a Hugging Face Hub model id")
    vocabulary = parser.add_mutually_exclusive_group(required=True)
    vocabulary.add_argument(
        "--labels",
        nargs="+",
        metavar="CLASS",
        help="the classes, one argument each; synonyms of a class separated by commas ('sofa,couch')",
    )
    vocabulary.add_argument(
        "--labels-file",
        type=Path,
        metavar="FILE",
        help="a class list, one class per line: 'name,synonym,...' or FC-CLIP's 'id:name,synonym,...'",
    )
    parser.add_argument(
        "--output", "-o", type=Path, required=True, metavar="DIR", help="output folder (created; must be empty)"
    )
    folder = parser.add_mutually_exclusive_group()
    folder.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty, replacing the outputs ita-segment wrote there (any other file "
        "that an output would replace is refused)",
    )
    folder.add_argument(
        "--resume",
        action="store_true",
        help="finish a run that was stopped: the same command plus --resume skips the images whose outputs are "
        "complete (as its manifest.jsonl recorded them) and does the others",
    )
    _add_dataset_arguments(parser)
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, mps, ... (default: cuda if available)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model precision (default: float32)")
    add_backend_argument(parser)
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default: 1)")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (default: 0.5)"
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first image that fails")
    _add_task_arguments(parser)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return parser


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("datasets in and out")
    group.add_argument(
        "--dataset",
        metavar="NAME_OR_PATH",
        help="segment the images of a datasets dataset instead of files: a Hub dataset id, a parquet or arrow "
        "file or folder, a save_to_disk folder or an imagefolder (large ones are streamed)",
    )
    group.add_argument("--split", help="--dataset's split (default: its only split, else train)")
    group.add_argument("--image-column", metavar="COLUMN", help="--dataset's image column (default: its image one)")
    group.add_argument(
        "--id-column",
        metavar="COLUMN",
        help="--dataset's column whose values name each row's outputs (default: the row's position, 00000042)",
    )
    group.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="png",
        help="png: files per image (default); parquet: the results as a dataset of parquet shards, one row per "
        "image (its id, the label map as a PNG image, the segments), for datasets.load_dataset('parquet', ...)",
    )


def _check_sources(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Image files or --dataset, one of the two; the dataset's options only with it."""
    if args.dataset is None:
        if not args.inputs:
            parser.error("give image files or folders, or --dataset NAME_OR_PATH")
        given = [option for option in ("split", "image_column", "id_column") if getattr(args, option) is not None]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} applies to --dataset")
    elif args.inputs:
        parser.error(f"give image files or folders, or --dataset, not both (got {args.inputs[0]} and --dataset)")


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("panoptic and instance segmentation")
    # Checked against the pipeline's SUBTASKS once it is imported (it imports torch): the model folder, their
    # home, is not imported before the arguments are parsed.
    group.add_argument(
        "--task",
        default="semantic",
        metavar="TASK",
        help="semantic: a class per pixel (default); panoptic: a segment per thing instance and per stuff class; "
        "instance: scored, possibly overlapping instances",
    )
    group.add_argument(
        "--stuff",
        nargs="+",
        metavar="CLASS",
        help="the classes that are stuff (merged into one segment per class; no instances), written as in the "
        "vocabulary; by default every class is a thing",
    )
    group.add_argument(
        "--threshold",
        type=float,
        help="panoptic: class probability a query must exceed (default 0.8); instance: score an instance must "
        "reach (default 0.5)",
    )


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run `ita-segment` with the arguments `argv` (default: `sys.argv[1:]`); returns the exit status (0 done,
    1 some image failed) or raises `ITAUsageError` / `ITADataError` (and argparse's `SystemExit`), which
    `ita_cli.segment` (`errors.run_door`) reports."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    _check_sources(parser, args)
    # What needs no model and no torch, as every command checks it: the model's location, the device, the backend.
    check_model_argument(args.model)
    check_device_argument(args.device)
    check_backend_argument(args.model, args.backend, args.device, args.dtype)
    return run(args, prog)


def run(args: argparse.Namespace, prog: str = PROG) -> int:
    """`ita-segment` with parsed arguments (`build_parser`); returns the exit status."""
    from .segment_images import segment_images  # torch, transformers, the model folder

    return segment_images(args, prog)
