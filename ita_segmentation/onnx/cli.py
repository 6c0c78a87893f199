"""`ita-export` (also `scripts/export_onnx.py`): export a model to an ONNX model folder, checked against PyTorch.

Exit status (through `ita_cli.export`'s `run_door`): 0 when the folder is written and its graphs match PyTorch on
the sample; 1 when the model cannot be loaded or exported, or the export does not match (the output folder is then
left as it was); 2 for a usage error (a missing model folder, a model folder that is already an export, an output
folder that is the model's own or not empty without --overwrite, bad tolerances, the `onnx` extra missing),
reported before the model is loaded. The arguments and folders are checked with the standard library only; torch
and the model folder are imported once they pass.
"""

import argparse
import sys
from collections.abc import Sequence

from ..errors import ITAUsageError
from ..locations import check_model_argument
from .options import DEFAULT_ATOL, DEFAULT_RTOL
from .output_folder import check_export_model, check_output_dir

__all__ = ["PROG", "build_parser", "main", "run"]

PROG = "ita-export"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """`ita-export`'s arguments."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export ITA / FC-CLIP to ONNX: writes OUTPUT/model.onnx (images, their sizes and an encoded vocabulary in; "
            "the model's outputs out), OUTPUT/text_encoder.onnx (the CLIP text tower), the config and processor files "
            "and onnx_export.json, after checking the graphs against PyTorch on a sample. Load the folder with "
            "ita_segmentation.onnx.ITAOnnxModel.from_pretrained(OUTPUT). Needs the onnx extra (pip install -e '.[onnx]')."
        ),
        epilog=(
            "Example: ita-export --model path/to/checkpoint --output ita-onnx. Exit status: 0 written and checked, "
            "1 the model could not be loaded or exported, or the export does not match (nothing is written), "
            "2 usage error."
        ),
    )
    parser.add_argument("--model", required=True, help="a model folder or a Hugging Face Hub model id")
    parser.add_argument("--output", required=True, metavar="DIR", help="the ONNX model folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR, replacing files")
    parser.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help=f"check: absolute tolerance per output (default {DEFAULT_ATOL})",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help=f"check: tolerance relative to the output's largest PyTorch value (default {DEFAULT_RTOL})",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run `ita-export` with `argv` (default `sys.argv[1:]`); returns 0 when the folder is written and checked.
    Refusals are raised (`ITAUsageError`: exit status 2, `ITAExportError`: 1) for `ita_cli.export`'s `run_door`
    to report: usage errors, the model and output folders and the `onnx` extra are checked before torch is
    imported."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not (args.atol >= 0 and args.rtol >= 0):
        parser.error(f"--atol and --rtol must be >= 0, got {args.atol} and {args.rtol}")
    check_arguments(args)
    return run(args, prog)


def check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no model, before torch is imported (each an `ITAUsageError` naming the way out): the
    model's location (a missing folder, a folder that holds no ITA model, a Hub id offline and not cached), a model
    folder that is already an export, and the output folder (a file, the model's own folder, a non-empty folder
    without --overwrite, one holding files that ita-export did not write)."""
    check_model_argument(args.model)
    check_export_model(args.model)
    check_output_dir(args.output, args.overwrite, model=args.model)


def _import_the_extra(prog: str) -> None:
    """The `onnx` extra's packages, or an `ITAUsageError` naming the extra and how to install it."""
    from .runtime import import_onnx_extra  # torch

    try:
        import_onnx_extra("onnx", "onnxscript", "onnxruntime", purpose=prog)
    except ImportError as error:
        raise ITAUsageError(str(error)) from error


def run(args: argparse.Namespace, prog: str = PROG) -> int:
    """`ita-export` with parsed arguments (`build_parser`); returns 0 when written and checked, raises
    `ITAExportError` (exit status 1: the model cannot be loaded or exported, or the export does not match, and
    nothing was written) or `ITAUsageError` (exit status 2)."""
    _import_the_extra(prog)
    from .export import ITAExportMismatchError, Tolerances, export_onnx  # torch

    tolerances = Tolerances(atol=args.atol, rtol=args.rtol)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        manifest = export_onnx(args.model, args.output, overwrite=args.overwrite, tolerances=tolerances, log=log)
    except ITAExportMismatchError as error:
        raise ITAExportMismatchError(f"{error}. Nothing was written to {args.output}.") from error
    check = manifest["check"]
    worst = max(
        (entry["max_abs_diff"] / entry["allowed"], name)
        for name, entry in check.items()
        if isinstance(entry, dict) and "allowed" in entry
    )
    print(
        f"{prog}: wrote {args.output} ({manifest['variant']}); the graphs match PyTorch on the sample (largest "
        f"difference {worst[0]:.1%} of its tolerance, in {worst[1]}; labels: {check['labels']['different']} of "
        f"{check['labels']['compared']} pixels differ)"
    )
    return 0


if __name__ == "__main__":
    from ..errors import run_door

    sys.exit(run_door(PROG, main))
