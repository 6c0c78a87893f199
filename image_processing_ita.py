"""Image processor of ITA and FC-CLIP.

Preprocessing reproduces the test-time input of the original (detectron2) code: shortest side resized to
800 with the longest side capped at 1333 (`ResizeShortestEdge`), bilinear, pixel values on the 0..255
scale normalised with OpenAI CLIP's mean/std expressed on that scale, zero padding at the bottom/right to a
multiple of 32. `image_sizes` records each image's size inside the padded batch; the model and
`post_process_semantic_segmentation` use it to ignore the padding.

Segmentation maps become Mask2Former-style targets: per image, one binary mask per class present
(`mask_labels`) and the class ids (`class_labels`).
"""

import dataclasses
import difflib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import (
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    load_image,
    pil_torch_interpolation_mapping,
)
from transformers.processing_utils import ImagesKwargs, Unpack  # typing.Unpack is 3.11+; the package supports 3.10
from transformers.utils import logging

from configuration_ita import ITAConfig
from postprocessing_ita import (
    SemanticResult,
    instance_segmentation,
    panoptic_segmentation,
    semantic_segmentation,
)

logger = logging.get_logger(__name__)

__all__ = [
    "ITAImageProcessor",
    "ITAImageProcessorKwargs",
    "ITA_PIXEL_MEAN",
    "ITA_PIXEL_STD",
    "MIXED_FRAMES_WARNING",
    "TARGET_NAMES",
    "clip_view",
    "image_to_tensor",
    "is_url_or_base64",
    "open_image",
    "padded_size",
    "resize_nearest",
    "segmentation_map_to_tensor",
    "semantic_targets",
]

# FC-CLIP's MODEL.PIXEL_MEAN / PIXEL_STD: OpenAI CLIP's normalisation constants times 255, applied to 0..255 RGB.
ITA_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
ITA_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)

# open_clip's eval transform normalises its 0..1 views with OpenAI CLIP's constants (the ones above / 255).
CLIP_VIEW_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_VIEW_STD = (0.26862954, 0.26130258, 0.27577711)

_SIXTEEN_BIT_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# Keys transformers writes into a saved image processor or hands to its constructor besides the options: the class
# names (`to_dict`, `ProcessorMixin`, older feature extractors) and the remote-code map (`register_for_auto_class`).
_TRANSFORMERS_BOOKKEEPING_KEYS = frozenset(
    {"image_processor_type", "processor_class", "_processor_class", "feature_extractor_type", "auto_map"}
)
# The keys of a `size` dict (`SizeDict`), which transformers' image processors take inside `size={...}` only.
_SIZE_KEYS = tuple(field.name for field in dataclasses.fields(SizeDict))

# The training targets made from segmentation maps: one tensor per image (lists, never converted to one tensor).
TARGET_NAMES = ("mask_labels", "class_labels")


def is_url_or_base64(text: str) -> bool:
    """Whether a string that names no file is one `transformers.image_utils.load_image` reads: a URL, or a
    base64-encoded image (long, one word, no file-name suffix)."""
    if text.startswith(("http://", "https://", "data:image/")):
        return True
    return len(text) >= 64 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", text) is not None


def open_image(image: str | os.PathLike[str] | Image.Image, where: str = "image") -> Image.Image:
    """A path or PIL image -> a fully decoded PIL image, turned upright by its EXIF orientation (as detectron2's
    `read_image`). Raises `ValueError` naming what is wrong: empty, truncated or not an image, zero size."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            if os.path.isdir(path):
                raise ValueError(f"{where} {path} is a folder, not an image file")
            if not is_url_or_base64(path):
                raise ValueError(f"{where} {path}: no such file (nor a URL or a base64-encoded image)")
            return load_image(path)  # a URL, or base64
        if os.path.getsize(path) == 0:
            raise ValueError(f"{where} {path}: empty file (0 bytes)")
        try:
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated file fails here, not halfway through the model
                image = ImageOps.exif_transpose(opened)
        except Image.DecompressionBombError as error:
            raise ValueError(
                f"{where} {path}: cannot read image: {error} Resize it to fewer pixels first (or, for a file you "
                "trust, raise PIL.Image.MAX_IMAGE_PIXELS)"
            ) from error
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise ValueError(f"{where} {path}: cannot read image: {error}") from error
    elif isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where} has zero size ({image.width}x{image.height} pixels)")
    return image


# What a processor call of images with different padded frames says, once per process: the model reads the
# padding (its convolutions and attention), so an image padded beyond its own frame is predicted differently.
MIXED_FRAMES_WARNING = (
    "ITAImageProcessor: images of different sizes were padded to one frame in this call. The model reads the "
    "padding, so an image padded beyond its own frame gets a different prediction than it gets alone. For each "
    "image's own result, call the processor and the model per image (or per group of images with the same padded "
    "frame, ITAImageProcessor.padded_frame), or use the zero-shot-image-segmentation pipeline or ita-segment, "
    "which batch that way."
)


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `divisor`: the padding rule of `ITAImageProcessor.padded_frame`."""
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def _padded_frame(image_size: tuple[int, int], do_pad: bool, size_divisor: int) -> tuple[int, int]:
    """The frame a resized image is padded into: its size rounded up to `size_divisor`, or itself without padding."""
    return padded_size(*image_size, size_divisor) if do_pad else image_size


def resize_nearest(label_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer map `[..., H, W]` sampling pixel centres (PIL's NEAREST, torch's
    `nearest-exact`), exact for any ids."""
    height, width = label_map.shape[-2:]
    new_height, new_width = size
    if (height, width) == (new_height, new_width):
        return label_map
    rows = ((torch.arange(new_height, dtype=torch.float64) + 0.5) * (height / new_height)).long().clamp_(max=height - 1)
    cols = ((torch.arange(new_width, dtype=torch.float64) + 0.5) * (width / new_width)).long().clamp_(max=width - 1)
    return label_map[..., rows[:, None], cols[None, :]]


def semantic_targets(
    label_map: torch.Tensor,
    padded: tuple[int, int],
    num_labels: int | None,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    where: str = "label map",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per class present in a label map `[h, w]`: `(masks [N, *padded] bool, classes [N] long)`.

    Masks are zero beyond `h, w`. With `reduce_labels`, 0 ("other"/background) becomes `ignore_index` and the
    other ids move down by one. Ids outside `[0, num_labels)` other than `ignore_index` raise a `ValueError`.
    """
    if reduce_labels:
        ignored = (label_map == 0) | (label_map == ignore_index)
        label_map = torch.where(ignored, torch.full_like(label_map, ignore_index), label_map - 1)
    classes = torch.unique(label_map)
    classes = classes[classes != ignore_index]
    if num_labels is not None:
        unknown = classes[(classes < 0) | (classes >= num_labels)]
        if unknown.numel():
            raise ValueError(
                f"{where} has class ids {unknown.tolist()} outside the vocabulary of {num_labels} classes "
                f"(ids 0..{num_labels - 1}, ignore index {ignore_index}"
                + (", after reduce_labels)" if reduce_labels else ")")
            )
    height, width = label_map.shape
    masks = torch.zeros((len(classes), *padded), dtype=torch.bool)
    masks[:, :height, :width] = label_map[None] == classes[:, None, None]
    return masks, classes


# Up to this many times `size` on its long side, `clip_view` resizes the whole image and crops, as the original.
_CLIP_VIEW_FULL_RESIZE = 16


def clip_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's eval view `[3, size, size]` of one `[3, H, W]` image on the 0..255 scale, made with PIL on its
    8-bit values as the original ITA makes it: shortest side resized to `size` (bicubic; the long side by
    torchvision's `Resize(int)` rule), centre crop, then `x / 255` normalised with OpenAI CLIP's constants.

    PIL resamples in two fixed-point passes with 8-bit rounding in between, which a tensor resize does not
    reproduce; non-8-bit input is rounded to 8 bits first, as the original reads images.
    """
    if image.dtype != torch.uint8:
        image = image.float().round().clamp(0, 255).to(torch.uint8)
    pil_image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    width, height = pil_image.size
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new_width, new_height = (new_long, size) if height <= width else (size, new_long)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    if new_long <= _CLIP_VIEW_FULL_RESIZE * size:
        pil_image = pil_image.resize((new_width, new_height), Image.Resampling.BICUBIC)
        pil_image = pil_image.crop((left, top, left + size, top + size))
    else:
        # An image of extreme aspect ratio (a 1333 x 1 strip) would be resized to 426,560 x 320 pixels before the
        # crop: only the crop's source region is resampled instead (PIL's `box`, at the same scale; its filter
        # still reads the pixels around the box, so the values are those of the full resize and crop, up to one
        # 8-bit level where the filter's centres round differently). PIL's two passes (columns, then rows, 8-bit
        # in between) made one at a time: one call with a box of fractional offset in both directions rounds
        # differently (by up to 24 levels).
        scale_x, scale_y = width / new_width, height / new_height
        pil_image = pil_image.resize(
            (size, height), Image.Resampling.BICUBIC, box=(left * scale_x, 0, (left + size) * scale_x, height)
        )
        pil_image = pil_image.resize(
            (size, size), Image.Resampling.BICUBIC, box=(0, top * scale_y, size, (top + size) * scale_y)
        )
    view = torch.from_numpy(np.array(pil_image)).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(CLIP_VIEW_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(CLIP_VIEW_STD, dtype=torch.float32).view(-1, 1, 1)
    return (view - mean) / std


# ----------------------------------------------------------------------------------------------------------
# Input conversion: images and label maps of any accepted kind -> tensors
# ----------------------------------------------------------------------------------------------------------


def _flatten_inputs(inputs: Any, map_like: bool, top_level: bool = True) -> list[Any]:
    """One input or a (nested) list of inputs -> flat list. At the top level a 4-D array is a batch of
    images and a 3-D one a batch of segmentation maps."""
    if isinstance(inputs, (list, tuple)):
        flat = []
        for item in inputs:
            flat.extend(_flatten_inputs(item, map_like, top_level=False))
        return flat
    batch_ndim = 3 if map_like else 4
    if top_level and isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == batch_ndim:
        return list(inputs)
    return [inputs]


def _pil_to_array(image: Image.Image, index: int) -> np.ndarray:
    """An upright PIL image (`open_image`) -> NumPy array, `uint16` for 16-bit modes, `uint8` RGB for 8-bit
    ones."""
    if image.mode in _SIXTEEN_BIT_PIL_MODES:
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(
                f"Image {index} is a 32-bit integer PIL image (mode 'I') with values in "
                f"[{array.min()}, {array.max()}]; only 16-bit values (0..65535) are supported"
            )
        return array.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image)
    # Drops alpha and expands L, P, 1, CMYK, ... to RGB, like detectron2's reader.
    return np.asarray(image.convert("RGB"))


def _to_channels_first(
    tensor: torch.Tensor, input_data_format: ChannelDimension | str | None, prefer_last: bool, index: int
) -> torch.Tensor:
    if tensor.ndim == 2:
        return tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise ValueError(f"Image {index} has shape {tuple(tensor.shape)}; expected (H, W), (H, W, C) or (C, H, W)")
    if input_data_format is None:
        first, last = tensor.shape[0] in (1, 2, 3, 4), tensor.shape[-1] in (1, 2, 3, 4)
        if first and last:
            input_data_format = ChannelDimension.LAST if prefer_last else ChannelDimension.FIRST
        elif first or last:
            input_data_format = ChannelDimension.FIRST if first else ChannelDimension.LAST
        else:
            raise ValueError(
                f"Image {index} has shape {tuple(tensor.shape)}: no channel dimension of size 1, 2, 3 or 4 "
                "(grayscale, grayscale + alpha, RGB, RGBA) in first or last position"
            )
    input_data_format = ChannelDimension(input_data_format)
    if input_data_format == ChannelDimension.LAST:
        tensor = tensor.permute(2, 0, 1)
    if tensor.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"Image {index} has {tensor.shape[0]} channels (shape {tuple(tensor.shape)}); expected 1, 2, 3 or 4"
        )
    return tensor


def image_to_tensor(
    image: Any,
    input_data_format: ChannelDimension | str | None = None,
    device: torch.device | str | None = None,
    index: int = 0,
) -> torch.Tensor:
    """One input image (see `ITAImageProcessor`) -> `[3, H, W]`: `uint8` for 8-bit input, float32 on the 0..255
    scale otherwise."""
    if isinstance(image, (str, os.PathLike, Image.Image)):
        # Opened here, not by transformers' load_image, which would convert 16-bit files to 8-bit RGB.
        image = open_image(image, where=f"Image {index}")
    if isinstance(image, Image.Image):
        tensor = torch.from_numpy(np.array(_pil_to_array(image, index)))
        input_data_format, prefer_last = ChannelDimension.LAST, True
    elif isinstance(image, np.ndarray):
        if image.dtype.byteorder == ">":
            image = image.astype(image.dtype.newbyteorder("="))
        tensor, prefer_last = torch.from_numpy(np.array(image)), True
    elif isinstance(image, torch.Tensor):
        tensor, prefer_last = image.detach().cpu(), False
    else:
        raise TypeError(
            f"Image {index} is a {type(image).__name__}; expected a PIL image, a NumPy array, a torch tensor or "
            "a path/URL"
        )
    tensor = _to_channels_first(tensor, input_data_format, prefer_last, index)
    if tensor.shape[-2] == 0 or tensor.shape[-1] == 0:
        raise ValueError(f"Image {index} has zero size (shape {tuple(tensor.shape)})")

    if tensor.dtype == torch.uint16:
        tensor = tensor.to(torch.float32) * (255.0 / 65535.0)
    elif tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
        if not torch.isfinite(tensor).all():
            raise ValueError(f"Image {index} contains NaN or infinite values")
        low, high = tensor.min().item(), tensor.max().item()
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"Image {index} is floating point with values in [{low:g}, {high:g}]; floating-point images "
                "must lie in [0, 1] (pass uint8 for 0..255 values)"
            )
        tensor = tensor * 255.0
    elif tensor.dtype != torch.uint8:
        raise ValueError(
            f"Image {index} has unsupported dtype {tensor.dtype}; use uint8 (0..255), uint16 (0..65535) or "
            "floating point in [0, 1]"
        )

    channels = tensor.shape[0]
    if channels in (1, 2):  # grayscale, grayscale + alpha
        tensor = tensor[:1].expand(3, -1, -1)
    elif channels == 4:  # RGBA: alpha dropped
        tensor = tensor[:3]
    tensor = tensor.contiguous()
    return tensor.to(device) if device is not None else tensor


def segmentation_map_to_tensor(segmentation_map: Any, index: int = 0) -> tuple[torch.Tensor, int]:
    """One label map -> (`[H, W]` long tensor, default ignore index for its bit depth: 65535 for 16-bit maps,
    255 for others)."""
    if isinstance(segmentation_map, (str, os.PathLike, Image.Image)):
        segmentation_map = open_image(segmentation_map, where=f"Segmentation map {index}")
    array: np.ndarray
    if isinstance(segmentation_map, Image.Image):
        if segmentation_map.mode not in ("L", "P", "I", "1") + _SIXTEEN_BIT_PIL_MODES:
            raise ValueError(
                f"Segmentation map {index} is a PIL image of mode {segmentation_map.mode!r}; label maps must "
                "have one channel of class ids (modes L, P, I;16 or I)"
            )
        sixteen_bit = segmentation_map.mode in _SIXTEEN_BIT_PIL_MODES
        array = np.asarray(segmentation_map)
        if sixteen_bit:
            array = array.astype(np.uint16)
    elif isinstance(segmentation_map, torch.Tensor):
        tensor = segmentation_map.detach().cpu()
        sixteen_bit = tensor.dtype == torch.uint16
        if tensor.is_floating_point() or tensor.is_complex():
            raise ValueError(f"Segmentation map {index} has dtype {tensor.dtype}; label maps hold integer ids")
        array = tensor.to(torch.int64).numpy()
    elif isinstance(segmentation_map, np.ndarray):
        array = segmentation_map
        sixteen_bit = array.dtype == np.uint16
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise ValueError(f"Segmentation map {index} has dtype {array.dtype}; label maps hold integer ids")
    else:
        raise TypeError(
            f"Segmentation map {index} is a {type(segmentation_map).__name__}; expected a PIL image, a NumPy "
            "array or a torch tensor"
        )
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.squeeze(0) if array.shape[0] == 1 else array.squeeze(-1)
    if array.ndim != 2:
        raise ValueError(
            f"Segmentation map {index} has shape {tuple(array.shape)}; expected (H, W) class ids (one channel)"
        )
    if array.size == 0:
        raise ValueError(f"Segmentation map {index} has zero size (shape {tuple(array.shape)})")
    if array.min() < 0:
        raise ValueError(f"Segmentation map {index} has negative labels (min {array.min()})")
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64)), (65535 if sixteen_bit else 255)


def _padded_batch(
    images: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    do_pad: bool,
    size_divisor: int,
    pad_size: SizeDict | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resized, normalised images `[3, h_i, w_i]` -> `pixel_values` `[B, 3, H, W]` (zero padding at the bottom and
    right) and `pixel_mask` `[B, H, W]` (1 on real pixels), with `H x W` the largest of the images' frames
    (`ITAImageProcessor.padded_frame`'s rule, with the call's options) or `pad_size`."""
    if not do_pad and len(set(image_sizes)) > 1:
        raise ValueError(f"With do_pad=False all resized images must share one size, got {image_sizes}")
    frames = [_padded_frame(image_size, do_pad, size_divisor) for image_size in image_sizes]
    padded_height, padded_width = max(h for h, _ in frames), max(w for _, w in frames)
    if do_pad and pad_size is not None:
        pad_height, pad_width = cast(int, pad_size.height), cast(int, pad_size.width)
        if pad_height < padded_height or pad_width < padded_width:
            raise ValueError(
                f"pad_size {pad_height}x{pad_width} is smaller than the padded batch {padded_height}x{padded_width}"
            )
        padded_height, padded_width = pad_height, pad_width
    batch, device = len(images), images[0].device
    pixel_values = torch.zeros(batch, 3, padded_height, padded_width, dtype=torch.float32, device=device)
    pixel_mask = torch.zeros(batch, padded_height, padded_width, dtype=torch.long, device=device)
    for index, (image, (height, width)) in enumerate(zip(images, image_sizes)):
        pixel_values[index, :, :height, :width] = image
        pixel_mask[index, :height, :width] = 1  # transformers' convention; the model reads `image_sizes`
    return pixel_values, pixel_mask


def _segmentation_targets(
    segmentation_maps: list[tuple[torch.Tensor, int]],
    image_sizes: list[tuple[int, int]],
    padded: Sequence[int],
    ignore_index: int | None,
    do_reduce_labels: bool,
    num_labels: int | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image, its label map resized to the image's resized size and turned into `semantic_targets` on the
    padded batch: float masks `[N_i, *padded]` and class ids `[N_i]`."""
    mask_labels, class_labels = [], []
    for index, ((label_map, default_ignore), image_size) in enumerate(zip(segmentation_maps, image_sizes)):
        masks, classes = semantic_targets(
            resize_nearest(label_map, image_size),
            (int(padded[0]), int(padded[1])),
            num_labels,
            default_ignore if ignore_index is None else ignore_index,
            do_reduce_labels,
            where=f"Segmentation map {index}",
        )
        mask_labels.append(masks.to(torch.float32))
        class_labels.append(classes)
    return mask_labels, class_labels


def _check_options(
    size: SizeDict | None,
    size_divisor: int | None,
    ignore_index: int | None,
    num_labels: int | None,
    dominant_category_image_size: int | None,
) -> None:
    """Raise a `ValueError` naming the first of the image processor's own options that is out of range."""
    if dominant_category_image_size is not None and (
        not isinstance(dominant_category_image_size, int) or dominant_category_image_size < 1
    ):
        raise ValueError(
            f"dominant_category_image_size must be a positive integer or None, got {dominant_category_image_size!r}"
        )
    if size is not None and not (size.shortest_edge or (size.height and size.width)):
        raise ValueError(
            f"size must be {{'shortest_edge': int, 'longest_edge': int}}, {{'shortest_edge': int}} or "
            f"{{'height': int, 'width': int}}, got {dict(size)}"
        )
    if not isinstance(size_divisor, int) or size_divisor < 1:
        raise ValueError(f"size_divisor must be a positive integer, got {size_divisor!r}")
    if ignore_index is not None and ignore_index < 0:
        raise ValueError(f"ignore_index must be >= 0, got {ignore_index}")
    if num_labels is not None and num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")


def _flat_size_hint(flat: Mapping[str, Any]) -> str:
    """`size={'shortest_edge': 64}`: the form of the size keys given flat."""
    return "size={" + ", ".join(f"{key!r}: {value!r}" for key, value in flat.items()) + "}"


def _refuse_unknown_options(owner: str, known: Iterable[str], kwargs: Mapping[str, Any]) -> None:
    """Raise a `TypeError` for arguments nobody reads: size keys given flat (with the `size={...}` form that takes
    them) and other unknown names (with the closest known name)."""
    known = set(known)
    flat_size = {key: value for key, value in kwargs.items() if key in _SIZE_KEYS}
    unknown = [key for key in kwargs if key not in known and key not in flat_size]
    if flat_size:
        raise TypeError(
            f"{owner} takes sizes in one dict, as transformers' image processors do: write "
            f"{_flat_size_hint(flat_size)} instead of "
            + ", ".join(f"{key}={value!r}" for key, value in flat_size.items())
        )
    if unknown:
        names = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known | set(_SIZE_KEYS)), n=1)
            if not close:
                names.append(repr(key))
            elif close[0] in _SIZE_KEYS:
                names.append(f"{key!r} (did you mean {_flat_size_hint({close[0]: kwargs[key]})}?)")
            else:
                names.append(f"{key!r} (did you mean {close[0]!r}?)")
        raise TypeError(f"{owner} got unknown keyword argument(s): {', '.join(names)}")


class ITAImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to 32):
        Images are padded (bottom/right, with zeros) so that the padded height and width are multiples of it.
    ignore_index (`int`, *optional*):
        Label of pixels that carry no class in segmentation maps (and of the padding). By default 65535 for
        16-bit maps (`uint16` arrays, PIL `I;16`) and 255 for all others.
    do_reduce_labels (`bool`, *optional*, defaults to `False`):
        Map label 0 to `ignore_index` and shift the other labels down by one (ADE20K, Pascal Context-59 and
        VOC-20 encode "other"/background as 0).
    num_labels (`int`, *optional*):
        Number of classes; segmentation-map labels (after reduction) outside `[0, num_labels)` that are not
        the ignore index raise a `ValueError`. [`ITAProcessor`] sets it to the vocabulary's length.
    dominant_category_image_size (`int`, *optional*, defaults to 320):
        Side of the view CLIP ranks the vocabulary on in ITA's dominant-category unearthing, returned as
        `dominant_category_pixel_values`; `None` for FC-CLIP, which has no such step.
    """

    size_divisor: int
    ignore_index: int | None
    do_reduce_labels: bool
    num_labels: int | None
    dominant_category_image_size: int | None


def _loadable_settings(
    owner: str, known: set[str], saved: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The saved settings `from_dict` passes on: a key `owner` does not know (written by another version) is
    dropped with a warning, as it cannot be refused once saved; size keys given flat in `overrides` are refused
    as by the constructor."""
    flat_size = {key: value for key, value in overrides.items() if key in _SIZE_KEYS}
    if flat_size:
        _refuse_unknown_options(f"{owner}.from_dict", (), flat_size)
    unknown = sorted(key for key in saved if key not in known)
    if unknown:
        logger.warning(
            f"{owner}: ignoring saved setting(s) {', '.join(map(repr, unknown))} that this version does not read "
            "(saved by another version?)"
        )
    return {key: value for key, value in saved.items() if key in known}


def _interpolation_mode(resample: PILImageResampling | tvF.InterpolationMode | int | None) -> tvF.InterpolationMode:
    """torchvision's interpolation for a PIL resampling filter (bilinear when none is given)."""
    if resample is None:
        return tvF.InterpolationMode.BILINEAR
    if isinstance(resample, tvF.InterpolationMode):
        return resample
    return pil_torch_interpolation_mapping[PILImageResampling(resample)]


def _resized_and_normalised(
    images: list[torch.Tensor],
    resized_size: Callable[[int, int], tuple[int, int]] | None,
    interpolation: tvF.InterpolationMode,
    view_size: int | None,
    rescale_factor: float | None,
    normalisation: tuple[float | Sequence[float] | None, float | Sequence[float] | None] | None,
) -> tuple[list[torch.Tensor], list[tuple[int, int]], list[torch.Tensor]]:
    """Each image resized (`resized_size` of its size; None keeps it), its CLIP view taken from the resized 8-bit
    image when `view_size` is set, then rescaled and normalised in float32: (images, their sizes, the views)."""
    processed, image_sizes, views = [], [], []
    for image in images:
        height, width = image.shape[-2:]
        new_size = resized_size(height, width) if resized_size is not None else (height, width)
        if new_size != (height, width):
            image = tvF.resize(image, list(new_size), interpolation=interpolation, antialias=True)
        if view_size is not None:
            views.append(clip_view(image, view_size))
        image = image.to(torch.float32)
        if rescale_factor is not None:
            image = image * rescale_factor
        if normalisation is not None:
            mean, std = (
                torch.tensor(values, dtype=torch.float32, device=image.device).view(-1, 1, 1)
                for values in normalisation
            )
            image = (image - mean) / std
        processed.append(image)
        image_sizes.append(new_size)
    return processed, image_sizes, views


class ITAImageProcessor(TorchvisionBackend):
    r"""
    Image processor of [`ITAForOpenVocabSegmentation`] (ITA and FC-CLIP).

    Accepts PIL images, NumPy arrays and torch tensors, channels last or first (pass `input_data_format`
    when a shape is ambiguous), one image or a list:

    - 8-bit images (`uint8`, PIL `RGB`/`L`/`P`/`RGBA`/...) are used as they are; 16-bit ones (`uint16`, PIL
      `I;16`, PIL `I` with values up to 65535) are scaled to 0..255 (x * 255 / 65535); floating-point ones
      must lie in [0, 1] and are scaled by 255.
    - Grayscale is replicated to three channels. An alpha channel is dropped, not composited: this is what
      the original pipeline does (detectron2 reads images with PIL's `convert("RGB")`).
    - PIL images are turned upright following their EXIF orientation first, as detectron2's `read_image` does.

    Resizing follows detectron2's `ResizeShortestEdge` (scale = shortest_edge / short side, lowered to
    longest_edge / long side if the long side would exceed it; each side rounded half up), with torchvision's
    antialiased bilinear resize. On `uint8` input it differs from PIL's bilinear resize of the original by at
    most 2 grey levels.

    Returns `pixel_values` `[B, 3, H, W]` float32, `pixel_mask` `[B, H, W]` long (1 on real pixels) and
    `image_sizes` `[B, 2]` long (each image's resized size, before padding); with `segmentation_maps`, also
    `mask_labels` (list of float `[N_i, H, W]`) and `class_labels` (list of long `[N_i]`).

    With `dominant_category_image_size` (ITA), also `dominant_category_pixel_values` `[B, 3, S, S]`: the view
    of each resized image that CLIP ranks the vocabulary on, made as the original ITA makes it: open_clip's
    eval transform on the 8-bit image with PIL (shortest side to S, bicubic; centre crop S x S; OpenAI CLIP
    normalisation). The original applies open_clip's *training* transform there (a random crop of 90-100% of
    the image), so its ranking changes from call to call; this deterministic view is its eval counterpart.
    """

    valid_kwargs = ITAImageProcessorKwargs

    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    do_resize = True
    # Pixel values stay on the 0..255 scale of the original normalisation constants; set `do_rescale=True`,
    # `rescale_factor=1/255` and 0..1 constants for the same result in the usual transformers convention.
    do_rescale = False
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = ITA_PIXEL_MEAN
    image_std = ITA_PIXEL_STD
    do_pad = True
    size_divisor = 32
    ignore_index = None
    do_reduce_labels = False
    num_labels = None
    dominant_category_image_size = 320

    # Post-processing works in bands of rows whose intermediates (the masks on the band's rows, the class scores)
    # hold at most about this many float32 values, whatever the batch, image or vocabulary size: blocks that stay
    # in the CPU's caches (the block size is measured in benchmarks/README.md).
    post_process_chunk_elements = 2**22
    # Stride of the mask logits' grid over the padded input: the pixel decoder's mask features are at stride 4.
    # The model's outputs do not carry the padded input size (a batch may be padded beyond its images' frames,
    # e.g. to a fixed crop size), so the stride cannot be read from them reliably.
    mask_stride = 4

    # Plain attributes a saved processor may carry besides the preprocessing options (set on an instance, they are
    # saved with it): accepted by the constructor and by loading.
    _post_processing_settings = ("post_process_chunk_elements", "mask_stride")

    def __init__(self, **kwargs: Unpack[ITAImageProcessorKwargs]) -> None:
        _refuse_unknown_options(type(self).__name__, self._known_keys(), kwargs)
        super().__init__(**kwargs)  # type: ignore[misc]  # the backend's kwargs are ImagesKwargs, ours a superset

    @classmethod
    def _known_keys(cls) -> set[str]:
        """Every name the constructor takes: the options, the post-processing settings and transformers' own keys."""
        return (
            set(cls.valid_kwargs.__annotations__) | set(cls._post_processing_settings) | _TRANSFORMERS_BOOKKEEPING_KEYS
        )

    @property
    def model_input_names(self) -> list[str]:  # type: ignore[override]  # a class attribute in transformers
        """The inputs of the model this processor makes: `dominant_category_pixel_values` when it makes ITA's view."""
        names = ["pixel_values", "pixel_mask", "image_sizes"]
        if self.dominant_category_image_size is not None:
            names.append("dominant_category_pixel_values")
        return names

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As transformers' `from_dict`, on the saved settings `_loadable_settings` keeps; `from_pretrained` and
        `from_json_file` load through here."""
        settings = _loadable_settings(cls.__name__, cls._known_keys(), image_processor_dict, kwargs)
        return super().from_dict(settings, **kwargs)

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike[str]) -> Any:
        """An image processor from a JSON file of its settings (`to_json_file`), loaded as `from_dict` loads."""
        with open(json_file, encoding="utf-8") as reader:
            return cls.from_dict(json.load(reader))

    @classmethod
    def for_model_config(cls, config: ITAConfig, **kwargs: Any) -> "ITAImageProcessor":
        """The processor that fits a model of `config` (an `ITAConfig`): its dominant-category view size, or none
        for FC-CLIP; `kwargs` set the other options."""
        size = config.dominant_category_image_size if config.num_dominant_categories else None
        return cls(**{"dominant_category_image_size": size, **kwargs})

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[ITAImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images (`ImageInput`):
            One image or a list of images (PIL, NumPy or torch; see the class docstring), or paths/URLs.
        segmentation_maps (`ImageInput`, *optional*):
            One label map per image, each `(H, W)` with integer class ids at the image's own size (PIL `L`, `P`,
            `I;16` or `I`, or an integer array/tensor; a 3-D array is a batch `(B, H, W)`). They are resized
            with nearest-neighbour sampling to the images' resized sizes and padded with `ignore_index`.
        """
        return cast(BatchFeature, super().preprocess(images, segmentation_maps, **kwargs))

    def _validate_preprocess_kwargs(  # type: ignore[override]
        self,
        size: SizeDict | None = None,
        size_divisor: int | None = None,
        ignore_index: int | None = None,
        num_labels: int | None = None,
        dominant_category_image_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super()._validate_preprocess_kwargs(size=size, **kwargs)
        _check_options(size, size_divisor, ignore_index, num_labels, dominant_category_image_size)

    def process_image(  # type: ignore[override]
        self,
        image: ImageInput,
        input_data_format: ChannelDimension | str | None = None,
        device: torch.device | str | None = None,
        index: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One input image -> `[3, H, W]`: `uint8` for 8-bit input, float32 on the 0..255 scale otherwise."""
        return image_to_tensor(image, input_data_format, device, index)

    def padded_frame(self, height: int, width: int, *, resized: bool = False) -> tuple[int, int]:
        """The padded frame `(frame_height, frame_width)` an image of `height x width` is processed into when it is
        alone: its resized size (`resized_size` with this processor's `size`; `resized=True` when the size is
        already resized, as the model's `image_sizes` hold it) rounded up to multiples of `size_divisor`.

        The one home of this rule: preprocessing pads each batch to its images' largest frame, post-processing
        reads each image's own frame of the mask grid, and the pipeline and the evaluation batch images by it.
        """
        if self.do_resize and not resized:
            height, width = self.resized_size(height, width, cast(SizeDict, self.size))  # a SizeDict once set
        return _padded_frame((height, width), self.do_pad, self.size_divisor)

    @staticmethod
    def resized_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
        """Output (height, width) of detectron2's `ResizeShortestEdge` for `size` (a `SizeDict`), each side at least
        one pixel (detectron2's rule rounds the short side of an image of extreme aspect ratio to 0)."""
        if size.shortest_edge:
            short_side = size.shortest_edge
            scale = short_side / min(height, width)
            new_height: float
            new_width: float
            if height < width:
                new_height, new_width = short_side, scale * width
            else:
                new_height, new_width = scale * height, short_side
            if size.longest_edge and max(new_height, new_width) > size.longest_edge:
                scale = size.longest_edge / max(new_height, new_width)
                new_height, new_width = new_height * scale, new_width * scale
            # An extreme aspect ratio (40000 x 10) would round its short side to 0 pixels: it keeps one pixel (the
            # model pads every side to a multiple of `size_divisor`), so such an image is segmented, not refused.
            return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))
        return cast(int, size.height), cast(int, size.width)

    def _preprocess_image_like_inputs(  # type: ignore[override]
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        input_data_format: ChannelDimension | str | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        tensors = [
            self.process_image(image, input_data_format=input_data_format, device=device, index=index)
            for index, image in enumerate(_flatten_inputs(images, map_like=False))
        ]
        if not tensors:
            raise ValueError("No images were given")
        maps = None
        if segmentation_maps is not None:
            flat_maps = _flatten_inputs(segmentation_maps, map_like=True)
            if len(flat_maps) != len(tensors):
                raise ValueError(f"Got {len(tensors)} images but {len(flat_maps)} segmentation maps")
            maps = [segmentation_map_to_tensor(item, index) for index, item in enumerate(flat_maps)]
            for index, ((label_map, _), image) in enumerate(zip(maps, tensors)):
                if tuple(label_map.shape) != tuple(image.shape[-2:]):
                    raise ValueError(
                        f"Segmentation map {index} has size {tuple(label_map.shape)} (height, width) but its image "
                        f"has size {tuple(image.shape[-2:])}"
                    )
        return self._preprocess(tensors, maps, **kwargs)

    def _preprocess(  # type: ignore[override]
        self,
        images: list[torch.Tensor],
        segmentation_maps: list[tuple[torch.Tensor, int]] | None = None,
        do_resize: bool = True,
        size: SizeDict | None = None,
        resample: PILImageResampling | tvF.InterpolationMode | int | None = None,
        do_rescale: bool = False,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_pad: bool = True,
        pad_size: SizeDict | None = None,
        size_divisor: int = 32,
        ignore_index: int | None = None,
        do_reduce_labels: bool = False,
        num_labels: int | None = None,
        dominant_category_image_size: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        processed, image_sizes, views = _resized_and_normalised(
            images,
            (lambda height, width: self.resized_size(height, width, size)) if do_resize and size is not None else None,
            _interpolation_mode(resample),
            dominant_category_image_size,
            rescale_factor if do_rescale else None,
            (image_mean, image_std) if do_normalize else None,
        )
        pixel_values, pixel_mask = _padded_batch(processed, image_sizes, do_pad, size_divisor, pad_size)
        if segmentation_maps is None and len({_padded_frame(size, do_pad, size_divisor) for size in image_sizes}) > 1:
            logger.warning_once(MIXED_FRAMES_WARNING)  # targets (training, evaluation) are padded on purpose
        device = pixel_values.device
        data: dict[str, Any] = {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.long, device=device),
        }
        if views:
            data["dominant_category_pixel_values"] = torch.stack(views).to(device)
        if segmentation_maps is not None:
            targets = _segmentation_targets(
                segmentation_maps, image_sizes, pixel_values.shape[-2:], ignore_index, do_reduce_labels, num_labels
            )
            for name, values in zip(TARGET_NAMES, targets):
                data[name] = (
                    [v.cpu().numpy() for v in values] if return_tensors == "np" else [v.to(device) for v in values]
                )
        # The targets stay lists, never stacked: images have different numbers of classes.
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=list(TARGET_NAMES))

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
        *,
        return_winning_scores: bool = False,
        sem_seg_postprocess_before_inference: bool = False,
        return_scores: bool | None = None,
    ) -> list[SemanticResult]:
        """Semantic label maps from the model's outputs, as FC-CLIP's `semantic_inference` computes them.

        Per image: mask logits are upsampled bilinearly (align_corners=False) from the stride-4 grid to the
        padded input, passed through a sigmoid and combined with the class probabilities (softmax over the
        K + 1 columns, void dropped): `score[c] = sum_q p[q, c] * mask[q]`; the padding is cropped
        (`image_sizes`), the scores are resized bilinearly to the target size and the label is the arg-max (the
        first of tied classes).

        Each image is computed in its own padded frame (its size rounded up to `size_divisor`), the frame it has
        when run alone, as the original evaluates, and never reads the mask logits beyond it: upsampling the whole
        batch frame would let the padding's logits leak into the last rows/columns of a smaller image. Images are
        processed one at a time, in bands of rows of about `post_process_chunk_elements` values per intermediate,
        so memory does not grow with the batch, the vocabulary or the target size beyond the returned maps. In the
        default order the label map costs in proportion to the label boundaries, not to target pixels x classes
        (a photo's own size costs little more than the model's): where the four source pixels of a target pixel
        agree on their class, so does their bilinear mix (`postprocessing_ita.semantic_map`). Labels and scores
        equal the formula's up to float rounding.

        Args:
            outputs ([`ITAOpenVocabSegmentationOutput`] or mapping):
                With `ensemble_log_probs` `[B, Q, K + 1]` (inference: the geometric ensemble's log-probabilities;
                without them, e.g. after a training-mode forward, the softmax of `class_queries_logits`),
                `masks_queries_logits` `[B, Q, h, w]` on the stride-4 grid of the padded
                input, and `image_sizes` `[B, 2]` (each image's resized size before padding).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Output (height, width) per image, usually the original image sizes. Defaults to `image_sizes`.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Return [`SemanticSegmentationPostProcessorOutput`]s whose `segmentation_scores` hold every class's
                score `[K, H, W]` at the target size, as transformers' segmentation processors do. That is
                K x H x W float32 values per image, e.g. 7.2 GB for 150 classes at a 3000x4000 photo's size; the
                label map alone needs none of it.
            return_winning_scores (`bool`, *optional*, defaults to `False`):
                Return [`SemanticSegmentationPostProcessorOutput`]s with `winning_scores` `[H, W]`, the score of the
                chosen class at each pixel (and `segmentation_scores` None unless asked for): bounded memory.
            sem_seg_postprocess_before_inference (`bool`, *optional*, defaults to `False`):
                Crop and resize the mask logits to the target size before the sigmoid and the class sum,
                instead of resizing the class scores. FC-CLIP's configs do this when panoptic or instance
                inference is on too (its COCO and A-150 evaluations); its other semantic benchmarks use the
                default order. Its cost grows with target pixels x classes: the sigmoid comes after the resize.
            return_scores (`bool`, *optional*):
                Deprecated, removed in the next release: use `return_winning_scores`. Returns dicts with
                `segmentation` and `scores` (the winning score).

        Returns:
            `list[torch.LongTensor]` of `[H, W]` label maps; with `return_segmentation_scores` or
            `return_winning_scores`, a list of [`SemanticSegmentationPostProcessorOutput`] with `segmentation`
            (`[H, W]` long), `segmentation_scores` (`[K, H, W]` float32 or None) and, when asked for,
            `winning_scores` (`[H, W]` float32).
        """
        if return_scores is not None:
            warnings.warn(
                "`return_scores` is deprecated and will be removed in the next release: use "
                "`return_winning_scores=True` (the winning score) or `return_segmentation_scores=True` (every "
                "class's score), which return SemanticSegmentationPostProcessorOutput",
                FutureWarning,
                stacklevel=2,
            )
            if return_scores and (return_segmentation_scores or return_winning_scores):
                raise ValueError("`return_scores` cannot be combined with the options that replace it")
        return semantic_segmentation(
            self,
            outputs,
            target_sizes,
            return_segmentation_scores,
            return_winning_scores,
            sem_seg_postprocess_before_inference,
            return_scores,
        )

    def post_process_panoptic_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.8,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
    ) -> list[dict[str, Any]]:
        """Panoptic segmentation from the model's outputs, as FC-CLIP's `panoptic_inference` computes it.

        Per image, with the ensemble's class probabilities (softmax of `class_queries_logits`, void last) and the
        mask probabilities at the target size (upsampled to the image's own padded frame, cropped and resized
        bilinearly, as FC-CLIP's `sem_seg_postprocess`):

        1. a query is kept when its most probable class is not void and that probability exceeds `threshold`;
        2. each pixel goes to the kept query with the highest class probability x mask probability (the first
           one on ties), and stays unassigned (0) unless that query's mask probability there is at least
           `mask_threshold`;
        3. a query whose won pixels number less than `overlap_mask_area_threshold` of the pixels of its own mask
           (`>= mask_threshold`) is dropped, as is one left with no pixel;
        4. queries of a class in `label_ids_to_fuse` (stuff) merge into one segment per class; every other query
           is a segment of its own (a thing instance).

        Batched images give the same results as alone: each is read on its own padded frame only.

        Args:
            outputs ([`ITAOpenVocabSegmentationOutput`] or mapping):
                With `class_queries_logits` `[B, Q, K + 1]` (at inference, the geometric ensemble's
                log-probabilities), `masks_queries_logits` `[B, Q, h, w]` on the stride-4 grid of the padded input
                and `image_sizes` `[B, 2]`.
            threshold (`float`, *optional*, defaults to 0.8):
                FC-CLIP's `OBJECT_MASK_THRESHOLD`. (transformers' Mask2Former defaults to 0.5.)
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Mask probability from which a mask covers a pixel.
            overlap_mask_area_threshold (`float`, *optional*, defaults to 0.8):
                FC-CLIP's `OVERLAP_THRESHOLD`; a query with exactly this fraction is kept.
            label_ids_to_fuse (`set[int]`, *optional*):
                The stuff classes (vocabulary indices). By default none: every class is a thing.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Output (height, width) per image, usually the original sizes. Defaults to `image_sizes`.

        Returns:
            `list[dict]`, one per image:
            - **segmentation** (`torch.IntTensor` `[H, W]`) -- the segment id of each pixel, 0 where no segment
              (also when nothing is found; transformers' Mask2Former returns -1 there).
            - **segments_info** (`list[dict]`) -- one entry per segment, in id order: **id** (`int`, from 1),
              **label_id** (`int`, index into the vocabulary), **was_fused** (`bool`, the class is in
              `label_ids_to_fuse`, so all its queries form this one segment) and **score** (`float`, the class
              probability of its query; for a fused segment the highest among its queries).
        """
        return panoptic_segmentation(
            self, outputs, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, target_sizes
        )

    def post_process_instance_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.0,
        mask_threshold: float = 0.5,
        target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        top_k: int = 100,
        label_ids_to_fuse: set[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Instance segmentation from the model's outputs, as FC-CLIP's `instance_inference` computes it.

        Per image: the `top_k` highest class probabilities over all (query, class) pairs (softmax of
        `class_queries_logits`, void dropped) are the candidate instances; each takes its query's mask at the
        target size (mask probability above `mask_threshold`, the mask logits resized as in
        `post_process_panoptic_segmentation`) and scores class probability x the mean mask probability inside
        that mask. With `label_ids_to_fuse` (stuff classes), candidates of those classes are dropped after the
        top-k, as FC-CLIP does when it also runs panoptic inference. Instances overlap: one query may give
        several (one per class), and different queries' masks may cross.

        Args:
            outputs ([`ITAOpenVocabSegmentationOutput`] or mapping):
                As for `post_process_panoptic_segmentation`.
            threshold (`float`, *optional*, defaults to 0.0):
                Instances scoring below it are dropped. FC-CLIP keeps all `top_k` (for mask AP); transformers'
                Mask2Former defaults to 0.5, a better choice for looking at the result.
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Mask probability above which a mask covers a pixel (0.5: FC-CLIP's `logits > 0`).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Output (height, width) per image. Defaults to `image_sizes`.
            return_coco_annotation (`bool`, *optional*, defaults to `False`):
                Return each instance's mask as COCO's uncompressed run-length encoding instead of a map.
            return_binary_maps (`bool`, *optional*, defaults to `False`):
                Return the instances' masks as one `[N, H, W]` boolean tensor instead of a map.
            top_k (`int`, *optional*, defaults to 100):
                FC-CLIP's `TEST.DETECTIONS_PER_IMAGE` (all pairs when there are fewer).
            label_ids_to_fuse (`set[int]`, *optional*):
                Stuff classes, which give no instances. By default none.

        Returns:
            `list[dict]`, one per image:
            - **segmentation** -- by default a `torch.LongTensor` `[H, W]` with, at each pixel, the id of the
              highest-scoring instance covering it, -1 where none (overlaps are lost: use one of the options
              below to keep them); with `return_binary_maps` a `torch.BoolTensor` `[N, H, W]` (`N` may be 0);
              with `return_coco_annotation` a list of `N` dicts `{"size": [H, W], "counts": [...]}`.
            - **segments_info** (`list[dict]`) -- one entry per instance, highest score first: **id** (`int`, its
              index: its value in the map, its row in the binary maps), **label_id** (`int`), **was_fused**
              (`False`) and **score** (`float`).
        """
        return instance_segmentation(
            self,
            outputs,
            threshold,
            mask_threshold,
            target_sizes,
            return_coco_annotation,
            return_binary_maps,
            top_k,
            label_ids_to_fuse,
        )
