"""What `ita-train` checks before any long work (standard library only): every refusal is an `ITAUsageError`
(exit status 2) or `ITADataError` (exit status 1) that names the option, the value and the way out.

- `check_values`: numbers no run can use (`--per_device_train_batch_size 0`, `--max_steps 0`, a negative
  learning rate, `--crop_size 0`, `--max_train_samples 0`, ...), and options that exclude each other.
- `check_locations`: the files and folders the options name (`--config_path`, `--clip_checkpoint`,
  `--vocabulary_file`, `--model_name_or_path`), and that a dataset is named at all.
- `check_output_folders`: `--output_dir` (a file, not writable, an earlier run's folder, the data or the model
  itself) and `--precompute_dominant_categories_to` (never written into a folder that holds files).
- `resolve_checkpoint`: `--resume_from_checkpoint last` (or `true`) to the output folder's last
  `checkpoint-<step>`, and a checkpoint path checked to be one; `compare_configs` names the fields in which a
  checkpoint's config differs from the model's being trained (the checkpoint is refused before its weights load).

`cli.main` runs the first four on the command line before torch is imported (`light_values` reads the
`TrainingArguments` options they need from it), and `entry.run` runs them again on the parsed arguments (a
`.json` run, an abbreviated option) with the config comparison and the checks that need torch.
"""

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import ITADataError, ITAUsageError
from ..locations import check_model_argument

__all__ = [
    "CHECKPOINT_FOLDER",
    "HALF_EVALUATION",
    "LAST_CHECKPOINT",
    "check_locations",
    "check_output_folders",
    "check_values",
    "compare_configs",
    "cpu_run",
    "last_checkpoint",
    "light_values",
    "refuse_half_precision_evaluation_on_cpu",
    "resolve_checkpoint",
]

# The folders in which the Trainer saves a run's checkpoints (`checkpoint-<global step>`).
CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
# `--resume_from_checkpoint` values that mean "the last checkpoint in --output_dir".
LAST_CHECKPOINT = ("last", "true", "yes")
# A checkpoint's weights, as the Trainer saves them.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Config entries that differ between runs of one model without changing its weights.
_CONFIG_METADATA = {
    "_name_or_path",
    "architectures",
    "auto_map",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "train_vocabulary",
    "id2label",
    "label2id",
    "_commit_hash",
    "_attn_implementation_autoset",
}


# ------------------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------------------


def _at_least(minimum: float) -> Callable[[Any], bool]:
    return lambda value: value >= minimum


def _positive(value: Any) -> bool:
    return value > 0


# (field, test, what the value must be, the way out); `None` values (an option left unset) pass.
_RULES: tuple[tuple[str, Callable[[Any], bool], str, str], ...] = (
    ("per_device_train_batch_size", _at_least(1), "at least 1 (images per device and step)", "give 1 or more"),
    ("per_device_eval_batch_size", _at_least(1), "at least 1 (images per device and batch)", "give 1 or more"),
    ("gradient_accumulation_steps", _at_least(1), "at least 1 (1: no accumulation)", "give 1 or more"),
    ("eval_accumulation_steps", _at_least(1), "at least 1", "give 1 or more, or leave it out"),
    ("learning_rate", _at_least(0), "0 or more", "FC-CLIP's recipe uses 1e-4"),
    ("weight_decay", _at_least(0), "0 or more", "FC-CLIP's recipe uses 0.05"),
    ("max_grad_norm", _at_least(0), "0 or more (0: no clipping)", "FC-CLIP's recipe uses 0.01"),
    ("warmup_steps", _at_least(0), "0 or more", "give a number of steps (Mask2Former: 10)"),
    ("logging_steps", _positive, "more than 0", "give the steps between log lines"),
    ("save_steps", _positive, "more than 0", "give the steps between checkpoints, or --save_strategy no"),
    ("eval_steps", _positive, "more than 0", "give the steps between evaluations, or leave it out"),
    ("save_total_limit", _at_least(1), "at least 1 (checkpoints kept)", "give 1 or more, or leave it out"),
    ("dataloader_num_workers", _at_least(0), "0 or more (0: load in the main process)", "give 0 or more"),
    ("crop_size", _at_least(1), "at least 1 pixel", "give a multiple of 32, e.g. 512 or 1024"),
    ("min_scale", _positive, "more than 0", "FC-CLIP's recipe uses 0.1"),
    ("max_scale", _positive, "more than 0", "FC-CLIP's recipe uses 2.0"),
    ("max_train_samples", _at_least(1), "at least 1 (a run needs training images)", "give 1 or more, or leave it out"),
    ("max_eval_samples", _at_least(1), "at least 1", "give 1 or more, or leave --eval_split out"),
    ("synthetic_num_train_images", _at_least(1), "at least 1", "give 1 or more"),
    ("synthetic_num_eval_images", _at_least(1), "at least 1", "give 1 or more, or leave --eval_split out"),
    ("synthetic_image_size", _at_least(8), "at least 8 pixels", "give 8 or more, e.g. 64"),
    ("eval_shortest_edge", _at_least(1), "at least 1 pixel", "leave it out for the processor's 800"),
    ("eval_longest_edge", _at_least(1), "at least 1 pixel", "leave it out for the processor's 1333"),
    ("backbone_lr_multiplier", _at_least(0), "0 or more", "FC-CLIP's recipe uses 0.1"),
    ("lr_decay_factor", _positive, "more than 0", "FC-CLIP's recipe uses 0.1"),
    ("lr_warmup_factor", _at_least(0), "0 or more", "Mask2Former uses 1.0"),
)


def _option(name: str, value: Any) -> str:
    shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return f"--{name} {shown}"


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_values(values: Mapping[str, Any]) -> None:
    """Refuse (`ITAUsageError`) the numbers in `values` (option name -> value; missing names are not checked)
    that no run can use, and options given together that exclude each other."""
    for name, test, requirement, way_out in _RULES:
        value = values.get(name)
        if value is None:
            continue
        if not _number(value) or math.isnan(value) or not test(value):
            raise ITAUsageError(f"{_option(name, value)}: must be {requirement}; {way_out}")
    max_steps = values.get("max_steps")
    if _number(max_steps):
        if max_steps == 0:
            raise ITAUsageError(
                "--max_steps 0: a run of no steps is refused (the Trainer would still take a step and save changed "
                "weights); give the number of steps to train, or leave --max_steps out to train --num_train_epochs "
                "epochs"
            )
        if max_steps < -1:
            raise ITAUsageError(
                f"--max_steps {max_steps}: must be a number of steps, 1 or more (or -1, the default: train "
                "--num_train_epochs epochs)"
            )
        epochs = values.get("num_train_epochs")
        if max_steps == -1 and _number(epochs) and not epochs > 0:
            raise ITAUsageError(
                f"--num_train_epochs {epochs}: a run of no epochs is refused; give more than 0 epochs, or the "
                "number of steps with --max_steps"
            )
    low, high = values.get("min_scale"), values.get("max_scale")
    if _number(low) and _number(high) and low > high:
        raise ITAUsageError(f"--min_scale {low} is more than --max_scale {high}; give min_scale <= max_scale")
    for step in values.get("lr_decay_steps") or ():
        if not _number(step) or step < 0:
            raise ITAUsageError(f"{_option('lr_decay_steps', values['lr_decay_steps'])}: steps must be 0 or more")
    for fraction in values.get("lr_decay_fractions") or ():
        if not _number(fraction) or not 0 <= fraction <= 1:
            raise ITAUsageError(
                f"{_option('lr_decay_fractions', values['lr_decay_fractions'])}: fractions of the run must lie "
                "between 0 and 1"
            )
    if values.get("vocabulary_file") and values.get("class_names"):
        raise ITAUsageError("--vocabulary_file and --class_names both name the classes; give one of them")
    if values.get("model_name_or_path") and any(
        values.get(name) for name in ("config_path", "variant", "clip_checkpoint")
    ):
        given = [f"--{name}" for name in ("config_path", "variant", "clip_checkpoint") if values.get(name)]
        raise ITAUsageError(
            f"--model_name_or_path fine-tunes a saved model, so {' and '.join(given)} (for a new model) cannot "
            "come with it; give one or the other"
        )
    if values.get("config_path") and values.get("variant"):
        raise ITAUsageError("--config_path and --variant both choose a new model's config; give one of them")


# ------------------------------------------------------------------------------------------------------------
# The command line's TrainingArguments values, before torch
# ------------------------------------------------------------------------------------------------------------

# The `TrainingArguments` options whose values the light check reads, with their types.
_LIGHT_TRAINING_OPTIONS: dict[str, Callable[[str], Any]] = {
    "per_device_train_batch_size": int,
    "per_device_eval_batch_size": int,
    "gradient_accumulation_steps": int,
    "eval_accumulation_steps": int,
    "max_steps": int,
    "num_train_epochs": float,
    "logging_steps": float,
    "save_steps": float,
    "eval_steps": float,
    "save_total_limit": int,
    "dataloader_num_workers": int,
    "output_dir": str,
    "resume_from_checkpoint": str,
    "use_cpu": bool,
    "bf16_full_eval": bool,
    "fp16_full_eval": bool,
}
_TRUE = ("yes", "true", "t", "y", "1")
# The options that evaluate the whole model in half precision.
HALF_EVALUATION = ("bf16_full_eval", "fp16_full_eval")


def light_values(argv: Sequence[str]) -> dict[str, Any]:
    """The values of the `TrainingArguments` options that the checks need, read from `argv` without torch (an
    option given in another form, e.g. abbreviated, or a value of the wrong type, is left to the full parser)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in _LIGHT_TRAINING_OPTIONS:
        spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        flag: dict[str, Any] = {"nargs": "?", "const": "true"} if _LIGHT_TRAINING_OPTIONS[name] is bool else {}
        parser.add_argument(*spellings, dest=name, default=None, **flag)
    try:
        found, _ = parser.parse_known_args(list(argv))
    except SystemExit:  # e.g. an option without its value: the full parser says so
        return {}
    values: dict[str, Any] = {}
    for name, kind in _LIGHT_TRAINING_OPTIONS.items():
        text = getattr(found, name)
        if text is None:
            continue
        if kind is bool:
            values[name] = text.strip().lower() in _TRUE
            continue
        try:
            values[name] = kind(text)
        except ValueError:
            continue
    return values


# ------------------------------------------------------------------------------------------------------------
# Files and folders
# ------------------------------------------------------------------------------------------------------------


def _listing(folder: Path, limit: int = 5) -> str:
    try:
        names = sorted(path.name for path in folder.iterdir())
    except OSError:
        return "unreadable"
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown or "nothing"


def _need_file(option: str, value: str | None, what: str) -> None:
    if not value:
        return
    path = Path(os.path.expanduser(value))
    if path.is_dir():
        raise ITAUsageError(f"--{option} {value} is a folder; give {what}")
    if not path.is_file():
        raise ITAUsageError(f"--{option} {value} does not exist; give {what}")


def check_locations(values: Mapping[str, Any]) -> None:
    """Refuse (`ITAUsageError`) the files and the model that the options name but that are not there, and a run
    without data."""
    _need_file("config_path", values.get("config_path"), "an ITAConfig JSON file (a model folder's config.json)")
    _need_file("clip_checkpoint", values.get("clip_checkpoint"), "open_clip's weights file (.bin or .safetensors)")
    _need_file("vocabulary_file", values.get("vocabulary_file"), "a text file of `id:name,synonym,...` lines")
    model = values.get("model_name_or_path")
    if model:
        try:
            check_model_argument(model)
        except ITAUsageError as error:
            raise ITAUsageError(f"--model_name_or_path: {error}") from None
    dataset = values.get("dataset_name_or_path")
    if values.get("dataset_layout", "auto") != "synthetic" and dataset and dataset.startswith(("/", ".", "~")):
        path = Path(os.path.expanduser(dataset))
        if not path.exists():  # written as a path, so no Hub dataset id either
            parent = path.parent
            where = f" (nor does {parent})" if not parent.exists() else ""
            raise ITAUsageError(
                f"--dataset_name_or_path {dataset} does not exist{where}; check the path for typos (a Hub dataset "
                "id is written owner/name)"
            )
    if values.get("dataset_layout", "auto") != "synthetic" and not dataset:
        raise ITAUsageError(
            "no data: give --dataset_name_or_path (a folder, a file or a Hub dataset id), or --dataset_layout "
            "synthetic for generated shapes"
        )


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _overlaps(output: Path, source: Path, option: str) -> bool:
    """Whether writing into `output` would write into the data or model `source` (or among it: a folder that holds
    it, whose old checkpoints the Trainer deletes; a folder inside the data, which a folder layout would read)."""
    inside_data = option == "--dataset_name_or_path" and source in output.parents
    return output == source or output in source.parents or inside_data


def _writable(folder: Path) -> Path | None:
    """The nearest existing folder at or above `folder` when this process cannot write in it, else None."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return None if os.access(existing, os.W_OK | os.X_OK) else existing


def check_output_folders(values: Mapping[str, Any]) -> None:
    """Refuse (`ITAUsageError`) output folders that would lose or mix a user's files: `--output_dir` that is a file,
    cannot be written, is the data, the model or a file the run reads (or holds it), or holds files while this run
    neither resumes nor was told `--overwrite_output_dir`; `--precompute_dominant_categories_to` that is the data or
    holds files."""
    local_inputs = [
        (f"--{name}", _resolved(values[name]))
        for name in ("dataset_name_or_path", "model_name_or_path")
        if values.get(name) and Path(os.path.expanduser(values[name])).exists()
    ]
    target = values.get("precompute_dominant_categories_to")
    if target:
        folder = _resolved(target)
        for option, path in local_inputs:
            if _overlaps(folder, path, option):
                raise ITAUsageError(
                    f"--precompute_dominant_categories_to {target} is where {option} {path} is; give a new folder"
                )
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ITAUsageError(
                f"--precompute_dominant_categories_to {target} already holds {_listing(folder) if folder.is_dir() else 'a file'}; "
                "give a new or empty folder (the dataset with its column is saved there)"
            )
        return  # ranking dominant categories writes nothing to --output_dir
    output_dir = values.get("output_dir")
    if not output_dir:
        return
    output = _resolved(output_dir)
    if output.exists() and not output.is_dir():
        raise ITAUsageError(f"--output_dir {output_dir} is a file; give a folder for the run's checkpoints and model")
    for option, path in local_inputs:
        if _overlaps(output, path, option):
            raise ITAUsageError(
                f"--output_dir {output_dir} is where {option} {path} is: training would write its checkpoints and "
                "model among the files it reads; give another --output_dir"
            )
    blocked = _writable(output)
    if blocked is not None:
        raise ITAUsageError(f"--output_dir {output_dir}: {blocked} cannot be written here; give another --output_dir")
    if values.get("resume_from_checkpoint") or values.get("overwrite_output_dir"):
        return
    if output.is_dir() and any(output.iterdir()):
        raise ITAUsageError(
            f"--output_dir {output_dir} is not empty ({_listing(output)}); resume that run with "
            "--resume_from_checkpoint last, choose another --output_dir, or give --overwrite_output_dir to train "
            "anew into it"
        )


# ------------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------------


def last_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The `checkpoint-<step>` folder of the highest step in `output_dir` that holds weights, or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        match = CHECKPOINT_FOLDER.match(child.name)
        if match and child.is_dir() and any((child / name).is_file() for name in _WEIGHT_FILES):
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def resolve_checkpoint(value: str | bool | None, output_dir: str | os.PathLike[str] | None) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint value` names, checked (`ITAUsageError`): `last` (or `true`)
    is the last `checkpoint-<step>` of `output_dir`, which must have one; a path must be a Trainer checkpoint
    (a folder with `trainer_state.json` and weights). None when the run starts anew."""
    if value is None or value is False or (isinstance(value, str) and not value.strip()):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in LAST_CHECKPOINT):
        shown = "last" if value is True else value
        if not output_dir:
            raise ITAUsageError(f"--resume_from_checkpoint {shown}: give the --output_dir of the run to resume")
        found = last_checkpoint(output_dir)
        if found is None:
            where = (
                "does not exist"
                if not Path(output_dir).exists()
                else f"holds no checkpoint-<step> folder ({_listing(Path(output_dir))})"
            )
            raise ITAUsageError(
                f"--resume_from_checkpoint {shown}: --output_dir {output_dir} {where}, so there is no checkpoint to "
                "resume; leave --resume_from_checkpoint out to start a new run, or give the --output_dir of the run "
                "to resume (or its checkpoint folder)"
            )
        return os.fspath(found)
    path = Path(os.path.expanduser(value))
    if not path.exists():
        raise ITAUsageError(
            f"--resume_from_checkpoint {value} does not exist; give a checkpoint-<step> folder of an earlier run, "
            "or `last` for the last one in --output_dir"
        )
    if (
        not path.is_dir()
        or not (path / "trainer_state.json").is_file()
        or not any((path / name).is_file() for name in _WEIGHT_FILES)
    ):
        holds = _listing(path) if path.is_dir() else "a file"
        raise ITAUsageError(
            f"--resume_from_checkpoint {value} is not a training checkpoint (it holds {holds}; a checkpoint has "
            "trainer_state.json and the model's weights); give a checkpoint-<step> folder of an earlier run, or "
            "fine-tune a saved model with --model_name_or_path"
        )
    return os.fspath(path)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and key in _CONFIG_METADATA:
            continue
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_configs(checkpoint: str, checkpoint_config: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Refuse (`ITADataError`) a checkpoint whose config (`checkpoint_config`, as a dict) differs from the config
    of the model being trained (`config`) in anything but metadata and the training vocabulary, naming the
    fields; its weights would not fit the model (or would silently mean another one)."""
    theirs, ours = _flatten(checkpoint_config), _flatten(config)
    differing = sorted(key for key in set(theirs) | set(ours) if theirs.get(key, "(unset)") != ours.get(key, "(unset)"))
    if not differing:
        return
    shown = "; ".join(
        f"{key}: {_short(theirs.get(key, '(unset)'))} in the checkpoint, {_short(ours.get(key, '(unset)'))} here"
        for key in differing[:8]
    )
    more = f" and {len(differing) - 8} more" if len(differing) > 8 else ""
    raise ITADataError(
        f"--resume_from_checkpoint {checkpoint} holds a model of another config ({len(differing)} field(s) differ: "
        f"{shown}{more}); resume with the model arguments of that run (e.g. --config_path "
        f"{Path(checkpoint) / 'config.json'}), or start a new run into another --output_dir"
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cpu_run(values: Mapping[str, Any]) -> bool:
    """Whether a run with the options `values` trains on the CPU, as far as the command line and this machine tell
    without torch: `--use_cpu`, or no NVIDIA (or ROCm) driver."""
    drivers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")
    return bool(values.get("use_cpu")) or (sys.platform == "linux" and not any(map(os.path.exists, drivers)))


def refuse_half_precision_evaluation_on_cpu(flags: Iterable[tuple[str, bool]]) -> None:
    """Refuse (`ITAUsageError`) `--bf16_full_eval`/`--fp16_full_eval` (given as `(name, on)` pairs) on a CPU run:
    the model is evaluated whole in half precision, which the CPU kernels do not support."""
    for name, on in flags:
        if on:
            raise ITAUsageError(
                f"--{name} on the CPU: evaluating the whole model in half precision is not supported there (its "
                "matcher and resize kernels fail or return NaN); leave it out (--bf16 still trains in mixed "
                "precision on the CPU), or run on a GPU"
            )
