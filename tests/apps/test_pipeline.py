"""The `zero-shot-image-segmentation` pipeline on a tiny ITA checkpoint."""

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import get_supported_tasks
from transformers.utils import logging as transformers_logging

from modeling_ita import ITAForOpenVocabSegmentation, ITAImageProcessor, ITAProcessor, ZeroShotImageSegmentationPipeline

VOCABULARY = ["cat", "sofa,couch", "wall"]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def segmenter(model_dir):
    return pipeline("zero-shot-image-segmentation", model=str(model_dir), device="cpu")


def make_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    array[: height // 2, :, 0] = 230  # some structure: a reddish top half
    return Image.fromarray(array)


def check_result(result, image_size, vocabulary):
    height, width = image_size
    label_map = result["label_map"]
    assert isinstance(label_map, np.ndarray) and np.issubdtype(label_map.dtype, np.integer)
    assert label_map.shape == (height, width)
    segments = result["segments"]
    assert segments, "every pixel has a class, so at least one segment"
    shares = [segment["pixel_share"] for segment in segments]
    assert shares == sorted(shares, reverse=True)
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    covered = np.zeros((height, width), dtype=bool)
    for segment in segments:
        assert segment["label"] == vocabulary[segment["class_id"]]
        mask = segment["mask"]
        assert mask.mode == "L" and mask.size == (width, height)
        mask = np.asarray(mask)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, label_map == segment["class_id"])
        assert segment["pixel_share"] == pytest.approx((mask == 255).mean())
        assert np.isfinite(segment["score"]) and segment["score"] > 0
        covered |= mask == 255
    assert covered.all()
    assert set(np.unique(label_map).tolist()) == {segment["class_id"] for segment in segments}


def test_task_is_registered_and_loads_the_checkpoint_image_processor(segmenter):
    assert "zero-shot-image-segmentation" in get_supported_tasks()
    assert isinstance(segmenter, ZeroShotImageSegmentationPipeline)
    assert isinstance(segmenter.model, ITAForOpenVocabSegmentation)
    assert isinstance(segmenter.image_processor, ITAImageProcessor)
    assert segmenter.image_processor.size.shortest_edge == 96  # from the folder, not the 800 default


def test_checkpoint_without_image_processor_falls_back_to_defaults(model_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, tmp_path / name)
    segmenter = pipeline("zero-shot-image-segmentation", model=str(tmp_path), device="cpu")
    assert isinstance(segmenter.image_processor, ITAImageProcessor)
    assert segmenter.image_processor.size.shortest_edge == 800


FALLBACK_WARNING = "falls back to the default ITAImageProcessor"


@pytest.fixture
def pipeline_warnings(caplog):
    """The pipeline module's warnings of one test (its fallback warning is logged once per model source: the
    cache of `warning_once` is cleared first)."""
    transformers_logging.warning_once.cache_clear()
    caplog.set_level(logging.WARNING, logger="modeling_ita.pipeline")
    return lambda: [record.getMessage() for record in caplog.records if record.name == "modeling_ita.pipeline"]


def test_the_fallback_to_default_preprocessing_is_announced_with_the_way_out(model_dir, tmp_path, pipeline_warnings):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, tmp_path / name)
    pipeline("zero-shot-image-segmentation", model=str(tmp_path), device="cpu")
    pipeline("zero-shot-image-segmentation", model=str(tmp_path), device="cpu")
    messages = [message for message in pipeline_warnings() if FALLBACK_WARNING in message]
    assert len(messages) == 1  # once, not per pipeline built on the same model
    assert str(tmp_path) in messages[0] and "'shortest_edge': 800" in messages[0]
    assert "image_processor=" in messages[0] and "save_pretrained" in messages[0]


def test_a_model_object_in_memory_falls_back_with_the_warning(config, pipeline_warnings):
    segmenter = pipeline("zero-shot-image-segmentation", model=ITAForOpenVocabSegmentation(config).eval())
    assert segmenter.image_processor.size.shortest_edge == 800
    assert any(FALLBACK_WARNING in message and "model object" in message for message in pipeline_warnings())


def test_a_model_object_takes_the_processor_saved_in_its_folder(model_dir, pipeline_warnings):
    model = ITAForOpenVocabSegmentation.from_pretrained(model_dir).eval()
    segmenter = pipeline("zero-shot-image-segmentation", model=model)
    assert segmenter.image_processor.size.shortest_edge == 96  # the folder's, not the 800 default
    assert not any(FALLBACK_WARNING in message for message in pipeline_warnings())


def test_no_fallback_warning_when_a_processor_is_given_or_saved(config, model_dir, pipeline_warnings):
    model = ITAForOpenVocabSegmentation(config).eval()
    given = ITAImageProcessor.for_model_config(config, size={"shortest_edge": 64, "longest_edge": 96})
    by_image_processor = pipeline("zero-shot-image-segmentation", model=model, image_processor=given)
    by_processor = pipeline("zero-shot-image-segmentation", model=model, processor=ITAProcessor(image_processor=given))
    saved = pipeline("zero-shot-image-segmentation", model=str(model_dir), device="cpu")
    assert by_image_processor.image_processor is given and by_processor.image_processor is given
    assert saved.image_processor.size.shortest_edge == 96
    assert not any(FALLBACK_WARNING in message for message in pipeline_warnings())


def test_output_structure(segmenter):
    image = make_image(60, 84)
    result = segmenter(image, candidate_labels=VOCABULARY)
    assert set(result) == {"segments", "label_map"}
    assert set(result["segments"][0]) == {"label", "class_id", "score", "pixel_share", "mask"}
    check_result(result, (60, 84), VOCABULARY)


def test_postprocess_builds_segments_from_the_label_map(segmenter):
    # Two queries: query 0 is "wall" on the left half, query 1 is "cat" on the right half of a 32x32 input.
    class_logits = torch.full((1, 2, 4), -20.0)
    class_logits[0, 0, 2] = 20.0
    class_logits[0, 1, 0] = 20.0
    mask_logits = torch.full((1, 2, 8, 8), -20.0)
    mask_logits[0, 0, :, :4] = 20.0
    mask_logits[0, 1, :, 4:] = 20.0
    outputs = {
        "ensemble_log_probs": class_logits,
        "masks_queries_logits": mask_logits,
        "image_sizes": torch.tensor([[32, 32]]),
        "target_size": torch.tensor([[16, 40]]),
        "candidate_labels": VOCABULARY,
    }
    result = segmenter.postprocess(outputs)
    check_result(result, (16, 40), VOCABULARY)
    assert [segment["label"] for segment in result["segments"]] == ["cat", "wall"]  # equal shares: by class id
    assert [segment["class_id"] for segment in result["segments"]] == [0, 2]
    assert (result["label_map"][:, :20] == 2).all() and (result["label_map"][:, 20:] == 0).all()
    for segment in result["segments"]:
        assert segment["pixel_share"] == pytest.approx(0.5)
        assert segment["score"] == pytest.approx(1.0, abs=0.02)  # p(class) = 1 times a sure mask (soft at the border)


def test_batch_of_two_sizes_equals_singles(segmenter):
    # Resized to 96x128 and 96x206 (frames 96x128 and 96x224): different frames in one batch.
    images = [make_image(60, 80, seed=1), make_image(70, 150, seed=2)]
    singles = [segmenter(image, candidate_labels=VOCABULARY) for image in images]
    batched = segmenter(images, candidate_labels=VOCABULARY, batch_size=2)
    assert isinstance(batched, list) and len(batched) == 2
    for image, single, together in zip(images, singles, batched):
        check_result(together, (image.height, image.width), VOCABULARY)
        np.testing.assert_array_equal(together["label_map"], single["label_map"])
        assert [s["label"] for s in together["segments"]] == [s["label"] for s in single["segments"]]
        for a, b in zip(together["segments"], single["segments"]):
            # The score reads the model's logits: padding the small image to the large one's frame would move it.
            assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-6)
            assert a["pixel_share"] == b["pixel_share"]


def test_per_image_vocabularies_in_one_batch(segmenter):
    images = [make_image(60, 80, seed=3), make_image(60, 80, seed=4)]
    vocabularies = [VOCABULARY, ["sky", "grass", "road", "tree"]]
    batched = segmenter(images, candidate_labels=vocabularies, batch_size=2)
    for image, vocabulary, together in zip(images, vocabularies, batched):
        check_result(together, (60, 80), vocabulary)
        single = segmenter(image, candidate_labels=vocabulary)
        np.testing.assert_array_equal(together["label_map"], single["label_map"])
    as_dicts = segmenter([{"image": images[1], "candidate_labels": vocabularies[1]}])
    np.testing.assert_array_equal(as_dicts[0]["label_map"], batched[1]["label_map"])


def test_path_numpy_and_pil_inputs_agree(segmenter, tmp_path):
    image = make_image(50, 70, seed=5)
    path = tmp_path / "image.png"
    image.save(path)
    reference = segmenter(image, candidate_labels=VOCABULARY)["label_map"]
    for source in (str(path), np.asarray(image)):
        np.testing.assert_array_equal(segmenter(source, candidate_labels=VOCABULARY)["label_map"], reference)


def test_exif_orientation_gives_the_upright_size(segmenter, tmp_path):
    image = make_image(40, 72, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: upright it is 72 high and 40 wide
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    result = segmenter(str(path), candidate_labels=VOCABULARY)
    check_result(result, (72, 40), VOCABULARY)


@pytest.mark.parametrize(
    "labels, message",
    [
        ([], "empty"),
        (None, "required"),
        ("cat,sofa", "single string"),
        (["cat", ""], "empty string"),
        (["cat", "cat"], "Duplicate"),
    ],
)
def test_bad_candidate_labels(segmenter, labels, message):
    with pytest.raises(ValueError, match=message):
        segmenter(make_image(32, 32), candidate_labels=labels)


def test_bad_images(segmenter, tmp_path):
    with pytest.raises(ValueError, match="zero size"):
        segmenter(np.zeros((0, 0, 3), dtype=np.uint8), candidate_labels=VOCABULARY)
    truncated = tmp_path / "truncated.png"
    make_image(64, 64).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        segmenter(str(truncated), candidate_labels=VOCABULARY)
    with pytest.raises(ValueError, match="2 images but 1 lists"):
        segmenter([make_image(32, 32), make_image(32, 32)], candidate_labels=[VOCABULARY])


# ----------------------------------------------------------------------------------------------------------
# subtask="panoptic" / "instance"
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spread_segmenter(tmp_path_factory):
    """A tiny model whose random weights give several classes (see `save_tiny_model`), with the void class
    pushed down (a random model's queries mostly predict void, which panoptic inference drops)."""
    from conftest import save_tiny_model

    folder = save_tiny_model(tmp_path_factory.mktemp("spread"), spread_weights=True)
    segmenter = pipeline("zero-shot-image-segmentation", model=str(folder), device="cpu")

    def lower_void(module, args, outputs):
        outputs.class_queries_logits[..., -1] = -30.0

    segmenter.model.register_forward_hook(lower_void)
    return segmenter


def test_panoptic_subtask_equals_the_processor_on_the_model_outputs(spread_segmenter):
    image = make_image(50, 70, seed=4)
    kwargs = dict(threshold=0.0, overlap_mask_area_threshold=0.0)
    result = spread_segmenter(image, candidate_labels=VOCABULARY, subtask="panoptic", stuff_labels=["wall"], **kwargs)
    processor = spread_segmenter.image_processor
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        outputs = spread_segmenter.model(**inputs, class_names=VOCABULARY)
    expected = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse={2}, target_sizes=[(50, 70)], **kwargs
    )[0]
    np.testing.assert_array_equal(result["segment_map"], expected["segmentation"].numpy())
    assert [(s["id"], s["class_id"], s["was_fused"]) for s in result["segments"]] == [
        (s["id"], s["label_id"], s["was_fused"]) for s in expected["segments_info"]
    ]
    assert len(result["segments"]) >= 2
    for segment in result["segments"]:
        assert segment["label"] == VOCABULARY[segment["class_id"]]
        assert segment["was_fused"] == (segment["label"] == "wall")
        np.testing.assert_array_equal(np.asarray(segment["mask"]) == 255, result["segment_map"] == segment["id"])
        assert segment["pixel_share"] == pytest.approx((result["segment_map"] == segment["id"]).mean())


def test_instance_subtask(spread_segmenter):
    image = make_image(50, 70, seed=4)
    everything = spread_segmenter(image, candidate_labels=VOCABULARY, subtask="instance", threshold=0.0)
    default = spread_segmenter(image, candidate_labels=VOCABULARY, subtask="instance")
    scores = [segment["score"] for segment in everything["segments"]]
    assert scores == sorted(scores, reverse=True) and len(scores) > 1
    assert [s["score"] for s in default["segments"]] == [score for score in scores if score >= 0.5]
    no_walls = spread_segmenter(
        image, candidate_labels=VOCABULARY, subtask="instance", threshold=0.0, stuff_labels=["wall"]
    )
    assert "wall" not in {segment["label"] for segment in no_walls["segments"]}
    assert all(segment["mask"].size == (70, 50) for segment in everything["segments"])


def test_panoptic_batch_equals_single(spread_segmenter):
    images = [make_image(50, 70, seed=1), make_image(90, 60, seed=2), make_image(50, 70, seed=3)]
    kwargs = dict(candidate_labels=VOCABULARY, subtask="panoptic", threshold=0.0, overlap_mask_area_threshold=0.0)
    batched = spread_segmenter(images, batch_size=3, **kwargs)
    for image, result in zip(images, batched):
        alone = spread_segmenter(image, **kwargs)
        np.testing.assert_array_equal(result["segment_map"], alone["segment_map"])
        # The model's batched matrix products round differently in the last bits: scores within 1e-5.
        assert [s["score"] for s in result["segments"]] == pytest.approx(
            [s["score"] for s in alone["segments"]], rel=1e-5
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subtask": "depth"}, "subtask must be one of"),
        ({"subtask": "panoptic", "stuff_labels": ["sky"]}, "stuff label 'sky' is not one of the candidate labels"),
        ({"subtask": "panoptic", "stuff_labels": "wall"}, "single string"),
        ({"threshold": 0.5}, "apply to subtask='panoptic' or 'instance'"),
        ({"subtask": "instance", "overlap_mask_area_threshold": 0.5}, "applies to subtask='panoptic' only"),
    ],
)
def test_bad_subtask_arguments(segmenter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segmenter(make_image(40, 40), candidate_labels=VOCABULARY, **kwargs)


def test_a_checkpoint_that_does_not_fill_the_model_is_refused(model_dir, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from modeling_ita.loading import ModelLoadingError, load_segmentation_model

    # More decoder layers in config.json than the weights hold: transformers would initialise the rest randomly.
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["decoder_layers"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadingError, match="weight\\(s\\) missing from the checkpoint") as error:
        pipeline("zero-shot-image-segmentation", model=str(broken), device="cpu")
    assert f"decoder.layers.{config['decoder_layers'] - 1}.ffn.linear1.weight" in str(error.value)

    # Weights the model does not have: named too.
    extra = tmp_path / "extra"
    shutil.copytree(model_dir, extra)
    weights = load_file(extra / "model.safetensors")
    weights["decoder.leftover.weight"] = torch.zeros(2)
    save_file(weights, extra / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ModelLoadingError,
        match="1 weight\\(s\\) in the checkpoint that the model does not have: decoder.leftover.weight",
    ):
        load_segmentation_model(extra)
    assert not load_segmentation_model(model_dir).training  # a sound folder loads, in eval mode


def test_the_vocabulary_is_parsed_once_from_the_pipeline_to_the_model(segmenter, monkeypatch):
    import processing_ita

    calls = []
    split = processing_ita._split_classes
    monkeypatch.setattr(processing_ita, "_split_classes", lambda names: calls.append(list(names)) or split(names))
    seen = []
    hook = segmenter.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_names"]), with_kwargs=True
    )
    try:
        result = segmenter(make_image(40, 30), candidate_labels=VOCABULARY)
    finally:
        hook.remove()
    check_result(result, (40, 30), VOCABULARY)
    assert calls == [VOCABULARY]
    # The model got the pipeline's parsed value, not a list it would parse again.
    assert len(seen) == 1 and isinstance(seen[0], processing_ita.ITAClassNames) and seen[0] == VOCABULARY


def test_shared_synonyms_are_refused_at_the_pipeline(segmenter):
    with pytest.raises(
        ValueError,
        match="Synonym 'couch' names two classes: 'sofa,couch' \\(position 0\\) and 'couch,settee' \\(position 1\\)",
    ):
        segmenter(make_image(32, 32), candidate_labels=["sofa,couch", "couch,settee"])


def test_batches_are_grouped_by_the_image_processor_s_padded_frame(segmenter):
    processor = segmenter.image_processor
    for size in ((40, 30), (33, 70), (64, 64)):
        resized = processor.resized_size(*size, processor.size)
        frame = processor.padded_frame(*size)
        assert frame == processor.padded_frame(*resized, resized=True)
        assert all(side % processor.size_divisor == 0 for side in frame)
        assert processor(np.asarray(make_image(*size)), return_tensors="pt")["pixel_values"].shape[-2:] == frame
