"""Convert original FC-CLIP / ITA checkpoints (detectron2 `.pth` files) into Hugging Face model folders.

The original models keep their weights under detectron2 names (`sem_seg_head.predictor.*`, ...). This module
reads such a checkpoint, tells ITA from FC-CLIP by its keys, infers the `ITAConfig` from the tensor shapes,
renames every key to `ITAForOpenVocabSegmentation`'s layout (strictly: nothing unplaced, nothing unfilled) and
writes a folder that `AutoModel.from_pretrained` / `AutoProcessor.from_pretrained` load, with or without this
package installed. `scripts/convert_checkpoint.py` is its command line.

Only PyTorch checkpoints are read (`torch.load(..., weights_only=True)`): a dict holding the state dict under
`model` (detectron2's `DetectionCheckpointer`) or a bare state dict. detectron2 `.pkl` files (numpy arrays,
as converted from other frameworks) are out of scope.
"""

import hashlib
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from configuration_ita import CONVNEXT_LARGE_D_320_CLIP_CONFIG, ITAConfig
from modeling_ita.modeling import ITAForOpenVocabSegmentation
from modeling_ita.remote_code import REMOTE_CODE_FILES

from ..errors import ITADataError, ITAUsageError
from . import folder as hub_folder
from .checks import WRITTEN_FILES, OutputFolderError, check_output_folder
from .folder import CATEGORY_BANK_FILE
from .remote_code import describe_folder

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_BANK_FILE",
    "CheckpointConversionError",
    "CheckpointNotFoundError",
    "ConversionResult",
    "OutputFolderError",
    "check_output_folder",
    "DROPPED_ORIGINAL_KEYS",
    "KEY_RENAMES",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_variant",
    "hf_to_original_key",
    "infer_config",
    "load_category_bank",
    "load_original_state_dict",
    "original_to_hf_key",
    "read_original_config",
    "save_category_bank",
]

# (original name, our name), most specific first. A name ending in "." is a prefix (the rest of the key is
# kept), any other name is a whole key; `{i}` is a layer index. The table reads both ways.
KEY_RENAMES = (
    ("backbone.clip_model.", "backbone.clip_model."),
    ("backbone.add_tgt_em.weight", "dominant_categories.projection"),
    ("void_embedding.weight", "void_embedding.weight"),
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    (
        "sem_seg_head.predictor.transformer_cross_attention_layers.{i}.multihead_attn.",
        "decoder.layers.{i}.cross_attention.attention.",
    ),
    ("sem_seg_head.predictor.transformer_cross_attention_layers.{i}.norm.", "decoder.layers.{i}.cross_attention.norm."),
    (
        "sem_seg_head.predictor.transformer_self_attention_layers.{i}.self_attn.",
        "decoder.layers.{i}.self_attention.attention.",
    ),
    ("sem_seg_head.predictor.transformer_self_attention_layers.{i}.norm.", "decoder.layers.{i}.self_attention.norm."),
    ("sem_seg_head.predictor.transformer_ffn_layers.{i}.", "decoder.layers.{i}.ffn."),
    ("sem_seg_head.predictor._mask_pooling_proj.", "decoder.mask_pooling_proj."),
    ("sem_seg_head.predictor.", "decoder."),
)

# Original keys with no place in the model, on purpose.
DROPPED_ORIGINAL_KEYS = {
    "criterion.empty_weight": "class weights of the original loss (ones, the no-object weight last); ITALoss "
    "builds them from the config (`no_object_weight`) for each vocabulary",
}

_SELF_ATTENTION_PREFIX = "sem_seg_head.predictor.transformer_self_attention_layers."
_PROJECTION_KEY = "backbone.add_tgt_em.weight"
_REQUIRED_KEYS = (
    "sem_seg_head.predictor.query_feat.weight",
    "sem_seg_head.predictor.query_embed.weight",
    "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
    "sem_seg_head.pixel_decoder.mask_features.weight",
    "sem_seg_head.pixel_decoder.transformer.level_embed",
)  # what config inference reads; every other key is checked by `convert_state_dict`


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(pattern if template.endswith(".") else pattern + "$")


_FORWARD = [(_template_regex(src), src, dst) for src, dst in KEY_RENAMES]
_BACKWARD = [(_template_regex(dst), dst, src) for src, dst in KEY_RENAMES]


def _rename(key: str, rules: Iterable[tuple[re.Pattern[str], str, str]]) -> str | None:
    for regex, _, target in rules:
        match = regex.match(key)
        if match:
            prefix = target.replace("{i}", match.group("i")) if "i" in match.groupdict() else target
            return prefix + key[match.end() :]
    return None


def original_to_hf_key(key: str) -> str | None:
    """Our name for an original key, or None when no rule covers it (dropped keys included)."""
    if key in DROPPED_ORIGINAL_KEYS:
        return None
    return _rename(key, _FORWARD)


def hf_to_original_key(key: str) -> str | None:
    """The original name of one of our keys (the inverse of `original_to_hf_key`), or None."""
    return _rename(key, _BACKWARD)


class CheckpointConversionError(ITADataError, ValueError):
    """The checkpoint (or the category bank, or the original config) cannot be converted: unreadable, refused for
    safety, or not fitting the model; `problems` lists every reason, one line each. A data error of every door
    (exit status 1), and a `ValueError` for Python callers."""

    def __init__(self, summary: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        super().__init__(summary + "".join(f"\n  - {line}" for line in self.problems))


class CheckpointNotFoundError(ITAUsageError, FileNotFoundError):
    """A file named for the conversion does not exist (exit status 2)."""


# Modules a checkpoint's pickle names when it would run a program or Python code on loading.
_CODE_RUNNING_MODULES = {
    "builtins",
    "code",
    "codeop",
    "commands",
    "importlib",
    "nt",
    "os",
    "posix",
    "pty",
    "runpy",
    "shutil",
    "socket",
    "subprocess",
    "sys",
    "webbrowser",
    "__builtin__",
}


# ------------------------------------------------------------------------------------------------------ reading
def _torch_file_problem(path: Path) -> str | None:
    """Why `path` cannot be a file written by `torch.save`, or None when it may be one: torch.save writes a zip
    archive (a pickle before torch 1.6, which starts with the pickle protocol byte 0x80)."""
    if not path.exists():
        return f"checkpoint {path} does not exist"
    if path.is_dir():
        return f"checkpoint {path} is a folder; give the .pth file"
    size = path.stat().st_size
    if size == 0:
        return f"checkpoint {path} is an empty file"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return None
    if head == b"PK\x03\x04":
        return (
            f"{path} starts like torch.save's zip archive but has no end: it is truncated or damaged ({size:,} bytes)"
        )
    return (
        f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive (or, before torch 1.6, a pickle), and "
        f"this file of {size:,} bytes is neither (it starts with {head!r}); was it downloaded completely?"
    )


def _torch_load(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, its refusals named: a pickle that would run code (or build Python
    objects) is refused for safety and said so, never called damaged; a truncated archive is called that."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found is not None:
            name = found.group(1)
            if name.split(".")[0] in _CODE_RUNNING_MODULES:
                raise CheckpointConversionError(
                    f"{path} is a pickle that would run code when loaded (it calls {name}); it was not loaded: "
                    "torch.load(weights_only=True) refuses it, for safety. Do not load this file unless you trust "
                    "its source and know why it runs code; convert a checkpoint of weights alone."
                ) from None
            raise CheckpointConversionError(
                f"{path} holds Python objects besides tensors (e.g. {name}); they are not read, for safety (a "
                "pickle can run any code). Where the checkpoint was made, save its weights alone: "
                "torch.save({'model': model.state_dict()}, 'weights.pth'), and convert that file."
            ) from None
        if "Weights only load failed" in text:  # an instruction the weights-only unpickler refuses
            detail = re.search(r"(Unsupported operand \d+|Unsupported class \S+)", text)
            raise CheckpointConversionError(
                f"{path} is a pickle that torch.load(weights_only=True) refuses "
                f"({detail.group(1) if detail else 'instructions other than tensors and containers'}): it could run "
                "code when loaded, so it was not loaded. Save the weights alone where the checkpoint was made: "
                "torch.save({'model': model.state_dict()}, 'weights.pth'), and convert that file."
            ) from None
        raise CheckpointConversionError(f"{path}: its pickled index cannot be read; the file is damaged") from None
    except (RuntimeError, EOFError, OSError) as error:  # a truncated or damaged archive
        raise CheckpointConversionError(
            f"{path} looks like a PyTorch checkpoint but cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); the file is probably truncated or damaged"
        ) from None


def load_original_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an original checkpoint: `{"model": state_dict, ...}` (detectron2) or a bare state dict.

    Raises `CheckpointNotFoundError` (a `FileNotFoundError`) for a missing file and `CheckpointConversionError` (a
    `ValueError`) saying what is wrong with any other: a detectron2 .pkl, a file that is no PyTorch checkpoint, a
    damaged archive, a pickle that would run code or Python objects other than tensors (which `weights_only=True`
    refuses to build, for safety).
    """
    path = Path(path)
    if path.suffix == ".pkl":
        raise CheckpointConversionError(
            f"{path}: detectron2 .pkl checkpoints (numpy arrays) are not supported. Load the model in detectron2 "
            "and save `{'model': model.state_dict()}` with torch.save, then convert that .pth file."
        )
    problem = _torch_file_problem(path)
    if problem is not None:
        raise (CheckpointNotFoundError if not path.exists() else CheckpointConversionError)(problem)
    checkpoint = _torch_load(path)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict) or not state_dict:
        raise CheckpointConversionError(
            f"{path}: expected a state dict or a dict with one under 'model', got {type(state_dict)}"
        )
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if len(not_tensors) == len(state_dict):
        raise CheckpointConversionError(
            f"{path} holds no model weights: no 'model' entry and no tensors, only {not_tensors} (a training state "
            "without the model?); give the checkpoint that holds the model's state dict (under 'model', or at its top)"
        )
    if not_tensors:
        raise CheckpointConversionError(f"{path}: these entries are not tensors: {not_tensors}")
    return state_dict


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'ita' or 'fcclip', from the keys: ITA has the text-query projection `backbone.add_tgt_em.weight` and no
    decoder self-attention; FC-CLIP the reverse."""
    missing = [key for key in _REQUIRED_KEYS if key not in state_dict]
    if missing:
        raise CheckpointConversionError("Not an FC-CLIP or ITA checkpoint: required keys are missing", missing)
    has_projection = _PROJECTION_KEY in state_dict
    has_self_attention = any(key.startswith(_SELF_ATTENTION_PREFIX) for key in state_dict)
    extra_queries = _rows("sem_seg_head.predictor.query_embed.weight", state_dict) - _rows(
        "sem_seg_head.predictor.query_feat.weight", state_dict
    )
    if has_projection and not has_self_attention and extra_queries > 0:
        return "ita"
    if not has_projection and has_self_attention and extra_queries == 0:
        return "fcclip"
    raise CheckpointConversionError(
        "The checkpoint is neither ITA nor FC-CLIP",
        [
            f"{_PROJECTION_KEY} present: {has_projection} (ITA: yes, FC-CLIP: no)",
            f"decoder self-attention ({_SELF_ATTENTION_PREFIX}*) present: {has_self_attention} (ITA: no, FC-CLIP: yes)",
            f"query_embed rows - query_feat rows: {extra_queries} (ITA: the number of text queries > 0, FC-CLIP: 0)",
        ],
    )


def _rows(key: str, state_dict: Mapping[str, torch.Tensor]) -> int:
    return state_dict[key].shape[0]


def _layer_count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of layers `prefix{i}.*` in the state dict (highest index + 1)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(match.group(1)) for match in map(pattern.match, state_dict) if match]
    return max(indices) + 1 if indices else 0


def _clip_shapes(clip_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        clip = open_clip.model.CLIP(
            embed_dim=clip_config["embed_dim"],
            vision_cfg=dict(clip_config["vision_cfg"]),
            text_cfg=dict(clip_config["text_cfg"]),
        )
    return {f"backbone.clip_model.{key}": tuple(value.shape) for key, value in clip.state_dict().items()}


def _clip_differences(state_dict: Mapping[str, torch.Tensor], clip_config: Mapping[str, Any]) -> list[str]:
    expected = _clip_shapes(clip_config)
    found = {key: tuple(value.shape) for key, value in state_dict.items() if key.startswith("backbone.clip_model.")}
    problems = [f"missing {key}" for key in sorted(set(expected) - set(found))]
    problems += [f"unexpected {key}" for key in sorted(set(found) - set(expected))]
    problems += [
        f"{key}: {list(found[key])} vs {list(expected[key])}"
        for key in sorted(set(found) & set(expected))
        if found[key] != expected[key]
    ]
    return problems


# Mask2Former builds its deformable encoder with 4 sampling points whatever the config says (no config key sets
# them), and gives the pixel decoder and the decoder the same number of heads (`MODEL.MASK_FORMER.NHEADS`).
ORIGINAL_DEFORMABLE_POINTS = 4

# detectron2 config keys -> ITAConfig fields, for `read_original_config`.
_ORIGINAL_CONFIG_KEYS = {
    ("MODEL", "MASK_FORMER", "NHEADS"): ("decoder_attention_heads", "pixel_decoder_attention_heads"),
    ("MODEL", "MASK_FORMER", "DIM_FEEDFORWARD"): ("decoder_ffn_dim",),
    ("MODEL", "MASK_FORMER", "NUM_OBJECT_QUERIES"): ("num_queries",),
    ("MODEL", "MASK_FORMER", "DROPOUT"): ("decoder_dropout", "pixel_decoder_dropout"),
    ("MODEL", "MASK_FORMER", "CLASS_WEIGHT"): ("class_weight",),
    ("MODEL", "MASK_FORMER", "MASK_WEIGHT"): ("mask_weight",),
    ("MODEL", "MASK_FORMER", "DICE_WEIGHT"): ("dice_weight",),
    ("MODEL", "MASK_FORMER", "NO_OBJECT_WEIGHT"): ("no_object_weight",),
    ("MODEL", "MASK_FORMER", "TRAIN_NUM_POINTS"): ("train_num_points",),
    ("MODEL", "MASK_FORMER", "OVERSAMPLE_RATIO"): ("oversample_ratio",),
    ("MODEL", "MASK_FORMER", "IMPORTANCE_SAMPLE_RATIO"): ("importance_sample_ratio",),
    ("MODEL", "MASK_FORMER", "DEEP_SUPERVISION"): ("deep_supervision",),
    ("MODEL", "SEM_SEG_HEAD", "TRANSFORMER_ENC_LAYERS"): ("pixel_decoder_encoder_layers",),
    ("MODEL", "FC_CLIP", "GEOMETRIC_ENSEMBLE_ALPHA"): ("ensemble_alpha",),
    ("MODEL", "FC_CLIP", "GEOMETRIC_ENSEMBLE_BETA"): ("ensemble_beta",),
    ("MODEL", "FC_CLIP", "ENSEMBLE_ON_VALID_MASK"): ("ensemble_on_valid_mask",),
}


def read_original_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`ITAConfig` values from an original detectron2 YAML config (FC-CLIP's or ITA's `configs/...yaml`), following
    its `_BASE_` files. Only keys the file (or a base) sets are returned; `DEC_LAYERS` counts the initial
    prediction, so `decoder_layers` is one less."""
    import yaml

    def load(file: str | os.PathLike[str], seen: frozenset[Path]) -> dict[str, Any]:
        file = Path(file).resolve()
        if file in seen:
            raise CheckpointConversionError(f"{file}: _BASE_ files form a cycle")
        if not file.is_file():
            raise CheckpointNotFoundError(f"original config {file} not found (named as _BASE_ or given directly)")
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        base = data.pop("_BASE_", None)
        merged = load(file.parent / base, seen | {file}) if base else {}
        return _deep_merge(merged, data)

    data = load(path, frozenset())
    values: dict[str, Any] = {}
    for keys, fields in _ORIGINAL_CONFIG_KEYS.items():
        node: Any = data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            values.update(dict.fromkeys(fields, node))
    dec_layers = data.get("MODEL", {}).get("MASK_FORMER", {}).get("DEC_LAYERS")
    if dec_layers is not None:
        values["decoder_layers"] = dec_layers - 1
    return values


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def infer_config(
    state_dict: Mapping[str, torch.Tensor],
    clip_config: Mapping[str, Any] | None = None,
    original_config: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[ITAConfig, str, dict[str, str]]:
    """The `ITAConfig` of an original checkpoint, its variant ('ita' or 'fcclip') and where each value came from.

    Sizes come from tensor shapes: queries, text queries, layers, widths. The CLIP is open_clip
    `convnext_large_d_320` when its shapes say so; any other CLIP needs `clip_config`. The deformable attention's
    `attention_weights` rows are heads x levels x points, which shapes alone cannot split: the original fixes the
    points at 4 and uses one head count for both decoders, and that is what is read unless `overrides` or
    `original_config` (values from `read_original_config`) say otherwise. The ranking view of ITA takes the CLIP's
    own image size. Values that leave no trace in the checkpoint (templates, ensemble weights, loss weights) come
    from `overrides`, then `original_config`, then the `ITAConfig` defaults (the original's). Returns
    `(config, variant, provenance)` with `provenance` = {field: where its value came from}.
    """
    variant = detect_variant(state_dict)
    if clip_config is None:
        differences = _clip_differences(state_dict, CONVNEXT_LARGE_D_320_CLIP_CONFIG)
        if differences:
            raise CheckpointConversionError(
                "The CLIP weights (backbone.clip_model.*) are not open_clip convnext_large_d_320; give the CLIP's "
                "open_clip model config with --clip-config JSON (keys embed_dim, vision_cfg, text_cfg). Differences",
                differences,
            )
        clip_config = CONVNEXT_LARGE_D_320_CLIP_CONFIG

    predictor, pixel_decoder = "sem_seg_head.predictor.", "sem_seg_head.pixel_decoder."
    query_feat = state_dict[predictor + "query_feat.weight"]
    shapes: dict[str, Any] = dict(
        num_queries=query_feat.shape[0],
        num_dominant_categories=_rows(predictor + "query_embed.weight", state_dict) - query_feat.shape[0],
        decoder_self_attention=variant == "fcclip",
        hidden_dim=query_feat.shape[1],
        decoder_layers=_layer_count(state_dict, predictor + "transformer_cross_attention_layers."),
        num_feature_levels=_rows(pixel_decoder + "transformer.level_embed", state_dict),
        pixel_decoder_dim=_rows(pixel_decoder + "input_proj.0.0.weight", state_dict),
        mask_dim=_rows(pixel_decoder + "mask_features.weight", state_dict),
        pixel_decoder_encoder_layers=_layer_count(state_dict, pixel_decoder + "transformer.encoder.layers."),
    )
    ffn = predictor + "transformer_ffn_layers.0.linear1.weight"
    if ffn in state_dict:
        shapes["decoder_ffn_dim"] = _rows(ffn, state_dict)
    encoder_layer = pixel_decoder + "transformer.encoder.layers.0."
    if encoder_layer + "linear1.weight" in state_dict:
        shapes["pixel_decoder_ffn_dim"] = _rows(encoder_layer + "linear1.weight", state_dict)

    original_config = dict(original_config or {})
    conflicts = [
        f"{name}: the original config says {original_config[name]}, the checkpoint's shapes {value}"
        for name, value in shapes.items()
        if name in original_config and original_config[name] != value
    ]
    if conflicts:
        raise CheckpointConversionError("The original config does not describe this checkpoint", conflicts)

    values: dict[str, Any] = {"clip_config": clip_config, **shapes}
    provenance = dict.fromkeys(shapes, "tensor shapes")
    provenance["clip_config"] = (
        "--clip-config" if clip_config is not CONVNEXT_LARGE_D_320_CLIP_CONFIG else "tensor shapes"
    )
    for name, value in original_config.items():
        if name not in shapes:
            values[name], provenance[name] = value, "original config"
    for name, value in overrides.items():
        values[name], provenance[name] = value, "override"

    weights = encoder_layer + "self_attn.attention_weights.weight"
    if weights in state_dict:
        _split_deformable_samples(_rows(weights, state_dict), values, provenance)
    if "decoder_attention_heads" not in values:
        values["decoder_attention_heads"] = values["pixel_decoder_attention_heads"]
        provenance["decoder_attention_heads"] = "the pixel decoder's heads (the original uses one head count for both)"
    if "dominant_category_image_size" not in values:
        values["dominant_category_image_size"] = clip_config["vision_cfg"]["image_size"]
        provenance["dominant_category_image_size"] = "the CLIP's image size (the original's CLIP transform)"
    config = ITAConfig(**values)
    for name in ("prompt_templates", "train_vocabulary", "ensemble_alpha", "ensemble_beta", "group_norm_groups"):
        provenance.setdefault(name, "ITAConfig default (the original's)")

    if "criterion.empty_weight" in state_dict:
        trained_classes = state_dict["criterion.empty_weight"].shape[0] - 1
        if trained_classes != len(config.train_vocabulary):
            raise CheckpointConversionError(
                "The training vocabulary does not match the checkpoint",
                [
                    f"criterion.empty_weight says {trained_classes} training classes, the config's train_vocabulary "
                    f"has {len(config.train_vocabulary)}; give the right one with --config-overrides "
                    "'{\"train_vocabulary\": [...]}' (it decides the geometric ensemble's seen classes)"
                ],
            )
    return config, variant, provenance


def _split_deformable_samples(samples: int, values: dict[str, Any], provenance: dict[str, str]) -> None:
    """Heads and points of the deformable attention from its `attention_weights` rows (heads x levels x points)."""
    levels = values["num_feature_levels"]
    heads, points = values.get("pixel_decoder_attention_heads"), values.get("pixel_decoder_num_points")
    if heads is None and points is None:
        points = ORIGINAL_DEFORMABLE_POINTS
        provenance["pixel_decoder_num_points"] = "the original's fixed 4 sampling points"
    if heads is None:
        heads = samples // (levels * points)
        provenance["pixel_decoder_attention_heads"] = (
            f"tensor shapes ({samples} attention weights / {levels} levels / {points} points)"
        )
    elif points is None:
        points = samples // (levels * heads)
        provenance["pixel_decoder_num_points"] = (
            f"tensor shapes ({samples} attention weights / {levels} levels / {heads} heads)"
        )
    if heads * levels * points != samples:
        raise CheckpointConversionError(
            "Cannot split the deformable attention's sampling weights into heads x levels x points",
            [
                f"{samples} attention weights is not {heads} heads x {levels} levels x {points} points; give "
                "pixel_decoder_attention_heads or pixel_decoder_num_points in --config-overrides"
            ],
        )
    values["pixel_decoder_attention_heads"], values["pixel_decoder_num_points"] = heads, points


# --------------------------------------------------------------------------------------------------- mapping
def expected_state_dict_shapes(config: ITAConfig) -> dict[str, tuple[int, ...]]:
    """{key: shape} of `ITAForOpenVocabSegmentation(config)`'s state dict, built on the meta device."""
    with torch.device("meta"):
        model = ITAForOpenVocabSegmentation(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Rename an original state dict to our layout, strictly.

    `expected_shapes` is the model's `{key: shape}`. Raises `CheckpointConversionError` listing every source key
    that no rule covers or whose new name the model lacks, every model key left unfilled and every shape
    mismatch. Knowingly dropped keys (`DROPPED_ORIGINAL_KEYS`) are skipped. The tensors are not copied.
    """
    converted: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for key, value in state_dict.items():
        if key in DROPPED_ORIGINAL_KEYS:
            continue
        new_key = original_to_hf_key(key)
        if new_key is None:
            problems.append(f"unmapped source key {key} {list(value.shape)}")
        elif new_key not in expected_shapes:
            problems.append(f"source key {key} {list(value.shape)} -> {new_key}, which the model does not have")
        elif new_key in converted:
            problems.append(f"source keys {sources[new_key]} and {key} both map to {new_key}")
        else:
            if tuple(value.shape) != expected_shapes[new_key]:
                problems.append(
                    f"shape mismatch: {key} {list(value.shape)} -> {new_key} expects {list(expected_shapes[new_key])}"
                )
            converted[new_key], sources[new_key] = value, key
    for key in expected_shapes:
        if key not in converted:
            original = hf_to_original_key(key)
            problems.append(f"model key {key} {list(expected_shapes[key])} is not filled (expected from {original})")
    if problems:
        raise CheckpointConversionError(f"The checkpoint does not fit the model ({len(problems)} problems)", problems)
    return converted


# ----------------------------------------------------------------------------------------------- category bank
def load_category_bank(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a category bank -> `{name: [D] tensor}` in file order, dtype kept.

    Reads the original ITA `Category/category_tensor.pt` (a dict name -> fp16 `[1, D]`) or the
    `category_bank.safetensors` of a converted folder. Activate it with
    `model.vocabulary_encoder.set_category_bank(bank)`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "names" not in metadata:
                raise CheckpointConversionError(f"{path}: not a category bank (no 'names' in the safetensors metadata)")
            names = json.loads(metadata["names"])
            embeddings = handle.get_tensor("embeddings")
        if len(names) != embeddings.shape[0]:
            raise CheckpointConversionError(f"{path}: {len(names)} names for {embeddings.shape[0]} embeddings")
        return dict(zip(names, embeddings))
    problem = _torch_file_problem(path)
    if problem is not None:
        raise (CheckpointNotFoundError if not path.exists() else CheckpointConversionError)(
            problem.replace("checkpoint", "category bank", 1)
        )
    bank = _torch_load(path)
    if not isinstance(bank, dict) or not bank:
        raise CheckpointConversionError(f"{path}: expected a dict name -> embedding, got {type(bank).__name__}")
    result = {}
    for name, value in bank.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointConversionError(f"{path}: entry {name!r} is not a name with a tensor")
        if value.numel() != value.shape[-1]:
            raise CheckpointConversionError(
                f"{path}: the embedding of {name!r} has shape {list(value.shape)}, expected [1, D] or [D]"
            )
        result[name] = value.reshape(-1)
    if len({value.shape[0] for value in result.values()}) != 1:
        raise CheckpointConversionError(f"{path}: the embeddings differ in size")
    return result


def save_category_bank(
    bank: Mapping[str, torch.Tensor], path: str | os.PathLike[str], source: object = None
) -> str | os.PathLike[str]:
    """Write `{name: [D] or [1, D] tensor}` as one safetensors file: `embeddings` [N, D], names in metadata."""
    names = list(bank)
    embeddings = torch.stack([bank[name].reshape(-1) for name in names]).contiguous()
    metadata = {"format": "pt", "names": json.dumps(names)}
    if source is not None:
        metadata["source"] = str(source)
    save_file({"embeddings": embeddings}, str(path), metadata=metadata)
    return path


# ---------------------------------------------------------------------------------------------- whole folder
@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote."""

    output_dir: Path
    variant: str
    config: ITAConfig
    source: str
    source_sha256: str
    num_tensors: int
    num_parameters: int
    dropped_keys: list[str] = field(default_factory=list)
    category_bank_size: int | None = None
    verified: bool = False
    provenance: dict[str, str] = field(default_factory=dict)
    stored_vocabularies: dict[str, str] = field(default_factory=dict)  # label -> file in the folder


def _sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _distinct_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory: copy the second and later users of a storage."""
    seen, result = set(), {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        result[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    clip_config: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    category_bank: str | os.PathLike[str] | None = None,
    verify: bool = True,
    repo_id: str | None = None,
    original_config: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[str], object] | None = None,
    vocabularies: Mapping[str, Sequence[str]] | None = None,
) -> ConversionResult:
    """Convert an original FC-CLIP or ITA checkpoint into a model folder; returns a `ConversionResult`.

    The folder holds `config.json`, `model.safetensors`, the processor configuration, the model's source files
    (so `AutoModel.from_pretrained(folder, trust_remote_code=True)` works without this package), a model card
    and, with `category_bank` (ITA's `Category/category_tensor.pt`), `category_bank.safetensors`. With `verify`
    the folder is reloaded and every tensor compared with the checkpoint's. `repo_id` only names the repository
    in the model card's examples.

    `vocabularies` (label -> class names, e.g. the benchmarks' lists) are encoded and stored in the folder
    (`vocabularies/<key>.safetensors`, keyed as the disk cache: see `ITAForOpenVocabSegmentation.store_vocabularies`),
    so that the first run of a fresh machine with one of them needs no text-tower forward.

    `output_dir` must be new or empty unless `overwrite` (then the files above are replaced, others left alone),
    and never a place where a file written would replace an input: raises `OutputFolderError` (a
    `FileExistsError`) before reading anything. `progress`, a callable taking a message, hears of each step
    (reading a large checkpoint and verifying it are the slow ones).
    """
    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    progress = progress or logger.info
    written = WRITTEN_FILES | set(REMOTE_CODE_FILES)
    check_output_folder(output_dir, overwrite, [checkpoint, category_bank, original_config], written)
    if original_config is not None and not Path(original_config).is_file():
        raise CheckpointNotFoundError(f"original config {original_config} not found")
    if category_bank is not None and not Path(category_bank).exists():
        raise CheckpointNotFoundError(f"category bank {category_bank} does not exist")
    size = checkpoint.stat().st_size if checkpoint.is_file() else 0
    progress(f"Reading {checkpoint} ({size / 2**20:,.0f} MiB) with torch.load(weights_only=True)")
    state_dict = load_original_state_dict(checkpoint)
    original_values = read_original_config(original_config) if original_config is not None else None
    progress(f"Inferring the configuration from the shapes of {len(state_dict)} tensors and mapping their names")
    config, variant, provenance = infer_config(
        state_dict, clip_config=clip_config, original_config=original_values, **(config_overrides or {})
    )
    converted = convert_state_dict(state_dict, expected_state_dict_shapes(config))

    bank = None
    if category_bank is not None:
        if config.num_dominant_categories == 0:
            raise CheckpointConversionError(
                f"{category_bank}: a category bank serves ITA's text queries; this checkpoint is FC-CLIP"
            )
        bank = load_category_bank(category_bank)
        dim = next(iter(bank.values())).shape[0]
        if dim != config.clip_embed_dim:
            raise CheckpointConversionError(
                f"{category_bank}: embeddings of size {dim}, the CLIP's are {config.clip_embed_dim}"
            )

    progress(f"Writing {variant} ({len(converted)} tensors) to {output_dir}")
    output_dir.mkdir(parents=True, exist_ok=True)
    hub_folder.prepare_config_for_folder(config)
    config.save_pretrained(output_dir)
    save_file(_distinct_storage(converted), str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    hub_folder.save_processor(output_dir, config)
    describe_folder(output_dir)  # the source files, and the auto_map / custom_pipelines entries naming them
    if bank is not None and category_bank is not None:  # the one comes with the other
        save_category_bank(bank, output_dir / CATEGORY_BANK_FILE, source=Path(category_bank).name)

    result = ConversionResult(
        output_dir=output_dir,
        variant=variant,
        config=config,
        source=checkpoint.name,
        source_sha256=_sha256(checkpoint),
        num_tensors=len(converted),
        num_parameters=sum(value.numel() for value in converted.values()),
        dropped_keys=sorted(key for key in state_dict if key in DROPPED_ORIGINAL_KEYS),
        category_bank_size=None if bank is None else len(bank),
        provenance=provenance,
    )
    model = None
    if verify:
        progress(f"Verifying: reloading {output_dir} and comparing every tensor with the checkpoint's")
        model = verify_folder(output_dir, converted)
        result.verified = True
    if vocabularies:
        if model is None:
            model = ITAForOpenVocabSegmentation.from_pretrained(output_dir)
        for label, names in vocabularies.items():
            prompts = sum(len(name.split(",")) for name in names) * len(config.prompt_templates)
            progress(f"Encoding and storing the vocabulary {label} ({len(names)} classes, {prompts:,} prompts)")
            (path,) = model.store_vocabularies(output_dir, {label: names})
            result.stored_vocabularies[label] = str(Path(path).relative_to(output_dir))
    hub_folder.write_model_card(output_dir, result, repo_id=repo_id)
    return result


def verify_folder(folder: str | os.PathLike[str], converted: Mapping[str, torch.Tensor]) -> ITAForOpenVocabSegmentation:
    """Reload `folder` with `from_pretrained` and check that every tensor equals the converted one."""
    model = ITAForOpenVocabSegmentation.from_pretrained(folder)
    loaded = model.state_dict()
    different = [
        key
        for key, value in converted.items()
        if key not in loaded or not torch.equal(loaded[key].to(value.dtype), value)
    ]
    if different:
        raise CheckpointConversionError(f"{folder}: reloaded tensors differ from the checkpoint's", different)
    return model
