"""Loading a model for use: the one loader of the command line, the pipeline, the evaluation and fine-tuning.

transformers' `from_pretrained` fills the weights a checkpoint lacks with random values and only logs a report,
so a broken folder (say `decoder_layers` raised in its config.json) segments, wrongly, with exit status 0. Here a
checkpoint with missing, unexpected or mismatched weights stops the load with an error naming them. The usual
mistakes get messages that say what they are before anything heavy runs: a model folder that does not exist, a
Hub id that is not in the cache when offline, a device the machine does not have.
"""

import json
import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .modeling import ITAForOpenVocabSegmentation

__all__ = [
    "ModelLoadingError",
    "check_device",
    "check_model_location",
    "check_model_type",
    "load_segmentation_model",
]

# How many names of missing or unexpected weights an error lists before counting the rest.
_SHOWN_KEYS = 12


class ModelLoadingError(Exception):
    """The model cannot be loaded as it is; the message says why.

    Not an `OSError` or `ValueError` on purpose: transformers' pipeline factory catches those while it tries
    model classes one after another, and would bury the message in a traceback dump.
    """


def check_device(name: str | torch.device | None = None) -> torch.device:
    """The `torch.device` called `name` (None or `"auto"`: CUDA when available, else the CPU), after checking
    that this machine has it; raises `ValueError` saying what is missing."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name!r} is not a torch device (cpu, cuda, cuda:1, mps, ...): {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r}: CUDA is not available on this machine (no GPU, or a CPU-only build of torch "
                f"{torch.__version__}); use the CPU (cpu) instead"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r}: Apple's MPS backend is not available on this machine")
    return device


def _looks_like_a_path(name: str) -> bool:
    """A string that cannot be a Hub id `user/model`: absolute, relative from `.`/`~`, or with several parts."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or name.endswith("/")
        or (os.sep != "/" and os.sep in name)
    )


def check_model_location(name_or_path: str | os.PathLike[str]) -> None:
    """Check, without loading anything, that `name_or_path` names a model: an existing folder with a
    `config.json`, or a Hub id (which, offline, must be in the local cache). Raises `ModelLoadingError`."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            content = sorted(child.name for child in path.iterdir())[:8]
            raise ModelLoadingError(
                f"model folder {name} has no config.json, so it is not a saved model (it holds {content or 'nothing'}); "
                "give the folder that save_pretrained, scripts/train.py or scripts/convert_checkpoint.py wrote"
            )
        check_model_type(path / "config.json", name)
        return
    if path.exists():
        raise ModelLoadingError(
            f"{name} is a file, not a model folder; give the folder holding config.json, or a Hub id"
        )
    if _looks_like_a_path(name):
        raise ModelLoadingError(
            f"model folder {name} does not exist: give a folder saved with save_pretrained (or by ita-convert, "
            "ita-train, ita-export) or a Hugging Face Hub id such as owner/name"
        )
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelLoadingError(f"{name!r} is neither an existing model folder nor a valid Hub model id") from None
    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        check_model_type(Path(cached), name)
    elif hf_constants.HF_HUB_OFFLINE:
        raise ModelLoadingError(
            f"{name!r} is not a folder here, and as a Hub model id it is not in the local cache "
            f"({hf_constants.HF_HUB_CACHE}); the Hub cannot be asked because HF_HUB_OFFLINE is set"
        )


def check_model_type(config_file: Path, name: str) -> None:
    """Refuse a config.json that is not JSON or names another model type than ITA's (a BERT folder given as the
    model): `ModelLoadingError` naming the folder and the model type it holds, before the config is built. A
    config without `model_type` passes (ITAConfig reads it with its defaults)."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelLoadingError(
            f"model {name}: its config.json cannot be read ({error}); save the model again or give another folder"
        ) from None
    if not isinstance(config, dict):
        raise ModelLoadingError(f"model {name}: its config.json is not a JSON object; save the model again")
    model_type = config.get("model_type")  # none: ITAConfig's defaults (the checkpoint decides)
    if model_type is not None and model_type != ITAForOpenVocabSegmentation.config_class.model_type:
        what = f"a {model_type!r} model" if isinstance(model_type, str) and model_type else f"model_type {model_type!r}"
        raise ModelLoadingError(
            f"model folder {name} holds {what}, not ITA/FC-CLIP (its config.json needs model_type "
            f"{ITAForOpenVocabSegmentation.config_class.model_type!r}): give an ITA model folder or Hub id"
        )


def _weights_refused(name: str, error: pickle.UnpicklingError) -> ModelLoadingError:
    """What an `UnpicklingError` of the weights means: a pickle that `torch.load(weights_only=True)` refused
    because it would run code (or build objects other than tensors), or a file that is damaged."""
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        what = f" (it calls {found.group(1)})" if found else ""
        return ModelLoadingError(
            f"the weights of {name} are a pickled checkpoint that would run code when loaded{what}, so they were "
            "not loaded (torch.load(weights_only=True) refuses it). Load only checkpoints from a source you trust; "
            "if you trust this one, re-save its weights as safetensors where it was made (model.save_pretrained)"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ModelLoadingError(f"the weights of {name} cannot be read, the file is damaged: {first_line}")


def _listed(keys: Iterable[Any]) -> str:
    keys = sorted(str(key) for key in keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def load_segmentation_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> ITAForOpenVocabSegmentation:
    """Load `ITAForOpenVocabSegmentation` from a folder or Hub id, refusing any checkpoint that does not fill the
    model exactly.

    Args:
        device: where to put the model (`check_device`'s names); None leaves it where `from_pretrained` puts it.
        dtype: a `torch.dtype` or its name (`"bfloat16"`); None keeps the checkpoint's.
        kwargs: passed to `from_pretrained` (`config=`, `revision=`, ...).

    Returns:
        The model, in eval mode.

    Raises:
        ModelLoadingError: no such folder or Hub model, a file that is not a model, a folder of another model type
            (BERT), a config.json value of the wrong type, a pickled checkpoint that would run code, or weights
            missing from the checkpoint, left over in it, or of another shape (each named).
        ValueError: an unknown or unavailable device.
    """
    if device is not None and not isinstance(device, torch.device):
        device = check_device(device)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    check_model_location(name_or_path)
    # Mismatched shapes are loaded as "ignored" so that the report below names them with the others
    # (transformers would raise pointing at a table it logged); the model is refused all the same.
    kwargs.setdefault("ignore_mismatched_sizes", True)
    try:
        loaded = ITAForOpenVocabSegmentation.from_pretrained(
            name_or_path, dtype=dtype, output_loading_info=True, **kwargs
        )
        model, info = cast(tuple[ITAForOpenVocabSegmentation, dict[str, Any]], loaded)
    except OSError as error:  # unreadable or truncated weight files, no weights at all, Hub errors
        raise ModelLoadingError(f"cannot load the model {os.fspath(name_or_path)}: {error}") from error
    except pickle.UnpicklingError as error:  # a pytorch_model.bin that weights_only refuses, or a damaged one
        raise _weights_refused(os.fspath(name_or_path), error) from error
    except RuntimeError as error:  # torch.load of a truncated or damaged pytorch_model.bin
        if "PytorchStreamReader" in str(error) or "corrupted" in str(error):
            first_line = str(error).strip().splitlines()[0]
            raise ModelLoadingError(
                f"the weights of {os.fspath(name_or_path)} cannot be read, the file is damaged (truncated or not "
                f"a PyTorch checkpoint): {first_line.split('. This is')[0]}; save or download the model again"
            ) from error
        raise
    except ValueError as error:
        if str(error).startswith("ITAConfig."):  # a config.json value ITAConfig refuses (`validate_ita`)
            raise ModelLoadingError(f"the config.json of {os.fspath(name_or_path)} is invalid: {error}") from error
        raise
    problems = []
    if info.get("missing_keys"):
        problems.append(
            f"{len(info['missing_keys'])} weight(s) missing from the checkpoint: {_listed(info['missing_keys'])}"
        )
    if info.get("unexpected_keys"):
        problems.append(
            f"{len(info['unexpected_keys'])} weight(s) in the checkpoint that the model does not have: "
            f"{_listed(info['unexpected_keys'])}"
        )
    if info.get("mismatched_keys"):
        shapes = [
            f"{key} (checkpoint {tuple(saved)}, model {tuple(expected)})"
            for key, saved, expected in info["mismatched_keys"]
        ]
        problems.append(f"{len(shapes)} weight(s) of another shape: {_listed(shapes)}")
    problems += [str(message) for message in info.get("error_msgs") or []]
    if problems:
        raise ModelLoadingError(
            f"the checkpoint in {os.fspath(name_or_path)} does not match its config.json, so part of the model would "
            "be random: " + "; ".join(problems) + ". Was config.json edited after the weights were saved?"
        )
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # transformers types its to() as the wrapper of Module.to
    model.eval()  # type: ignore[no-untyped-call]  # transformers' eval() is untyped
    return model
