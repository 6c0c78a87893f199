"""Batches for evaluation: images grouped by their padded input size, decoded and preprocessed in DataLoader
workers, each label kept at its own size.

The decoder and the pixel decoder attend over the whole padded input, padding included, so batching an image
with a larger one would change its prediction; grouped this way every image sees exactly the input it has
alone, as in the original's batch of one.
"""

import io
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from PIL import ExifTags, Image

from image_processing_ita import ITAImageProcessor, open_image

from .errors import EvaluationDataError

__all__ = ["BenchmarkDataError", "plan_batches", "undecoded_images"]

# EXIF orientations that turn the image by 90 degrees (its upright width and height swap).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class BenchmarkDataError(EvaluationDataError):
    """A benchmark file that cannot be scored: an image and its label of different sizes, a label that is not
    a single-channel map."""


def _upright_image_sizes(dataset: datasets.Dataset) -> list[tuple[int, int]]:
    """(height, width) of every image once turned upright by its EXIF orientation, read from the file headers
    without decoding any pixels."""
    sizes = []
    for chunk in dataset.select_columns(["image"]).with_format("arrow").iter(batch_size=256):
        for value in chunk.column("image").to_pylist():
            source = value["path"] if value["bytes"] is None else io.BytesIO(value["bytes"])
            with Image.open(source) as image:
                orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
                transposed = orientation in _TRANSPOSING_ORIENTATIONS
                sizes.append((image.width, image.height) if transposed else (image.height, image.width))
    return sizes


def _padded_input_size(image_size: Sequence[int], image_processor: ITAImageProcessor) -> tuple[int, int]:
    """The size of the padded model input an image of `image_size` gets when processed alone
    (`ITAImageProcessor.padded_frame`)."""
    height, width = image_size
    return image_processor.padded_frame(height, width)


def plan_batches(
    image_sizes: Sequence[Sequence[int]], batch_size: int, image_processor: ITAImageProcessor
) -> list[list[int]]:
    """Split image indices into batches of at most `batch_size` images that share one padded input size.

    Args:
        image_sizes: (height, width) of each (upright) image.
        image_processor: the `ITAImageProcessor` whose resize and padding decide the input sizes.

    Returns:
        A list of lists of indices; groups keep the order in which their size first appears.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image_size in enumerate(image_sizes):
        groups.setdefault(_padded_input_size(image_size, image_processor), []).append(index)
    return [
        indices[start : start + batch_size]
        for indices in groups.values()
        for start in range(0, len(indices), batch_size)
    ]


class _BatchPreparer:
    """DataLoader collate function: decodes a batch of rows, turns the images upright, runs the image
    processor and keeps each label as an array. Picklable, so it runs in DataLoader workers."""

    def __init__(self, image_processor: ITAImageProcessor) -> None:
        self.image_processor = image_processor

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        images = [_decode_image(row["image"], row.get("file_name")) for row in rows]
        encoded = self.image_processor(images, return_tensors="pt")
        views = {}
        if "dominant_category_pixel_values" in encoded:
            views["dominant_category_pixel_values"] = encoded["dominant_category_pixel_values"]
        return {
            **views,
            "pixel_values": encoded["pixel_values"],
            "image_sizes": encoded["image_sizes"],
            "labels": [np.asarray(row["label"]) for row in rows],
            "original_sizes": [(image.height, image.width) for image in images],
            "image_files": [_image_name(row["image"], row.get("file_name")) for row in rows],
            "label_files": [getattr(row["label"], "filename", "") or f"label of {row['file_name']}" for row in rows],
        }


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its `image` column left undecoded (`{"path", "bytes"}`): the batch preparer decodes each
    image itself, so an image that cannot be read is named as the user's data, not raised from inside `datasets`."""
    if isinstance(dataset.features.get("image"), datasets.Image):
        return dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def _image_name(value: Any, file_name: str | None) -> str:
    if isinstance(value, dict):
        return value.get("path") or file_name or "an image stored in the dataset"
    return getattr(value, "filename", "") or file_name or "an image of the dataset"


def _decode_image(value: Any, file_name: str | None) -> Image.Image:
    """A row's image (a PIL image, a path, or datasets' undecoded `{"path", "bytes"}`) fully decoded and upright;
    `BenchmarkDataError` naming the file when it cannot be read (truncated, not an image, empty)."""
    name = _image_name(value, file_name)
    try:
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                with Image.open(io.BytesIO(value["bytes"])) as opened:
                    opened.load()  # decode now: a truncated file fails here
                    return open_image(opened)  # upright: a copy, independent of the closed file
            return open_image(value["path"])
        return open_image(value)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BenchmarkDataError(
            f"{name}: cannot read the image ({error}); replace the file, or leave it out with --skip-bad-samples"
        ) from None


def _check_labels(batch: dict[str, Any]) -> None:
    for label, image_size, image_file, label_file in zip(
        batch["labels"], batch["original_sizes"], batch["image_files"], batch["label_files"]
    ):
        if label.ndim != 2:
            raise BenchmarkDataError(
                f"{label_file}: the label has shape {label.shape}; expected a single-channel map of class ids"
            )
        if tuple(label.shape) != tuple(image_size):
            raise BenchmarkDataError(
                f"{image_file}: the image is {image_size[0]}x{image_size[1]} (height x width) but its label "
                f"{label_file} is {label.shape[0]}x{label.shape[1]}; predictions are made at the label's size, so "
                "each image and its label must have the same size"
            )
