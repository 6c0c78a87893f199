"""Training data for ITA and FC-CLIP: large-scale jitter, targets and batching.

The rows come from `segmentation_data.load_segmentation_dataset` (Hub ids, parquet/arrow/imagefolder, COCO
panoptic, label-map folders, generated shapes), their classes from `segmentation_data.resolve_class_names`.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvF

from image_processing_ita import ITAImageProcessor, resize_nearest, semantic_targets
from processing_ita import parse_vocabulary

from ..label_maps import decode_label_map, decode_panoptic_segment_ids
from .defaults import DEFAULT_CROP_SIZE, DEFAULT_MAX_SCALE, DEFAULT_MIN_SCALE

__all__ = [
    "IGNORE_LABEL",
    "LargeScaleJitter",
    "ITASegmentationDataset",
    "ITASegmentationCollator",
    "panoptic_targets",
    "label_map_from_targets",
]

# Label of pixels that are not scored in reference maps built from targets (transformers' ignore value).
IGNORE_LABEL = -100


# ------------------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer, got {self.crop_size!r}")
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale} and {self.max_scale}")

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
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


def panoptic_targets(
    segment_ids: torch.Tensor,
    segments_info: Sequence[Mapping[str, Any]],
    padded_size: tuple[int, int],
    num_labels: int,
    where: str = "panoptic map",
) -> tuple[torch.Tensor, torch.Tensor]:
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


def label_map_from_targets(
    mask_labels: torch.Tensor | Sequence[torch.Tensor],
    class_labels: torch.Tensor,
    size: Sequence[int],
    fill: int = IGNORE_LABEL,
) -> torch.Tensor:
    """The semantic label map `[height, width]` (long) that per-image targets describe; `fill` where no mask is.

    Exact for targets from `semantic_targets` and `panoptic_targets` (their masks do not overlap).
    """
    height, width = size
    label_map = torch.full((height, width), fill, dtype=torch.long, device=class_labels.device)
    for mask, class_id in zip(mask_labels, class_labels):
        label_map[mask[:height, :width].bool()] = class_id
    return label_map


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
        dataset: datasets.Dataset,
        image_processor: ITAImageProcessor,
        class_names: Sequence[str],
        jitter: LargeScaleJitter | None = None,
        image_column: str = "image",
        label_column: str = "label",
        segments_column: str | None = None,
        ignore_index: int = 255,
        reduce_labels: bool = False,
        dominant_categories_column: str | None = None,
        candidate_names: Sequence[str] | None = None,
        num_dominant_categories: int | None = None,
        seed: int = 0,
        name: str = "training",
    ) -> None:
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
        self._candidate_index: dict[str, int] = {}
        if dominant_categories_column is not None:
            if not candidate_names or not num_dominant_categories:
                raise ValueError(
                    "Reading dominant categories from a column needs the vocabulary's candidate names and k > 0 "
                    "(a model with dominant-category text queries)"
                )
            self.candidate_names = list(candidate_names)
            for index, candidate in enumerate(self.candidate_names):
                self._candidate_index.setdefault(candidate, index)

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _dominant_category_ids(self, values: Sequence[str | int] | None, where: str) -> torch.Tensor:
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
        k = self.num_dominant_categories or 0  # set with the column (checked in __init__)
        return torch.tensor([ids[slot % len(ids)] for slot in range(k)], dtype=torch.long)

    def __getitem__(self, index: int) -> dict[str, Any]:
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

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch")
        height = max(item["pixel_values"].shape[-2] for item in features)
        width = max(item["pixel_values"].shape[-1] for item in features)

        def pad(tensor: torch.Tensor, value: int = 0) -> torch.Tensor:
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
