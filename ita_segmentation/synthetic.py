"""Generated segmentation data for the demo and the tests: coloured shapes on textured backgrounds.

Nothing here is downloaded. Each scene has one or two background regions ("green background", "gray
background") and one to three shapes ("red circle", "blue square", "yellow triangle"), with per-image colour
jitter and per-pixel noise, so that a tiny model with a random frozen CLIP can learn it quickly on a CPU.
Besides the `datasets.Dataset` itself, writers put the same scenes on disk in the layouts the data loaders read
(label-map folders, an imagefolder with `metadata.jsonl`, COCO panoptic).
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image

from configuration_ita import ITAConfig

__all__ = [
    "SYNTHETIC_CLASS_NAMES",
    "toy_clip_config",
    "toy_config",
    "draw_synthetic_scene",
    "make_synthetic_dataset",
    "write_label_map_folders",
    "write_imagefolder",
    "write_coco_panoptic",
]


def toy_clip_config(width: int = 32, heads: int = 2) -> dict[str, Any]:
    """A tiny random-init open_clip config for tests, demos and benchmarks: timm's `test_convnext` trunk
    (0.27 M parameters, channels 24/32/48/64) and a 2-layer text tower of `width` channels."""
    return {
        "embed_dim": width,
        "vision_cfg": {
            "timm_model_name": "test_convnext",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "mlp",
            "timm_drop": 0.0,
            "timm_drop_path": 0.0,
            "image_size": 64,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": 2},
    }


def toy_config(width: int = 32, **overrides: Any) -> ITAConfig:
    """ITA at toy size, for tests, the demo and benchmarks: 4 dominant-category text queries, no decoder
    self-attention, 3 decoder layers, a 2-layer pixel decoder of `width` channels (feed-forward 2 x `width`),
    a CLIP of `toy_clip_config(width)` and two prompt templates; `overrides` set any other `ITAConfig` field
    (`toy_config(num_dominant_categories=0, num_queries=8, decoder_self_attention=True)` is FC-CLIP)."""
    values: dict[str, Any] = dict(
        clip_config=toy_clip_config(width=width, heads=2),
        num_dominant_categories=4,
        hidden_dim=width,
        pixel_decoder_dim=width,
        mask_dim=width,
        decoder_layers=3,
        decoder_attention_heads=4,
        decoder_ffn_dim=2 * width,
        pixel_decoder_encoder_layers=2,
        pixel_decoder_attention_heads=4,
        pixel_decoder_num_points=2,
        pixel_decoder_ffn_dim=2 * width,
        group_norm_groups=8,
        prompt_templates=["a photo of a {}.", "There is a {} in the scene"],
    )
    values.update(overrides)
    return ITAConfig(**values)


SYNTHETIC_CLASS_NAMES = ("red circle", "blue square", "yellow triangle", "green background", "gray background")

# Mean RGB colour of each class; every image jitters it and adds pixel noise.
_CLASS_COLOURS = np.array(
    [(210, 40, 40), (40, 70, 210), (225, 205, 40), (60, 150, 60), (128, 128, 128)], dtype=np.float32
)
_SHAPES = ("circle", "square", "triangle")
_BACKGROUNDS = (3, 4)


def _shape_mask(kind: str, height: int, width: int, centre_y: float, centre_x: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = ys - centre_y, xs - centre_x
    if kind == "circle":
        return dy**2 + dx**2 <= radius**2
    if kind == "square":
        return (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    # Upward triangle inside the square of side 2 * radius.
    inside_rows = (dy >= -radius) & (dy <= radius)
    half_width = (dy + radius) / 2.0
    return inside_rows & (np.abs(dx) <= half_width)


def draw_synthetic_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: `(image, label_map, instance_map)`.

    `image` is `[H, W, 3]` uint8 RGB, `label_map` `[H, W]` uint8 class ids into `SYNTHETIC_CLASS_NAMES`, and
    `instance_map` `[H, W]` int32 with one id per region (backgrounds and each shape, from 1), for panoptic
    layouts. `rng` is a `numpy.random.Generator`.
    """
    label_map = np.empty((height, width), dtype=np.uint8)
    instance_map = np.empty((height, width), dtype=np.int32)
    first, second = rng.permutation(_BACKGROUNDS)
    label_map[:] = first
    instance_map[:] = 1
    if rng.random() < 0.5:  # two background regions, split at a random row
        split = int(rng.integers(height // 4, 3 * height // 4 + 1))
        label_map[split:] = second
        instance_map[split:] = 2
    next_instance = 3
    for _ in range(int(rng.integers(1, 4))):
        class_id = int(rng.integers(0, len(_SHAPES)))
        radius = float(rng.uniform(0.12, 0.25)) * min(height, width)
        centre_y = float(rng.uniform(radius, height - radius))
        centre_x = float(rng.uniform(radius, width - radius))
        mask = _shape_mask(_SHAPES[class_id], height, width, centre_y, centre_x, radius)
        label_map[mask] = class_id
        instance_map[mask] = next_instance
        next_instance += 1

    colours = _CLASS_COLOURS + rng.uniform(-25, 25, size=_CLASS_COLOURS.shape).astype(np.float32)
    image = colours[label_map]  # [H, W, 3]
    # Texture: diagonal stripes on the backgrounds, pixel noise everywhere.
    stripes = (((np.add.outer(np.arange(height), np.arange(width)) // 4) % 2) * 18.0 - 9.0).astype(np.float32)
    image += np.where(np.isin(label_map, _BACKGROUNDS), stripes, 0.0)[..., None]
    image += rng.normal(0.0, 10.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), label_map, instance_map


def _scene_size(rng: np.random.Generator, image_size: int, max_aspect: float) -> tuple[int, int]:
    if max_aspect <= 1.0:
        return image_size, image_size
    aspect = float(rng.uniform(1.0, max_aspect))
    long_side = int(round(image_size * aspect))
    return (image_size, long_side) if rng.random() < 0.5 else (long_side, image_size)


def make_synthetic_dataset(
    num_images: int, image_size: int = 64, seed: int = 0, max_aspect: float = 1.0, with_instances: bool = False
) -> datasets.Dataset:
    """A `datasets.Dataset` of `num_images` generated scenes.

    Columns: `image` (Image, RGB), `label` (Image, mode L label map), `classes` (list of `ClassLabel` over
    `SYNTHETIC_CLASS_NAMES`: the classes present, which also carries the class names), `file_name`, and with
    `with_instances` an `instances` column of `[H, W]` int32 region ids (as lists) for the panoptic writer.
    The short side is `image_size`; with `max_aspect > 1` the long side is up to that many times longer.
    Scenes depend only on `seed` and their index.
    """
    rows: dict[str, list[Any]] = {"image": [], "label": [], "classes": [], "file_name": []}
    instances = []
    for index in range(num_images):
        rng = np.random.default_rng((seed, index))
        height, width = _scene_size(rng, image_size, max_aspect)
        image, label_map, instance_map = draw_synthetic_scene(rng, height, width)
        rows["image"].append(Image.fromarray(image, mode="RGB"))
        rows["label"].append(Image.fromarray(label_map, mode="L"))
        rows["classes"].append(sorted(int(c) for c in np.unique(label_map)))
        rows["file_name"].append(f"scene_{seed}_{index:05d}.png")
        instances.append(instance_map)
    features = {
        "image": datasets.Image(),
        "label": datasets.Image(),
        "classes": datasets.List(datasets.ClassLabel(names=list(SYNTHETIC_CLASS_NAMES))),
        "file_name": datasets.Value("string"),
    }
    if with_instances:
        rows["instances"] = [instance_map.tolist() for instance_map in instances]
        features["instances"] = datasets.List(datasets.List(datasets.Value("int32")))
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


def write_label_map_folders(
    dataset: datasets.Dataset,
    root: str | os.PathLike[str],
    split: str = "training",
    image_dir: str = "images",
    label_dir: str = "annotations",
) -> tuple[Path, Path]:
    """Write `dataset` as ADE20K-style folders: `root/images/<split>/<stem>.jpg`-like image files (PNG here)
    and `root/annotations/<split>/<stem>.png` label maps. Returns the two folders."""
    images = Path(root) / image_dir / split
    labels = Path(root) / label_dir / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for row in dataset:
        stem = Path(row["file_name"]).stem
        row["image"].save(images / f"{stem}.png")
        row["label"].save(labels / f"{stem}.png")
    return images, labels


def write_imagefolder(dataset: datasets.Dataset, root: str | os.PathLike[str], split: str = "train") -> Path:
    """Write `dataset` as a `datasets` imagefolder: images and label maps under `root/<split>/` and a
    `metadata.jsonl` whose `annotation_file_name` column becomes the `annotation` Image column."""
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as metadata:
        for row in dataset:
            stem = Path(row["file_name"]).stem
            row["image"].save(folder / f"{stem}.png")
            row["label"].save(folder / f"{stem}_label.png")
            metadata.write(json.dumps({"file_name": f"{stem}.png", "annotation_file_name": f"{stem}_label.png"}) + "\n")
    return folder


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_coco_panoptic(
    dataset: datasets.Dataset,
    root: str | os.PathLike[str],
    split: str = "train2017",
    category_ids: Sequence[int] | None = None,
    crowd_class: int | None = None,
) -> str:
    """Write `dataset` (made `with_instances=True`) in COCO panoptic's layout under `root`:
    `annotations/panoptic_<split>.json`, `panoptic_<split>/<stem>.png` (segment ids as RGB) and
    `<split>/<stem>.jpg` images.

    `category_ids` gives each class its dataset id (default: `2 * index + 1`, non-contiguous like COCO's);
    regions of class `crowd_class` are written as crowd segments. Segment ids are large (region id x 1000 + 7)
    so that all three RGB channels are used. Returns the JSON path.
    """
    root = Path(root)
    names = dataset.features["classes"].feature.names
    if category_ids is None:
        category_ids = [2 * index + 1 for index in range(len(names))]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, row in enumerate(dataset):
        stem = Path(row["file_name"]).stem
        row["image"].convert("RGB").save(root / split / f"{stem}.jpg", quality=95)
        label_map = np.asarray(row["label"])
        instance_map = np.asarray(row["instances"], dtype=np.int64)
        segment_map = np.zeros_like(instance_map)
        segments = []
        for region in np.unique(instance_map):
            where = instance_map == region
            class_id = int(np.bincount(label_map[where]).argmax())
            segment_id = int(region) * 1000 + 7
            segment_map[where] = segment_id
            segments.append(
                {
                    "id": segment_id,
                    "category_id": category_ids[class_id],
                    "iscrowd": int(crowd_class is not None and class_id == crowd_class),
                    "area": int(where.sum()),
                }
            )
        Image.fromarray(_id_to_rgb(segment_map), mode="RGB").save(root / f"panoptic_{split}" / f"{stem}.png")
        height, width = label_map.shape
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments})
    categories = [
        {"id": category_ids[index], "name": name, "isthing": int(index < 3)} for index, name in enumerate(names)
    ]
    json_path = root / "annotations" / f"panoptic_{split}.json"
    # Categories listed out of id order on purpose: the loader must sort them by id.
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories[::-1]}))
    return os.fspath(json_path)
