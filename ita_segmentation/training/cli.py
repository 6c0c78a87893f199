"""`ita-train` (`scripts/train.py`): train with the transformers Trainer (the run is `entry.main`).

Its arguments are the project's own (`arguments.py`: `ITAModelArguments`, `ITADataArguments` and
`ITARecipeArguments`, standard library only) and every field of transformers' `TrainingArguments`, which
imports torch; `entry.parse_arguments` reads them all with transformers' `HfArgumentParser`. Before torch is
loaded, this module answers what needs no torch:

- `--help`: the project's arguments and the common `TrainingArguments` options (`COMMON_TRAINING_OPTIONS`);
  `--help-all` prints transformers' full list (loading torch to build it).
- usage errors in the project's arguments: a value of the wrong type, a choice that is not offered.
- options that no parser knows (a misspelt name) or that abbreviate several: `TrainingArguments`' field names
  are read from the source of transformers' `training_args` module (`training_argument_fields`, with `ast`,
  without importing it). The values of `TrainingArguments` options, and a stray value that belongs to no
  option, are checked by the full parser once torch is loaded (exit status 2 too).
- the values no run can use, the files and folders the options name, the output folder and the checkpoint to
  resume (`checks.py`: `--per_device_train_batch_size 0`, `--max_steps 0`, a missing `--config_path`, an earlier
  run's `--output_dir`, `--resume_from_checkpoint last` without a checkpoint, ...), as `ITAUsageError`s.

A single `.json` argument (`python scripts/train.py run.json`) is read by the full parser alone.
"""

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib.util
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ITADataError, ITAUsageError, ITAUserError
from .arguments import ITADataArguments, ITAModelArguments, ITARecipeArguments
from .checks import (
    HALF_EVALUATION,
    check_locations,
    check_output_folders,
    check_values,
    cpu_run,
    light_values,
    refuse_half_precision_evaluation_on_cpu,
    resolve_checkpoint,
)

__all__ = [
    "COMMON_TRAINING_OPTIONS",
    "PROG",
    "TrainingField",
    "build_parser",
    "check_arguments",
    "main",
    "training_argument_fields",
]

PROG = "ita-train"

# The `TrainingArguments` options that `--help` lists (those of `ITARecipeArguments` are listed with it).
COMMON_TRAINING_OPTIONS = (
    "output_dir",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "resume_from_checkpoint",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "seed",
    "bf16",
    "fp16",
    "use_cpu",
    "dataloader_num_workers",
    "report_to",
)

# argparse's own test for a negative number (such a string is a value, not an option).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_HELP_ALL = "--help-all"


@dataclasses.dataclass(frozen=True)
class TrainingField:
    """One field of transformers' `TrainingArguments`, as its source declares it."""

    name: str
    annotation: str
    help: str | None = None
    default: Any = None
    has_default: bool = False  # whether the source gives a literal default (`default`)

    @property
    def is_bool(self) -> bool:
        return re.fullmatch(r"(Optional\[)?bool\]?( \| None)?", self.annotation) is not None

    def option_strings(self) -> list[str]:
        """The options `HfArgumentParser` makes of it (`--a_b`, `--a-b`, and `--no_a_b` for a flag that is on)."""
        options = _spellings(self.name)
        if self.is_bool and self.default is True:
            options += _spellings(f"no_{self.name}")
        return options


def _spellings(name: str) -> list[str]:
    return [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])


@functools.cache
def training_argument_fields() -> dict[str, TrainingField] | None:
    """`TrainingArguments`' fields, read from the source of `transformers/training_args.py` without importing it
    (that imports torch); `None` when the source cannot be found or read (then unknown options are left to the
    full parser)."""
    try:
        spec = importlib.util.find_spec("transformers")
        locations = spec.submodule_search_locations if spec is not None else None
        if not locations:
            return None
        tree = ast.parse((Path(list(locations)[0]) / "training_args.py").read_text(encoding="utf-8"))
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments":
            fields = [_training_field(statement) for statement in node.body]
            return {field.name: field for field in fields if field is not None} or None
    return None


def _training_field(statement: ast.stmt) -> TrainingField | None:
    """The field an annotated class-body statement declares; `None` for anything else and `init=False` fields
    (which `HfArgumentParser` leaves out)."""
    if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
        return None
    name, annotation = statement.target.id, ast.unparse(statement.annotation)
    if name.startswith("_") or annotation.startswith("ClassVar"):
        return None
    value = statement.value
    if not (isinstance(value, ast.Call) and ast.unparse(value.func).endswith("field")):
        return _with_default(TrainingField(name, annotation), _literal(value))
    keywords = {keyword.arg: keyword.value for keyword in value.keywords if keyword.arg is not None}
    if "init" in keywords and _literal(keywords["init"]) is False:
        return None
    metadata = _literal(keywords["metadata"]) if "metadata" in keywords else None
    help_text = metadata.get("help") if isinstance(metadata, dict) else None
    field = TrainingField(name, annotation, help_text if isinstance(help_text, str) else None)
    return _with_default(field, _literal(keywords["default"]) if "default" in keywords else dataclasses.MISSING)


def _with_default(field: TrainingField, default: Any) -> TrainingField:
    if default is dataclasses.MISSING:
        return field
    return dataclasses.replace(field, default=default, has_default=True)


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return dataclasses.MISSING
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return dataclasses.MISSING


# ------------------------------------------------------------------------------------------------------------
# The project's arguments, the way HfArgumentParser reads them
# ------------------------------------------------------------------------------------------------------------


def _truthy(value: str | bool) -> bool:
    """A flag's value as `HfArgumentParser` reads it."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes/no, true/false, t/f, y/n or 1/0, got {value!r}")


def _add_field(group: Any, field: dataclasses.Field[Any], hints: dict[str, Any]) -> None:
    """`field` as an option of `group`, with the spelling, number of values, type and choices that
    `HfArgumentParser` gives it."""
    kind = hints[field.name]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        kind = kind if len(members) != 1 or members[0] is bool else members[0]
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = None
    options: dict[str, Any] = {"default": default, "help": field.metadata.get("help")}
    if "choices" in field.metadata:
        options["choices"] = field.metadata["choices"]
    if kind is bool or kind == bool | None:
        options.update(type=_truthy, nargs="?", const=True, metavar="BOOL")
    elif typing.get_origin(kind) is list:
        options.update(type=typing.get_args(kind)[0], nargs="+")
    else:
        options["type"] = kind
    group.add_argument(*_spellings(field.name), **options)
    if field.default is True:
        group.add_argument(
            *_spellings(f"no_{field.name}"),
            action="store_false",
            dest=field.name,
            help=f"the opposite of --{field.name}",
        )


_GROUPS = (
    (ITAModelArguments, "model"),
    (ITADataArguments, "data"),
    (ITARecipeArguments, "FC-CLIP's training recipe (TrainingArguments fields with its defaults, and its own)"),
)


def build_parser(prog: str = PROG, *, common_options: bool = True) -> argparse.ArgumentParser:
    """`ita-train`'s parser of the project's own arguments (standard library only). With `common_options`, the
    common `TrainingArguments` options are listed too, for `--help` (their values are read by the full parser
    after torch is loaded)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train ITA or FC-CLIP with the transformers Trainer (FC-CLIP's recipe by default). Takes the "
        "options below and every option of transformers' TrainingArguments; --help-all lists them all (it loads "
        "torch).",
        epilog=f"All options: {prog} --help-all. A single .json argument holds all of them (HfArgumentParser's "
        "JSON file).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # an abbreviation is judged against every option, TrainingArguments' too
    )
    parser.add_argument(_HELP_ALL, action="store_true", help="list every option, TrainingArguments' included")
    for dataclass, title in _GROUPS:
        group = parser.add_argument_group(title)
        hints = typing.get_type_hints(dataclass)
        for field in dataclasses.fields(dataclass):
            if field.init:
                _add_field(group, field, hints)
    fields = training_argument_fields()
    if common_options and fields:
        own = {field.name for dataclass, _ in _GROUPS for field in dataclasses.fields(dataclass)}
        group = parser.add_argument_group("common TrainingArguments options (the full list: --help-all)")
        for name in COMMON_TRAINING_OPTIONS:
            common = fields.get(name)
            if common is None or name in own:
                continue
            default = common.default if common.has_default else argparse.SUPPRESS
            group.add_argument(
                *_spellings(name),
                metavar="BOOL" if common.is_bool else name.upper(),
                nargs="?" if common.is_bool else None,
                default=default,
                help=common.help or " ",
            )
    return parser


def _known_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option string the full parser knows, the project's (`parser`'s) and `TrainingArguments`', with the
    field it sets."""
    options = {option: action.dest for option, action in parser._option_string_actions.items()}
    own = set(options.values())
    for field in (training_argument_fields() or {}).values():
        if field.name not in own:  # a field of the recipe has the recipe's default (and `--no_` form)
            options.update(dict.fromkeys(field.option_strings(), field.name))
    return options


def check_arguments(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """The project's arguments in `argv`, checked (`SystemExit(2)` with argparse's message for a usage error):
    their values and choices, and the name of every other option against `TrainingArguments`' fields (an
    unknown option, or an abbreviation of options of several fields). The values of `TrainingArguments`
    options are left to the full parser, and so is an abbreviation of one of the project's options."""
    parser = build_parser(prog, common_options=False)
    namespace, extras = parser.parse_known_args(list(argv))
    if training_argument_fields() is None:
        return namespace
    known = _known_options(parser)
    long_options = sorted(option for option in known if option.startswith("--"))
    for item in extras:
        if not item.startswith("-") or _NEGATIVE_NUMBER.match(item) or item == "--":
            continue  # a value (of a TrainingArguments option, checked later)
        name = item.split("=", 1)[0]
        if name in known:
            continue
        matches = [option for option in long_options if name.startswith("--") and option.startswith(name)]
        if len({known[option] for option in matches}) == 1:
            continue  # an abbreviation of one field's option: the full parser judges it
        if matches:
            parser.error(f"ambiguous option: {name} could match {', '.join(matches)}")
        dashed = "-" in name[2:]  # offer the names in the spelling used
        pool = [option for option in long_options if ("-" in option[2:]) == dashed or "_" not in option]
        close = difflib.get_close_matches(name, pool, n=3)
        suggestion = f"; did you mean {' or '.join(close)}?" if close else ""
        parser.error(f"unrecognized arguments: {name}{suggestion} (--help-all lists every option)")
    return namespace


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`ita-train`: returns the exit status (0 trained). User errors are raised as `ITAUsageError` (exit status 2:
    the arguments, found before torch where the command line tells) or `ITADataError` (1: the data, the model or
    a checkpoint refused while working) for `errors.run_door` (`ita_cli.train`) to report."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if _HELP_ALL in arguments:
        from .entry import build_parser as build_full_parser

        build_full_parser(prog).print_help()
        return 0
    if "-h" in arguments or "--help" in arguments:
        build_parser(prog).print_help()
        return 0
    json_file = argv is None and len(arguments) == 1 and arguments[0].endswith(".json")
    if not json_file:
        values = {**vars(check_arguments(arguments, prog)), **light_values(arguments)}
        check_values(values)
        check_locations(values)
        check_output_folders(values)
        if cpu_run(values):
            refuse_half_precision_evaluation_on_cpu([(name, values.get(name, False)) for name in HALF_EVALUATION])
        if not values.get("precompute_dominant_categories_to"):
            resolve_checkpoint(values.get("resume_from_checkpoint"), values.get("output_dir"))

    from ..evaluation.data_check import DataCheckError
    from .entry import parse_arguments, run

    try:
        parsed = parse_arguments(None if argv is None else list(argv))
    except ValueError as error:  # an argument no option takes, or TrainingArguments refusing a combination
        raise ITAUsageError(str(error)) from None
    try:
        run(*parsed)
    except DataCheckError as error:
        if isinstance(error, ITAUserError):
            raise
        raise ITADataError(str(error)) from error  # until `DataCheckError` derives from `ITADataError`
    return 0
