"""`ita-export` (also `scripts/export_onnx.py`): export a model to an ONNX model folder, checked against PyTorch.

Exit status: 0 when the folder is written and its graphs match PyTorch on the sample; 1 when the model cannot be
loaded or exported, or the export does not match (the output folder is then left as it was); 2 for a usage error
(a non-empty output folder without --overwrite, bad tolerances, the `onnx` extra missing), reported before the
model is loaded.
"""

import sys

from .export import ITAExportError, ITAExportMismatchError, Tolerances, check_output_dir, export_onnx
from .runtime import import_onnx_extra

__all__ = ["main", "run"]

PROG = "ita-export"


def main(argv=None, prog=PROG):
    """Run `ita-export` with `argv` (default `sys.argv[1:]`); returns the exit status."""
    from ita_cli import export

    return export(argv, prog)


def run(args, prog=PROG):
    """`ita-export` with parsed arguments (`ita_cli.export_parser`); returns the exit status."""

    def report(message):
        print(f"{prog}: error: {message}", file=sys.stderr)

    try:
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
