"""`ita-segment`'s datasets in and out: `apps.dataset_source` (rows of a dataset, shared between processes) and
`apps.parquet_output` (results as parquet shards), and `segmentation_data.load_segmentation_dataset` reading such
results (what `ita-train` fine-tunes on)."""

import io
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ita_segmentation.apps import parquet_output
from ita_segmentation.apps.dataset_source import DatasetRecord, open_dataset_source
from ita_segmentation.apps.outputs import write_label_map, write_panoptic_png
from ita_segmentation.apps.parquet_output import ParquetResultsWriter, segment_entries
from ita_segmentation.errors import ITADataError, ITAUsageError
from ita_segmentation.segmentation_data import load_segmentation_dataset, resolve_class_names
from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset, write_imagefolder
from ita_segmentation.vocabulary_files import read_vocabulary_file

NUM_IMAGES = 7


@pytest.fixture(scope="module")
def scenes():
    return make_synthetic_dataset(NUM_IMAGES, image_size=24, seed=3)


@pytest.fixture(scope="module")
def sources(scenes, tmp_path_factory):
    """The same scenes as a parquet file (row groups of 2 rows), a save_to_disk folder and an imagefolder."""
    root = tmp_path_factory.mktemp("sources")
    scenes.to_parquet(str(root / "scenes.parquet"), batch_size=2)
    scenes.save_to_disk(str(root / "saved"))
    write_imagefolder(scenes, root / "imagefolder", split="train")
    return root


def _pixels(image):
    return np.asarray(image.convert("RGB"))


def _all_records(source, num_processes):
    return [list(source.records(index, num_processes)) for index in range(num_processes)]


@pytest.mark.parametrize("kind", ["scenes.parquet", "saved", "imagefolder"])
def test_each_row_goes_to_exactly_one_of_two_processes(sources, scenes, kind):
    source = open_dataset_source(sources / kind)
    assert source.image_column == "image"
    one = _all_records(source, 1)[0]
    two = _all_records(source, 2)
    ids = [record.record_id for shard in two for record in shard]
    assert sorted(ids) == [record.record_id for record in one] == [f"{index:08d}" for index in range(NUM_IMAGES)]
    assert len(set(ids)) == NUM_IMAGES and all(shard for shard in two)  # disjoint, both processes work
    for record in one:
        assert record.error is None and record.image.mode == "RGB"
    if kind != "imagefolder":  # the imagefolder holds the label maps as images too: rows in file-name order
        for record in one:
            np.testing.assert_array_equal(_pixels(record.image), _pixels(scenes[record.position]["image"]))
    if source.shard_size(0, 2) is not None:
        assert [source.shard_size(index, 2) for index in range(2)] == [len(shard) for shard in two]


def test_id_column_skip_ids_and_a_bad_image_is_one_failure(tmp_path, scenes):
    rows = scenes.select_columns(["image", "file_name"]).cast_column("image", datasets.Image(decode=False))
    values = rows.to_dict()
    values["image"][2] = {"bytes": b"this is not an image", "path": None}
    values["file_name"] = [name.replace(".png", "") for name in values["file_name"]]
    table = datasets.Dataset.from_dict(values, features=rows.features)
    table.to_parquet(str(tmp_path / "photos.parquet"))

    source = open_dataset_source(tmp_path / "photos.parquet", id_column="file_name")
    records = list(source.records())
    assert [record.record_id for record in records] == values["file_name"]
    failed = [record for record in records if record.error is not None]
    assert len(failed) == 1 and failed[0].position == 2 and failed[0].image is None
    assert "cannot read image" in failed[0].error and values["file_name"][2] in failed[0].error
    assert records[0].image_bytes is not None and Image.open(io.BytesIO(records[0].image_bytes)).size == (24, 24)
    skipped = list(source.records(skip_ids={values["file_name"][0], values["file_name"][3]}))
    assert len(skipped) == NUM_IMAGES - 2


def test_ids_that_are_no_file_stems_or_repeat_are_refused(tmp_path, scenes):
    rows = scenes.select_columns(["image"])
    for ids, phrase in [
        (["a/b"] + [f"x{index}" for index in range(1, NUM_IMAGES)], "'/'"),
        (["same", "same"] + [f"x{index}" for index in range(2, NUM_IMAGES)], "repeats ids: 'same' (rows 0 and 1)"),
        ([".hidden"] + [f"x{index}" for index in range(1, NUM_IMAGES)], "starts with '.'"),
    ]:
        path = tmp_path / "ids.parquet"
        rows.add_column("key", ids).to_parquet(str(path))
        with pytest.raises(ITAUsageError, match="--id-column 'key'") as error:
            open_dataset_source(path, id_column="key")
        assert phrase in str(error.value)


def test_clear_usage_errors(sources, tmp_path, monkeypatch):
    with pytest.raises(ITAUsageError, match=r"--image-column: .* no column 'photo'; its columns: image, label"):
        open_dataset_source(sources / "scenes.parquet", image_column="photo")
    with pytest.raises(ITAUsageError, match=r"--id-column: .* no column 'name'; its columns: image, label"):
        open_dataset_source(sources / "saved", id_column="name")
    # Two Image columns in the imagefolder (image, annotation): none is guessed... but one is named "image".
    assert open_dataset_source(sources / "imagefolder").image_column == "image"
    split_dict = datasets.DatasetDict({"train": make_synthetic_dataset(2, 16), "test": make_synthetic_dataset(1, 16)})
    split_dict.save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(ITAUsageError, match=r"no split 'validation'; its splits: train, test"):
        open_dataset_source(tmp_path / "splits", split="validation")
    assert open_dataset_source(tmp_path / "splits").split == "train"
    assert open_dataset_source(tmp_path / "splits", split="test").num_rows == 1

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ITAUsageError) as error:
        open_dataset_source(tmp_path / "no" / "such_folder")
    message = str(error.value)
    assert "no file or folder here" in message and "Hub" in message and "HF_HUB_OFFLINE=1" in message
    with pytest.raises(ITAUsageError, match="cannot tell the format"):
        (tmp_path / "notes.txt").write_text("hello")
        open_dataset_source(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------------------------
# --format parquet
# ------------------------------------------------------------------------------------------------------------


def _semantic_result(rng, height, width, num_classes):
    label_map = rng.integers(0, num_classes, size=(height, width)).astype(np.int64)
    classes, counts = np.unique(label_map, return_counts=True)
    segments = [
        {"label": f"class {c}", "class_id": int(c), "pixel_share": float(n / label_map.size), "score": 0.5 + c / 1e3}
        for c, n in sorted(zip(classes, counts), key=lambda pair: -pair[1])
    ]
    return {"segments": segments, "label_map": label_map}


@pytest.mark.parametrize("num_classes", [5, 300])
def test_semantic_results_round_trip_through_load_dataset(tmp_path, scenes, num_classes):
    vocabulary = [f"class {index}" for index in range(num_classes)]
    rng = np.random.default_rng(0)
    results = {}
    durable = []
    with ParquetResultsWriter(tmp_path, vocabulary, process_index=1, flush_every=3) as writer:
        for index in range(NUM_IMAGES):
            image = scenes[index]["image"]
            results[f"img{index}"] = (image, _semantic_result(rng, image.height, image.width, num_classes))
            durable += writer.add(f"img{index}", image, results[f"img{index}"][1])
            assert durable == [f"img{i}" for i in range(index + 1 - (index + 1) % 3)]  # flushed each 3 rows
        assert writer.pending_ids == ["img6"]
        durable += writer.close()
    assert durable == list(results)
    shards = sorted(path.name for path in tmp_path.glob("*.parquet"))
    assert shards == [f"results-00001-0000{chunk}.parquet" for chunk in range(3)]
    assert read_vocabulary_file(tmp_path / "classes.txt") == vocabulary

    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "results-*.parquet"), split="train")
    assert loaded["id"] == list(results)
    for row in loaded:
        image, result = results[row["id"]]
        np.testing.assert_array_equal(np.asarray(row["label"]), result["label_map"])
        np.testing.assert_array_equal(_pixels(row["image"]), _pixels(image))
        assert row["segments"] == segment_entries(result)
    # The label map is the very PNG that write_label_map writes for `<stem>_labels.png`.
    write_label_map(results["img0"][1]["label_map"], num_classes, tmp_path / "img0_labels.png")
    raw = pq.read_table(tmp_path / "results-00001-00000.parquet", columns=["label"]).column(0)[0].as_py()["bytes"]
    assert raw == (tmp_path / "img0_labels.png").read_bytes()
    assert Image.open(io.BytesIO(raw)).mode == ("L" if num_classes <= 256 else "I;16")
    assert loaded.features["segments"].feature["class_id"].names == vocabulary


def test_panoptic_results_round_trip(tmp_path, scenes):
    image = scenes[0]["image"]
    segment_map = np.zeros((image.height, image.width), dtype=np.int64)
    segment_map[:10] = 1
    segment_map[10:, 5:] = 300
    segments = [
        {"id": sid, "label": name, "class_id": cid, "score": 0.9, "was_fused": fused,
         "pixel_share": float((segment_map == sid).mean()),
         "mask": Image.fromarray((segment_map == sid).astype(np.uint8) * 255)}
        for sid, name, cid, fused in [(1, "red circle", 0, False), (300, "gray background", 4, True)]
    ]  # fmt: skip
    result = {"segments": segments, "segment_map": segment_map}
    with ParquetResultsWriter(tmp_path, SYNTHETIC_CLASS_NAMES, task="panoptic") as writer:
        writer.add("scene", image, result, image_bytes=b"\x89PNG original bytes kept as they are")
    row = datasets.load_dataset("parquet", data_files=str(tmp_path / "results-*.parquet"), split="train").cast_column(
        "image", datasets.Image(decode=False)
    )[0]
    assert row["image"]["bytes"] == b"\x89PNG original bytes kept as they are"
    write_panoptic_png(segment_map, tmp_path / "scene_panoptic.png")
    np.testing.assert_array_equal(np.asarray(row["label"]), np.asarray(Image.open(tmp_path / "scene_panoptic.png")))
    info = row["segments_info"]
    assert [(s["id"], s["category_id"], s["area"], s["was_fused"]) for s in info] == [
        (1, 0, 10 * image.width, False),
        (300, 4, (image.height - 10) * (image.width - 5), True),
    ]
    assert info[1]["bbox"] == [5, 10, image.width - 5, image.height - 10]


def test_a_shard_appears_complete_or_not_at_all(tmp_path, scenes, monkeypatch):
    image = scenes[0]["image"]
    result = _semantic_result(np.random.default_rng(1), image.height, image.width, 5)
    vocabulary = [f"class {index}" for index in range(5)]
    real_write = pq.write_table

    def killed_halfway(table, where, **kwargs):
        where.write(b"PAR1 half a shard")
        raise KeyboardInterrupt  # as a kill would stop it: mid-write

    monkeypatch.setattr(parquet_output.pq, "write_table", killed_halfway)
    writer = ParquetResultsWriter(tmp_path, vocabulary, flush_every=2)
    assert writer.add("a", image, result) == []
    with pytest.raises(KeyboardInterrupt):
        writer.add("b", image, result)
    assert list(tmp_path.glob("*.parquet")) == [] and list(tmp_path.glob(".*tmp*")) == []
    # A killed process leaves its temporary file: hidden, not a shard, and removed by the next writer.
    (tmp_path / ".results-00000-00000.parquet.tmp-999").write_bytes(b"PAR1 half")
    assert list(tmp_path.glob("results-*.parquet")) == []
    monkeypatch.setattr(parquet_output.pq, "write_table", real_write)
    (tmp_path / "results-00000-00004.parquet").write_bytes(b"")  # shards of an earlier run are kept
    writer = ParquetResultsWriter(tmp_path, vocabulary, flush_every=1)
    assert not (tmp_path / ".results-00000-00000.parquet.tmp-999").exists()
    assert writer.add("c", image, result) == ["c"]
    assert (tmp_path / "results-00000-00005.parquet").is_file()
    with pytest.raises(ITAUsageError, match="another vocabulary"):
        ParquetResultsWriter(tmp_path, vocabulary[:3])


# ------------------------------------------------------------------------------------------------------------
# Fine-tuning on the results: load_segmentation_dataset
# ------------------------------------------------------------------------------------------------------------


def test_results_folder_is_training_data(tmp_path, scenes):
    vocabulary = list(SYNTHETIC_CLASS_NAMES)
    with ParquetResultsWriter(tmp_path, vocabulary, process_index=0, flush_every=4) as writer:
        for index in range(5):
            row = scenes[index]
            label_map = np.asarray(row["label"]).astype(np.int64)
            writer.add(f"s{index}", row["image"], {"segments": [], "label_map": label_map})
    with ParquetResultsWriter(tmp_path, vocabulary, process_index=1) as writer:
        row = scenes[5]
        writer.add("s5", row["image"], {"segments": [], "label_map": np.asarray(row["label"])})
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"input": "s0"}) + "\n")  # what the command adds
    (tmp_path / "summary.json").write_text("{}")

    rows = load_segmentation_dataset(str(tmp_path), split="train")
    assert sorted(rows["id"]) == [f"s{index}" for index in range(6)]
    assert resolve_class_names(rows) == vocabulary
    assert resolve_class_names(rows, vocabulary_file=tmp_path / "classes.txt") == vocabulary
    for row in rows:
        index = int(row["id"][1:])
        np.testing.assert_array_equal(np.asarray(row["label"]), np.asarray(scenes[index]["label"]))
        np.testing.assert_array_equal(_pixels(row["image"]), _pixels(scenes[index]["image"]))
    assert len(load_segmentation_dataset(str(tmp_path), max_samples=2)) == 2


def test_load_segmentation_dataset_refusals(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ITAUsageError) as error:
        load_segmentation_dataset(str(tmp_path / "mistyped" / "path"))
    assert "no file or folder here" in str(error.value) and "HF_HUB_OFFLINE=1" in str(error.value)
    empty = make_synthetic_dataset(2, 16).select([])
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    with pytest.raises(ITADataError, match="has no rows"):
        load_segmentation_dataset(str(tmp_path / "empty.parquet"))
    assert isinstance(DatasetRecord("x", 0, None, "why"), tuple)
