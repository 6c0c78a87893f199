"""Checks of where a command's model and device are, made before torch is imported: a missing model folder, a
folder that holds no ITA model, a Hub id that cannot be reached offline, a device this machine does not have.

Every command line calls `check_model_argument` and `check_device_argument` on its `--model` and `--device` right
after parsing, so that these usage errors answer in well under a second (standard library only: no torch, no
transformers, no huggingface_hub here). Each raises `ITAUsageError` with the value and the way out.
"""

import json
import os
import re
import sys
from pathlib import Path

from .errors import ITAUsageError

__all__ = [
    "ITA_MODEL_TYPES",
    "check_device_argument",
    "check_model_argument",
    "has_nvidia_driver",
    "hub_cache_folder",
    "hub_offline",
    "looks_like_hub_id",
]

# `model_type` of the folders this project loads: `ITAConfig.model_type` (configuration_ita.py). FC-CLIP folders
# are ITA folders too (`ITAConfig.fcclip()`); ONNX-exported folders keep the model's config.json.
ITA_MODEL_TYPES = ("ita",)

# A Hub repository id: `name` or `owner/name`, letters, digits, `-`, `_`, `.`; no `--` or `..`, at most 96 long
# (huggingface_hub's `validate_repo_id`).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")

# torch's device types (`torch.device` accepts these, optionally `type:index`).
_DEVICE_TYPES = (
    "cpu",
    "cuda",
    "mps",
    "xpu",
    "xla",
    "meta",
    "hpu",
    "mtia",
    "ipu",
    "mkldnn",
    "opengl",
    "opencl",
    "ideep",
    "hip",
    "ve",
    "fpga",
    "maia",
    "lazy",
    "vulkan",
    "privateuseone",
)
_DEVICE = re.compile(r"^(?P<type>[a-z]+)(?::(?P<index>\d+))?$")

_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """Whether the Hugging Face Hub may not be reached (`HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` set true)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def hub_cache_folder() -> Path:
    """The folder of huggingface_hub's model cache, found as huggingface_hub finds it (`HF_HUB_CACHE`,
    `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`, `XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def looks_like_hub_id(value: str) -> bool:
    """Whether `value` has the form of a Hub model id (`name` or `owner/name`)."""
    return len(value) <= 96 and "--" not in value and ".." not in value and _HUB_ID.match(value) is not None


def _path_like(value: str) -> bool:
    """Whether `value` is meant as a local path rather than a Hub id: it starts with `.`, `/`, `~` or a drive,
    has more than one separator (or a backslash), is not of a Hub id's form, or its first part exists here."""
    if value.startswith((".", "/", "~")) or "\\" in value or (os.altsep and os.altsep in value):
        return True
    if re.match(r"^[A-Za-z]:", value):  # a Windows drive
        return True
    if value.count("/") > 1 or not looks_like_hub_id(value):
        return True
    return os.path.exists(value.split("/", 1)[0]) if "/" in value else False


def _cached_on_hub(repo_id: str) -> bool:
    """Whether the model cache holds a snapshot of `repo_id` with a config.json."""
    folder = hub_cache_folder() / ("models--" + repo_id.replace("/", "--"))
    snapshots = folder / "snapshots"
    try:
        return any((snapshot / "config.json").is_file() for snapshot in snapshots.iterdir())
    except OSError:
        return False


def _check_model_folder(value: str, folder: Path) -> None:
    """`folder` (given as `value`) exists: refuse a file, a folder without config.json, a config that is not
    JSON, and a config of another model type."""
    if not folder.is_dir():
        raise ITAUsageError(
            f"model {value} is a file, not a folder: give the folder that holds the model's config.json and "
            f"weights (one saved with save_pretrained, an ita-convert or ita-export output) or a Hub id"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        inside = sorted(
            child.name for child in _children(folder) if child.is_dir() and (child / "config.json").is_file()
        )
        hint = (
            f"; the model folders inside it: {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}"
            if inside
            else ": give the folder that holds the model's config.json and weights (one saved with "
            "save_pretrained, an ita-convert or ita-export output) or a Hub id"
        )
        raise ITAUsageError(f"model folder {value} has no config.json, so it is not a saved model{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ITAUsageError(
            f"model folder {value}: its config.json cannot be read ({error}); save the model again or give "
            f"another folder"
        ) from None
    if not isinstance(config, dict):
        raise ITAUsageError(f"model folder {value}: its config.json is not a JSON object; save the model again")
    model_type = config.get("model_type")  # none: ITAConfig's defaults (the checkpoint decides)
    if model_type is not None and model_type not in ITA_MODEL_TYPES:
        what = f"a {model_type!r} model" if isinstance(model_type, str) and model_type else f"model_type {model_type!r}"
        raise ITAUsageError(
            f"model folder {value} holds {what}, not ITA/FC-CLIP (its config.json needs model_type "
            f"{ITA_MODEL_TYPES[0]!r}): give an ITA model folder or Hub id"
        )


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def check_model_argument(value: str) -> None:
    """Refuse a `--model` value that cannot be an ITA model, before torch is imported (`ITAUsageError`):

    - a path (it starts with `.`, `/` or `~`, has more than one `/`, or its first part exists here) that does not
      exist;
    - an existing file, or a folder without config.json, or whose config.json is not an ITA model's (a BERT
      folder); an ONNX-exported folder passes (it keeps the model's config.json);
    - a value that is neither a path nor of a Hub id's form;
    - a Hub id while the Hub may not be reached (`HF_HUB_OFFLINE=1`) that the local cache does not hold.

    A Hub id that may be downloaded passes: whether it exists is the Hub's to say.
    """
    if not isinstance(value, str) or not value.strip():
        raise ITAUsageError("--model is empty: give a model folder or a Hugging Face Hub model id")
    expanded = Path(os.path.expanduser(value))
    if expanded.exists():
        _check_model_folder(value, expanded)
        return
    if _path_like(value):
        explicit = value.startswith((".", "/", "~")) or "/" in value or "\\" in value
        if not explicit:
            raise ITAUsageError(
                f"model {value!r} is neither a folder here nor a Hugging Face Hub id (owner/name): give a model "
                f"folder or a Hub id"
            )
        parent = expanded.parent
        where = f" (nor does {parent})" if str(parent) not in ("", ".") and not parent.exists() else ""
        raise ITAUsageError(
            f"model folder {value} does not exist{where}: give a folder saved with save_pretrained (or by "
            f"ita-convert, ita-train, ita-export) or a Hugging Face Hub id such as owner/name"
        )
    if hub_offline() and not _cached_on_hub(value):
        raise ITAUsageError(
            f"model {value} is not a folder here, and as a Hub id it is not in the local cache ({hub_cache_folder()}) "
            f"while HF_HUB_OFFLINE=1 forbids downloading it: give a model folder, or unset HF_HUB_OFFLINE to "
            f"download it"
        )


def has_nvidia_driver() -> bool:
    """Whether this machine has a CUDA-capable driver loaded (NVIDIA's, or ROCm's, which torch calls cuda too)."""
    return any(os.path.exists(path) for path in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")) or (
        sys.platform == "win32"
        and os.path.exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll"))
    )


def check_device_argument(value: str | None) -> None:
    """Refuse a `--device` value this machine cannot run on, before torch is imported (`ITAUsageError`): a name
    that is not a torch device (`gpu`, `cuda:x`), `cuda`/`cuda:N` without an NVIDIA (or ROCm) driver, `mps` off
    macOS. None and `auto` (the commands' defaults) pass; so do devices whose presence only torch can tell (xpu)."""
    if value is None:
        return
    name = value.strip().lower()
    if name in ("", "auto"):
        return
    match = _DEVICE.match(name)
    if match is None or match["type"] not in _DEVICE_TYPES:
        hint = " (did you mean cuda?)" if name.startswith("gpu") else ""
        raise ITAUsageError(
            f"--device {value!r} is not a torch device{hint}: use cpu, cuda, cuda:N (N the GPU's index), mps "
            f"(Apple silicon) or auto"
        )
    kind = match["type"]
    if kind == "cuda" and not has_nvidia_driver():
        raise ITAUsageError(
            f"--device {value}: this machine has no NVIDIA driver (no /proc/driver/nvidia, no /dev/nvidiactl), "
            f"so CUDA cannot be used: use --device cpu (or leave --device out to pick the best one)"
        )
    if kind == "mps" and sys.platform != "darwin":
        raise ITAUsageError(
            f"--device {value}: mps is Apple's GPU backend and runs only on macOS; this is {sys.platform}: use "
            f"--device cpu{' or cuda' if has_nvidia_driver() else ''}"
        )
