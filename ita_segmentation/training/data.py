"""Training data for ITA and FC-CLIP: dataset loading, large-scale jitter, targets and batching.

- Loading (`load_segmentation_dataset`): a Hub dataset id or a local path read by `datasets` (parquet, arrow,
  an imagefolder with label maps, a `save_to_disk` folder), COCO panoptic (`panoptic_<split>.json` + its PNG
  folder), folders of label maps, or the generated shapes of `synthetic.py`. Class names come from the
  dataset (its `ClassLabel` feature), a vocabulary file (`id:name,synonym,...`) or a list.
- `LargeScaleJitter`: Mask2Former/FC-CLIP's training augmentation for COCO panoptic
  (`COCOPanopticNewBaselineDatasetMapper`): random horizontal flip, `ResizeScale` to 0.1-2.0 of the target
  size, `FixedSizeCrop` (random crop, then padding to the crop size).
- `ITASegmentationDataset`: one example -> normalised `pixel_values`, `pixel_mask`, `image_sizes`, and
  per-image targets `mask_labels` `[N, H, W]` (bool, at the padded size) and `class_labels` `[N]`. Semantic
  label maps give one mask per class present; panoptic annotations one mask per non-crowd segment.
- `ITASegmentationCollator`: stacks the images, keeps the targets as per-image lists.

Augmentation randomness is a pure function of `(seed, epoch, index)`, not of a global random stream: an
example looks the same whichever process or dataloader worker loads it and whenever it is loaded, so a run
resumed from a checkpoint sees exactly the crops of an uninterrupted one.
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF

from configuration_ita import COCO_PANOPTIC_VOCABULARY
from image_processing_ita import resize_nearest, semantic_targets

from processing_ita import parse_vocabulary

__all__ = [
    "IGNORE_LABEL",
    "LargeScaleJitter",
    "ITASegmentationDataset",
    "ITASegmentationCollator",
    "load_segmentation_dataset",
    "load_coco_panoptic",
    "load_label_map_folders",
    "is_label_map_folders",
    "coco_panoptic_paths",
    "resolve_class_names",
    "decode_label_map",
    "decode_panoptic_segment_ids",
    "panoptic_targets",
    "label_map_from_targets",
]

logger = logging.getLogger(__name__)

# Label of pixels that are not scored in reference maps built from targets (transformers' ignore value).
IGNORE_LABEL = -100

# Mask2Former's COCO panoptic LSJ settings (configs/coco/panoptic-segmentation/Base-COCO-PanopticSegmentation.yaml:
# INPUT.IMAGE_SIZE, MIN_SCALE, MAX_SCALE).
DEFAULT_CROP_SIZE = 1024
DEFAULT_MIN_SCALE = 0.1
DEFAULT_MAX_SCALE = 2.0

LAYOUTS = ("auto", "coco_panoptic", "label_folders", "synthetic")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# COCO's split names, for the common short ones.
_COCO_SPLITS = {"train": "train2017", "validation": "val2017", "val": "val2017"}


# ------------------------------------------------------------------------------------------------------------
# Decoding and geometry
# ------------------------------------------------------------------------------------------------------------


def decode_label_map(value, where="label map"):
    """A semantic label map (PIL image of mode L/P/I;16/I/1, or an integer array) -> `[H, W]` int64 tensor."""
    if isinstance(value, (str, os.PathLike)):
        value = Image.open(value)
    if isinstance(value, Image.Image):
        if value.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            raise ValueError(
                f"{where} is a {value.mode} image; a semantic label map needs one channel of class ids (modes L, P, "
                "I;16 or I). For panoptic annotations (segment ids as RGB) give the segments column too."
            )
        array = np.asarray(value)
    else:
        array = np.asarray(value)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.squeeze(0) if array.shape[0] == 1 else array.squeeze(-1)
    if array.ndim != 2:
        raise ValueError(f"{where} has shape {array.shape}; expected (height, width) class ids")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{where} has dtype {array.dtype}; label maps hold integer class ids")
    return torch.from_numpy(array.astype(np.int64))


def decode_panoptic_segment_ids(value, where="panoptic map"):
    """A COCO panoptic PNG (segment id = R + 256 G + 256^2 B) or a 2-D id array -> `[H, W]` int64 tensor."""
    if isinstance(value, (str, os.PathLike)):
        value = Image.open(value)
    if isinstance(value, Image.Image):
        value = value.convert("RGB") if value.mode not in ("L", "I", "I;16", "P") else value
    array = np.asarray(value).astype(np.int64)
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array[..., 0] + 256 * array[..., 1] + 256 * 256 * array[..., 2]
    if array.ndim != 2:
        raise ValueError(f"{where} has shape {array.shape}; expected an RGB panoptic PNG or (height, width) ids")
    return torch.from_numpy(array)


@dataclass
class LargeScaleJitter:
    """Large-scale jitter as in Mask2Former/FC-CLIP's COCO panoptic training, in their order:

    1. `RandomFlip`: horizontal flip with probability 0.5 (if `horizontal_flip`).
    2. `ResizeScale`: draw `s ~ U(min_scale, max_scale)` and resize (keeping the aspect ratio, rounding half to
       even like `np.round`) so that the image fits in a `crop_size * s` square; bilinear with antialiasing
       for the image (PIL's bilinear), nearest for the labels.
    3. `FixedSizeCrop`: where the image exceeds `crop_size`, crop at `round((size - crop_size) * u)` with one
       `u ~ U(0, 1)` shared by both axes. Padding to `crop_size` (bottom/right) is left to the image processor,
       which also records the real region in `pixel_mask`/`image_sizes`; padded pixels carry no target.

    The original pads the image with grey 128 before normalisation; here padding is 0 after normalisation
    (CLIP's mean colour, as the image processor pads), a difference of 0.08 standard deviations.
    """

    crop_size: int = DEFAULT_CROP_SIZE
    min_scale: float = DEFAULT_MIN_SCALE
    max_scale: float = DEFAULT_MAX_SCALE
    horizontal_flip: bool = True

    def __post_init__(self):
        if not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer, got {self.crop_size!r}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale} and {self.max_scale}")

    def __call__(self, image, target, rng):
        """Jitter `image` `[C, H, W]` (uint8 or float) and `target` `[H, W]` (integer ids) alike.

        `rng` is a `numpy.random.Generator`. Returns both, at most `crop_size` on each side.
        """
        height, width = image.shape[-2:]
        if self.horizontal_flip and rng.random() < 0.5:
            image, target = image.flip(-1), target.flip(-1)

        scale = rng.uniform(self.min_scale, self.max_scale)
        box = self.crop_size * scale
        factor = min(box / height, box / width)
        new_height = max(1, int(np.round(height * factor)))
        new_width = max(1, int(np.round(width * factor)))
        image = tvF.resize(image, [new_height, new_width], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
        target = resize_nearest(target, (new_height, new_width))

        fraction = rng.uniform(0.0, 1.0)
        top = int(np.round(max(new_height - self.crop_size, 0) * fraction))
        left = int(np.round(max(new_width - self.crop_size, 0) * fraction))
        image = image[..., top : top + self.crop_size, left : left + self.crop_size]
        target = target[..., top : top + self.crop_size, left : left + self.crop_size]
        return image, target


# ------------------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------------------


def panoptic_targets(segment_ids, segments_info, padded_size, num_labels, where="panoptic map"):
    """One mask per non-crowd segment, as FC-CLIP's panoptic mapper: `(masks [N, *padded_size] bool, classes [N])`.

    `segment_ids` `[h, w]` holds segment ids; `segments_info` lists dicts with `id`, `category_id` (an index into
    the vocabulary) and `iscrowd`. Crowd segments give no target (their pixels are left out of the loss), and,
    as in the original, a segment cropped out of view still gives an (empty) target.
    """
    kept = [segment for segment in segments_info if not segment.get("iscrowd", 0)]
    classes = torch.tensor([int(segment["category_id"]) for segment in kept], dtype=torch.long)
    unknown = classes[(classes < 0) | (classes >= num_labels)]
    if unknown.numel():
        raise ValueError(
            f"{where} has segments of category {unknown.tolist()} outside the vocabulary of {num_labels} classes "
            f"(category ids must be 0..{num_labels - 1})"
        )
    ids = torch.tensor([int(segment["id"]) for segment in kept], dtype=torch.long)
    height, width = segment_ids.shape
    masks = torch.zeros((len(kept), *padded_size), dtype=torch.bool)
    masks[:, :height, :width] = segment_ids[None] == ids[:, None, None]
    return masks, classes


def label_map_from_targets(mask_labels, class_labels, size, fill=IGNORE_LABEL):
    """The semantic label map `[height, width]` (long) that per-image targets describe; `fill` where no mask is.

    Exact for targets from `semantic_targets` and `panoptic_targets` (their masks do not overlap).
    """
    height, width = size
    label_map = torch.full((height, width), fill, dtype=torch.long, device=class_labels.device)
    for mask, class_id in zip(mask_labels, class_labels):
        label_map[mask[:height, :width].bool()] = class_id
    return label_map


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


def coco_panoptic_paths(root, split="train2017"):
    """COCO's layout under `root` (`$DETECTRON2_DATASETS/coco`): `(annotations/panoptic_<split>.json,
    panoptic_<split>/, <split>/)`. `"train"` and `"validation"` stand for `train2017` and `val2017`."""
    split = _COCO_SPLITS.get(split, split)
    root = Path(root)
    return root / "annotations" / f"panoptic_{split}.json", root / f"panoptic_{split}", root / split


def load_coco_panoptic(panoptic_json, panoptic_dir, image_dir, class_names=COCO_PANOPTIC_VOCABULARY):
    """COCO panoptic as a `datasets.Dataset`: columns `image`, `label` (the panoptic PNG), `segments_info`
    (`id`, `category_id`, `iscrowd` per segment) and `file_name`.

    Category ids are mapped to contiguous indices in the order of their ids (detectron2's
    `stuff_dataset_id_to_contiguous_id` for COCO's 133 classes), so the n-th category is `class_names[n]`;
    `segments_info.category_id` is a `ClassLabel` over `class_names`, which `resolve_class_names` reads back.
    Image files come from the JSON's `images` list (else the annotation's stem + `.jpg`). Raises
    `FileNotFoundError` listing missing files and `ValueError` for a category count that does not match
    `class_names` or a segment of an unknown category.
    """
    panoptic_json, panoptic_dir, image_dir = Path(panoptic_json), Path(panoptic_dir), Path(image_dir)
    if not panoptic_json.is_file():
        raise FileNotFoundError(f"COCO panoptic annotations {panoptic_json} do not exist")
    info = json.loads(panoptic_json.read_text())
    for key in ("annotations", "categories"):
        if key not in info:
            raise ValueError(f"{panoptic_json} has no {key!r} list; is it a COCO panoptic annotation file?")
    class_names = list(class_names)
    categories = sorted(info["categories"], key=lambda category: category["id"])
    if len(categories) != len(class_names):
        raise ValueError(
            f"{panoptic_json} has {len(categories)} categories but the vocabulary has {len(class_names)} classes; "
            "give a vocabulary with one class per category, in the order of the category ids"
        )
    contiguous = {category["id"]: index for index, category in enumerate(categories)}
    image_files = {image["id"]: image["file_name"] for image in info.get("images", [])}

    rows = {"image": [], "label": [], "segments_info": [], "file_name": []}
    for annotation in info["annotations"]:
        image_name = image_files.get(annotation["image_id"], Path(annotation["file_name"]).stem + ".jpg")
        segments = []
        for segment in annotation["segments_info"]:
            if segment["category_id"] not in contiguous:
                raise ValueError(
                    f"{panoptic_json}: image {annotation['image_id']} has segment {segment['id']} of category_id "
                    f"{segment['category_id']}, which is not among the {len(categories)} categories"
                )
            segments.append(
                {
                    "id": int(segment["id"]),
                    "category_id": contiguous[segment["category_id"]],
                    "iscrowd": int(segment.get("iscrowd", 0)),
                }
            )
        rows["image"].append(os.fspath(image_dir / image_name))
        rows["label"].append(os.fspath(panoptic_dir / annotation["file_name"]))
        rows["segments_info"].append(segments)
        rows["file_name"].append(image_name)
    if not rows["image"]:
        raise ValueError(f"{panoptic_json} lists no annotated image")
    missing = [path for path in rows["image"] + rows["label"] if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} files listed by {panoptic_json} are missing, e.g. {missing[:5]}")
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Image(),
            "segments_info": datasets.List(
                {
                    "id": datasets.Value("int64"),
                    "category_id": datasets.ClassLabel(names=class_names),
                    "iscrowd": datasets.Value("int64"),
                }
            ),
            "file_name": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def load_label_map_folders(image_dir, label_dir, label_suffix=".png", unpaired=None):
    """Pairs of images and label maps with the same file stem: every `*<label_suffix>` in `label_dir` and the
    image of that stem in `image_dir` (any common image suffix). Columns `image`, `label`, `file_name`.

    Label maps without an image and images without a label map are appended to `unpaired` as `(path, message)`
    (`evaluation.data_check` reports them with the other problems of the data); without that list they raise a
    `FileNotFoundError` naming them all."""
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"Folder {folder} does not exist")
    labels = sorted(label_dir.glob(f"*{label_suffix}"))
    if not labels:
        raise FileNotFoundError(f"No {label_suffix} label maps in {label_dir}")
    stems = {label.name[: -len(label_suffix)] for label in labels}
    problems, pairs = [], []
    for label in labels:
        stem = label.name[: -len(label_suffix)]
        candidates = (image_dir / f"{stem}{suffix}" for suffix in _IMAGE_SUFFIXES)
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            problems.append((label, f"its image {image_dir / stem}.* ({', '.join(_IMAGE_SUFFIXES)}) is missing"))
        else:
            pairs.append((found, label))
    for image in sorted(image_dir.iterdir()):
        if image.suffix.lower() in _IMAGE_SUFFIXES and image.stem not in stems and not image.name.startswith("."):
            problems.append((image, f"its label map {label_dir / (image.stem + label_suffix)} is missing"))
    if problems and unpaired is None:
        raise FileNotFoundError(
            f"{len(problems)} files in {image_dir} and {label_dir} have no pair:\n"
            + "\n".join(f"  {path}: {message}" for path, message in problems)
        )
    if unpaired is not None:
        unpaired.extend(problems)
    if not pairs:
        raise FileNotFoundError(f"No label map in {label_dir} has its image in {image_dir}")
    return datasets.Dataset.from_dict(
        {
            "image": [os.fspath(image) for image, _ in pairs],
            "label": [os.fspath(label) for _, label in pairs],
            "file_name": [image.name for image, _ in pairs],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Image(), "file_name": datasets.Value("string")}
        ),
    )


def is_label_map_folders(source, split, image_subdir="images", label_subdir="annotations"):
    """Whether `source` is a local folder in the label-map layout: `<image_subdir>/<split>` and
    `<label_subdir>/<split>` subfolders (ADE20K's layout), which `datasets`' imagefolder would misread (it would
    take the label maps for more training images)."""
    if source is None:
        return False
    root = Path(os.fspath(source))
    return (root / image_subdir / split).is_dir() and (root / label_subdir / split).is_dir()


def _is_saved_dataset(path):
    markers = ("dataset_info.json", "dataset_dict.json", "state.json")  # written by save_to_disk
    return path.is_dir() and any((path / name).is_file() for name in markers)


def load_segmentation_dataset(
    source,
    split="train",
    layout="auto",
    max_samples=None,
    label_subdir="annotations",
    image_subdir="images",
    synthetic_num_images=64,
    synthetic_image_size=64,
    unpaired=None,
    **load_kwargs,
):
    """Load one split of a segmentation dataset as a `datasets.Dataset`.

    Layouts:
        - `"auto"`: label-map folders when `source` has them (`is_label_map_folders`), else `source` is a Hub
          dataset id or a local path for `datasets.load_dataset` (a folder of parquet/arrow files, an
          imagefolder with `metadata.jsonl`, a single `.parquet`/`.arrow`/`.jsonl` file, or a builder name such
          as `"parquet"` with `data_files=` in `load_kwargs`), or a folder written by `save_to_disk` (read with
          `load_from_disk`).
        - `"coco_panoptic"`: `source` is COCO's root (`annotations/panoptic_<split>.json`, `panoptic_<split>/`,
          `<split>/`); see `load_coco_panoptic`.
        - `"label_folders"`: `source/<image_subdir>/<split>` images and `source/<label_subdir>/<split>` label
          maps (ADE20K's layout); see `load_label_map_folders`.
        - `"synthetic"`: generated shapes (`synthetic.make_synthetic_dataset`); `source` is ignored, the
          validation split uses other scenes than the training split.
    `max_samples` keeps the first N rows. `unpaired` (label-map folders) is `load_label_map_folders`'s.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown dataset layout {layout!r}; choose one of {LAYOUTS}")
    if layout == "auto" and not load_kwargs and is_label_map_folders(source, split, image_subdir, label_subdir):
        logger.info("%s holds %s/%s and %s/%s: reading it as label-map folders", source, image_subdir, split,
                    label_subdir, split)
        layout = "label_folders"
    if layout == "synthetic":
        from ..synthetic import make_synthetic_dataset

        seed = 0 if split == "train" else 1
        dataset = make_synthetic_dataset(synthetic_num_images, synthetic_image_size, seed=seed)
    elif source is None:
        raise ValueError(f"Give the dataset's location (dataset_name_or_path) for the {layout!r} layout")
    elif layout == "coco_panoptic":
        panoptic_json, panoptic_dir, image_dir = coco_panoptic_paths(source, split)
        dataset = load_coco_panoptic(panoptic_json, panoptic_dir, image_dir, **load_kwargs)
    elif layout == "label_folders":
        root = Path(source)
        dataset = load_label_map_folders(
            root / image_subdir / split, root / label_subdir / split, unpaired=unpaired, **load_kwargs
        )
    else:
        path = Path(os.fspath(source))
        if _is_saved_dataset(path):
            dataset = datasets.load_from_disk(os.fspath(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise KeyError(f"{source} has no split {split!r}; its splits: {list(dataset)}")
                dataset = dataset[split]
        elif path.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}.get(path.suffix)
            if builder is None:
                raise ValueError(
                    f"Cannot tell the format of {source}; use a .parquet, .arrow or .jsonl file or a folder"
                )
            dataset = datasets.load_dataset(builder, data_files={split: os.fspath(path)}, split=split, **load_kwargs)
        else:
            dataset = datasets.load_dataset(os.fspath(source), split=split, **load_kwargs)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def _class_label_names(feature):
    """Every `ClassLabel`'s names inside a (nested) feature."""
    if isinstance(feature, datasets.ClassLabel):
        return [tuple(feature.names)]
    if isinstance(feature, dict):
        return [names for value in feature.values() for names in _class_label_names(value)]
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return _class_label_names(inner)
    return []


def resolve_class_names(dataset, class_names=None, vocabulary_file=None):
    """The vocabulary of a dataset: `vocabulary_file` (`id:name,synonym,...` lines, read with
    `vocabulary_files.read_vocabulary_file`), else `class_names`, else the names of the dataset's `ClassLabel`
    feature (e.g. COCO panoptic's `segments_info.category_id`). Raises a `ValueError` when none applies."""
    if vocabulary_file is not None and class_names:
        raise ValueError("Give a vocabulary file or class names, not both")
    if vocabulary_file is not None:
        from ..vocabulary_files import read_vocabulary_file

        names = read_vocabulary_file(vocabulary_file)
    elif class_names:
        names = list(class_names)
    else:
        found = sorted(set(_class_label_names(dataset.features)))
        if len(found) != 1:
            problem = f"{len(found)} different ClassLabel features" if found else "no ClassLabel feature"
            raise ValueError(
                f"Cannot tell the class names: the dataset has {problem}; give a vocabulary file (one "
                "`id:name,synonym,...` line per class) or the class names"
            )
        names = list(found[0])
    parse_vocabulary(names)
    return names


# ------------------------------------------------------------------------------------------------------------
# Dataset and collator
# ------------------------------------------------------------------------------------------------------------


class ITASegmentationDataset(torch.utils.data.Dataset):
    """Model inputs and targets from a `datasets.Dataset` of images and label maps (or panoptic annotations).

    Args:
        dataset: the rows; `image_column` holds images, `label_column` semantic label maps or, with
            `segments_column`, panoptic PNGs whose segments that column describes (`id`, `category_id`,
            `iscrowd`).
        image_processor: an `ITAImageProcessor`; it normalises and pads the images (and, for evaluation,
            resizes them to its `size`).
        class_names: the vocabulary; label ids and `category_id`s index it.
        jitter: a `LargeScaleJitter` for training; None for evaluation (the image processor's resize).
        ignore_index / reduce_labels: of the semantic label maps.
        dominant_categories_column: a column of precomputed dominant categories per image (lists of candidate
            names, or of indices), turned into `dominant_category_ids`; needs `candidate_names` (the
            vocabulary's synonyms plus the extra candidates, `model.encode_vocabulary(names).candidate_names`)
            and `num_dominant_categories` (k: lists are cut to k, shorter ones repeated to fill k).
        seed: seed of the augmentation; example `i` of epoch `e` is jittered with `numpy` generator
            `(seed, e, i)`. Call `set_epoch` (the Trainer does, through `ITATrainer`) to vary it by epoch.
        name: what error messages call this dataset.

    Items: `pixel_values` `[3, H, W]`, `pixel_mask` `[H, W]`, `image_sizes` `[2]`, `mask_labels` `[N, H, W]` bool,
    `class_labels` `[N]` long, `class_names` (the vocabulary) and, with the column, `dominant_category_ids` `[k]`.
    """

    def __init__(
        self,
        dataset,
        image_processor,
        class_names,
        jitter=None,
        image_column="image",
        label_column="label",
        segments_column=None,
        ignore_index=255,
        reduce_labels=False,
        dominant_categories_column=None,
        candidate_names=None,
        num_dominant_categories=None,
        seed=0,
        name="training",
    ):
        self.dataset = dataset
        self.image_processor = image_processor
        self.class_names = list(class_names)
        parse_vocabulary(self.class_names)
        self.jitter = jitter
        self.image_column = image_column
        self.label_column = label_column
        self.segments_column = segments_column
        self.ignore_index = ignore_index
        self.reduce_labels = reduce_labels
        self.dominant_categories_column = dominant_categories_column
        self.num_dominant_categories = num_dominant_categories
        self.seed = seed
        self.epoch = 0
        self.name = name
        columns = [image_column, label_column] + [c for c in (segments_column, dominant_categories_column) if c]
        missing = [column for column in columns if column not in dataset.column_names]
        if missing:
            raise KeyError(
                f"The {name} dataset has no column {missing[0]!r}; its columns are {dataset.column_names}. "
                "Name the columns with image_column / label_column / segments_column / dominant_categories_column."
            )
        divisor = getattr(image_processor, "size_divisor", 1)
        if jitter is not None and jitter.crop_size % divisor:
            raise ValueError(
                f"crop_size {jitter.crop_size} must be a multiple of the image processor's size_divisor ({divisor}): "
                "the crop is padded to crop_size and the model needs sides divisible by its largest stride"
            )
        self._candidate_index = None
        if dominant_categories_column is not None:
            if not candidate_names or not num_dominant_categories:
                raise ValueError(
                    "Reading dominant categories from a column needs the vocabulary's candidate names and k > 0 "
                    "(a model with dominant-category text queries)"
                )
            self.candidate_names = list(candidate_names)
            self._candidate_index = {}
            for index, candidate in enumerate(self.candidate_names):
                self._candidate_index.setdefault(candidate, index)

    @property
    def num_labels(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _dominant_category_ids(self, values, where):
        if values is None or len(values) == 0:
            raise ValueError(f"{where}: column {self.dominant_categories_column!r} is empty")
        ids = []
        for value in values:
            if isinstance(value, str):
                if value not in self._candidate_index:
                    raise ValueError(
                        f"{where}: dominant category {value!r} in column {self.dominant_categories_column!r} is not "
                        f"a candidate of the vocabulary (its synonyms plus the extra names); candidates start "
                        f"{self.candidate_names[:8]}"
                    )
                ids.append(self._candidate_index[value])
            else:
                value = int(value)
                if not 0 <= value < len(self.candidate_names):
                    raise ValueError(
                        f"{where}: dominant category index {value} is outside the "
                        f"{len(self.candidate_names)} candidates"
                    )
                ids.append(value)
        k = self.num_dominant_categories
        return torch.tensor([ids[slot % len(ids)] for slot in range(k)], dtype=torch.long)

    def __getitem__(self, index):
        row = self.dataset[int(index)]
        where = f"Row {index} of the {self.name} dataset"
        image = self.image_processor.process_image(row[self.image_column], index=index)  # [3, H, W]
        if self.segments_column is not None:
            target = decode_panoptic_segment_ids(row[self.label_column], where=f"{where}: {self.label_column!r}")
        else:
            target = decode_label_map(row[self.label_column], where=f"{where}: label map {self.label_column!r}")
        if tuple(target.shape) != tuple(image.shape[-2:]):
            raise ValueError(
                f"{where}: the label map {self.label_column!r} has size {tuple(target.shape)} (height, width) but "
                f"the image has size {tuple(image.shape[-2:])}; label maps must match their images pixel for pixel"
            )

        if image.is_floating_point():  # 16-bit sources come back on the 0..255 scale; the processor wants 0..1
            image = (image / 255.0).clamp_(0.0, 1.0)
        if self.jitter is not None:
            rng = np.random.default_rng((self.seed, self.epoch, int(index)))
            image, target = self.jitter(image, target, rng)
            size = self.jitter.crop_size
            encoded = self.image_processor(
                image, do_resize=False, pad_size={"height": size, "width": size}, return_tensors="pt"
            )
        else:
            encoded = self.image_processor(image, return_tensors="pt")
            target = resize_nearest(target, tuple(encoded["image_sizes"][0].tolist()))
        padded_size = tuple(encoded["pixel_values"].shape[-2:])

        if self.segments_column is not None:
            masks, classes = panoptic_targets(
                target, row[self.segments_column], padded_size, self.num_labels, where=where
            )
        else:
            masks, classes = semantic_targets(
                target, padded_size, self.num_labels, self.ignore_index, self.reduce_labels, where=where
            )
        item = {
            "pixel_values": encoded["pixel_values"][0],
            "pixel_mask": encoded["pixel_mask"][0],
            "image_sizes": encoded["image_sizes"][0],
            "mask_labels": masks,
            "class_labels": classes,
            "class_names": self.class_names,
        }
        if self.dominant_categories_column is not None:
            item["dominant_category_ids"] = self._dominant_category_ids(row[self.dominant_categories_column], where)
        return item


class ITASegmentationCollator:
    """Batches `ITASegmentationDataset` items: images padded (bottom/right, zeros) to the largest in the batch
    and stacked; `mask_labels` padded alike but kept, with `class_labels`, as per-image lists (images have
    different numbers of targets); `class_names` passed once."""

    def __call__(self, features):
        if not features:
            raise ValueError("Cannot collate an empty batch")
        height = max(item["pixel_values"].shape[-2] for item in features)
        width = max(item["pixel_values"].shape[-1] for item in features)

        def pad(tensor, value=0):
            extra_h, extra_w = height - tensor.shape[-2], width - tensor.shape[-1]
            if extra_h == 0 and extra_w == 0:
                return tensor
            if tensor.dtype == torch.bool:
                return torch.nn.functional.pad(tensor.to(torch.uint8), (0, extra_w, 0, extra_h), value=value).bool()
            return torch.nn.functional.pad(tensor, (0, extra_w, 0, extra_h), value=value)

        class_names = features[0]["class_names"]
        if any(item["class_names"] != class_names for item in features[1:]):
            raise ValueError("All examples of a batch must share one vocabulary (class_names)")
        batch = {
            "pixel_values": torch.stack([pad(item["pixel_values"]) for item in features]),
            "pixel_mask": torch.stack([pad(item["pixel_mask"]) for item in features]),
            "image_sizes": torch.stack([item["image_sizes"] for item in features]),
            "mask_labels": [pad(item["mask_labels"]) for item in features],
            "class_labels": [item["class_labels"] for item in features],
            "class_names": list(class_names),
        }
        with_ids = ["dominant_category_ids" in item for item in features]
        if any(with_ids):
            if not all(with_ids):
                raise ValueError("Some examples of the batch have dominant_category_ids and others do not")
            batch["dominant_category_ids"] = torch.stack([item["dominant_category_ids"] for item in features])
        return batch
