"""The mIoU metric: hand-computed confusion matrices, detectron2's protocol, bounded memory, and the `evaluate`
module loaded offline by path."""

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from ita_segmentation.evaluation import (
    METRIC_PATH,
    LabelPairHistogram,
    SegmentationConfusionMatrix,
    reduce_reference_labels,
    segmentation_scores,
)

# Three classes, ignore 255. Scored (reference, prediction) pixels: (0,0) (1,0) (1,1) (2,2) (0,2); the
# pixel whose reference is 255 (predicted 1) is dropped.
PREDICTION = np.array([[0, 0, 1], [1, 2, 2]])
REFERENCE = np.array([[0, 1, 1], [255, 2, 0]])
EXPECTED_MATRIX = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]])  # rows: reference, columns: prediction


def test_hand_computed_confusion_matrix_and_scores():
    scores = SegmentationConfusionMatrix(num_labels=3, ignore_index=255)
    scores.update(PREDICTION, REFERENCE)
    np.testing.assert_array_equal(scores.matrix, EXPECTED_MATRIX)
    assert scores.matrix.dtype == np.int64

    results = scores.compute()
    # GT = [2, 2, 1], Pred = [2, 1, 2], TP = [1, 1, 1]
    np.testing.assert_allclose(results["per_category_iou"], [1 / 3, 1 / 2, 1 / 2])
    np.testing.assert_allclose(results["per_category_accuracy"], [1 / 2, 1 / 2, 1])
    assert results["mean_iou"] == pytest.approx(4 / 9)
    assert results["mean_accuracy"] == pytest.approx(2 / 3)
    assert results["overall_accuracy"] == pytest.approx(3 / 5)
    assert results["frequency_weighted_iou"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 1 / 2 + 1 / 5 * 1 / 2)


def test_classes_absent_from_the_split_are_left_out_of_the_means():
    # Class 2 is neither present nor predicted; class 3 is predicted once but has no ground truth.
    prediction = np.array([[0, 3, 1, 1]])
    reference = np.array([[0, 0, 1, 1]])
    results = SegmentationConfusionMatrix(num_labels=4, ignore_index=255).compute()
    assert np.isnan(results["mean_iou"])  # nothing accumulated yet

    scores = SegmentationConfusionMatrix(num_labels=4, ignore_index=255)
    scores.update(prediction, reference)
    results = scores.compute()
    np.testing.assert_allclose(results["per_category_iou"][:2], [1 / 2, 1])
    assert np.isnan(results["per_category_iou"][2:]).all()
    assert np.isnan(results["per_category_accuracy"][2:]).all()
    # Counting class 3 as IoU 0 (old detectron2, the Hub's mean_iou) would give (0.5 + 1 + 0) / 3 = 0.5.
    assert results["mean_iou"] == pytest.approx(3 / 4)
    assert results["mean_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    assert results["overall_accuracy"] == pytest.approx(3 / 4)


def test_847_classes_with_16_bit_labels_match_a_pixel_loop():
    rng = np.random.default_rng(0)
    classes = np.array([0, 5, 255, 256, 300, 846])
    references = [rng.choice(np.append(classes, 65535), size=(6, 7)).astype(np.uint16) for _ in range(3)]
    predictions = [rng.choice(classes, size=(6, 7)) for _ in range(3)]

    expected = np.zeros((847, 847), dtype=np.int64)
    for prediction, reference in zip(predictions, references):
        for predicted, referenced in zip(prediction.ravel().tolist(), reference.ravel().tolist()):
            if referenced != 65535:
                expected[referenced, predicted] += 1

    scores = SegmentationConfusionMatrix(num_labels=847, ignore_index=65535)
    scores.update_batch(predictions, references)
    np.testing.assert_array_equal(scores.matrix, expected)

    results = scores.compute()
    present = [c for c in range(847) if expected[c].sum() > 0]
    ious = [expected[c, c] / (expected[c].sum() + expected[:, c].sum() - expected[c, c]) for c in present]
    assert set(present) == set(classes.tolist())
    assert results["mean_iou"] == pytest.approx(np.mean(ious))
    assert np.isnan(results["per_category_iou"][1])
    assert results["overall_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())


def test_reduce_labels_shifts_ids_and_ignores_zero():
    np.testing.assert_array_equal(reduce_reference_labels([0, 1, 2, 255], 255), [255, 0, 1, 255])
    np.testing.assert_array_equal(reduce_reference_labels([0, 1, 300, 65535], 65535), [65535, 0, 299, 65535])

    prediction = np.array([[1, 0, 1, 2]])
    raw_reference = np.array([[0, 1, 2, 255]])  # 0 = "other", classes from 1
    scores = SegmentationConfusionMatrix(num_labels=3, ignore_index=255, reduce_labels=True)
    scores.update(prediction, raw_reference)
    np.testing.assert_array_equal(scores.matrix, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert scores.compute()["mean_iou"] == pytest.approx(1.0)

    histogram = LabelPairHistogram()
    histogram.update(prediction, raw_reference)
    np.testing.assert_array_equal(histogram.confusion_matrix(3, 255, reduce_labels=True), scores.matrix)


def test_batches_equal_one_pass_and_the_pair_histogram():
    rng = np.random.default_rng(1)
    shapes = [(5, 6), (7, 3), (4, 4), (5, 6)]  # maps of different sizes in one batch
    predictions = [rng.integers(0, 6, size=shape) for shape in shapes]
    references = [np.where(rng.random(shape) < 0.2, 255, rng.integers(0, 6, size=shape)) for shape in shapes]

    whole = SegmentationConfusionMatrix(6, 255)
    whole.update_batch(predictions, references)
    batched = SegmentationConfusionMatrix(6, 255)
    batched.update_batch(predictions[:1], references[:1])
    batched.update_batch(predictions[1:3], references[1:3])
    batched.update(predictions[3], references[3])
    np.testing.assert_array_equal(batched.matrix, whole.matrix)

    histogram = LabelPairHistogram()
    histogram.update_batch(predictions, references)
    np.testing.assert_array_equal(histogram.confusion_matrix(6, 255), whole.matrix)

    other = SegmentationConfusionMatrix(6, 255)
    other.update_batch(predictions[:2], references[:2])
    rest = SegmentationConfusionMatrix(6, 255)
    rest.update_batch(predictions[2:], references[2:])
    other.merge(rest)
    np.testing.assert_array_equal(other.matrix, whole.matrix)
    assert whole.compute()["mean_iou"] == segmentation_scores(whole.matrix)["mean_iou"]


def test_invalid_inputs_are_rejected_clearly():
    scores = SegmentationConfusionMatrix(num_labels=3, ignore_index=255)
    with pytest.raises(ValueError, match=r"Predictions must be class ids in \[0, 3\), found \[3\]"):
        scores.update(np.array([[0, 3]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"found \[-1\]"):
        scores.update(np.array([[0, -1]]), np.array([[0, 255]]))  # checked even where the reference is ignored
    with pytest.raises(ValueError, match=r"References must be class ids in \[0, 3\) or the ignore index 255"):
        scores.update(np.array([[0, 1]]), np.array([[0, 7]]))
    with pytest.raises(ValueError, match="does not match its reference"):
        scores.update(np.zeros((2, 3), dtype=int), np.zeros((3, 2), dtype=int))
    with pytest.raises(TypeError, match="integer class ids"):
        scores.update(np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        scores.update_batch([np.zeros((2, 2), dtype=int)] * 2, [np.zeros((2, 2), dtype=int)])
    assert scores.matrix.sum() == 0  # nothing was added by the rejected calls

    histogram = LabelPairHistogram()
    histogram.update(np.array([[0, 9]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"\[0, 3\), found \[9\]"):
        histogram.confusion_matrix(3, 255)


def _memory_growth(update, images):
    """Bytes still allocated after updating with images[10:], relative to after images[:10]."""
    for prediction, reference in images[:10]:
        update(prediction, reference)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for prediction, reference in images[10:]:
            update(prediction, reference)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


def test_memory_stays_fixed_while_images_accumulate():
    rng = np.random.default_rng(2)
    prediction = rng.integers(0, 20, size=(128, 128))
    reference = rng.integers(0, 21, size=(128, 128))
    reference[reference == 20] = 255
    # The same arrays each time, so the test only measures what the accumulators keep.
    images = [(prediction, reference)] * 110
    full_maps = 100 * 2 * prediction.nbytes  # what storing the maps would cost: ~26 MB

    scores = SegmentationConfusionMatrix(20, 255)
    assert _memory_growth(scores.update, images) < 16 * 1024
    assert scores.matrix.shape == (20, 20) and scores.matrix.sum() == 110 * (reference != 255).sum()

    histogram = LabelPairHistogram()
    assert _memory_growth(histogram.update, images) < full_maps / 20
    assert histogram.num_pairs <= 20 * 21
    np.testing.assert_array_equal(histogram.confusion_matrix(20, 255), scores.matrix)


_EVALUATE_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import evaluate
    import numpy as np

    from ita_segmentation.evaluation import METRIC_PATH

    data = np.load(sys.argv[1])
    predictions, references = list(data["predictions"]), list(data["references"])
    metric = evaluate.load(METRIC_PATH, cache_dir=sys.argv[2])
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add(prediction=predictions[2], reference=references[2])
    metric.add_batch(predictions=predictions[3:], references=references[3:])
    incremental = metric.compute(num_labels=7, ignore_index=255)
    single = metric.compute(predictions=predictions, references=references, num_labels=7, ignore_index=255)
    reduced = metric.compute(predictions=predictions, references=references, num_labels=7, ignore_index=255,
                             reduce_labels=True)
    try:
        metric.compute(predictions=predictions, references=references, num_labels=5, ignore_index=255)
        out_of_range = None
    except ValueError as error:
        out_of_range = str(error)
    to_lists = lambda scores: {k: v.tolist() if hasattr(v, "tolist") else v for k, v in scores.items()}
    print(json.dumps({
        "module": type(metric).__module__,
        "name": metric.name,
        "incremental": to_lists(incremental),
        "single": to_lists(single),
        "reduced": to_lists(reduced),
        "out_of_range": out_of_range,
    }))
    """
)


@pytest.fixture(scope="module")
def evaluate_run(tmp_path_factory):
    """Load the metric by path with evaluate in a fresh, offline process whose working directory is not the
    repository (evaluate copies the script into its modules cache, so `modeling_ita` must come from the
    installed package)."""
    workdir = tmp_path_factory.mktemp("evaluate_offline")
    rng = np.random.default_rng(3)
    predictions = rng.integers(0, 7, size=(5, 9, 11))
    references = np.where(rng.random((5, 9, 11)) < 0.1, 255, rng.integers(0, 7, size=(5, 9, 11)))
    np.savez(workdir / "data.npz", predictions=predictions, references=references)
    (workdir / "run.py").write_text(_EVALUATE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"))
    completed = subprocess.run(
        [sys.executable, "run.py", str(workdir / "data.npz"), str(workdir / "cache")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1]), predictions, references, workdir


def test_evaluate_load_by_path_offline_matches_the_accumulator(evaluate_run):
    results, predictions, references, workdir = evaluate_run
    assert results["name"] == "ita_mean_iou"
    assert results["module"].startswith("evaluate_modules.metrics.ita_mean_iou")
    assert any((workdir / "modules").rglob("ita_mean_iou.py"))  # loaded from evaluate's copy

    scores = SegmentationConfusionMatrix(7, 255)
    scores.update_batch(predictions, references)
    expected = scores.compute()
    assert (
        set(results["single"])
        == set(expected)
        == {
            "mean_iou",
            "mean_accuracy",
            "overall_accuracy",
            "frequency_weighted_iou",
            "per_category_iou",
            "per_category_accuracy",
        }
    )
    for key, value in expected.items():
        np.testing.assert_allclose(results["single"][key], value, err_msg=key)
        np.testing.assert_allclose(results["incremental"][key], value, err_msg=key)

    reduced = SegmentationConfusionMatrix(7, 255, reduce_labels=True)
    reduced.update_batch(predictions, references)
    np.testing.assert_allclose(results["reduced"]["per_category_iou"], reduced.compute()["per_category_iou"])
    assert results["reduced"]["mean_iou"] != pytest.approx(expected["mean_iou"])
    assert "Predictions must be class ids in [0, 5)" in results["out_of_range"]


def test_metric_path_points_at_the_shipped_module():
    assert os.path.isfile(os.path.join(METRIC_PATH, "ita_mean_iou.py"))
    assert os.path.basename(METRIC_PATH) == "ita_mean_iou"
