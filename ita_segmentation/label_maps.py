"""Reading label maps from files, bytes, PIL images and arrays: one decoding for training and the data check.

- `label_map_array`: a semantic label map -> its `(height, width)` integer array, in the dtype it is stored in
  (the data check counts 8- and 16-bit ids with a bincount).
- `decode_label_map`: the same as an int64 tensor (training targets).
- `decode_panoptic_segment_ids`: a COCO panoptic PNG (segment id = R + 256 G + 256^2 B) -> segment ids.

Label maps are read as stored: no EXIF rotation (label files carry none; the image processor's own decoding
of `segmentation_maps` belongs to the model folder, which imports nothing from this package).
"""

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["COLOUR_MODES", "decode_label_map", "decode_panoptic_segment_ids", "label_map_array"]

# PIL modes with several channels: not a map of class ids.
COLOUR_MODES = ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA")


def _one_channel(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        return array.squeeze(0) if array.shape[0] == 1 else array.squeeze(-1)
    return array


def label_map_array(value: Any, where: str = "label map") -> np.ndarray:
    """A semantic label map -> its `(height, width)` array of class ids, in the stored integer dtype.

    `value` is a path, the bytes of an image file (`io.BytesIO`), a PIL image (modes L, P, I;16, I, 1) or an integer
    array (`(H, W)`, or with one channel first or last). Raises `ValueError` naming `where` for a colour image,
    another shape, or non-integer values; a missing file raises `FileNotFoundError`, an unreadable one PIL's
    error.
    """
    if isinstance(value, (str, os.PathLike, io.BytesIO)):
        with Image.open(value) as image:
            return label_map_array(image, where)
    if isinstance(value, Image.Image):
        if value.mode in COLOUR_MODES:
            raise ValueError(
                f"{where} is a {value.mode} image; a semantic label map holds one channel of class ids (modes L, P, "
                "I;16 or I). For panoptic annotations (segment ids as RGB) give the segments column too."
            )
    array = _one_channel(np.asarray(value))
    if array.ndim != 2:
        raise ValueError(f"{where} has shape {array.shape}; expected (height, width) class ids")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{where} has dtype {array.dtype}; label maps hold integer class ids")
    return array


def decode_label_map(value: Any, where: str = "label map") -> torch.Tensor:
    """A semantic label map (see `label_map_array`) -> `[H, W]` int64 tensor."""
    return torch.from_numpy(label_map_array(value, where).astype(np.int64))


def decode_panoptic_segment_ids(value: Any, where: str = "panoptic map") -> torch.Tensor:
    """A COCO panoptic PNG (segment id = R + 256 G + 256^2 B) or a 2-D id array -> `[H, W]` int64 tensor."""
    if isinstance(value, (str, os.PathLike, io.BytesIO)):
        with Image.open(value) as image:
            return decode_panoptic_segment_ids(image, where)
    if isinstance(value, Image.Image):
        value = value.convert("RGB") if value.mode not in ("L", "I", "I;16", "P") else value
    array = np.asarray(value).astype(np.int64)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., 0] + 256 * array[..., 1] + 256 * 256 * array[..., 2]
    if array.ndim != 2:
        raise ValueError(f"{where} has shape {array.shape}; expected an RGB panoptic PNG or (height, width) ids")
    return torch.from_numpy(array)
