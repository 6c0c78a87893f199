"""Panoptic evaluation (`ita_segmentation/evaluation/panoptic.py`) on a generated split in COCO panoptic's layout."""

import json

import numpy as np
import pytest
import torch

from ita_segmentation.evaluation.panoptic import (
    PANOPTIC_BENCHMARKS,
    evaluate_panoptic,
    find_panoptic_split,
    write_panoptic_results,
)
from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset, write_coco_panoptic


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    scenes = make_synthetic_dataset(3, image_size=48, seed=5, with_instances=True)
    write_coco_panoptic(scenes, root / "coco", split="val2017", crowd_class=4)
    return root


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    from ita_segmentation.evaluation.runner import load_model_and_processor

    return load_model_and_processor(tiny_model_dir, device="cpu")


def test_split_is_read_with_categories_by_id(coco_root):
    records, categories = find_panoptic_split(PANOPTIC_BENCHMARKS["coco_panoptic"], coco_root)
    assert len(records) == 3 and all(record["image"].is_file() and record["panoptic"].is_file() for record in records)
    assert [category for category, _, _ in categories] == sorted(category for category, _, _ in categories)
    assert [isthing for _, _, isthing in categories] == [True, True, True, False, False]


def test_a_perfect_prediction_scores_100_and_results_are_written(coco_root, model_and_processor, tmp_path, monkeypatch):
    """The model's panoptic output replaced by the ground truth (in vocabulary indices): PQ = SQ = RQ = 100, so the
    reading of the PNGs, the category mapping and the crowd handling fit together."""
    model, processor = model_and_processor
    records, categories = find_panoptic_split(PANOPTIC_BENCHMARKS["coco_panoptic"], coco_root)
    index_of = {category: index for index, (category, _, _) in enumerate(categories)}
    from ita_segmentation.evaluation import panoptic

    truths = iter(records)

    def ground_truth(outputs, label_ids_to_fuse, target_sizes):
        record = next(truths)
        ids = panoptic._segment_ids(record["panoptic"])
        assert tuple(target_sizes[0]) == ids.shape
        assert label_ids_to_fuse == {3, 4}  # the two stuff classes
        segments = [
            {"id": s["id"], "label_id": index_of[s["category_id"]], "was_fused": False, "score": 1.0}
            for s in record["segments_info"]
            if not s["iscrowd"]
        ]
        kept = np.isin(ids, [s["id"] for s in segments])
        return [{"segmentation": torch.from_numpy(np.where(kept, ids, 0)), "segments_info": segments}]

    monkeypatch.setattr(processor, "post_process_panoptic_segmentation", ground_truth)
    scores = evaluate_panoptic(model, processor, records, categories, list(SYNTHETIC_CLASS_NAMES), progress=False)
    assert scores["num_images"] == 3
    assert scores["all"]["pq"] == pytest.approx(1.0) and scores["all"]["n"] >= 2
    report = write_panoptic_results(tmp_path / "out", scores, categories)
    assert report["all"]["pq"] == pytest.approx(100.0)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["things"]["pq"] == pytest.approx(100.0)
    assert (tmp_path / "out" / "per_class.csv").read_text().startswith("category_id,name,isthing,PQ")
    with pytest.raises(FileExistsError, match="choose another output folder"):
        write_panoptic_results(tmp_path / "out", scores, categories)


def test_the_model_runs_end_to_end(coco_root, model_and_processor):
    model, processor = model_and_processor
    records, categories = find_panoptic_split(PANOPTIC_BENCHMARKS["coco_panoptic"], coco_root)
    scores = evaluate_panoptic(
        model, processor, records, categories, list(SYNTHETIC_CLASS_NAMES), max_samples=2, progress=False
    )
    assert scores["num_images"] == 2
    assert all(0.0 <= group["pq"] <= 1.0 for group in (scores["all"],) if group["pq"] is not None)


def test_missing_split_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no panoptic PNG folder"):
        find_panoptic_split(PANOPTIC_BENCHMARKS["ade20k_panoptic"], tmp_path)
    assert len(PANOPTIC_BENCHMARKS["ade20k_panoptic"].class_names()) == 150
    assert len(PANOPTIC_BENCHMARKS["coco_panoptic"].class_names()) == 133


def test_script_names_a_class_list_mismatch_before_loading_the_model(coco_root, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "evaluate_panoptic.py"
    spec = importlib.util.spec_from_file_location("evaluate_panoptic", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "model").mkdir()  # an ITA model folder to the pre-torch check; never loaded
    (tmp_path / "model" / "config.json").write_text('{"model_type": "ita"}')
    arguments = [
        "--model",
        str(tmp_path / "model"),
        "--benchmark",
        "coco_panoptic",
        "--data-dir",
        str(coco_root),
        "--output",
        str(tmp_path / "pq"),
    ]
    # The COCO vocabulary has 133 classes, the generated split 5 categories: named before any model is loaded.
    assert script.main(arguments) == 1
    error = capsys.readouterr().err
    assert "the split has 5 categories but the class list 133 classes" in error and "Traceback" not in error
    assert not (tmp_path / "pq").exists()
    # A missing model folder is a usage error, found before torch is imported.
    assert script.main([*arguments[:1], str(tmp_path / "no-model"), *arguments[2:]]) == 2
    assert "no-model does not exist" in capsys.readouterr().err


def test_panoptic_benchmark_names_match_the_registry():
    from ita_segmentation.evaluation.benchmark_names import PANOPTIC_BENCHMARK_NAMES

    assert tuple(PANOPTIC_BENCHMARKS) == PANOPTIC_BENCHMARK_NAMES
