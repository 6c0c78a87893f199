"""`ita-convert` (`scripts/convert_checkpoint.py`): convert an original checkpoint into a model folder, saying
what it does while it does it. The arguments are parsed with the standard library only; the conversion
(torch, the model folder) is imported once they are well formed."""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PROG", "build_parser", "main", "run"]

PROG = "ita-convert"


def _json_argument(value: str) -> dict[str, Any]:
    """A JSON object given inline or as the path of a .json file."""
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.suffix == ".json" and path.is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON (inline or a .json file): {error}") from error
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """`ita-convert`'s arguments."""
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""Convert an original FC-CLIP or ITA checkpoint (detectron2 .pth) into a Hugging Face model folder.

The variant and the sizes are read from the checkpoint (see ita_segmentation.hub.conversion); the values the shapes
cannot tell are printed with where they came from. detectron2 .pkl files (numpy arrays) are not supported.""",
        epilog="""examples:
  %(prog)s --checkpoint fcclip_cocopan.pth --output fcclip-convnext-large
  %(prog)s --checkpoint ita.pth --output ita-convnext-large --category-bank Category/category_tensor.pt""",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="original .pth checkpoint")
    parser.add_argument("--output", required=True, type=Path, help="folder to write (new or empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a folder that is not empty, replacing its model files"
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument(
        "--category-bank", type=Path, help="ITA's Category/category_tensor.pt, stored as category_bank.safetensors"
    )
    parser.add_argument(
        "--clip-config",
        type=_json_argument,
        help="open_clip model config (JSON or .json file) when the CLIP is not convnext_large_d_320",
    )
    parser.add_argument(
        "--config-overrides",
        type=_json_argument,
        help="ITAConfig values that shapes cannot tell (JSON or .json file), e.g. a different train_vocabulary",
    )
    parser.add_argument(
        "--original-config",
        type=Path,
        help="the original detectron2 YAML config of the checkpoint (its _BASE_ files beside it): heads, "
        "ensemble and loss weights that shapes cannot tell",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip reloading the folder to compare tensors")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`ita-convert`: returns the exit status (0 written, 1 the conversion failed, 2 usage error or the upload
    failed after writing)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for option in ("checkpoint", "category_bank", "original_config"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            parser.error(f"--{option.replace('_', '-')} {path}: no such file")
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Convert with parsed arguments (`build_parser`); returns the exit status (0 written, 1 the conversion
    failed, 2 the upload failed after writing)."""
    from .conversion import CheckpointConversionError, convert_checkpoint  # torch, the model folder
    from .folder import HubPushError, push_folder_to_hub

    start = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - start:5.1f} s] {message}", file=sys.stderr, flush=True)

    try:
        result = convert_checkpoint(
            args.checkpoint,
            args.output,
            clip_config=args.clip_config,
            config_overrides=args.config_overrides,
            category_bank=args.category_bank,
            verify=not args.no_verify,
            repo_id=args.push_to_hub,
            original_config=args.original_config,
            overwrite=args.overwrite,
            progress=progress,
        )
    except (CheckpointConversionError, ValueError, OSError) as error:  # FileExistsError, FileNotFoundError: OSError
        print(f"Conversion failed: {error}", file=sys.stderr)
        return 1
    print("Values the checkpoint's tensor shapes do not determine, and where they came from:")
    for name, source in sorted(result.provenance.items()):
        if source != "tensor shapes":
            value = getattr(result.config, name)
            shown = f"{len(value)} entries" if isinstance(value, (list, dict)) and len(str(value)) > 60 else repr(value)
            print(f"  {name} = {shown}: {source}")
    print(
        f"Wrote {result.variant} ({result.num_tensors} tensors, {result.num_parameters:,} parameters) to "
        f"{result.output_dir}" + (" and checked it by reloading" if result.verified else "")
    )
    if args.push_to_hub:
        progress(f"Uploading {args.output} to the Hub repository {args.push_to_hub}")
        try:
            url = push_folder_to_hub(args.output, args.push_to_hub, private=args.private or None)
        except HubPushError as error:
            print(str(error), file=sys.stderr)
            return 2
        print(f"Pushed to {url}")
    return 0
