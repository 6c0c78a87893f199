"""`ita-segment` (also `python -m ita_segmentation`): segment images into an open vocabulary from the command line.

For every image it writes, in the output folder:

- `<stem>_overlay.png`: the image blended with the class colours, and beside it a legend of the classes present;
- `<stem>_labels.png`: the label map, each pixel's class id (position in the vocabulary); 8-bit grey for up to
  256 classes, 16-bit above;
- `<stem>.json`: the image, its size, the model, the vocabulary, and each present class's pixel share and score
  (`SUMMARY_FIELDS` says what each field is).

The output folder must be new or empty unless `--overwrite` is given (then same-name outputs are replaced and
other files left alone), and files this command wrote are never read back as inputs, even when the output folder
is an input folder.

With `--task panoptic`: `<stem>_overlay.png` (one colour per segment, outlined), `<stem>_panoptic.png` (COCO
panoptic's PNG: segment id = R + 256 G + 256^2 B, 0 where no segment) and `<stem>.json` (its `segments_info`:
id, category_id = class index, area, bbox, score, plus the categories with `isthing`). With `--task instance`:
`<stem>_overlay.png`, `<stem>_instances.png` (16-bit: 1 + the id of the highest-scoring instance covering each
pixel, 0 where none) and `<stem>.json` (each instance's class, score, area, bbox and mask as COCO run-length
encoding, overlaps kept).

Exit status: 0 when every image was segmented; 1 when some image could not be read or segmented (the others
are still written; `--fail-fast` stops at the first) or the model could not be loaded; 2 for a usage error
(bad arguments, an empty or unreadable vocabulary, no input images, clashing output names, a non-empty output
folder, a model folder that does not exist, a device this machine lacks), reported before the model is loaded.
This module parses the arguments with the standard library only (`--help` and usage errors answer at once);
`segment_images` does the work, imported once the arguments are well formed.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..backends import add_backend_argument
from ..dtypes import DTYPES
from .inputs import IMAGE_EXTENSIONS

__all__ = ["PROG", "build_parser", "main", "run"]

PROG = "ita-segment"


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
            "--output out/. Exit status: 0 all images done, 1 some image or the model failed, 2 usage error."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help=f"image files, or folders whose image files ({', '.join(IMAGE_EXTENSIONS)}) are segmented in name order",
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty, replacing same-name outputs (other files are left alone)",
    )
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
    1 some image or the model failed, 2 usage error)."""
    return run(build_parser(prog).parse_args(argv), prog)


def run(args: argparse.Namespace, prog: str = PROG) -> int:
    """`ita-segment` with parsed arguments (`build_parser`); returns the exit status."""
    from .segment_images import segment_images  # torch, transformers, the model folder

    return segment_images(args, prog)
