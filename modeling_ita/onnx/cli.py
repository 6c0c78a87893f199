"""`ita-export` (also `scripts/export_onnx.py`): export a model to an ONNX model folder, checked against PyTorch.

Exit status: 0 when the folder is written and its graphs match PyTorch on the sample; 1 when the model cannot be
loaded or exported, or the export does not match (the output folder is then left as it was); 2 for a usage error
(a non-empty output folder without --overwrite, bad tolerances, the `onnx` extra missing), reported before the
model is loaded.
"""

import argparse
import sys

from .export import DEFAULT_TOLERANCES, ITAExportError, ITAExportMismatchError, Tolerances, check_output_dir, export_onnx
from .runtime import import_onnx_extra

__all__ = ["build_parser", "main"]

PROG = "ita-export"


def build_parser(prog=PROG):
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Export ITA / FC-CLIP to ONNX: writes OUTPUT/model.onnx (images, their sizes and an encoded vocabulary in; "
            "the model's outputs out), OUTPUT/text_encoder.onnx (the CLIP text tower), the config and processor files "
            "and onnx_export.json, after checking the graphs against PyTorch on a sample. Load the folder with "
            "modeling_ita.ITAOnnxModel.from_pretrained(OUTPUT)."
        ),
        epilog="Example: ita-export --model path/to/checkpoint --output ita-onnx",
    )
    parser.add_argument("--model", required=True, help="a model folder or a Hugging Face Hub model id")
    parser.add_argument("--output", required=True, metavar="DIR", help="the ONNX model folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR, replacing files")
    parser.add_argument("--atol", type=float, default=DEFAULT_TOLERANCES.atol,
                        help=f"check: absolute tolerance per output (default {DEFAULT_TOLERANCES.atol})")
    parser.add_argument("--rtol", type=float, default=DEFAULT_TOLERANCES.rtol,
                        help="check: tolerance relative to the output's largest PyTorch value "
                        f"(default {DEFAULT_TOLERANCES.rtol})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    return parser


def main(argv=None, prog=PROG):
    """Run `ita-export` with `argv` (default `sys.argv[1:]`); returns the exit status."""
    args = build_parser(prog).parse_args(argv)

    def report(message):
        print(f"{prog}: error: {message}", file=sys.stderr)

    try:
        if not (args.atol >= 0 and args.rtol >= 0):
            raise ITAExportError(f"--atol and --rtol must be >= 0, got {args.atol} and {args.rtol}")
        import_onnx_extra("onnx", "onnxscript", "onnxruntime", purpose=prog)
        check_output_dir(args.output, args.overwrite)
    except (ITAExportError, ImportError) as error:
        report(error)
        return 2
    tolerances = Tolerances(atol=args.atol, rtol=args.rtol)
    log = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        manifest = export_onnx(args.model, args.output, overwrite=args.overwrite, tolerances=tolerances, log=log)
    except ITAExportMismatchError as error:
        report(f"{error}. Nothing was written to {args.output}.")
        return 1
    except ITAExportError as error:
        report(error)
        return 1
    check = manifest["check"]
    worst = max(
        (entry["max_abs_diff"] / entry["allowed"], name) for name, entry in check.items() if isinstance(entry, dict) and "allowed" in entry
    )
    print(
        f"{prog}: wrote {args.output} ({manifest['variant']}); the graphs match PyTorch on the sample (largest "
        f"difference {worst[0]:.1%} of its tolerance, in {worst[1]}; labels: {check['labels']['different']} of "
        f"{check['labels']['compared']} pixels differ)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
