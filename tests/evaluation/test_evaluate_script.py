"""Benchmark evaluation (ita_segmentation/evaluation/runner.py, scripts/evaluate.py) end to end on tiny generated
copies of each benchmark layout, with a tiny model folder.

Every score the script writes is checked against the metric computed here directly: the model and the
post-processing run on one image at a time and feed a `SegmentationConfusionMatrix`.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TWO_LOCAL_PROCESSES, save_tiny_model
from PIL import Image

import ita_cli
from image_processing_ita import ITAImageProcessor
from ita_segmentation.evaluation import BENCHMARKS, SegmentationConfusionMatrix, get_benchmark, load_benchmark
from ita_segmentation.evaluation import cli as evaluate_cli

# `evaluate_cli.run` imports the runner when it runs: the model loader is replaced where it is defined.
from ita_segmentation.evaluation import runner as evaluation_runner
from ita_segmentation.evaluation.cli import parse_args as parse_evaluate_args
from ita_segmentation.evaluation.runner import (
    PUBLISHED_FC_CLIP_MIOU,
    BenchmarkDataError,
    evaluate_benchmarks,
    evaluate_dataset,
    load_model_and_processor,
    plan_batches,
    write_results_table,
)
from modeling_ita import ITAProcessor

ROOT = Path(__file__).resolve().parents[2]
TEST_SIZE = {"shortest_edge": 64, "longest_edge": 96}
# (width, height): the first two share a padded input size (one batch of two), the third does not.
IMAGE_SIZES = [(40, 30), (40, 30), (30, 45)]
RAW_VOC = 1  # index of the raw VOCdevkit layout of pas20/pas21
SCORES = {"mIoU": "mean_iou", "fwIoU": "frequency_weighted_iou", "mACC": "mean_accuracy", "pACC": "overall_accuracy"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-ita"), size=TEST_SIZE, spread_weights=True, seed=1)


@pytest.fixture(scope="module")
def model_and_processor(model_dir):
    return load_model_and_processor(model_dir, device="cpu")


@pytest.fixture
def script_reuses_the_model(monkeypatch, model_and_processor):
    """Let `main` take the already loaded model (and its cache of encoded vocabularies) instead of reading the
    folder again; the tests that exercise loading leave this fixture out."""
    monkeypatch.setattr(evaluation_runner, "load_model_and_processor", lambda *args, **kwargs: model_and_processor)


def write_split(root, name, layout_index=0, image_sizes=IMAGE_SIZES, seed=0):
    """Random images and labels in a benchmark layout; labels use every class id (ids above 255 in 16-bit
    files), the ignore index, and 0 = background where the layout still has it. Returns (image, label) paths."""
    benchmark = get_benchmark(name)
    layout = benchmark.layouts[layout_index]
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if layout.label_suffix == ".tif" else np.uint8
    image_dir, label_dir = root / layout.image_dir, root / layout.label_dir
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for index, (width, height) in enumerate(image_sizes):
        stem = f"val_{index:03d}"
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        num_values = benchmark.num_labels + (1 if layout.reduce_labels else 0)
        label = rng.integers(0, num_values, size=(height, width)).astype(dtype)
        label[0, :3] = benchmark.ignore_index
        label[1, 0] = num_values - 1
        Image.fromarray(image).save(image_dir / f"{stem}{layout.image_suffix}", quality=95)
        Image.fromarray(label).save(label_dir / f"{stem}{layout.label_suffix}")
        pairs.append((image_dir / f"{stem}{layout.image_suffix}", label_dir / f"{stem}{layout.label_suffix}"))
    if layout.split_file is not None:
        (root / layout.split_file).parent.mkdir(parents=True, exist_ok=True)
        (root / layout.split_file).write_text("".join(f"{image.stem}\n" for image, _ in pairs))
    return pairs


def expected_confusion(model, processor, pairs, class_names, ignore_index, before_inference, reduce_labels=False):
    """The confusion matrix computed directly: one image per forward, post-processed to the label's size."""
    confusion = SegmentationConfusionMatrix(len(class_names), ignore_index=ignore_index)
    with torch.inference_mode():
        for image_path, label_path in pairs:
            label = np.array(Image.open(label_path)).astype(np.int64)
            if reduce_labels:
                label = np.where((label == 0) | (label == ignore_index), ignore_index, label - 1)
            inputs = processor(images=Image.open(image_path), return_tensors="pt")
            outputs = model(**inputs, class_names=class_names)
            prediction = processor.post_process_semantic_segmentation(
                outputs, target_sizes=[label.shape], sem_seg_postprocess_before_inference=before_inference
            )[0]
            confusion.update(prediction.numpy(), label)
    assert (confusion.matrix.sum(axis=0) > 0).sum() > 1, "the model predicts one class everywhere: a weak check"
    return confusion


def assert_results_match(folder, confusion, class_names, num_images):
    """results.json, per_class.csv and confusion_matrix.npy of one benchmark against the direct computation."""
    report = json.loads((folder / "results.json").read_text())
    np.testing.assert_array_equal(np.load(folder / "confusion_matrix.npy"), confusion.matrix)
    scores = confusion.compute()
    assert report["num_images"] == num_images
    assert report["units"] == "percent"
    for short, key in SCORES.items():
        assert report["scores"][short] == pytest.approx(100 * scores[key], abs=1e-9)
    assert [row["name"] for row in report["per_class"]] == list(class_names)
    for row, iou, accuracy, pixels in zip(
        report["per_class"], scores["per_category_iou"], scores["per_category_accuracy"], confusion.matrix.sum(1)
    ):
        assert row["ground_truth_pixels"] == pixels
        if np.isnan(iou):
            assert row["iou"] is None and row["accuracy"] is None
        else:
            assert row["iou"] == pytest.approx(100 * iou) and row["accuracy"] == pytest.approx(100 * accuracy)

    with open(folder / "per_class.csv", newline="") as csv_file:
        rows = list(csv.DictReader(csv_file))
    assert [row["name"] for row in rows] == list(class_names)  # names with commas survive the CSV
    for row, iou in zip(rows, scores["per_category_iou"]):
        assert row["iou"] == ("" if np.isnan(iou) else f"{100 * iou:.4f}")
    return report


# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_post_processing_order_follows_fc_clip_eval_configs(name):
    # fcclip_convnext_large_eval_ade20k.yaml turns PANOPTIC_ON and INSTANCE_ON on (mask logits are resized
    # before the class sum); the a847, pc59, pc459, pas20 and pas21 configs turn both off.
    assert get_benchmark(name).sem_seg_postprocess_before_inference is (name == "ade150")


def test_plan_batches_groups_images_by_padded_input_size():
    image_processor = ITAImageProcessor(size=TEST_SIZE)
    # (height, width): 30x40 and 31x40 both become 64x85 / 64x83 -> padded 64x96; 45x30 -> 96x64; 64x64 -> 64x64.
    sizes = [(30, 40), (45, 30), (31, 40), (30, 40), (64, 64), (30, 40)]
    assert plan_batches(sizes, 2, image_processor) == [[0, 2], [3, 5], [1], [4]]
    assert plan_batches(sizes, 8, image_processor) == [[0, 2, 3, 5], [1], [4]]
    assert plan_batches(sizes, 1, image_processor) == [[0], [2], [3], [5], [1], [4]]
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        plan_batches(sizes, 0, image_processor)


@pytest.mark.parametrize(
    "name, layout_index, extra_args",
    [
        ("ade150", 0, []),  # annotations_detectron2 png; mask logits resized before the class sum
        ("ade847", 0, []),  # 16-bit TIFF labels with ids above 255, ignore 65535
        ("pc59", 0, ["--shortest-edge", "48", "--longest-edge", "80"]),
        ("pas21", 0, []),
        ("pas20", RAW_VOC, []),  # raw VOC: palette-free png, split file, 0 = background reduced by the metric
    ],
)
def test_script_scores_equal_the_metric_on_direct_predictions(
    request, tmp_path, model_dir, model_and_processor, name, layout_index, extra_args
):
    if not extra_args:  # the resolution override case (and test_script_runs_as_a_command) load the folder
        request.getfixturevalue("script_reuses_the_model")
    data_dir, output = tmp_path / "data", tmp_path / "out"
    pairs = write_split(data_dir, name, layout_index)
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        name,
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        *extra_args,
    ]
    assert evaluate_cli.main(argv) == 0

    benchmark = get_benchmark(name)
    model, processor = model_and_processor
    if extra_args:
        size = {"shortest_edge": 48, "longest_edge": 80}
        processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(model.config, size=size))
    reduce_labels = benchmark.layouts[layout_index].reduce_labels
    confusion = expected_confusion(
        model,
        processor,
        pairs,
        benchmark.class_names,
        benchmark.ignore_index,
        benchmark.sem_seg_postprocess_before_inference,
        reduce_labels,
    )
    assert confusion.matrix.sum() > 0
    report = assert_results_match(output / name, confusion, benchmark.class_names, len(pairs))

    protocol = report["protocol"]
    assert protocol["ignore_index"] == benchmark.ignore_index
    assert protocol["reduce_labels"] is reduce_labels
    assert protocol["sem_seg_postprocess_before_inference"] is (name == "ade150")
    assert protocol["vocabulary"] == f"FC-CLIP class list with synonyms ({benchmark.vocabulary_file})"
    expected_resolution = (48, 80) if extra_args else (64, 96)
    assert (protocol["resolution"]["shortest_edge"], protocol["resolution"]["longest_edge"]) == expected_resolution
    assert protocol["resolution"]["size_divisor"] == 32 and protocol["scales"] == [1.0] and protocol["flip"] is False
    assert protocol["batch_size"] == 2 and protocol["device"] == "cpu" and protocol["dtype"] == "float32"
    assert report["model"] == str(model_dir)
    assert report["full_split_images"] == benchmark.num_images
    assert report["command"].startswith("ita-evaluate --model ")
    assert f"--benchmark {name}" in report["command"]
    table = (output / "results.md").read_text()
    assert f"| {benchmark.display_name} | `{model_dir}` | 3 of {benchmark.num_images} |" in table
    assert f"| {PUBLISHED_FC_CLIP_MIOU[name]:.1f} |" in table


def test_post_processing_order_changes_the_scores(model_and_processor, tmp_path):
    # Makes the A-150 comparison above discriminating: the two orders give different label maps here.
    model, processor = model_and_processor
    pairs = write_split(tmp_path, "ade150")
    names = get_benchmark("ade150").class_names
    before = expected_confusion(model, processor, pairs, names, 255, True)
    after = expected_confusion(model, processor, pairs, names, 255, False)
    assert not np.array_equal(before.matrix, after.matrix)


def test_several_benchmarks_in_one_call_with_max_samples(
    tmp_path, model_dir, model_and_processor, script_reuses_the_model
):
    data_dir, output = tmp_path / "data", tmp_path / "out"
    pairs = {name: write_split(data_dir, name, seed=index) for index, name in enumerate(("ade150", "pc59", "pas21"))}
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "ade150",
        "pc59",
        "pas21",
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        "--max-samples",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert evaluate_cli.main(argv) == 0

    model, processor = model_and_processor
    table = (output / "results.md").read_text()
    for name in ("ade150", "pc59", "pas21"):
        benchmark = get_benchmark(name)
        confusion = expected_confusion(
            model,
            processor,
            pairs[name][:2],
            benchmark.class_names,
            benchmark.ignore_index,
            benchmark.sem_seg_postprocess_before_inference,
        )
        report = assert_results_match(output / name, confusion, benchmark.class_names, 2)
        assert report["protocol"]["max_samples"] == 2
        assert f"| {benchmark.display_name} | `{model_dir}` | 2 of {benchmark.num_images} |" in table
    # Rows in the registry's order, the published column labelled as a reference.
    assert table.index("| A-150 |") < table.index("| PC-59 |") < table.index("| PAS-21 |")
    assert "FC-CLIP published mIoU (reference)" in table and "not a result of this evaluation" in table


def test_vocabulary_is_encoded_once_per_benchmark(tmp_path, model_and_processor):
    model, processor = model_and_processor
    for name in ("pc59", "pas21"):
        write_split(tmp_path, name)
    calls, texts = [], []
    encode_vocabulary, encode_texts = model.encode_vocabulary, model.vocabulary_encoder._encode_texts

    def counting_encode_vocabulary(class_names=None):
        calls.append(tuple(class_names))
        return encode_vocabulary(class_names)

    def counting_encode_texts(backbone, prompts, *args):
        texts.extend(prompts)
        return encode_texts(backbone, prompts, *args)

    model.encode_vocabulary = counting_encode_vocabulary
    model.vocabulary_encoder._encode_texts = counting_encode_texts
    model.vocabulary_encoder.clear_cache()
    try:
        evaluate_benchmarks(model, processor, ["pc59", "pas21"], tmp_path / "out", data_dir=tmp_path, progress=False)
        assert calls == [tuple(get_benchmark("pc59").class_names), tuple(get_benchmark("pas21").class_names)]
        assert texts  # the text tower ran for the two vocabularies ...
        texts.clear()
        evaluate_benchmarks(model, processor, ["pc59"], tmp_path / "again", data_dir=tmp_path, progress=False)
        assert texts == []  # ... and not again: the model caches the encoded vocabulary
    finally:
        del model.encode_vocabulary, model.vocabulary_encoder._encode_texts


def test_batched_evaluation_equals_one_image_at_a_time(tmp_path, model_and_processor):
    model, processor = model_and_processor
    sizes = [(40, 30), (30, 45), (41, 30), (40, 30), (30, 45), (64, 64)]
    write_split(tmp_path, "pc59", image_sizes=sizes)
    dataset = load_benchmark("pc59", tmp_path)
    batch_sizes = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        batch_sizes.append(kwargs["pixel_values"].shape[0])
        return forward(*args, **kwargs)

    model.forward = recording_forward
    try:
        batched = evaluate_dataset(model, processor, dataset, batch_size=4, progress=False)
    finally:
        del model.forward
    alone = evaluate_dataset(model, processor, dataset, batch_size=1, progress=False)
    assert sorted(batch_sizes) == [1, 2, 3]  # 64x96 inputs: three images; 96x64: two; 64x64: one
    assert batched.num_images == alone.num_images == 6
    np.testing.assert_array_equal(batched.confusion.matrix, alone.confusion.matrix)


def test_vocabulary_file_override(tmp_path, model_dir, model_and_processor, script_reuses_the_model):
    data_dir, output = tmp_path / "data", tmp_path / "out"
    pairs = write_split(data_dir, "pas21")
    class_names = [f"thing {index},object {index}" for index in range(21)]
    vocabulary_file = tmp_path / "pas21_plain.txt"
    vocabulary_file.write_text("".join(f"{index}:{name}\n" for index, name in enumerate(class_names)))
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "pas21",
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        "--vocabulary-file",
        str(vocabulary_file),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert evaluate_cli.main(argv) == 0

    model, processor = model_and_processor
    confusion = expected_confusion(model, processor, pairs, class_names, 255, False)
    report = assert_results_match(output / "pas21", confusion, class_names, 3)
    assert report["protocol"]["vocabulary"] == str(vocabulary_file)

    # With several benchmarks each file names its benchmark.
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "pas21",
        "pc59",
        "--data-dir",
        str(data_dir),
        "--output",
        str(output),
        "--vocabulary-file",
        str(vocabulary_file),
    ]
    with pytest.raises(SystemExit) as exit_info:
        parse_evaluate_args(argv)
    assert exit_info.value.code == 2
    args = parse_evaluate_args(argv[:-1] + [f"pas21={vocabulary_file}"])
    assert args.vocabulary_files == {"pas21": vocabulary_file}


def test_mismatched_image_and_label_sizes_name_the_file(
    tmp_path, model_dir, model_and_processor, script_reuses_the_model, capsys
):
    pairs = write_split(tmp_path, "ade150")
    image_path, label_path = pairs[1]
    Image.fromarray(np.zeros((20, 40), dtype=np.uint8)).save(label_path)  # the image is 30x40

    model, processor = model_and_processor
    with pytest.raises(BenchmarkDataError) as error:
        evaluate_dataset(model, processor, load_benchmark("ade150", tmp_path), progress=False)
    assert str(image_path) in str(error.value) and str(label_path) in str(error.value)
    assert "30x40" in str(error.value) and "20x40" in str(error.value)

    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "ade150",
        "--data-dir",
        str(tmp_path),
        "--output",
        str(tmp_path / "out"),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert ita_cli.evaluate(argv) == 1
    assert str(image_path) in capsys.readouterr().err
    assert not (tmp_path / "out" / "ade150" / "results.json").exists()


def test_hub_dataset_with_label_reduction(tmp_path, model_dir, model_and_processor, script_reuses_the_model):
    import datasets

    pairs = write_split(tmp_path / "files", "pas20", RAW_VOC)  # labels with 0 = background
    table = datasets.Dataset.from_dict(
        {"img": [str(image) for image, _ in pairs], "seg": [str(label) for _, label in pairs]},
        features=datasets.Features({"img": datasets.Image(), "seg": datasets.Image()}),
    )
    (tmp_path / "hub").mkdir()
    table.cast_column("img", datasets.Image()).to_parquet(str(tmp_path / "hub" / "validation.parquet"))
    output = tmp_path / "out"
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "pas20",
        "--hub-dataset",
        str(tmp_path / "hub"),
        "--split",
        "validation",
        "--image-column",
        "img",
        "--label-column",
        "seg",
        "--reduce-labels",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output",
        str(output),
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert evaluate_cli.main(argv) == 0

    model, processor = model_and_processor
    benchmark = get_benchmark("pas20")
    confusion = expected_confusion(model, processor, pairs, benchmark.class_names, 255, False, reduce_labels=True)
    report = assert_results_match(output / "pas20", confusion, benchmark.class_names, 3)
    assert report["protocol"]["reduce_labels"] is True
    assert report["protocol"]["data"] == {"hub_dataset": str(tmp_path / "hub"), "split": "validation"}

    with pytest.raises(SystemExit):  # one benchmark per Hub dataset
        parse_evaluate_args(argv[:4] + ["pas21"] + argv[4:])


def test_results_table_lists_every_benchmark_in_the_folder(tmp_path):
    for name, miou, images in (("pas21", 12.345, 1449), ("ade847", None, 5)):
        folder = tmp_path / name
        folder.mkdir()
        benchmark = get_benchmark(name)
        report = {
            "benchmark": name,
            "display_name": benchmark.display_name,
            "model": "m",
            "num_images": images,
            "full_split_images": benchmark.num_images,
            "published_fc_clip_miou": PUBLISHED_FC_CLIP_MIOU[name],
            "scores": {"mIoU": miou, "fwIoU": 1.0, "mACC": 2.0, "pACC": 3.0},
        }
        (folder / "results.json").write_text(json.dumps(report))
    table = write_results_table(tmp_path).read_text()
    assert "| A-847 | `m` | 5 of 2000 | n/a | 1.00 | 2.00 | 3.00 | 14.8 |" in table
    assert "| PAS-21 | `m` | 1449 | 12.35 | 1.00 | 2.00 | 3.00 | 81.8 |" in table
    assert table.index("| A-847 |") < table.index("| PAS-21 |")


def test_script_runs_as_a_command(tmp_path, model_dir):
    write_split(tmp_path / "data", "pas21")
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    completed = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate.py",
            "--model",
            str(model_dir),
            "--benchmark",
            "PAS-21",
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "out"),
            "--batch-size",
            "2",
            "--num-workers",
            "1",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "PAS-21: mIoU" in completed.stdout and "FC-CLIP published: 81.8" in completed.stdout
    assert "img" in completed.stderr  # the progress bar
    report = json.loads((tmp_path / "out" / "pas21" / "results.json").read_text())
    assert report["num_images"] == 3 and report["benchmark"] == "pas21"
    assert (tmp_path / "out" / "results.md").is_file()


# ------------------------------------------------------------------------------------- data checked before the run
def test_every_bad_label_map_is_named_before_the_model_is_loaded(tmp_path, model_dir, monkeypatch, capsys):
    pairs = write_split(tmp_path / "data", "ade150", image_sizes=[(40, 30)] * 6)
    (_, out_of_range), (_, wrong_size), (_, truncated), (image_only, no_label) = pairs[0], pairs[1], pairs[2], pairs[3]
    label = np.array(Image.open(out_of_range))
    label[5, 5] = 200  # not a class of A-150 (0..149) and not the ignore label 255
    Image.fromarray(label).save(out_of_range)
    Image.fromarray(np.zeros((20, 40), dtype=np.uint8)).save(wrong_size)
    truncated.write_bytes(truncated.read_bytes()[:40])
    no_label.unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(evaluation_runner, "load_model_and_processor", no_model)
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "ade150",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert ita_cli.evaluate(argv) == 1
    err = capsys.readouterr().err
    assert "4 problem(s) in 3 of the 5 samples and 1 unpaired file(s) of A-150" in err
    assert f"{out_of_range}: class ids [200] are outside the vocabulary of 150 classes" in err
    assert f"{wrong_size}: the label map is 20x40 (height x width) but its image" in err
    assert f"{truncated}: the label map cannot be read" in err
    assert f"{image_only}: its label map {no_label} is missing" in err
    assert not (tmp_path / "out").exists()

    # Asked to, it leaves them out, says how many, and records them with the results.
    monkeypatch.setattr(evaluation_runner, "load_model_and_processor", load_model_and_processor)
    assert evaluate_cli.main(argv + ["--skip-bad-samples"]) == 0
    err = capsys.readouterr().err
    assert "Leaving out 3 of the 5 samples of A-150 (--skip-bad-samples)" in err
    report = json.loads((tmp_path / "out" / "ade150" / "results.json").read_text())
    assert report["num_images"] == 2
    assert sorted(entry["file"] for entry in report["skipped_samples"]) == sorted(
        str(path) for path in (out_of_range, wrong_size, truncated, image_only)
    )
    assert "(4 bad left out)" in (tmp_path / "out" / "results.md").read_text()


def test_results_computed_before_a_failure_are_kept(
    tmp_path, model_dir, model_and_processor, script_reuses_the_model, capsys
):
    write_split(tmp_path / "data", "pas21", seed=1)
    write_split(tmp_path / "data", "pc59", seed=2)
    model, _ = model_and_processor
    forward, calls = model.forward, []

    def failing_forward(*args, **kwargs):  # the fifth forward pass: the second image of PC-59
        calls.append(1)
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    try:
        argv = [
            "--model",
            str(model_dir),
            "--benchmark",
            "pas21",
            "pc59",
            "--data-dir",
            str(tmp_path / "data"),
            "--output",
            str(tmp_path / "out"),
            "--num-workers",
            "0",
            "--no-progress",
        ]
        assert ita_cli.evaluate(argv) == 1
    finally:
        del model.forward
    err = capsys.readouterr().err
    assert "CUDA out of memory (simulated)" in err and "--batch-size" in err and "Traceback" not in err
    assert f"what was computed before is in {tmp_path / 'out'}" in err
    complete = json.loads((tmp_path / "out" / "pas21" / "results.json").read_text())
    assert complete["complete"] is True and complete["num_images"] == 3
    partial = json.loads((tmp_path / "out" / "pc59" / "results.json").read_text())
    assert partial["complete"] is False and partial["num_images"] == 1
    assert "OutOfMemoryError: CUDA out of memory (simulated)" in partial["interrupted"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| PAS-21 |" in table and "| PC-59 | " in table and "1 of 5104 (interrupted)" in table


def test_results_already_in_the_output_folder_are_not_replaced(tmp_path, model_dir, script_reuses_the_model, capsys):
    write_split(tmp_path / "data", "pas21")
    argv = [
        "--model",
        str(model_dir),
        "--benchmark",
        "pas21",
        "--data-dir",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert evaluate_cli.main(argv) == 0
    first = (tmp_path / "out" / "pas21" / "results.json").stat().st_mtime_ns
    assert ita_cli.evaluate(argv) == 2
    assert "already hold(s) results" in capsys.readouterr().err
    assert (tmp_path / "out" / "pas21" / "results.json").stat().st_mtime_ns == first
    assert evaluate_cli.main(argv + ["--overwrite"]) == 0


# ------------------------------------------------------------------------------------------------- your own data
def write_own_dataset(root, split="validation", num_images=5):
    from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset, write_label_map_folders

    rows = make_synthetic_dataset(num_images, 48, seed=3)
    images, labels = write_label_map_folders(rows, root, split=split)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_CLASS_NAMES))
    pairs = [(images / f"{Path(name).stem}.png", labels / f"{Path(name).stem}.png") for name in rows["file_name"]]
    return pairs, list(SYNTHETIC_CLASS_NAMES)


@pytest.mark.parametrize("as_parquet", [False, True], ids=["label_folders", "parquet"])
def test_own_dataset_with_its_class_list(tmp_path, model_dir, model_and_processor, script_reuses_the_model, as_parquet):
    import datasets

    pairs, class_names = write_own_dataset(tmp_path / "mine")
    source = tmp_path / "mine"
    if as_parquet:
        table = datasets.Dataset.from_dict(
            {"photo": [str(image) for image, _ in pairs], "mask": [str(label) for _, label in pairs]},
            features=datasets.Features({"photo": datasets.Image(), "mask": datasets.Image()}),
        )
        source = tmp_path / "mine_parquet"
        source.mkdir()
        table.to_parquet(str(source / "validation.parquet"))
    argv = [
        "--model",
        str(model_dir),
        "--dataset",
        str(source),
        "--vocabulary-file",
        str(tmp_path / "mine" / "classes.txt"),
        "--output",
        str(tmp_path / "out"),
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    if as_parquet:
        argv += ["--image-column", "photo", "--label-column", "mask", "--name", "mine"]
    assert evaluate_cli.main(argv) == 0

    model, processor = model_and_processor
    confusion = expected_confusion(model, processor, pairs, class_names, 255, False)
    report = assert_results_match(tmp_path / "out" / "mine", confusion, class_names, len(pairs))
    assert report["display_name"] == "mine" and report["published_fc_clip_miou"] is None
    assert report["protocol"]["vocabulary"] == str(tmp_path / "mine" / "classes.txt")
    assert "| mine |" in (tmp_path / "out" / "results.md").read_text()


def test_own_dataset_needs_its_class_list(tmp_path, model_dir, capsys):
    write_own_dataset(tmp_path / "mine")
    argv = ["--model", str(model_dir), "--dataset", str(tmp_path / "mine"), "--output", str(tmp_path / "out")]
    assert ita_cli.evaluate(argv) == 1
    assert "Cannot tell the class names" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --data-dir is the benchmarks' root
        parse_evaluate_args(argv + ["--data-dir", str(tmp_path)])


def test_two_processes_give_the_numbers_of_one(tmp_path, model_dir, model_and_processor):
    """`accelerate launch` with two CPU processes: each predicts half the images; the merged results equal those
    of one process, computed here (both with one thread, so that floats are computed alike)."""
    pairs, class_names = write_own_dataset(tmp_path / "mine", num_images=6)
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *TWO_LOCAL_PROCESSES,
        "scripts/evaluate.py",
        "--model",
        str(model_dir),
        "--dataset",
        str(tmp_path / "mine"),
        "--vocabulary-file",
        str(tmp_path / "mine" / "classes.txt"),
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--output",
        str(tmp_path / "two"),
    ]
    completed = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.count("mine: mIoU") == 1  # only the first process reports

    model, processor = model_and_processor
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        confusion = expected_confusion(model, processor, pairs, class_names, 255, False)
    finally:
        torch.set_num_threads(threads)
    report = assert_results_match(tmp_path / "two" / "mine", confusion, class_names, len(pairs))
    assert report["protocol"]["num_processes"] == 2
