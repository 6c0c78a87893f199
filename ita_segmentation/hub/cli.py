"""`ita-convert` (`scripts/convert_checkpoint.py`): convert an original checkpoint into a model folder, saying
what it does while it does it. The arguments are parsed with the standard library only; the conversion
(torch, the model folder) is imported once they are well formed. Errors are the wing's `CheckpointConversionError`,
`CheckpointNotFoundError`, `OutputFolderError` and `HubPushError` (`ita_segmentation.errors`' user errors), which
`run_door` reports (`ita_cli.convert`)."""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checks import check_output_folder

__all__ = ["ALL_BENCHMARKS", "PROG", "build_parser", "main", "resolve_vocabulary_choices", "run"]

PROG = "ita-convert"
ALL_BENCHMARKS = "all-benchmarks"
# Other spellings of the benchmarks' names (normalised: lower case, no "-" or "_"), besides `benchmark_name`'s.
_BENCHMARK_ALIASES = {
    "ade20k150": "ade150",
    "ade20k847": "ade847",
    "pascalcontext59": "pc59",
    "pascalcontext459": "pc459",
    "pascalvoc20": "pas20",
    "pascalvoc21": "pas21",
    "voc20": "pas20",
    "voc21": "pas21",
}


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
    parser.add_argument(
        "--store-vocabularies",
        nargs="+",
        metavar="NAME_OR_FILE",
        help="encode these vocabularies and store them in the folder (vocabularies/), so a fresh machine segments "
        "with them at once: benchmark names (ade150 pc59 pas20 ..., also A-150, ade20k-150, pascal-context-59), "
        f"{ALL_BENCHMARKS} (the six), or class files (one class per line, as --labels-file)",
    )
    return parser


def _benchmark(value: str) -> str | None:
    """The registered benchmark `value` names, or None."""
    from ..evaluation.benchmark_names import benchmark_name  # standard library only

    key = value.lower().replace("-", "").replace("_", "")
    if key in _BENCHMARK_ALIASES:
        return _BENCHMARK_ALIASES[key]
    try:
        return benchmark_name(value)
    except KeyError:
        return None


def resolve_vocabulary_choices(values: Sequence[str]) -> list[tuple[str, Path]]:
    """`--store-vocabularies`' values as (label, class file): a benchmark's own list, `all-benchmarks`' six, or a
    class file. Raises `ValueError` naming an unknown value, the registered names and the way out."""
    from ..evaluation.benchmark_names import BENCHMARK_DISPLAY_NAMES, benchmark_vocabulary_file

    chosen: dict[str, Path] = {}
    for value in values:
        if value.lower() == ALL_BENCHMARKS:
            names = list(BENCHMARK_DISPLAY_NAMES)
        else:
            name = _benchmark(value)
            if name is None:
                path = Path(value)
                if path.is_file():
                    chosen.setdefault(path.name, path)
                    continue
                if path.is_dir():
                    raise ValueError(f"--store-vocabularies {value}: a folder; give a class file (one class a line)")
                raise ValueError(
                    f"--store-vocabularies {value}: neither a benchmark ({', '.join(BENCHMARK_DISPLAY_NAMES)}, or "
                    f"{ALL_BENCHMARKS}) nor an existing class file"
                )
            names = [name]
        for name in names:
            chosen.setdefault(BENCHMARK_DISPLAY_NAMES[name], benchmark_vocabulary_file(name))
    return list(chosen.items())


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`ita-convert`: returns the exit status (0 written); raises argparse's `SystemExit(2)` for usage errors found
    before torch is imported, and the wing's user errors (`ita_segmentation.errors`) for `run_door` to report:
    exit status 2 for a taken output folder, 1 for a checkpoint that cannot be converted or an upload that failed
    after writing."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for option in ("checkpoint", "category_bank", "original_config"):
        path = getattr(args, option)
        if path is not None and path.is_dir():
            parser.error(
                f"--{option.replace('_', '-')} {path} is a folder; give the checkpoint file itself (a .pth or .pkl "
                "file written by the original code)"
            )
        if path is not None and not path.is_file():
            parser.error(f"--{option.replace('_', '-')} {path}: no such file")
    if args.store_vocabularies:
        try:
            args.vocabulary_files = resolve_vocabulary_choices(args.store_vocabularies)
        except ValueError as error:
            parser.error(str(error))
    # Before torch is imported (OutputFolderError, a usage error); the conversion checks again, fully.
    check_output_folder(args.output, args.overwrite, [args.checkpoint, args.category_bank, args.original_config])
    return run(args)


def _read_vocabularies(choices: Sequence[tuple[str, Path]]) -> dict[str, list[str]]:
    """label -> class names of each chosen class file; a usage error naming a file that is no class list."""
    from ..errors import ITAUsageError
    from ..vocabulary_files import read_vocabulary_file

    vocabularies = {}
    for label, path in choices:
        try:
            vocabularies[label] = read_vocabulary_file(path, allow_shared_synonyms=True)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ITAUsageError(f"--store-vocabularies {path}: {error}") from None
    return vocabularies


def run(args: argparse.Namespace) -> int:
    """Convert with parsed arguments (`build_parser`); returns 0 when written. The conversion's refusals and a
    failed upload are raised (user errors of `ita_segmentation.errors`, for `run_door`)."""
    from .conversion import convert_checkpoint  # torch, the model folder
    from .folder import push_folder_to_hub

    start = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - start:5.1f} s] {message}", file=sys.stderr, flush=True)

    choices = getattr(args, "vocabulary_files", None)
    if choices is None and args.store_vocabularies:
        choices = resolve_vocabulary_choices(args.store_vocabularies)
    vocabularies = _read_vocabularies(choices or [])
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
        vocabularies=vocabularies or None,
    )
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
    for label, file in result.stored_vocabularies.items():
        print(f"Stored the encoded vocabulary {label} as {file}")
    if args.push_to_hub:
        progress(f"Uploading {args.output} to the Hub repository {args.push_to_hub}")
        url = push_folder_to_hub(args.output, args.push_to_hub, private=args.private or None)  # HubPushError
        print(f"Pushed to {url}")
    return 0
