"""The pre-flight pass over label maps (ita_segmentation/evaluation/data_check.py)."""

import datasets
import numpy as np
import pytest
from PIL import Image

from ita_segmentation.evaluation.data_check import DataCheckError, check_segmentation_data


def in_memory(labels, image_size=(6, 8)):
    images = [Image.new("RGB", image_size[::-1], (10 * index, 0, 0)) for index in range(len(labels))]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Image(), "file_name": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": images,
            "label": [Image.fromarray(label) for label in labels],
            "file_name": [f"scene_{index}.png" for index in range(len(labels))],
        },
        features=features,
    )


def test_every_problem_is_reported_with_its_row(capsys):
    good = np.zeros((6, 8), dtype=np.uint8)
    out_of_range = good.copy()
    out_of_range[0, 0], out_of_range[1, 1] = 7, 9
    ignored = good.copy()
    ignored[2:, :] = 255
    dataset = in_memory([good, out_of_range, ignored, np.zeros((5, 8), dtype=np.uint8)])
    report = check_segmentation_data(dataset, num_labels=5, unpaired=[("orphan.jpg", "its label map is missing")])
    assert "Checking label maps" in capsys.readouterr().err  # a progress bar
    assert report.bad_rows == [1, 3]
    messages = [str(problem) for problem in report.problems]
    assert messages[0] == (
        "row 1 (scene_1.png): class ids [7, 9] are outside the vocabulary of 5 classes (0..4) and "
        "are not the ignore label 255"
    )
    assert messages[1].startswith("row 3 (scene_3.png): the label map is 5x8 (height x width) but its image")
    assert messages[2] == "orphan.jpg: its label map is missing"

    with pytest.raises(DataCheckError, match=r"3 problem\(s\) in 2 of the 4 samples and 1 unpaired file\(s\)"):
        report.raise_or_keep_good(dataset)
    kept = report.raise_or_keep_good(dataset, skip_bad_samples=True, log=lambda message: None)
    assert kept["file_name"] == ["scene_0.png", "scene_2.png"]


def test_reduce_labels_and_colour_label_maps():
    raw = np.array([[0, 1, 5], [5, 255, 6]], dtype=np.uint8)  # 0 = other; classes 1..5 become 0..4
    dataset = in_memory([raw], image_size=(2, 3))
    report = check_segmentation_data(dataset, num_labels=5, reduce_labels=True, progress=False)
    assert [problem.message.split(" are outside")[0] for problem in report.problems] == ["class ids [5]"]

    rgb = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (3, 2))], "label": [Image.new("RGB", (3, 2))]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
    )
    (problem,) = check_segmentation_data(rgb, num_labels=5, progress=False).problems
    assert "the label map is a RGB image" in problem.message


def test_unreadable_and_missing_files(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "a_label.png")
    (tmp_path / "b_label.png").write_bytes((tmp_path / "a_label.png").read_bytes()[:30])
    rows = datasets.Dataset.from_dict(
        {
            "image": [str(tmp_path / "a.png"), str(tmp_path / "a.png"), str(tmp_path / "gone.png")],
            "label": [str(tmp_path / "a_label.png"), str(tmp_path / "b_label.png"), str(tmp_path / "a_label.png")],
        },
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
    )
    report = check_segmentation_data(rows, num_labels=3, progress=False)
    assert [str(problem).split(":")[0] for problem in report.problems] == [
        str(tmp_path / "b_label.png"),
        str(tmp_path / "gone.png"),
    ]
    assert "cannot be read" in report.problems[0].message and report.problems[1].message == "the image file is missing"


def test_panoptic_annotations_are_checked_by_their_headers(tmp_path):
    from ita_segmentation.segmentation_data import load_segmentation_dataset
    from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset, write_coco_panoptic

    write_coco_panoptic(make_synthetic_dataset(3, 40, seed=2, with_instances=True), tmp_path, split="train2017")
    rows = load_segmentation_dataset(
        str(tmp_path), "train", layout="coco_panoptic", class_names=list(SYNTHETIC_CLASS_NAMES)
    )
    check = dict(num_labels=len(SYNTHETIC_CLASS_NAMES), segments_column="segments_info", progress=False)
    assert check_segmentation_data(rows, **check).problems == []
    panoptic = sorted((tmp_path / "panoptic_train2017").iterdir())[1]
    Image.new("RGB", (10, 10)).save(panoptic)
    (problem,) = check_segmentation_data(rows, **check).problems
    assert problem.file == str(panoptic) and "the label map is 10x10" in problem.message
