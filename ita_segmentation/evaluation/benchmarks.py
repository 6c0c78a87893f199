"""The six open-vocabulary semantic segmentation benchmarks, their class lists and their data on disk.

Each benchmark records what the FC-CLIP protocol fixes about it: the class names with
FC-CLIP's hand-made synonyms (`vocabularies/NAME.txt`), the ignore index, and the folders in which
detectron2/FC-CLIP's preparation scripts leave the validation split under `$DETECTRON2_DATASETS`:

- ade150: `ADEChallengeData2016/images/validation` + `.../annotations_detectron2/validation` (png, ignore 255),
  or the raw `.../annotations/validation` (0 = other: reduce_labels).
- ade847: `ADE20K_2021_17_01/images_detectron2/validation` + `.../annotations_detectron2/validation` (16-bit
  tif, ignore 65535), also under `ade/ADE20K_2021_17_01`, where `prepare_ade20k_full_sem_seg.py` writes.
- pc59: `pascal_ctx_d2/images/validation` + `pascal_ctx_d2/annotations_ctx59/validation` (png, ignore 255).
- pc459: `pascal_ctx_d2/images/validation` + `pascal_ctx_d2/annotations_ctx459/validation` (16-bit tif,
  ignore 65535).
- pas20: `pascal_voc_d2/images/validation` + `pascal_voc_d2/annotations_pascal20/validation` (png, ignore
  255), or the raw `VOCdevkit/VOC2012` (`JPEGImages` + `SegmentationClass`, split from
  `ImageSets/Segmentation/val.txt`; 0 = background: reduce_labels).
- pas21: `pascal_voc_d2/images/validation` + `pascal_voc_d2/annotations_pascal21/validation` (png, ignore
  255), or the raw `VOCdevkit/VOC2012` as for pas20 (background stays class 0).

Images are .jpg; a label has the image's file stem. `data_dir` may also be a benchmark's own folder
(`.../ADEChallengeData2016`, `.../VOCdevkit/VOC2012`).

Labels are loaded as stored. Where a layout still has the raw "0 = other/background, classes from 1"
convention, the dataset's metadata says `reduce_labels=True` and the metric applies the reduction
(`SegmentationConfusionMatrix(..., reduce_labels=True)`), exactly as FC-CLIP's preparation scripts do.
"""

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets

from ..errors import ITAUserError
from ..segmentation_data import PathLike, Unpaired, load_segmentation_dataset, resolve_class_names
from ..vocabulary_files import read_vocabulary_file
from .benchmark_names import (
    BENCHMARK_DISPLAY_NAMES,
    VOCABULARY_DIR,
    benchmark_name,
    benchmark_vocabulary_file,
    dataset_result_name,
)
from .errors import EvaluationDataError, MissingColumnError, MissingDataError

logger = logging.getLogger(__name__)

__all__ = [
    "BenchmarkLayout",
    "SegmentationBenchmark",
    "BENCHMARKS",
    "VOCABULARY_DIR",
    "get_benchmark",
    "load_benchmark",
    "load_hub_benchmark",
    "load_segmentation_split",
    "benchmark_metadata",
]


_METADATA_PREFIX = "ita-benchmark:"


@dataclass(frozen=True)
class BenchmarkLayout:
    """Where one preparation of a benchmark's validation split lives, relative to the datasets root.

    Attributes:
        image_dir: folder of the images.
        label_dir: folder of the label maps, one per image with the same file stem.
        image_suffix: image file suffix (".jpg").
        label_suffix: label file suffix (".png", or ".tif" for 16-bit labels).
        reduce_labels: the labels still use 0 for "other"/"background" with classes from 1.
        split_file: optional text file listing the split's file stems (raw VOC); without it every label
            file in `label_dir` belongs to the split.
    """

    image_dir: str
    label_dir: str
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    reduce_labels: bool = False
    split_file: str | None = None


@dataclass(frozen=True)
class SegmentationBenchmark:
    """One open-vocabulary benchmark.

    Attributes:
        name: registry key (`"ade150"`).
        display_name: the name papers use (`"A-150"`).
        num_labels: number of scored classes.
        ignore_index: label value that is not scored.
        vocabulary_file: file name of the class list in `vocabularies/`.
        layouts: accepted preparations of the validation split, tried in order.
        num_images: size of the full validation split.
        sem_seg_postprocess_before_inference: resize the mask logits to the label size before the class sum
            (`post_process_semantic_segmentation`'s option). FC-CLIP's eval config for A-150 turns panoptic and
            instance inference on, which makes the original take that order; its configs for the other five
            turn both off (`configs/coco/panoptic-segmentation/fcclip/fcclip_convnext_large_eval_*.yaml`).
    """

    name: str
    display_name: str
    num_labels: int
    ignore_index: int
    vocabulary_file: str
    layouts: tuple[BenchmarkLayout, ...]
    num_images: int
    sem_seg_postprocess_before_inference: bool = False

    @cached_property
    def class_names(self) -> list[str]:
        """The classes with FC-CLIP's synonyms, one comma-separated string each."""
        # FC-CLIP's A-847 and PC-459 lists give a few synonyms to two classes (A-847: "horse", "bag", ...); the
        # published protocol uses them as they are.
        names = read_vocabulary_file(VOCABULARY_DIR / self.vocabulary_file, allow_shared_synonyms=True)
        if len(names) != self.num_labels:
            raise ValueError(f"{self.vocabulary_file} lists {len(names)} classes, {self.name} has {self.num_labels}")
        return names


_RAW_VOC = "VOCdevkit/VOC2012"

BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        SegmentationBenchmark(
            name="ade150",
            display_name=BENCHMARK_DISPLAY_NAMES["ade150"],
            num_labels=150,
            ignore_index=255,
            vocabulary_file=benchmark_vocabulary_file("ade150").name,
            layouts=(
                # Mask2Former/FC-CLIP's prepare_ade20k_sem_seg.py: 0 -> 255, ids - 1 already applied.
                BenchmarkLayout(
                    "ADEChallengeData2016/images/validation", "ADEChallengeData2016/annotations_detectron2/validation"
                ),
                BenchmarkLayout(
                    "ADEChallengeData2016/images/validation",
                    "ADEChallengeData2016/annotations/validation",
                    reduce_labels=True,
                ),
            ),
            num_images=2000,
            sem_seg_postprocess_before_inference=True,
        ),
        SegmentationBenchmark(
            name="ade847",
            display_name=BENCHMARK_DISPLAY_NAMES["ade847"],
            num_labels=847,
            ignore_index=65535,
            vocabulary_file=benchmark_vocabulary_file("ade847").name,
            layouts=tuple(
                # prepare_ade20k_full_sem_seg.py writes under ade/, the registration reads the datasets root.
                BenchmarkLayout(
                    f"{root}/images_detectron2/validation",
                    f"{root}/annotations_detectron2/validation",
                    label_suffix=".tif",
                )
                for root in ("ADE20K_2021_17_01", "ade/ADE20K_2021_17_01")
            ),
            num_images=2000,
        ),
        SegmentationBenchmark(
            name="pc59",
            display_name=BENCHMARK_DISPLAY_NAMES["pc59"],
            num_labels=59,
            ignore_index=255,
            vocabulary_file=benchmark_vocabulary_file("pc59").name,
            layouts=(BenchmarkLayout("pascal_ctx_d2/images/validation", "pascal_ctx_d2/annotations_ctx59/validation"),),
            num_images=5104,
        ),
        SegmentationBenchmark(
            name="pc459",
            display_name=BENCHMARK_DISPLAY_NAMES["pc459"],
            num_labels=459,
            ignore_index=65535,
            vocabulary_file=benchmark_vocabulary_file("pc459").name,
            layouts=(
                BenchmarkLayout(
                    "pascal_ctx_d2/images/validation",
                    "pascal_ctx_d2/annotations_ctx459/validation",
                    label_suffix=".tif",
                ),
            ),
            num_images=5104,
        ),
        SegmentationBenchmark(
            name="pas20",
            display_name=BENCHMARK_DISPLAY_NAMES["pas20"],
            num_labels=20,
            ignore_index=255,
            vocabulary_file=benchmark_vocabulary_file("pas20").name,
            layouts=(
                BenchmarkLayout("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal20/validation"),
                BenchmarkLayout(
                    f"{_RAW_VOC}/JPEGImages",
                    f"{_RAW_VOC}/SegmentationClass",
                    reduce_labels=True,
                    split_file=f"{_RAW_VOC}/ImageSets/Segmentation/val.txt",
                ),
            ),
            num_images=1449,
        ),
        SegmentationBenchmark(
            name="pas21",
            display_name=BENCHMARK_DISPLAY_NAMES["pas21"],
            num_labels=21,
            ignore_index=255,
            vocabulary_file=benchmark_vocabulary_file("pas21").name,
            layouts=(
                BenchmarkLayout("pascal_voc_d2/images/validation", "pascal_voc_d2/annotations_pascal21/validation"),
                BenchmarkLayout(
                    f"{_RAW_VOC}/JPEGImages",
                    f"{_RAW_VOC}/SegmentationClass",
                    split_file=f"{_RAW_VOC}/ImageSets/Segmentation/val.txt",
                ),
            ),
            num_images=1449,
        ),
    )
}


def get_benchmark(name: str) -> SegmentationBenchmark:
    """The registered `SegmentationBenchmark` called `name`: `"ade150"`, `"ade847"`, `"pc59"`, `"pc459"`,
    `"pas20"`, `"pas21"`, or a display name such as `"A-150"`."""
    return BENCHMARKS[benchmark_name(name)]


def _candidate_roots(data_dir: Path, layout: BenchmarkLayout) -> Iterator[Path]:
    """`data_dir` as the datasets root, or as a folder inside it (`.../ADEChallengeData2016`,
    `.../VOCdevkit/VOC2012`) when its last components start the layout's paths."""
    yield data_dir
    parts = Path(layout.image_dir).parts
    for depth in range(1, len(parts)):
        if data_dir.parts[-depth:] == parts[:depth]:
            yield data_dir.parents[depth - 1]


def _find_layout(benchmark: SegmentationBenchmark, data_dir: PathLike) -> tuple[BenchmarkLayout, Path]:
    """The first layout of `benchmark` whose image and label folders exist, and its datasets root."""
    data_dir = Path(data_dir).expanduser()
    tried = []
    for layout in benchmark.layouts:
        for root in _candidate_roots(data_dir, layout):
            image_dir, label_dir = root / layout.image_dir, root / layout.label_dir
            if image_dir.is_dir() and label_dir.is_dir():
                return layout, root
            tried.append(f"{image_dir} + {label_dir}")
    raise MissingDataError(
        f"No {benchmark.display_name} ({benchmark.name}) validation split under {data_dir}. Expected the image and "
        "label folders of one of:\n  "
        + "\n  ".join(tried)
        + "\nPrepare it with detectron2/FC-CLIP's datasets/prepare_*.py scripts, and pass the datasets root "
        "($DETECTRON2_DATASETS) as --data-dir."
    )


def _list_pairs(layout: BenchmarkLayout, root: Path, unpaired: Unpaired | None = None) -> list[tuple[Path, Path]]:
    """The (image, label) pairs of a layout, in file-name order. Images without a label file and label files
    without an image (or, with a split file, listed stems missing either) are appended to `unpaired` as
    `(path, message)`; without that list they raise a `FileNotFoundError` naming them all."""
    image_dir, label_dir = root / layout.image_dir, root / layout.label_dir
    problems = []
    if layout.split_file is not None:
        split_file = root / layout.split_file
        if not split_file.is_file():
            raise MissingDataError(f"Split file {split_file} does not exist")
        stems = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    else:
        stems = sorted(path.name[: -len(layout.label_suffix)] for path in label_dir.glob(f"*{layout.label_suffix}"))
        labelled = set(stems)
        for image in sorted(image_dir.glob(f"*{layout.image_suffix}")):
            if image.name[: -len(layout.image_suffix)] not in labelled:
                problems.append((image, f"its label map {label_dir / (image.stem + layout.label_suffix)} is missing"))
    if not stems:
        raise MissingDataError(f"No {layout.label_suffix} label files in {label_dir}: the split is empty")
    pairs = []
    for stem in stems:
        image, label = image_dir / f"{stem}{layout.image_suffix}", label_dir / f"{stem}{layout.label_suffix}"
        if image.is_file() and label.is_file():
            pairs.append((image, label))
        elif image.is_file() or label.is_file():
            present, absent = (image, label) if image.is_file() else (label, image)
            what = "label map" if absent == label else "image"
            problems.append((present, f"its {what} {absent} is missing"))
        else:
            problems.append(
                (
                    image,
                    f"the split file {layout.split_file} lists {stem!r}, but neither this image nor "
                    f"its label map {label} exists",
                )
            )
    if problems and unpaired is None:
        raise MissingDataError(
            f"{len(problems)} files have no pair:\n" + "\n".join(f"  {path}: {message}" for path, message in problems)
        )
    if unpaired is not None:
        unpaired.extend(problems)
    return pairs


def _with_metadata(dataset: datasets.Dataset, metadata: dict[str, Any]) -> datasets.Dataset:
    """Store the benchmark metadata in `dataset.info`, which `select`, `map`, `filter` and `save_to_disk`
    carry along; `benchmark_metadata` reads it back."""
    dataset.info.dataset_name = metadata["name"]
    dataset.info.description = _METADATA_PREFIX + json.dumps(metadata)
    return dataset


def benchmark_metadata(dataset: datasets.Dataset) -> dict[str, Any]:
    """The metadata `load_benchmark`/`load_hub_benchmark` attached to `dataset`: a dict with `name`,
    `display_name`, `class_names`, `num_labels`, `ignore_index` and `reduce_labels`."""
    description = dataset.info.description or ""
    if not description.startswith(_METADATA_PREFIX):
        raise ValueError(
            "This dataset carries no benchmark metadata; load it with load_benchmark or load_hub_benchmark"
        )
    return json.loads(description[len(_METADATA_PREFIX) :])


def _class_names(
    benchmark: SegmentationBenchmark | None,
    vocabulary_file: PathLike | None,
    class_names: Sequence[str] | None,
    num_labels: int | None,
) -> list[str]:
    if vocabulary_file is not None and class_names is not None:
        raise ValueError("Give vocabulary_file or class_names, not both")
    if vocabulary_file is not None:
        class_names = _read_class_list(vocabulary_file)
    elif class_names is None and benchmark is not None:
        class_names = benchmark.class_names
    if class_names is None:
        raise ValueError("Give a benchmark name, vocabulary_file or class_names to know the classes")
    class_names = list(class_names)
    if num_labels is not None and len(class_names) != num_labels:
        source = vocabulary_file or "class_names"
        raise EvaluationDataError(
            f"{source} lists {len(class_names)} classes but the benchmark has {num_labels}: give a class list with "
            f"{num_labels} classes (one per line, in the order of the label ids)"
        )
    return class_names


def load_benchmark(
    name: str,
    data_dir: PathLike,
    vocabulary_file: PathLike | None = None,
    max_samples: int | None = None,
    unpaired: Unpaired | None = None,
) -> datasets.Dataset:
    """Load a benchmark's validation split from its prepared folders.

    Args:
        name: a registered benchmark (see `BENCHMARKS`).
        data_dir: the datasets root (`$DETECTRON2_DATASETS`, holding e.g. `ADEChallengeData2016/`), or the
            benchmark's own folder.
        vocabulary_file: a class list to use instead of the shipped one; it must have as many classes.
        max_samples: keep only the first N images (in file-name order).
        unpaired: a list receiving `(path, message)` for each image without a label map or label map without an
            image (`data_check.check_segmentation_data` reports them with the rest); without it they raise a
            `FileNotFoundError`.

    Returns:
        A `datasets.Dataset` with columns `image` (Image), `label` (Image; 16-bit TIFF labels decode as mode
        "I;16" with their values intact) and `file_name` (the image's file name), read lazily from disk.
        `benchmark_metadata(dataset)` gives the class names, `num_labels`, `ignore_index` and whether the
        labels still need `reduce_labels`.
    """
    benchmark = get_benchmark(name)
    class_names = _class_names(benchmark, vocabulary_file, None, benchmark.num_labels)
    layout, root = _find_layout(benchmark, data_dir)
    pairs = _list_pairs(layout, root, unpaired)
    if max_samples is not None:
        pairs = pairs[:max_samples]
    elif len(pairs) != benchmark.num_images:
        logger.warning(
            "%s: found %d images in %s, the full validation split has %d",
            benchmark.display_name,
            len(pairs),
            root / layout.label_dir,
            benchmark.num_images,
        )
    dataset = datasets.Dataset.from_dict(
        {
            "image": [str(image) for image, _ in pairs],
            "label": [str(label) for _, label in pairs],
            "file_name": [image.name for image, _ in pairs],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.Image(), "file_name": datasets.Value("string")}
        ),
        split=datasets.Split.VALIDATION,
    )
    metadata = {
        "name": benchmark.name,
        "display_name": benchmark.display_name,
        "class_names": class_names,
        "num_labels": benchmark.num_labels,
        "ignore_index": benchmark.ignore_index,
        "reduce_labels": layout.reduce_labels,
        "image_dir": str(root / layout.image_dir),
        "label_dir": str(root / layout.label_dir),
    }
    return _with_metadata(dataset, metadata)


def load_hub_benchmark(
    path_or_id: PathLike,
    split: str = "validation",
    image_column: str = "image",
    label_column: str = "label",
    *,
    benchmark: str | None = None,
    vocabulary_file: PathLike | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    reduce_labels: bool = False,
    max_samples: int | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Load a segmentation split with `datasets.load_dataset`: a Hub id, a local folder of parquet/arrow
    files, or a builder name such as `"imagefolder"`/`"parquet"` with `data_dir=`/`data_files=` in
    `load_kwargs`.

    The image and label columns are renamed to `image` and `label` (both decoded as `datasets.Image`) and a
    `file_name` column is added when missing (from the image path, else the row index). The class names and
    ignore index come from `benchmark` (a registered name) unless `vocabulary_file`/`class_names` and
    `ignore_index` are given. `reduce_labels=True` records that label 0 is "other"/"background" and classes
    start at 1, as in the raw ADE20K/VOC annotations most Hub copies hold.
    """
    registered = get_benchmark(benchmark) if benchmark is not None else None
    names = _class_names(registered, vocabulary_file, class_names, registered.num_labels if registered else None)
    if ignore_index is None:
        if registered is None:
            raise ValueError("Give ignore_index (or a registered benchmark name)")
        ignore_index = registered.ignore_index

    dataset = _load_rows(path_or_id, split, "auto", load_kwargs)
    dataset = _evaluation_columns(dataset, image_column, label_column, max_samples, f"{path_or_id} ({split})")
    name = registered.name if registered else dataset_result_name(path_or_id)
    metadata = {
        "name": name,
        "display_name": registered.display_name if registered else name,
        "class_names": names,
        "num_labels": len(names),
        "ignore_index": int(ignore_index),
        "reduce_labels": bool(reduce_labels),
        "source": str(path_or_id),
    }
    return _with_metadata(dataset, metadata)


def _read_class_list(vocabulary_file: PathLike) -> list[str]:
    """`read_vocabulary_file`, its refusals of the user's file (missing, not UTF-8, malformed lines) as
    `EvaluationDataError`s naming it."""
    try:
        return read_vocabulary_file(vocabulary_file)
    except ITAUserError:
        raise
    except (OSError, ValueError) as error:  # FileNotFoundError, UnicodeDecodeError, a malformed line
        raise EvaluationDataError(f"--vocabulary-file {vocabulary_file}: {error}") from error


def _load_rows(
    source: PathLike, split: str, layout: str, load_kwargs: dict[str, Any], **options: Any
) -> datasets.Dataset:
    """`load_segmentation_dataset` for the user's `source`: its refusals are the project's user errors already
    (a dataset that is neither here nor on the Hub, a split it lacks, no rows); what the loaders below it raise
    for the user's files (a missing folder, no label maps, a format that cannot be told, a column it lacks) becomes
    an `EvaluationDataError` naming `source`."""
    try:
        return load_segmentation_dataset(source, split, layout=layout, **options, **load_kwargs)
    except ITAUserError:
        raise
    except (FileNotFoundError, ValueError) as error:
        raise EvaluationDataError(f"{source}: {error}") from error
    except KeyError as error:
        raise EvaluationDataError(f"{source}: {error.args[0] if error.args else error}") from error


def _evaluation_columns(
    dataset: datasets.Dataset, image_column: str, label_column: str, max_samples: int | None, where: str
) -> datasets.Dataset:
    """`image` and `label` (both `datasets.Image`) and `file_name` columns, the first `max_samples` rows."""
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise MissingColumnError(
                f"{where} has no column {column!r}; its columns: {', '.join(dataset.column_names)} (choose with "
                "--image-column and --label-column)"
            )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    clashing = [new for new in renames.values() if new in dataset.column_names and new not in renames]
    dataset = dataset.remove_columns(clashing).rename_columns(renames)
    for column in ("image", "label"):
        if not isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image())
    if "file_name" not in dataset.column_names:
        dataset = dataset.add_column("file_name", _file_names(dataset))
    return dataset.select_columns(["image", "label", "file_name"])


def load_segmentation_split(
    source: PathLike,
    split: str = "validation",
    layout: str = "auto",
    image_column: str = "image",
    label_column: str = "label",
    *,
    vocabulary_file: PathLike | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    max_samples: int | None = None,
    name: str | None = None,
    image_subdir: str = "images",
    label_subdir: str = "annotations",
    unpaired: Unpaired | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Any semantic segmentation dataset that `scripts/train.py` reads, for evaluation with its own classes.

    `source` is a Hub id, a folder of parquet/arrow files, an imagefolder, a `save_to_disk` folder, or label-map
    folders (`source/<image_subdir>/<split>` + `source/<label_subdir>/<split>`, found by `layout="auto"` or named
    by `layout="label_folders"`); `segmentation_data.load_segmentation_dataset` reads it. The classes come from
    `vocabulary_file` (`id:name,synonym,...` or `name,synonym,...` lines), `class_names`, or the dataset's
    `ClassLabel` feature. The result has the columns and metadata of `load_benchmark`, named `name` (default:
    the last part of `source`). `unpaired` receives label-map folders' files without their pair.
    """
    rows = _load_rows(
        source, split, layout, load_kwargs, image_subdir=image_subdir, label_subdir=label_subdir, unpaired=unpaired
    )
    if vocabulary_file is not None and class_names is not None:
        raise ValueError("Give vocabulary_file or class_names, not both")
    if vocabulary_file is not None:
        class_names = _read_class_list(vocabulary_file)
    try:
        names = resolve_class_names(rows, class_names=class_names)
    except ValueError as error:  # no class names: neither given nor in the dataset's features
        raise EvaluationDataError(f"{source}: {error} (--vocabulary-file FILE)") from error
    dataset = _evaluation_columns(rows, image_column, label_column, max_samples, f"{source} ({split})")
    name = name or dataset_result_name(source)
    metadata = {
        "name": name,
        "display_name": name,
        "class_names": names,
        "num_labels": len(names),
        "ignore_index": int(ignore_index),
        "reduce_labels": bool(reduce_labels),
        "source": str(source),
        "split": split,
        "vocabulary_source": (
            f"--vocabulary-file {vocabulary_file}"
            if vocabulary_file is not None
            else "the given class names"
            if class_names is not None
            else f"the class names in {source}"
        ),
    }
    return _with_metadata(dataset, metadata)


def _file_names(dataset: datasets.Dataset) -> list[str]:
    """Image file names from the stored paths (read as arrow, without decoding any image), or the row index
    where a row has no path."""
    paths = dataset.select_columns(["image"]).with_format("arrow")["image"].combine_chunks().field("path")
    return [os.path.basename(path) if path else f"{index:06d}" for index, path in enumerate(paths.to_pylist())]
