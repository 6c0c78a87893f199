"""`ita-convert` (`scripts/convert_checkpoint.py`): convert an original checkpoint into a model folder, saying
what it does while it does it. The arguments are parsed by `ita_cli.convert_parser` before torch is imported."""

import sys
import time

from .conversion import CheckpointConversionError, convert_checkpoint
from .folder import HubPushError, push_folder_to_hub

__all__ = ["run"]


def run(args):
    """Convert with parsed arguments (`ita_cli.convert_parser`); returns the exit status (0 written, 1 the
    conversion failed, 2 the upload failed after writing)."""
    start = time.monotonic()

    def progress(message):
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
