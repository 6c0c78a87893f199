"""Convert an original FC-CLIP or ITA checkpoint (detectron2 .pth) into a Hugging Face model folder.

    python scripts/convert_checkpoint.py --checkpoint fcclip_cocopan.pth --output fcclip-convnext-large
    python scripts/convert_checkpoint.py --checkpoint ita.pth --output ita-convnext-large \\
        --category-bank Category/category_tensor.pt --push-to-hub my-user/ita-convnext-large

The variant and the sizes are read from the checkpoint; see `modeling_ita.hub.conversion`. detectron2 .pkl files
(numpy arrays) are not supported.
"""

import argparse
import json
import sys
from pathlib import Path

from modeling_ita.hub.conversion import CheckpointConversionError, convert_checkpoint
from modeling_ita.hub.folder import HubPushError, push_folder_to_hub


def _json_argument(value):
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="original .pth checkpoint")
    parser.add_argument("--output", required=True, type=Path, help="folder to write")
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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
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
        )
    except (CheckpointConversionError, ValueError, FileNotFoundError) as error:
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
        try:
            url = push_folder_to_hub(args.output, args.push_to_hub, private=args.private or None)
        except HubPushError as error:
            print(str(error), file=sys.stderr)
            return 2
        print(f"Pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
