"""Pictures of semantic label maps: a colour palette, colourised maps, overlays with a legend; and of panoptic
segments and instances: one colour per segment, with outlines (`segment_overlay`).

A label map is an integer array `[H, W]` whose values index a vocabulary (`class_names`, one string per
class, synonyms separated by commas). The legend names each class by its first synonym.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from image_processing_ita import open_image

__all__ = [
    "color_palette",
    "colorize_label_map",
    "draw_legend",
    "legend_entries",
    "overlay",
    "segment_overlay",
    "to_rgb",
]

# Successive hues step by the golden ratio's conjugate, so that any run of consecutive class ids gets
# hues spread around the circle; saturation and value cycle on periods prime to each other to separate
# the hues that come close again after many steps.
_HUE_STEP = 0.6180339887498949
_SATURATIONS = np.array([0.90, 0.65, 0.80])
_VALUES = np.array([0.95, 0.75, 0.85, 0.65, 1.00])

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def color_palette(num_classes):
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


def to_rgb(image):
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


def _check_label_map(label_map, num_classes):
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map must be an integer array [H, W], got {label_map.dtype} {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() >= num_classes):
        raise ValueError(
            f"label_map has ids in [{label_map.min()}, {label_map.max()}] but there are {num_classes} classes"
        )
    return label_map


def colorize_label_map(label_map, num_classes=None, palette=None):
    """`[H, W]` integer label map -> RGB PIL image of the class colours (`color_palette` by default)."""
    label_map = np.asarray(label_map)
    if palette is None:
        if num_classes is None:
            num_classes = int(label_map.max()) + 1 if label_map.size else 0
        palette = color_palette(num_classes)
    palette = np.asarray(palette, dtype=np.uint8)
    label_map = _check_label_map(label_map, len(palette))
    return Image.fromarray(palette[label_map])


def legend_entries(label_map, class_names):
    """Classes present in `label_map`, largest first: a list of `(class_id, name, pixel_share)`, the name
    being the class's first synonym."""
    label_map = _check_label_map(label_map, len(class_names))
    counts = np.bincount(label_map.ravel(), minlength=len(class_names))
    present = sorted(np.flatnonzero(counts).tolist(), key=lambda class_id: (-counts[class_id], class_id))
    total = max(label_map.size, 1)
    return [(class_id, class_names[class_id].split(",")[0].strip(), counts[class_id] / total) for class_id in present]


def _legend_font(image_size):
    size = int(np.clip(round(min(image_size) / 28), 10, 28))
    try:
        return ImageFont.load_default(size=size), size
    except (ImportError, OSError, TypeError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default(), 11


def draw_legend(image, entries):
    """Draw a legend box in the top-left corner of an RGB PIL image (in place) and return it.

    `entries` is a list of `(rgb, text)`. Rows that do not fit the image's height are summed up in a last
    "+N more" row; a legend that cannot fit a single row is left out.
    """
    if not entries:
        return image
    font, font_size = _legend_font(image.size)
    margin = max(2, font_size // 3)
    row_height = font_size + margin
    swatch = font_size
    available = (image.height - 2 * margin) // row_height
    if available < 1:
        return image
    rows = [(tuple(int(c) for c in rgb), text) for rgb, text in entries]
    if len(rows) > available:
        hidden = len(rows) - (available - 1)
        rows = rows[: available - 1] + [(None, f"+{hidden} more")]

    measure = ImageDraw.Draw(image)
    text_width = max(measure.textlength(text, font=font) for _, text in rows)
    box_width = min(image.width, int(3 * margin + swatch + text_width + margin))
    box_height = 2 * margin + len(rows) * row_height - margin

    # A translucent dark box keeps the text readable on any image.
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle([0, 0, box_width - 1, box_height - 1], fill=(0, 0, 0, 160))
    for row, (rgb, text) in enumerate(rows):
        top = margin + row * row_height
        if rgb is not None:
            box = [margin, top, margin + swatch - 1, top + swatch - 1]
            draw.rectangle(box, fill=rgb + (255,), outline=(255, 255, 255, 255))
        draw.text((2 * margin + swatch, top), text, font=font, fill=(255, 255, 255, 255))
    composed = Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")
    image.paste(composed)
    return image


def overlay(image, label_map, class_names, alpha=0.5, legend=True):
    """The image blended with the colours of its label map, with a legend of the classes present.

    Args:
        image (`PIL.Image.Image`): the image, of the label map's size (`(W, H)`); converted to RGB.
        label_map (`np.ndarray` or `torch.Tensor`): `[H, W]` ids into `class_names`.
        class_names (`list[str]`): the vocabulary; colour `i` of `color_palette(len(class_names))` is class i's.
        alpha (`float`): weight of the class colours, 0 (image only) to 1 (colours only).
        legend (`bool`): draw the legend: each class present, its colour and its share of the pixels.

    Returns:
        An RGB `PIL.Image.Image` of the image's size.
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
    pixels = np.asarray(image, dtype=np.float32)
    blended = (1.0 - alpha) * pixels + alpha * palette[label_map].astype(np.float32)
    result = Image.fromarray(np.round(blended).astype(np.uint8))
    if legend:
        entries = [
            (palette[class_id], f"{name} {share:.1%}")
            for class_id, name, share in legend_entries(label_map, class_names)
        ]
        draw_legend(result, entries)
    return result


def _outline(mask):
    """The pixels of a boolean mask `[H, W]` that touch a pixel outside it (4-neighbourhood; the image border
    counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def segment_overlay(image, masks, names, alpha=0.5, legend=True):
    """The image with one colour per segment (panoptic segments or instances) and each segment outlined.

    Args:
        image (`PIL.Image.Image`): the image, of the masks' size.
        masks (list of `[H, W]` boolean arrays): one per segment; later masks are drawn over earlier ones (give
            instances lowest score first to see the best on top).
        names (`list[str]`): a legend text per segment (e.g. `"person 0.93"`).
        alpha (`float`): weight of the segment colours, 0 to 1; outlines are drawn opaque.
        legend (`bool`): draw a legend of the segments, in the order given.

    Returns:
        An RGB `PIL.Image.Image` of the image's size. Segment `i` gets colour `i` of `color_palette`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if len(names) != len(masks):
        raise ValueError(f"got {len(masks)} masks but {len(names)} names")
    image = to_rgb(image)
    pixels = np.asarray(image, dtype=np.float32).copy()
    palette = color_palette(len(masks)).astype(np.float32)
    masks = [np.asarray(mask, dtype=bool) for mask in masks]
    for index, mask in enumerate(masks):
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"mask {index} is {mask.shape[0]}x{mask.shape[1]} but the image is {image.height}x{image.width}"
            )
        pixels[mask] = (1.0 - alpha) * pixels[mask] + alpha * palette[index]
    for index, mask in enumerate(masks):
        # A darker shade of the segment's colour keeps neighbouring segments of similar colours apart.
        pixels[_outline(mask)] = palette[index] * 0.55
    result = Image.fromarray(np.round(pixels).astype(np.uint8))
    if legend:
        draw_legend(result, [(palette[index].astype(np.uint8), name) for index, name in enumerate(names)])
    return result
