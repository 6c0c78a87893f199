"""Segmentation data on disk and on the Hub as `datasets.Dataset` rows: what training and evaluation both read.

- `load_segmentation_dataset`: a Hub dataset id or a local path read by `datasets` (parquet, arrow, an
  imagefolder with label maps, a `save_to_disk` folder), COCO panoptic (`panoptic_<split>.json` + its PNG
  folder), folders of label maps, or the generated shapes of `synthetic.py`.
- `resolve_class_names`: the classes of such rows, from a vocabulary file (`id:name,synonym,...`), a list, or
  the dataset's `ClassLabel` feature.

Images and label maps stay files (or bytes) in the rows until they are read; `label_maps` decodes label maps.
"""

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from configuration_ita import COCO_PANOPTIC_VOCABULARY
from processing_ita import parse_vocabulary

from .dataset_layouts import LAYOUTS
from .errors import ITADataError, ITAUsageError
from .synthetic import make_synthetic_dataset
from .vocabulary_files import read_vocabulary_file

__all__ = [
    "LAYOUTS",
    "DatasetArgumentError",
    "DatasetContentError",
    "DatasetFilesMissingError",
    "DatasetLocationError",
    "coco_panoptic_paths",
    "is_label_map_folders",
    "load_coco_panoptic",
    "load_label_map_folders",
    "load_segmentation_dataset",
    "resolve_class_names",
    "unreachable_dataset_message",
]

logger = logging.getLogger(__name__)


class DatasetLocationError(ITAUsageError, FileNotFoundError):
    """A data set's file or folder that is not there (a usage error: exit status 2)."""


class DatasetArgumentError(ITAUsageError, ValueError):
    """Data-set arguments that cannot work together or name nothing readable (a usage error: exit status 2)."""


class DatasetContentError(ITADataError, ValueError):
    """A data set that is there but cannot be read as the layout says: a malformed annotation file, files it
    lists that are missing, images without their label maps (a data error: exit status 1)."""


class DatasetFilesMissingError(ITADataError, FileNotFoundError):
    """Files a data set needs are missing from it (a data error: exit status 1)."""


PathLike = str | os.PathLike[str]
# `(file, message)` for each file found without its pair (an image without a label map, or the reverse).
Unpaired = list[tuple[Path, str]]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# COCO's split names, for the common short ones.
_COCO_SPLITS = {"train": "train2017", "validation": "val2017", "val": "val2017"}


def coco_panoptic_paths(root: PathLike, split: str = "train2017") -> tuple[Path, Path, Path]:
    """COCO's layout under `root` (`$DETECTRON2_DATASETS/coco`): `(annotations/panoptic_<split>.json,
    panoptic_<split>/, <split>/)`. `"train"` and `"validation"` stand for `train2017` and `val2017`."""
    split = _COCO_SPLITS.get(split, split)
    root = Path(root)
    return root / "annotations" / f"panoptic_{split}.json", root / f"panoptic_{split}", root / split


def load_coco_panoptic(
    panoptic_json: PathLike,
    panoptic_dir: PathLike,
    image_dir: PathLike,
    class_names: Sequence[str] = COCO_PANOPTIC_VOCABULARY,
) -> datasets.Dataset:
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
        raise DatasetLocationError(f"COCO panoptic annotations {panoptic_json} do not exist")
    info = json.loads(panoptic_json.read_text())
    for key in ("annotations", "categories"):
        if key not in info:
            raise DatasetContentError(f"{panoptic_json} has no {key!r} list; is it a COCO panoptic annotation file?")
    class_names = list(class_names)
    categories = sorted(info["categories"], key=lambda category: category["id"])
    if len(categories) != len(class_names):
        raise DatasetContentError(
            f"{panoptic_json} has {len(categories)} categories but the vocabulary has {len(class_names)} classes; "
            "give a vocabulary with one class per category, in the order of the category ids"
        )
    contiguous = {category["id"]: index for index, category in enumerate(categories)}
    image_files = {image["id"]: image["file_name"] for image in info.get("images", [])}

    rows: dict[str, list[Any]] = {"image": [], "label": [], "segments_info": [], "file_name": []}
    for annotation in info["annotations"]:
        image_name = image_files.get(annotation["image_id"], Path(annotation["file_name"]).stem + ".jpg")
        segments = []
        for segment in annotation["segments_info"]:
            if segment["category_id"] not in contiguous:
                raise DatasetContentError(
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
        raise DatasetContentError(f"{panoptic_json} lists no annotated image")
    missing = [path for path in rows["image"] + rows["label"] if not os.path.isfile(path)]
    if missing:
        raise DatasetFilesMissingError(
            f"{len(missing)} files listed by {panoptic_json} are missing, e.g. {missing[:5]}"
        )
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


def load_label_map_folders(
    image_dir: PathLike, label_dir: PathLike, label_suffix: str = ".png", unpaired: Unpaired | None = None
) -> datasets.Dataset:
    """Pairs of images and label maps with the same file stem: every `*<label_suffix>` in `label_dir` and the
    image of that stem in `image_dir` (any common image suffix). Columns `image`, `label`, `file_name`.

    Label maps without an image and images without a label map are appended to `unpaired` as `(path, message)`
    (`evaluation.data_check` reports them with the other problems of the data); without that list they raise a
    `FileNotFoundError` naming them all."""
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DatasetLocationError(f"Folder {folder} does not exist")
    labels = sorted(label_dir.glob(f"*{label_suffix}"))
    if not labels:
        raise DatasetFilesMissingError(f"No {label_suffix} label maps in {label_dir}")
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
        raise DatasetFilesMissingError(
            f"{len(problems)} files in {image_dir} and {label_dir} have no pair:\n"
            + "\n".join(f"  {path}: {message}" for path, message in problems)
        )
    if unpaired is not None:
        unpaired.extend(problems)
    if not pairs:
        raise DatasetFilesMissingError(f"No label map in {label_dir} has its image in {image_dir}")
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


def label_map_splits(root: PathLike, image_subdir: str = "images", label_subdir: str = "annotations") -> list[str]:
    """The splits of label-map folders at `root`: the names of the subfolders that both `<image_subdir>` and
    `<label_subdir>` hold (empty when `root` is not in that layout)."""
    root = Path(os.fspath(root))
    found = []
    for subdir in (image_subdir, label_subdir):
        folder = root / subdir
        found.append({path.name for path in folder.iterdir() if path.is_dir()} if folder.is_dir() else set())
    return sorted(found[0] & found[1])


def _check_label_map_split(root: Path, split: str, image_subdir: str, label_subdir: str) -> None:
    """Refuse (`DatasetLocationError`) a split that label-map folders at `root` lack, naming the splits there."""
    if (root / image_subdir / split).is_dir() and (root / label_subdir / split).is_dir():
        return
    splits = label_map_splits(root, image_subdir, label_subdir)
    if splits:
        raise DatasetLocationError(
            f"{root} has no split {split!r} ({image_subdir}/{split} and {label_subdir}/{split}); its splits: "
            f"{', '.join(splits)}; choose one of them"
        )


def is_label_map_folders(
    source: PathLike | None, split: str, image_subdir: str = "images", label_subdir: str = "annotations"
) -> bool:
    """Whether `source` is a local folder in the label-map layout: `<image_subdir>/<split>` and
    `<label_subdir>/<split>` subfolders (ADE20K's layout), which `datasets`' imagefolder would misread (it would
    take the label maps for more training images)."""
    if source is None:
        return False
    root = Path(os.fspath(source))
    return (root / image_subdir / split).is_dir() and (root / label_subdir / split).is_dir()


def unreachable_dataset_message(name: str, error: BaseException | None = None) -> str:
    """What to say of a dataset `name` that is neither a file or folder here nor a dataset the Hub answered for:
    both, the Hub's answer, and that `HF_HUB_OFFLINE` (or `HF_DATASETS_OFFLINE`) is set when it is."""
    answer = ""
    if error is not None:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        answer = f" ({type(error).__name__}: {first_line})"
    offline = [
        variable
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE")
    ]
    if offline:
        hub = f"not on the Hub either: {offline[0]}=1 is set, so the Hub was not asked{answer}"
    else:
        hub = f"and the Hub has no dataset of that id or could not be reached{answer}"
    return (
        f"{name} is no file or folder here ({Path(name).resolve()}), {hub}; check the path for typos, or give a "
        "Hub dataset id (owner/name) with the network on"
    )


def _is_saved_dataset(path: Path) -> bool:
    markers = ("dataset_info.json", "dataset_dict.json", "state.json")  # written by save_to_disk
    return path.is_dir() and any((path / name).is_file() for name in markers)


def load_segmentation_dataset(
    source: PathLike | None,
    split: str = "train",
    layout: str = "auto",
    max_samples: int | None = None,
    label_subdir: str = "annotations",
    image_subdir: str = "images",
    synthetic_num_images: int = 64,
    synthetic_image_size: int = 64,
    unpaired: Unpaired | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Load one split of a segmentation dataset as a `datasets.Dataset`.

    Layouts:
        - `"auto"`: label-map folders when `source` has them (`is_label_map_folders`), else `source` is a Hub
          dataset id or a local path for `datasets.load_dataset` (a folder of parquet/arrow files, an
          imagefolder with `metadata.jsonl`, a single `.parquet`/`.arrow`/`.jsonl` file, or a builder name such
          as `"parquet"` with `data_files=` in `load_kwargs`), or a folder written by `save_to_disk` (read with
          `load_from_disk`), or the results folder of `ita-segment --format parquet` (its `results-*.parquet`
          shards are the rows of whichever split is asked for; `classes.txt` beside them is the vocabulary, which
          the rows' `ClassLabel`s also carry).
        - `"coco_panoptic"`: `source` is COCO's root (`annotations/panoptic_<split>.json`, `panoptic_<split>/`,
          `<split>/`); see `load_coco_panoptic`.
        - `"label_folders"`: `source/<image_subdir>/<split>` images and `source/<label_subdir>/<split>` label
          maps (ADE20K's layout); see `load_label_map_folders`.
        - `"synthetic"`: generated shapes (`synthetic.make_synthetic_dataset`); `source` is ignored, the
          validation split uses other scenes than the training split.
    `max_samples` keeps the first N rows. `unpaired` (label-map folders) is `load_label_map_folders`'s.

    Raises `ITAUsageError` for a name that is neither a file or folder here nor a dataset the Hub answers for
    (saying both, and that `HF_HUB_OFFLINE` is set when it is) and for a split the dataset lacks, and
    `ITADataError` for a split without rows.
    """
    if layout not in LAYOUTS:
        raise DatasetArgumentError(f"Unknown dataset layout {layout!r}; choose one of {LAYOUTS}")
    if layout == "auto" and not load_kwargs and is_label_map_folders(source, split, image_subdir, label_subdir):
        logger.info(
            "%s holds %s/%s and %s/%s: reading it as label-map folders",
            source,
            image_subdir,
            split,
            label_subdir,
            split,
        )
        layout = "label_folders"
    elif layout == "auto" and not load_kwargs and source is not None and Path(os.fspath(source)).is_dir():
        # Label-map folders without the split asked for: say which splits they have, rather than reading the
        # folder as an imagefolder.
        _check_label_map_split(Path(os.fspath(source)), split, image_subdir, label_subdir)
    if layout == "synthetic":
        seed = 0 if split == "train" else 1
        dataset = make_synthetic_dataset(synthetic_num_images, synthetic_image_size, seed=seed)
    elif source is None:
        raise DatasetArgumentError(f"Give the dataset's location (dataset_name_or_path) for the {layout!r} layout")
    elif layout == "coco_panoptic":
        panoptic_json, panoptic_dir, image_dir = coco_panoptic_paths(source, split)
        dataset = load_coco_panoptic(panoptic_json, panoptic_dir, image_dir, **load_kwargs)
    elif layout == "label_folders":
        root = Path(source)
        _check_label_map_split(root, split, image_subdir, label_subdir)
        dataset = load_label_map_folders(
            root / image_subdir / split, root / label_subdir / split, unpaired=unpaired, **load_kwargs
        )
    else:
        path = Path(os.fspath(source))
        if _is_saved_dataset(path):
            dataset = datasets.load_from_disk(os.fspath(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ITAUsageError(f"{source} has no split {split!r}; its splits: {', '.join(dataset)}")
                dataset = dataset[split]
        elif path.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}.get(path.suffix)
            if builder is None:
                raise DatasetArgumentError(
                    f"Cannot tell the format of {source}; use a .parquet, .arrow or .jsonl file or a folder"
                )
            dataset = _load_split(source, builder, split, data_files={split: os.fspath(path)}, **load_kwargs)
        elif path.is_dir() and not load_kwargs and any(path.glob("results-*.parquet")):
            # `ita-segment --format parquet`'s results: its shards are the rows of whichever split is asked for
            # (the folder also holds classes.txt and the manifest, which `load_dataset` would take for data).
            shards = sorted(os.fspath(shard) for shard in path.glob("results-*.parquet"))
            dataset = _load_split(source, "parquet", split, data_files={split: shards})
        elif path.exists():
            dataset = _load_split(source, os.fspath(source), split, **load_kwargs)
        else:
            dataset = _load_hub_dataset(os.fspath(source), split, load_kwargs)
    if len(dataset) == 0:
        raise ITADataError(f"{source}: split {split!r} has no rows; give a dataset with at least one image")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def _load_split(source: PathLike, name: str, split: str, **load_kwargs: Any) -> datasets.Dataset:
    """`datasets.load_dataset(name, split=split, **load_kwargs)`, with its refusals of a split that is not there
    (`ITAUsageError`, naming the splits) and of files without rows (`ITADataError`) said plainly."""
    try:
        dataset = datasets.load_dataset(name, split=split, **load_kwargs)
    except ValueError as error:
        message = str(error)
        if "Unknown split" in message:
            raise ITAUsageError(f"{source} has no split {split!r}: {message}") from error
        if "corresponds to no data" in message:
            raise ITADataError(
                f"{source}: split {split!r} has no rows; give a dataset with at least one image"
            ) from error
        raise
    assert isinstance(dataset, datasets.Dataset)
    return dataset


def _load_hub_dataset(name: str, split: str, load_kwargs: dict[str, Any]) -> datasets.Dataset:
    """A split of a dataset that is not a local path: a Hub id, or a builder name such as `"parquet"` with
    `data_files=` in `load_kwargs`; raises `ITAUsageError` saying that it is neither here nor on the Hub."""
    try:
        return _load_split(name, name, split, **load_kwargs)
    except (ITAUsageError, ITADataError):
        raise
    except ValueError as error:
        if load_kwargs:
            raise
        raise ITAUsageError(unreachable_dataset_message(name, error)) from error
    except (OSError, datasets.exceptions.DatasetsError) as error:  # ConnectionError, DatasetNotFoundError, ...
        if load_kwargs and not isinstance(error, datasets.exceptions.DatasetNotFoundError):
            raise
        raise ITAUsageError(unreachable_dataset_message(name, error)) from error


def _class_label_names(feature: Any) -> list[tuple[str, ...]]:
    """Every `ClassLabel`'s names inside a (nested) feature."""
    if isinstance(feature, datasets.ClassLabel):
        return [tuple(feature.names)]
    if isinstance(feature, dict):
        return [names for value in feature.values() for names in _class_label_names(value)]
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return _class_label_names(inner)
    return []


def resolve_class_names(
    dataset: datasets.Dataset, class_names: Sequence[str] | None = None, vocabulary_file: PathLike | None = None
) -> list[str]:
    """The vocabulary of a dataset: `vocabulary_file` (`id:name,synonym,...` lines, read with
    `vocabulary_files.read_vocabulary_file`), else `class_names`, else the names of the dataset's `ClassLabel`
    feature (e.g. COCO panoptic's `segments_info.category_id`). Raises a `ValueError` when none applies."""
    if vocabulary_file is not None and class_names:
        raise DatasetArgumentError("Give a vocabulary file or class names, not both")
    if vocabulary_file is not None:
        names = read_vocabulary_file(vocabulary_file)
    elif class_names:
        names = list(class_names)
    else:
        found = sorted(set(_class_label_names(dataset.features)))
        if len(found) != 1:
            problem = f"{len(found)} different ClassLabel features" if found else "no ClassLabel feature"
            raise DatasetArgumentError(
                f"Cannot tell the class names: the dataset has {problem}; give a vocabulary file (one "
                "`id:name,synonym,...` line per class) or the class names"
            )
        names = list(found[0])
    parse_vocabulary(names)
    return names
