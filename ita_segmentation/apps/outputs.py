"""The files the apps write: label maps, COCO panoptic PNGs, instance-id PNGs, and what `<stem>.json` holds.

`ita-segment` writes them per image and the web page offers them for download. Every writer saves a PNG whatever
the path's suffix (`ita-segment` writes to a temporary name first).
"""

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "MAX_LABEL_MAP_CLASSES",
    "SEGMENT_FIELDS",
    "SUMMARY_FIELDS",
    "bounding_box",
    "write_instance_png",
    "write_label_map",
    "write_panoptic_png",
]

# A label map PNG is at most 16-bit: class ids 0 to 65,535.
MAX_LABEL_MAP_CLASSES = 65536

# What each field of `ita-segment`'s `<stem>.json` holds (the README's table is checked against this).
SUMMARY_FIELDS = {
    "image": "the input image's path, as given",
    "image_size": "its upright size, {height, width}, the size of the label map",
    "model": "the --model argument",
    "vocabulary": "the classes, in class-id order",
    "segments": "one entry per class present, largest first: label, class_id, pixel_share, score",
    "label_map": "the file name of the label map",
    "overlay": "the file name of the overlay",
}
SEGMENT_FIELDS = {
    "label": "the class as given in the vocabulary",
    "class_id": "its position in the vocabulary, its value in the label map",
    "pixel_share": "the fraction of the image's pixels given this class (the shares sum to 1)",
    "score": (
        "the mean over the segment's pixels of the class's semantic score, sum over queries of class probability "
        "x mask probability: it ranks confidence, is not a probability, and can exceed 1 where masks overlap"
    ),
}


def write_label_map(label_map: Any, num_classes: int, path: str | os.PathLike[str]) -> None:
    """Save a `[H, W]` label map as a PNG: 8-bit grey for up to 256 classes, 16-bit grey up to 65,536
    (`MAX_LABEL_MAP_CLASSES`)."""
    label_map = np.asarray(label_map)
    if num_classes <= 256:
        image = Image.fromarray(label_map.astype(np.uint8))
    elif num_classes <= MAX_LABEL_MAP_CLASSES:
        image = Image.fromarray(label_map.astype(np.uint16))  # mode I;16
    else:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit PNG")
    image.save(path, format="PNG")


def write_panoptic_png(segment_map: Any, path: str | os.PathLike[str]) -> None:
    """Save a `[H, W]` segment-id map as COCO panoptic's RGB PNG (id = R + 256 G + 256^2 B)."""
    segment_map = np.asarray(segment_map, dtype=np.uint32)
    rgb = np.stack([segment_map % 256, segment_map // 256 % 256, segment_map // 65536 % 256], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path, format="PNG")


def write_instance_png(
    segments: Sequence[dict[str, Any]], masks: Sequence[np.ndarray], size: tuple[int, int], path: str | os.PathLike[str]
) -> None:
    """Save instances as a 16-bit PNG of `size` `(height, width)`: 1 + the id of the highest-scoring instance
    covering each pixel (`segments` best first, each with its boolean mask), 0 where none."""
    top = np.zeros(size, dtype=np.uint16)
    for segment, mask in reversed(list(zip(segments, masks))):
        top[mask] = segment["id"] + 1
    Image.fromarray(top).save(path, format="PNG")  # mode I;16


def bounding_box(mask: np.ndarray) -> list[int]:
    """COCO's `[x, y, width, height]` of a boolean mask (`[0, 0, 0, 0]` when it is empty)."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)]
