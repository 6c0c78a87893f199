"""The web page's settings, light to import (standard library only): the model it serves by default and what one
request may ask for (`WebLimits`), so that `ita-web --help` shows the defaults before torch is imported."""

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "WebLimits"]

# The model `make demo` writes.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "demo_output" / "model"


@dataclass(frozen=True)
class WebLimits:
    """What one request may ask for.

    Attributes:
        max_upload_bytes: size of the uploaded file (also enforced by the server before the upload is stored).
        max_pixels: width x height of the image, read from its header before decoding.
        max_classes: classes in one request (A-847's 847 fit).
        max_class_length: characters of one class line (a class and its synonyms).
        queue_size: segmentation requests waiting at once; more are turned away with "queue is full".
        concurrency: segmentations that run at once (one model, on one device).
    """

    max_upload_bytes: int = 20 * 1024**2
    max_pixels: int = 25_000_000
    max_classes: int = 1000
    max_class_length: int = 300
    queue_size: int = 16
    concurrency: int = 1
