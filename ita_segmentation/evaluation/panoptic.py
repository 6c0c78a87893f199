"""Panoptic quality of a model on COCO-panoptic-style splits: COCO panoptic val2017 and ADE20K panoptic.

Both are in COCO's panoptic format, as detectron2 / Mask2Former / FC-CLIP prepare them under
`$DETECTRON2_DATASETS`:

- coco_panoptic: `coco/annotations/panoptic_val2017.json`, PNGs in `coco/panoptic_val2017/` (or
  `coco/annotations/panoptic_val2017/`), images in `coco/val2017/`; 133 categories (80 things, 53 stuff), classes
  with FC-CLIP's synonyms (`COCO_PANOPTIC_VOCABULARY`, in category-id order).
- ade20k_panoptic: `ADEChallengeData2016/ade20k_panoptic_val.json`, PNGs in
  `ADEChallengeData2016/ade20k_panoptic_val/`, images in `ADEChallengeData2016/images/validation/` (Mask2Former's
  `prepare_ade20k_pan_seg.py`); 150 categories (100 things, 50 stuff), classes from FC-CLIP's A-150 list.

Things and stuff come from the annotation file's `isthing`; the n-th category by id is the n-th class of the
vocabulary. Each image is predicted alone at the processor's resolution, its panoptic segmentation taken at the
annotation's size with FC-CLIP's rules (`post_process_panoptic_segmentation`, stuff = the stuff categories),
and added to a `PanopticQuality` accumulator (panopticapi's rules). Scores are written in percent, as
panopticapi prints them. FC-CLIP's published ADE20K panoptic quality (trained on COCO): PQ 26.8.
"""

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from image_processing_ita import open_image
from processing_ita import ITAProcessor

from ..vocabulary_files import read_vocabulary_file
from .benchmarks import VOCABULARY_DIR
from .errors import EvaluationDataError, MissingDataError, OutputFolderTakenError
from .panoptic_quality import PanopticQuality

logger = logging.getLogger(__name__)

# A category of a panoptic split: (id, name, isthing).
PanopticCategory = tuple[int, str, bool]

__all__ = [
    "PANOPTIC_BENCHMARKS",
    "PanopticBenchmark",
    "read_panoptic_split",
    "find_panoptic_split",
    "evaluate_panoptic",
    "write_panoptic_results",
]


@dataclass(frozen=True)
class PanopticBenchmark:
    """Where a panoptic validation split lives under the datasets root, and its classes.

    Attributes:
        name, display_name: registry key and the name papers use.
        annotation_file: the COCO panoptic JSON, relative to the root.
        png_dirs: folders of the panoptic PNGs, tried in order.
        image_dir: folder of the images.
        vocabulary_file: FC-CLIP's class list in `vocabularies/`, or `None` for COCO panoptic's own.
    """

    name: str
    display_name: str
    annotation_file: str
    png_dirs: tuple[str, ...]
    image_dir: str
    vocabulary_file: str | None = None

    def class_names(self) -> list[str]:
        if self.vocabulary_file is None:
            from configuration_ita import COCO_PANOPTIC_VOCABULARY

            return list(COCO_PANOPTIC_VOCABULARY)
        return read_vocabulary_file(VOCABULARY_DIR / self.vocabulary_file)


PANOPTIC_BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        PanopticBenchmark(
            "coco_panoptic",
            "COCO panoptic",
            "coco/annotations/panoptic_val2017.json",
            ("coco/panoptic_val2017", "coco/annotations/panoptic_val2017"),
            "coco/val2017",
        ),
        PanopticBenchmark(
            "ade20k_panoptic",
            "ADE20K panoptic",
            "ADEChallengeData2016/ade20k_panoptic_val.json",
            ("ADEChallengeData2016/ade20k_panoptic_val",),
            "ADEChallengeData2016/images/validation",
            vocabulary_file="ade150.txt",
        ),
    )
}


def read_panoptic_split(
    annotation_file: str | os.PathLike[str], png_dir: str | os.PathLike[str], image_dir: str | os.PathLike[str]
) -> tuple[list[dict[str, Any]], list[PanopticCategory]]:
    """A COCO panoptic split -> `(records, categories)`.

    `records`: one dict per annotated image, `{"image": path, "panoptic": png path, "segments_info": [...]}`;
    `categories`: `[(id, name, isthing)]` sorted by id. Raises `FileNotFoundError` / `ValueError` naming what is
    missing or malformed."""
    annotation_file, png_dir, image_dir = Path(annotation_file), Path(png_dir), Path(image_dir)
    if not annotation_file.is_file():
        raise MissingDataError(f"Panoptic annotations {annotation_file} do not exist")
    info = json.loads(annotation_file.read_text())
    for key in ("annotations", "categories", "images"):
        if not isinstance(info.get(key), list):
            raise EvaluationDataError(f"{annotation_file} has no {key!r} list; is it a COCO panoptic annotation file?")
    categories = sorted((int(c["id"]), c["name"], bool(c.get("isthing", 0))) for c in info["categories"])
    image_files = {image["id"]: image["file_name"] for image in info["images"]}
    records = []
    for annotation in info["annotations"]:
        if annotation["image_id"] not in image_files:
            raise EvaluationDataError(
                f"{annotation_file}: annotation {annotation['file_name']} names an unknown image_id"
            )
        records.append(
            {
                "image": image_dir / image_files[annotation["image_id"]],
                "panoptic": png_dir / annotation["file_name"],
                "segments_info": annotation["segments_info"],
            }
        )
    return records, categories


def find_panoptic_split(
    benchmark: PanopticBenchmark, data_dir: str | os.PathLike[str]
) -> tuple[list[dict[str, Any]], list[PanopticCategory]]:
    """`read_panoptic_split` for a registered benchmark under the datasets root `data_dir`."""
    data_dir = Path(data_dir)
    png_dir = next((data_dir / d for d in benchmark.png_dirs if (data_dir / d).is_dir()), None)
    if png_dir is None:
        tried = ", ".join(str(data_dir / d) for d in benchmark.png_dirs)
        raise MissingDataError(
            f"{benchmark.display_name}: no panoptic PNG folder under {data_dir} (tried {tried}); pass the datasets "
            "root ($DETECTRON2_DATASETS) prepared by detectron2's prepare_*_panoptic scripts as --data-dir"
        )
    return read_panoptic_split(data_dir / benchmark.annotation_file, png_dir, data_dir / benchmark.image_dir)


def _segment_ids(png_path: str | os.PathLike[str]) -> np.ndarray:
    with Image.open(png_path) as png:
        rgb = np.asarray(png.convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def evaluate_panoptic(
    model: Any,
    processor: ITAProcessor,
    records: Sequence[Mapping[str, Any]],
    categories: Sequence[PanopticCategory],
    class_names: Sequence[str],
    max_samples: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """PQ / SQ / RQ of `model` on `records` (from `read_panoptic_split`), one image at a time.

    `class_names[i]` names category `categories[i]`. Returns `PanopticQuality.compute()`'s dict (fractions).
    """
    if len(class_names) != len(categories):
        raise ValueError(f"{len(class_names)} class names for {len(categories)} categories")
    metric = PanopticQuality({category: isthing for category, _, isthing in categories})
    stuff = {index for index, (_, _, isthing) in enumerate(categories) if not isthing}
    category_ids = [category for category, _, _ in categories]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocabulary = model.encode_vocabulary(class_names)  # once per split
    records = records[:max_samples] if max_samples else records
    for record in tqdm(records, desc="panoptic", unit="image", disable=not progress):
        image = open_image(record["image"], where="image")
        truth = _segment_ids(record["panoptic"])
        features = processor(images=image, return_tensors="pt")
        inputs = {
            key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in features.items()
        }
        with torch.no_grad():
            outputs = model(**inputs, vocabulary=vocabulary)
        result = processor.post_process_panoptic_segmentation(
            outputs, label_ids_to_fuse=stuff, target_sizes=[truth.shape]
        )[0]
        predicted = [
            {"id": segment["id"], "category_id": category_ids[segment["label_id"]]}
            for segment in result["segments_info"]
        ]
        metric.add(
            result["segmentation"].cpu().numpy(), predicted, truth, record["segments_info"], where=str(record["image"])
        )
    return metric.compute()


def write_panoptic_results(
    output_dir: str | os.PathLike[str],
    scores: Mapping[str, Any],
    categories: Sequence[PanopticCategory],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`results.json` (PQ, SQ, RQ in percent for all / things / stuff, with `n`) and `per_class.csv` in
    `output_dir`, which must not hold results already."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "per_class.csv"):
        if (output_dir / name).exists():
            raise OutputFolderTakenError(f"{output_dir / name} exists; choose another output folder")

    def percent(group: Mapping[str, Any]) -> dict[str, Any]:
        return {
            key: (None if value is None else round(100 * value, 3)) if key != "n" else value
            for key, value in group.items()
        }

    report: dict[str, Any] = {group: percent(scores[group]) for group in ("all", "things", "stuff")}
    report["num_images"] = scores["num_images"]
    report.update(extra or {})
    (output_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    names = {category: name for category, name, _ in categories}
    with open(output_dir / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["category_id", "name", "isthing", "PQ", "SQ", "RQ", "TP", "FP", "FN"])
        for category, values in scores["per_category"].items():
            writer.writerow(
                [
                    category,
                    names[category],
                    int(values["isthing"]),
                    round(100 * values["pq"], 3),
                    round(100 * values["sq"], 3),
                    round(100 * values["rq"], 3),
                    values["tp"],
                    values["fp"],
                    values["fn"],
                ]
            )
    return report
