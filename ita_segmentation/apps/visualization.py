"""Pictures of semantic label maps: a colour palette, colourised maps, overlays with a legend beside them; and
of panoptic segments and instances: one colour per segment, with outlines (`segment_overlay`).

A label map is an integer array `[H, W]` whose values index a vocabulary (`class_names`, one string per
class, synonyms separated by commas). The legend names each class by its first synonym; it stands to the right
of the picture, in text scaled to it, so that it hides nothing and stays readable on a thumbnail and on a
24-megapixel photo alike.
"""

import functools
import logging
import os
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont

from image_processing_ita import open_image

__all__ = [
    "color_palette",
    "colorize_label_map",
    "legend_entries",
    "legend_font_size",
    "legend_panel",
    "overlay",
    "segment_overlay",
    "to_rgb",
    "with_legend",
]

# Successive hues step by the golden ratio's conjugate, so that any run of consecutive class ids gets
# hues spread around the circle; saturation and value cycle on periods prime to each other to separate
# the hues that come close again after many steps.
_HUE_STEP = 0.6180339887498949
_SATURATIONS = np.array([0.90, 0.65, 0.80])
_VALUES = np.array([0.95, 0.75, 0.85, 0.65, 1.00])

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def color_palette(num_classes: int) -> NDArray[np.uint8]:
    """`[num_classes, 3]` uint8 RGB colours, one per class id.

    Deterministic, and a class id gets the same colour whatever `num_classes` is (the palette of K
    classes is the start of the palette of K + 1).
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    index = np.arange(num_classes)
    hue = (0.05 + index * _HUE_STEP) % 1.0
    saturation = _SATURATIONS[index % len(_SATURATIONS)]
    value = _VALUES[(index // len(_SATURATIONS)) % len(_VALUES)]
    # HSV -> RGB: each channel is value * (1 - saturation * clip(...)) of a triangle wave of the hue.
    channels = []
    for offset in (5.0, 3.0, 1.0):  # R, G, B
        k = (offset + hue * 6.0) % 6.0
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8).reshape(num_classes, 3)


def to_rgb(image: Any) -> Image.Image:
    """A PIL image as 8-bit RGB, upright (EXIF orientation applied); 16-bit grey scaled to 0..255, not
    clipped."""
    image = open_image(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        array = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":  # floating point, taken to lie in [0, 1]
        array = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0
        return Image.fromarray(np.round(array).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _check_label_map(label_map: ArrayLike, num_classes: int) -> NDArray[np.integer]:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map must be an integer array [H, W], got {label_map.dtype} {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= num_classes):
        raise ValueError(
            f"label_map has ids in [{label_map.min()}, {label_map.max()}] but there are {num_classes} classes"
        )
    return label_map


def colorize_label_map(
    label_map: ArrayLike, num_classes: int | None = None, palette: ArrayLike | None = None
) -> Image.Image:
    """`[H, W]` integer label map -> RGB PIL image of the class colours (`color_palette` by default)."""
    label_map = np.asarray(label_map)
    if palette is None:
        if num_classes is None:
            num_classes = int(label_map.max()) + 1 if label_map.size else 0
        palette = color_palette(num_classes)
    palette = np.asarray(palette, dtype=np.uint8)
    label_map = _check_label_map(label_map, len(palette))
    return Image.fromarray(palette[label_map])


def legend_entries(label_map: ArrayLike, class_names: Sequence[str]) -> list[tuple[int, str, float]]:
    """Classes present in `label_map`, largest first: a list of `(class_id, name, pixel_share)`, the name
    being the class's first synonym."""
    label_map = _check_label_map(label_map, len(class_names))
    counts = np.bincount(label_map.ravel(), minlength=len(class_names))
    present = sorted(np.flatnonzero(counts).tolist(), key=lambda class_id: (-counts[class_id], class_id))
    total = max(label_map.size, 1)
    return [(class_id, class_names[class_id].split(",")[0].strip(), counts[class_id] / total) for class_id in present]


logger = logging.getLogger(__name__)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Fonts tried, in this order, for a legend text that Pillow's own font (Latin letters only) cannot draw: broad
# Unicode fonts first, then CJK and emoji ones, under the usual font folders of Linux, macOS and Windows.
_FALLBACK_FONT_FILES = (
    "DejaVuSans.ttf",
    "NotoSans-Regular.ttf",
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJKsc-Regular.otf",
    "NotoSansSC-Regular.otf",
    "NotoSansJP-Regular.otf",
    "DroidSansFallbackFull.ttf",
    "DroidSansFallback.ttf",
    "wqy-zenhei.ttc",
    "wqy-microhei.ttc",
    "NotoSansSymbols2-Regular.ttf",
    "NotoEmoji-Regular.ttf",
    "Arial Unicode.ttf",
    "PingFang.ttc",
    "Hiragino Sans GB.ttc",
    "Apple Color Emoji.ttc",
    "arialuni.ttf",
    "msyh.ttc",
    "seguisym.ttf",
    "seguiemj.ttf",
)
_FONT_FOLDERS = (
    "/usr/share/fonts",
    "/usr/local/share/fonts",
    "~/.local/share/fonts",
    "~/.fonts",
    "/System/Library/Fonts",
    "/Library/Fonts",
    "~/Library/Fonts",
    os.path.join(os.environ.get("WINDIR", r"C:\Windows"), "Fonts"),
)
# Characters that draw nothing or join others (spaces, controls, combining marks, variation selectors, joiners):
# never checked for a glyph of their own.
_UNCHECKED_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"}
# A character no font has (a private-use code point of plane 16): what a font draws for a missing glyph.
_NO_GLYPH = "\U0010fffd"
_warned_names: set[str] = set()


@functools.lru_cache(maxsize=64)
def _legend_font(font_size: int) -> Font:
    """Pillow's own font at `font_size` (the same on every machine; Latin letters only)."""
    try:
        return ImageFont.load_default(size=font_size)
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _drawing(font: Font, text: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(text)
    return tuple(mask.size), bytes(mask)


@functools.lru_cache(maxsize=4096)
def _has_glyph(font: Font, character: str) -> bool:
    """Whether `font` has a glyph for `character`: it draws it otherwise than its missing-glyph box."""
    if unicodedata.category(character) in _UNCHECKED_CATEGORIES:
        return True
    return _drawing(font, character) != _missing_glyph_drawing(font)


@functools.lru_cache(maxsize=64)
def _missing_glyph_drawing(font: Font) -> tuple[tuple[int, int], bytes]:
    return _drawing(font, _NO_GLYPH)


def _missing_characters(font: Font, text: str) -> list[str]:
    return [character for character in dict.fromkeys(text) if not _has_glyph(font, character)]


@functools.lru_cache(maxsize=1)
def _installed_font_files() -> tuple[str, ...]:
    """The fallback fonts installed here, in `_FALLBACK_FONT_FILES`' order."""
    wanted = {name.lower(): rank for rank, name in enumerate(_FALLBACK_FONT_FILES)}
    found: dict[int, str] = {}
    for folder in _FONT_FOLDERS:
        root = Path(os.path.expanduser(folder))
        if not root.is_dir():
            continue
        try:
            for path in root.rglob("*"):
                rank = wanted.get(path.name.lower())
                if rank is not None and rank not in found:
                    found[rank] = str(path)
        except OSError:
            continue
    return tuple(found[rank] for rank in sorted(found))


@functools.lru_cache(maxsize=256)
def _fonts_with(character: str) -> tuple[str, ...]:
    """Font files that fontconfig says have `character` (none where fontconfig's `fc-list` is missing)."""
    fc_list = shutil.which("fc-list")
    if fc_list is None or sys.platform == "win32":
        return ()
    try:
        listed = subprocess.run(
            [fc_list, f":charset={ord(character):x}", "file"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(sorted(line.strip().rstrip(":") for line in listed.splitlines() if line.strip()))


@functools.lru_cache(maxsize=256)
def _truetype(path: str, font_size: int) -> Font | None:
    try:
        return ImageFont.truetype(path, font_size)
    except (OSError, ValueError):  # a bitmap-only font (colour emoji) that has no glyphs at this size
        return None


def _font_for_text(text: str, font_size: int) -> Font:
    """The font to draw `text` with: Pillow's own when it has every glyph, else the first installed font that
    has them all (`_FALLBACK_FONT_FILES`, then the fonts fontconfig names for the missing characters), else the
    one that misses fewest, with a warning, once per text, that names the characters drawn as empty boxes."""
    default = _legend_font(font_size)
    missing = _missing_characters(default, text)
    if not missing:
        return default
    best, best_missing = default, missing
    tried: set[str] = set()
    candidates = list(_installed_font_files())
    for round_ in range(2):
        if round_ == 1:  # fontconfig knows fonts outside the usual names
            candidates = [path for character in best_missing for path in _fonts_with(character)]
        for path in candidates:
            if path in tried:
                continue
            tried.add(path)
            font = _truetype(path, font_size)
            if font is None:
                continue
            still_missing = _missing_characters(font, text)
            if not still_missing:
                return font
            if len(still_missing) < len(best_missing):
                best, best_missing = font, still_missing
    if text not in _warned_names:
        _warned_names.add(text)
        shown = ", ".join(f"{character!r} (U+{ord(character):04X})" for character in best_missing[:5])
        logger.warning(
            f"legend: no installed font has a glyph for {shown} in the class name {text!r}, drawn as an empty box; "
            "install a font that has it (e.g. Noto Sans CJK for Chinese, Japanese and Korean, Noto Emoji for emoji)"
        )
    return best


def legend_font_size(image_height: int) -> int:
    """Legend text height for an image `image_height` pixels high: a 25th of it, at least 12 px (readable
    beside a thumbnail) and at most 160 px."""
    return int(np.clip(round(image_height / 25), 12, 160))


def legend_panel(
    entries: Sequence[tuple[ArrayLike, str]],
    height: int,
    font_size: int,
    max_columns: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """A legend, to stand beside an image `height` pixels high: an RGB image of that height (taller only when
    `max_columns` columns cannot hold the entries) listing `entries`, `(rgb, text)` pairs, one per row: a swatch
    of the colour and the text, in as many columns as the height needs. Nothing is cut off."""
    fonts = [_font_for_text(text, font_size) for _, text in entries]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = max(sum(font.getmetrics()) if hasattr(font, "getmetrics") else font_size for font in fonts)
    margin = max(4, line // 2)
    row_height = line + max(2, line // 3)
    swatch = line
    rows_per_column = max(1, (height - 2 * margin) // row_height)
    columns = -(-len(entries) // rows_per_column)
    if columns > max_columns:
        columns = max_columns
        rows_per_column = -(-len(entries) // columns)
    text_width = int(max(measure.textlength(text, font=font) for (_, text), font in zip(entries, fonts)))
    column_width = swatch + margin // 2 + text_width + margin
    width = margin + columns * column_width
    panel_height = max(height, 2 * margin + rows_per_column * row_height)
    panel = Image.new("RGB", (width, panel_height), background)
    draw = ImageDraw.Draw(panel)
    outline = max(1, swatch // 12)
    for index, ((rgb, text), font) in enumerate(zip(entries, fonts)):
        column, row = divmod(index, rows_per_column)
        left, top = margin + column * column_width, margin + row * row_height
        draw.rectangle(
            [left, top, left + swatch - 1, top + swatch - 1],
            fill=tuple(int(c) for c in np.asarray(rgb).ravel()),
            outline=(0, 0, 0),
            width=outline,
        )
        draw.text((left + swatch + margin // 2, top), text, font=font, fill=(0, 0, 0))
    return panel


def _outlines(label_map: NDArray[np.integer], thickness: int) -> NDArray[np.bool_]:
    """Pixels within `thickness` of a boundary between two classes, on both sides of it."""
    edges = np.zeros(label_map.shape, dtype=bool)
    horizontal = label_map[:, 1:] != label_map[:, :-1]
    vertical = label_map[1:, :] != label_map[:-1, :]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    if thickness > 1 and edges.any():
        from scipy.ndimage import binary_dilation

        edges = binary_dilation(edges, iterations=thickness - 1)
    return edges


def overlay(
    image: Any,
    label_map: ArrayLike,
    class_names: Sequence[str],
    alpha: float = 0.5,
    legend: bool = True,
    outlines: bool = True,
) -> Image.Image:
    """The image blended with the colours of its label map, and beside it a legend of the classes present.

    Args:
        image (`PIL.Image.Image`): the image, of the label map's size (`(W, H)`); converted to RGB.
        label_map (`np.ndarray` or `torch.Tensor`): `[H, W]` ids into `class_names`.
        class_names (`list[str]`): the vocabulary; colour `i` of `color_palette(len(class_names))` is class i's.
        alpha (`float`): weight of the class colours, 0 (image only) to 1 (colours only).
        legend (`bool`): add the legend, to the right of the image so that it hides nothing: each class present,
            largest first, its colour and its share of the pixels, in text scaled to the image (`legend_font_size`).
        outlines (`bool`): draw the boundaries between classes in the pure class colours (a few pixels wide on
            large images), so that each region's colour can be matched with the legend even where the blend
            mixes it with the picture.

    Returns:
        An RGB `PIL.Image.Image`: the image's size without legend; with it, the image on the left and the legend
        on the right (the canvas is taller than the image only when the legend needs it, on a white ground).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    label_map = _check_label_map(np.asarray(label_map), len(class_names))
    image = to_rgb(image)
    if (image.height, image.width) != label_map.shape:
        raise ValueError(
            f"The image is {image.height}x{image.width} (height x width) but the label map is "
            f"{label_map.shape[0]}x{label_map.shape[1]}"
        )
    palette = color_palette(len(class_names))
    colours = palette[label_map].astype(np.float32)
    blended = (1.0 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours
    if outlines and alpha > 0:
        edges = _outlines(label_map, thickness=max(1, round(min(label_map.shape) / 300)))
        blended[edges] = colours[edges]
    result = Image.fromarray(np.round(blended).astype(np.uint8))
    if not legend:
        return result
    entries = [
        (palette[class_id], f"{name} {share:.1%}") for class_id, name, share in legend_entries(label_map, class_names)
    ]
    return with_legend(result, entries)


def with_legend(picture: Image.Image, entries: Sequence[tuple[ArrayLike, str]]) -> Image.Image:
    """`picture` with a legend panel of `(colour, text)` entries beside it, in text scaled to the picture."""
    if not entries:
        return picture
    panel = legend_panel(entries, picture.height, legend_font_size(picture.height))
    canvas = Image.new("RGB", (picture.width + panel.width, max(picture.height, panel.height)), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    canvas.paste(panel, (picture.width, 0))
    return canvas


def _outline(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The pixels of a boolean mask `[H, W]` that touch a pixel outside it (4-neighbourhood; the image border
    counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def segment_overlay(
    image: Any, masks: Sequence[ArrayLike], names: Sequence[str], alpha: float = 0.5, legend: bool = True
) -> Image.Image:
    """The image with one colour per segment (panoptic segments or instances) and each segment outlined.

    Args:
        image (`PIL.Image.Image`): the image, of the masks' size.
        masks (list of `[H, W]` boolean arrays): one per segment; later masks are drawn over earlier ones (give
            instances lowest score first to see the best on top).
        names (`list[str]`): a legend text per segment (e.g. `"person 0.93"`).
        alpha (`float`): weight of the segment colours, 0 to 1; outlines are drawn opaque.
        legend (`bool`): draw a legend of the segments, in the order given.

    Returns:
        An RGB `PIL.Image.Image`: the image, with the legend beside it. Segment `i` gets colour `i` of
        `color_palette`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if len(names) != len(masks):
        raise ValueError(f"got {len(masks)} masks but {len(names)} names")
    image = to_rgb(image)
    pixels = np.asarray(image, dtype=np.float32).copy()
    palette = color_palette(len(masks)).astype(np.float32)
    boolean_masks = [np.asarray(mask, dtype=bool) for mask in masks]
    for index, mask in enumerate(boolean_masks):
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"mask {index} is {mask.shape[0]}x{mask.shape[1]} but the image is {image.height}x{image.width}"
            )
        pixels[mask] = (1.0 - alpha) * pixels[mask] + alpha * palette[index]
    for index, mask in enumerate(boolean_masks):
        # A darker shade of the segment's colour keeps neighbouring segments of similar colours apart.
        pixels[_outline(mask)] = palette[index] * 0.55
    result = Image.fromarray(np.round(pixels).astype(np.uint8))
    if legend:
        result = with_legend(result, [(palette[index].astype(np.uint8), name) for index, name in enumerate(names)])
    return result
