"""Benchmarks: the registry, the class-list files, and loading tiny copies of each prepared layout."""

import json

import numpy as np
import pytest
from PIL import Image

from ita_segmentation.evaluation import (
    BENCHMARKS,
    benchmark_metadata,
    get_benchmark,
    load_benchmark,
    load_hub_benchmark,
)
from ita_segmentation.vocabulary_files import read_vocabulary_file
from processing_ita import parse_vocabulary, shared_synonyms

EXPECTED = {  # name: (classes, ignore index, 16-bit labels)
    "ade150": (150, 255, False),
    "ade847": (847, 65535, True),
    "pc59": (59, 255, False),
    "pc459": (459, 65535, True),
    "pas20": (20, 255, False),
    "pas21": (21, 255, False),
}


def _write_split(root, layout, labels, image_size=(5, 4)):
    """Write one image per label map into `layout`'s folders under `root`; returns the file stems."""
    image_dir, label_dir = root / layout.image_dir, root / layout.label_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    stems = []
    for index, label in enumerate(labels):
        stem = f"val_{index:04d}"
        Image.new("RGB", image_size, (10 * index, 20, 30)).save(image_dir / f"{stem}{layout.image_suffix}")
        Image.fromarray(label).save(label_dir / f"{stem}{layout.label_suffix}")
        stems.append(stem)
    return stems


def _labels(num_labels, ignore_index, sixteen_bit, count=3):
    dtype = np.uint16 if sixteen_bit else np.uint8
    rng = np.random.default_rng(num_labels)
    labels = []
    for _ in range(count):
        label = rng.integers(0, num_labels, size=(4, 5)).astype(dtype)
        label[0, 0] = ignore_index
        label[0, 1] = num_labels - 1  # > 255 for A-847 and PC-459
        labels.append(label)
    return labels


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_benchmarks_have_the_protocol_class_counts(name):
    num_labels, ignore_index, _ = EXPECTED[name]
    benchmark = get_benchmark(name)
    assert benchmark.num_labels == num_labels == len(benchmark.class_names)
    assert benchmark.ignore_index == ignore_index
    # Usable as a model vocabulary: no empty synonym, no duplicate class. FC-CLIP's A-847 and PC-459 lists give
    # some synonyms to two classes, kept as they are (the published protocol); the others give none.
    parsed = parse_vocabulary(benchmark.class_names, allow_shared_synonyms=True)
    assert len(parsed) == num_labels
    assert len(shared_synonyms(parsed)) == {"ade847": 47, "pc459": 2}.get(name, 0)


def test_class_lists_carry_fc_clip_synonyms():
    assert set(BENCHMARKS) == set(EXPECTED)
    assert get_benchmark("ade150").class_names[0] == "wall,walls,brick wall,stone wall,interior wall"
    assert get_benchmark("ade847").class_names[-1] == "adding machine,totalizer,totaliser"
    assert get_benchmark("pc59").class_names[36] == (
        "person,child,girl,boy,woman,man,people,childeren,girls,boys,women,men,lady,guy,ladies,guys"
    )
    assert get_benchmark("pc459").class_names[458] == "wool"
    assert get_benchmark("pas21").class_names[0].startswith("background,crops,bush")
    assert get_benchmark("pas20").class_names == get_benchmark("pas21").class_names[1:]
    assert get_benchmark("A-150") is get_benchmark("ade150")
    assert get_benchmark("PAS-20").name == "pas20"
    with pytest.raises(KeyError, match="Unknown benchmark 'coco'"):
        get_benchmark("coco")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_prepared_layout(tmp_path, name):
    num_labels, ignore_index, sixteen_bit = EXPECTED[name]
    benchmark = get_benchmark(name)
    layout = benchmark.layouts[0]
    labels = _labels(num_labels, ignore_index, sixteen_bit)
    stems = _write_split(tmp_path, layout, labels)

    dataset = load_benchmark(name, tmp_path)
    assert dataset.column_names == ["image", "label", "file_name"]
    assert len(dataset) == 3
    assert dataset["file_name"] == [f"{stem}{layout.image_suffix}" for stem in stems]
    for row, expected in zip(dataset, labels):
        label = np.array(row["label"])
        assert row["label"].mode == ("I;16" if sixteen_bit else "L")
        assert label.dtype == expected.dtype
        np.testing.assert_array_equal(label, expected)
        assert row["image"].size == (5, 4)

    metadata = benchmark_metadata(dataset)
    assert metadata["name"] == name
    assert metadata["num_labels"] == num_labels == len(metadata["class_names"])
    assert metadata["ignore_index"] == ignore_index
    assert metadata["reduce_labels"] is False
    assert metadata["class_names"] == benchmark.class_names


def test_sixteen_bit_labels_survive_select_map_and_save(tmp_path):
    benchmark = get_benchmark("ade847")
    label = np.array([[0, 300, 846], [65535, 256, 1]], dtype=np.uint16)
    _write_split(tmp_path, benchmark.layouts[0], [label])
    dataset = load_benchmark("ade847", tmp_path)

    mapped = dataset.select([0]).map(lambda row: {"label": row["label"]})
    np.testing.assert_array_equal(np.array(mapped[0]["label"]), label)
    mapped.save_to_disk(str(tmp_path / "saved"))
    from datasets import load_from_disk

    reloaded = load_from_disk(str(tmp_path / "saved"))
    np.testing.assert_array_equal(np.array(reloaded[0]["label"]), label)
    assert benchmark_metadata(reloaded)["ignore_index"] == 65535


def test_raw_layouts_record_label_reduction(tmp_path):
    ade = get_benchmark("ade150")
    raw_ade = ade.layouts[1]
    assert raw_ade.label_dir.endswith("annotations/validation") and raw_ade.reduce_labels
    _write_split(tmp_path, raw_ade, _labels(151, 0, False, count=2))
    dataset = load_benchmark("ade150", tmp_path)
    assert len(dataset) == 2 and benchmark_metadata(dataset)["reduce_labels"] is True

    # Raw VOC 2012: palette PNGs in SegmentationClass, the split listed in val.txt.
    voc = tmp_path / "voc"
    raw_voc = get_benchmark("pas20").layouts[1]
    label = np.array([[0, 1, 20, 255]] * 3, dtype=np.uint8)
    palette_label = Image.fromarray(label, mode="L").convert("P")
    palette_label.putpalette([value for index in range(256) for value in (index, 0, 0)])
    for stem in ("2007_000033", "2007_000042", "2008_000001"):
        (voc / raw_voc.image_dir).mkdir(parents=True, exist_ok=True)
        (voc / raw_voc.label_dir).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3)).save(voc / raw_voc.image_dir / f"{stem}.jpg")
        palette_label.save(voc / raw_voc.label_dir / f"{stem}.png")
    (voc / raw_voc.split_file).parent.mkdir(parents=True)
    (voc / raw_voc.split_file).write_text("2007_000033\n2008_000001\n")

    for name, reduce_labels in (("pas20", True), ("pas21", False)):
        dataset = load_benchmark(name, voc / "VOCdevkit" / "VOC2012")  # the VOC folder itself works too
        assert dataset["file_name"] == ["2007_000033.jpg", "2008_000001.jpg"]
        assert dataset[0]["label"].mode == "P"
        np.testing.assert_array_equal(np.array(dataset[0]["label"]), label)
        assert benchmark_metadata(dataset)["reduce_labels"] is reduce_labels


def test_alternative_roots_and_max_samples(tmp_path):
    ade847 = get_benchmark("ade847")
    alternative = ade847.layouts[1]
    assert alternative.image_dir.startswith("ade/ADE20K_2021_17_01")
    _write_split(tmp_path, alternative, _labels(847, 65535, True))
    assert len(load_benchmark("ade847", tmp_path)) == 3
    assert len(load_benchmark("ade847", tmp_path, max_samples=2)) == 2

    ade150 = get_benchmark("ade150")
    _write_split(tmp_path, ade150.layouts[0], _labels(150, 255, False))
    dataset = load_benchmark("ade150", tmp_path / "ADEChallengeData2016")
    assert len(dataset) == 3 and benchmark_metadata(dataset)["reduce_labels"] is False


def test_missing_data_names_the_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_benchmark("ade150", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation") in message
    assert str(tmp_path / "ADEChallengeData2016" / "images" / "validation") in message

    with pytest.raises(FileNotFoundError, match="annotations_ctx459"):
        load_benchmark("pc459", tmp_path)

    layout = get_benchmark("pc59").layouts[0]
    stems = _write_split(tmp_path, layout, _labels(59, 255, False, count=2))
    (tmp_path / layout.image_dir / f"{stems[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{stems[1]}.jpg is missing"):
        load_benchmark("pc59", tmp_path)


def test_vocabulary_file_override(tmp_path):
    benchmark = get_benchmark("pas20")
    _write_split(tmp_path, benchmark.layouts[0], _labels(20, 255, False, count=1))
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(f"class {index}, synonym {index}" for index in range(20)) + "\n")
    dataset = load_benchmark("pas20", tmp_path, vocabulary_file=plain)
    assert benchmark_metadata(dataset)["class_names"][3] == "class 3,synonym 3"

    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="lists 2 classes but the benchmark has 20"):
        load_benchmark("pas20", tmp_path, vocabulary_file=short)


def test_read_vocabulary_file_formats(tmp_path):
    with_ids = tmp_path / "with_ids.txt"
    with_ids.write_text("0:invalid_class_id\n# a comment\n2: sofa , couch\n1:cat,kitty\n\n3:wall\n")
    assert read_vocabulary_file(with_ids) == ["cat,kitty", "sofa,couch", "wall"]

    background_first = tmp_path / "background.txt"
    background_first.write_text("0:background,sky\n1:cat\n")
    assert read_vocabulary_file(background_first) == ["background,sky", "cat"]

    plain = tmp_path / "plain.txt"
    plain.write_text("cat,kitty\nsofa, couch\n")
    assert read_vocabulary_file(plain) == ["cat,kitty", "sofa,couch"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("1:cat\ncar:vehicle\n", r"line 2: .* malformed"),
        ("1:cat\n2:\n", r"line 2: the class name is empty"),
        ("1:cat\n2:dog,,puppy\n", r"line 2: 'dog,,puppy' has an empty synonym"),
        ("1:cat\n2:dog\n2:sofa\n", r"line 3: duplicate id 2 \(already on line 2\)"),
        ("1:cat\n3:dog\n", r"line 2: id 3 follows id 1"),
        ("1:cat\ndog\n", r"line 2: .* mixes the two styles"),
        ("cat\ndog\ncat\n", r"line 3: class 'cat' is already on line 1"),
        (
            "1:sofa,couch\n2:cat\n3:Couch,sofa\n",
            r"line 3: synonym 'Couch' of class 'Couch,sofa' also names class "
            r"'sofa,couch' \(line 1\)",
        ),
        ("\n# only a comment\n", r"holds no class"),
    ],
)
def test_read_vocabulary_file_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "vocabulary.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_vocabulary_file(path)
    assert str(path) in str(error.value)


def test_load_hub_benchmark_from_parquet_and_imagefolder(tmp_path):
    import datasets

    labels = [np.array([[0, 1], [2, 255]], dtype=np.uint8), np.array([[3, 3], [0, 1]], dtype=np.uint8)]
    table = datasets.Dataset.from_dict(
        {
            "img": [Image.new("RGB", (2, 2), (index, 0, 0)) for index in range(2)],
            "seg": [Image.fromarray(label) for label in labels],
            "extra": ["a", "b"],
        },
        features=datasets.Features(
            {"img": datasets.Image(), "seg": datasets.Image(), "extra": datasets.Value("string")}
        ),
    )
    table.to_parquet(str(tmp_path / "validation.parquet"))
    cache = str(tmp_path / "cache")

    dataset = load_hub_benchmark(
        "parquet",
        "train",
        "img",
        "seg",
        class_names=["cat", "dog", "sofa,couch"],
        ignore_index=255,
        reduce_labels=True,
        data_files=str(tmp_path / "validation.parquet"),
        cache_dir=cache,
    )
    assert dataset.column_names == ["image", "label", "file_name"]
    assert dataset["file_name"] == ["000000", "000001"]  # embedded images have no path
    np.testing.assert_array_equal(np.array(dataset[1]["label"]), labels[1])
    metadata = benchmark_metadata(dataset)
    assert (metadata["num_labels"], metadata["ignore_index"], metadata["reduce_labels"]) == (3, 255, True)
    assert benchmark_metadata(dataset.select([1]))["class_names"][2] == "sofa,couch"

    with pytest.raises(KeyError, match="no column 'mask'"):
        load_hub_benchmark(
            "parquet",
            "train",
            "img",
            "mask",
            benchmark="pas21",
            data_files=str(tmp_path / "validation.parquet"),
            cache_dir=cache,
        )

    folder = tmp_path / "imagefolder" / "validation"
    folder.mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w") as metadata_file:
        for index, label in enumerate(labels):
            Image.new("RGB", (2, 2)).save(folder / f"photo_{index}.jpg")
            Image.fromarray(label).save(folder / f"photo_{index}_seg.png")
            row = {"file_name": f"photo_{index}.jpg", "annotation_file_name": f"photo_{index}_seg.png"}
            metadata_file.write(json.dumps(row) + "\n")
    dataset = load_hub_benchmark(
        "imagefolder",
        "validation",
        label_column="annotation",
        benchmark="pas21",
        data_dir=str(folder.parent),
        cache_dir=cache,
    )
    assert sorted(dataset["file_name"]) == ["photo_0.jpg", "photo_1.jpg"]
    assert benchmark_metadata(dataset)["num_labels"] == 21
    assert benchmark_metadata(dataset)["ignore_index"] == 255
    first = dataset["file_name"].index("photo_0.jpg")
    np.testing.assert_array_equal(np.array(dataset[first]["label"]), labels[0])


def test_the_command_line_knows_the_registered_benchmarks():
    # ita-evaluate checks --benchmark before importing the registry: its light list must match the registry
    from ita_segmentation.evaluation.benchmark_names import BENCHMARK_DISPLAY_NAMES, benchmark_name

    assert BENCHMARK_DISPLAY_NAMES == {name: benchmark.display_name for name, benchmark in BENCHMARKS.items()}
    assert all(benchmark_name(benchmark.display_name) == name for name, benchmark in BENCHMARKS.items())
