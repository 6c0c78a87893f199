"""ITAProcessor: images + vocabulary in, model inputs out; vocabulary validation; save/load."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from processing_ita import ITAClassNames, ITAProcessor

SMALL_SIZE = {"shortest_edge": 64, "longest_edge": 100}
VOCABULARY = ["wall,walls,brick wall", "sofa,couch", "cat"]


@pytest.fixture
def processor():
    return ITAProcessor(image_processor=ITAImageProcessor(size=SMALL_SIZE))


def random_image(height=64, width=96, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_call_returns_image_tensors_and_class_names(processor):
    images = [random_image(seed=1), random_image(40, 50, seed=2)]
    inputs = processor(images=images, text=VOCABULARY, return_tensors="pt")
    expected = processor.image_processor(images, return_tensors="pt")
    assert set(inputs.keys()) == {
        "pixel_values",
        "pixel_mask",
        "image_sizes",
        "dominant_category_pixel_values",
        "class_names",
    }
    for key in ("pixel_values", "pixel_mask", "image_sizes", "dominant_category_pixel_values"):
        assert torch.equal(inputs[key], expected[key])
    assert inputs["class_names"] == VOCABULARY and isinstance(inputs["class_names"], ITAClassNames)
    # Moving the batch (as the Trainer does) leaves the vocabulary alone.
    assert inputs.to(torch.float64)["class_names"] == VOCABULARY
    assert processor.model_input_names == [
        "pixel_values",
        "pixel_mask",
        "image_sizes",
        "dominant_category_pixel_values",
        "class_names",
    ]


def test_images_only_and_vocabulary_only(processor):
    assert "class_names" not in processor(images=random_image(), return_tensors="pt")
    assert dict(processor(text=tuple(VOCABULARY))) == {"class_names": VOCABULARY}
    with pytest.raises(ValueError, match="images"):
        processor()


def test_default_image_processor():
    assert isinstance(ITAProcessor().image_processor, ITAImageProcessor)
    with pytest.raises(TypeError):
        ITAProcessor(image_processor="not an image processor")


@pytest.mark.parametrize(
    "vocabulary, message",
    [
        ([], "empty"),
        (["cat", ""], "empty string"),
        (["cat,,kitty"], "empty synonym"),
        (["cat", "dog", "cat"], "Duplicate"),
        ("cat,dog", "single string"),
        (["cat", 3], "not a string"),
    ],
)
def test_invalid_vocabularies_raise(processor, vocabulary, message):
    with pytest.raises(ValueError, match=message):
        processor(images=random_image(), text=vocabulary)


def test_segmentation_maps_are_checked_against_the_vocabulary(processor):
    label_map = np.zeros((64, 96), dtype=np.uint8)
    label_map[:, 50:] = 2
    label_map[:5] = 255
    inputs = processor(images=random_image(), text=VOCABULARY, segmentation_maps=label_map, return_tensors="pt")
    assert inputs["class_labels"][0].tolist() == [0, 2]
    assert tuple(inputs["mask_labels"][0].shape) == (2, 64, 96)
    label_map[:, 90:] = 3  # a fourth class for a three-class vocabulary
    with pytest.raises(ValueError, match=r"\[3\]"):
        processor(images=random_image(), text=VOCABULARY, segmentation_maps=label_map)
    with pytest.raises(ValueError, match="without their images"):
        processor(text=VOCABULARY, segmentation_maps=label_map)


def test_post_processing_is_delegated(processor):
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "class_queries_logits": torch.randn(1, 4, len(VOCABULARY) + 1, generator=generator),
        "masks_queries_logits": torch.randn(1, 4, 16, 24, generator=generator),
        "image_sizes": torch.tensor([[64, 96]]),
    }
    ours = processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 45)])
    theirs = processor.image_processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 45)])
    assert len(ours) == 1 and torch.equal(ours[0], theirs[0]) and tuple(ours[0].shape) == (30, 45)


def register_image_processor():
    """`modeling_ita/__init__.py` registers ITAImageProcessor with AutoImageProcessor; do it here too when it
    has not (yet), since ProcessorMixin.from_pretrained loads the image processor through AutoImageProcessor."""
    try:
        AutoImageProcessor.register(ITAConfig, image_processor_classes={"torchvision": ITAImageProcessor})
    except ValueError:  # already registered
        pass


def test_save_and_load_round_trip(tmp_path):
    register_image_processor()
    processor = ITAProcessor(image_processor=ITAImageProcessor(size=SMALL_SIZE, size_divisor=16, ignore_index=0))
    processor.save_pretrained(tmp_path)
    # transformers 5: one processor_config.json holding the image processor's settings.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["processor_config.json"]
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "ITAProcessor"
    assert saved["image_processor"]["image_processor_type"] == "ITAImageProcessor"
    assert saved["image_processor"]["size"] == SMALL_SIZE and saved["image_processor"]["size_divisor"] == 16

    reloaded = ITAProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.image_processor, ITAImageProcessor)
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
    image = random_image(50, 70)
    assert torch.equal(
        reloaded(images=image, text=VOCABULARY, return_tensors="pt")["pixel_values"],
        processor(images=image, text=VOCABULARY, return_tensors="pt")["pixel_values"],
    )


def test_kwargs_merge_the_transformers_way(tmp_path):
    saved = ITAProcessor(image_processor=ITAImageProcessor(size=SMALL_SIZE, dominant_category_image_size=16))
    saved.save_pretrained(tmp_path)
    processor = ITAProcessor.from_pretrained(tmp_path)
    image = random_image(40, 60)
    # Saved settings are the defaults ...
    assert processor(images=image, return_tensors="pt")["pixel_values"].shape[-2:] == (64, 96)
    # ... under the call's values, flat or per modality, with `text_kwargs` and `common_kwargs` accepted.
    bigger = {"shortest_edge": 96, "longest_edge": 160}
    nested = processor(
        images=image,
        text=VOCABULARY,
        images_kwargs={"size": bigger},
        text_kwargs={},
        common_kwargs={"return_tensors": "pt"},
    )
    flat = processor(images=image, text=VOCABULARY, size=bigger, return_tensors="pt")
    assert nested["pixel_values"].shape[-2:] == (96, 160)
    assert torch.equal(nested["pixel_values"], flat["pixel_values"])
    assert nested["class_names"] == VOCABULARY and isinstance(nested["class_names"], ITAClassNames)  # never a tensor
    with pytest.raises(ValueError, match="passed two times"):
        processor(images=image, size=bigger, images_kwargs={"size": bigger})


def test_kwargs_nobody_reads_are_refused_by_name(processor):
    image = random_image(40, 60)
    with pytest.raises(TypeError, match=r"'sizes' \(did you mean 'size'\?\)"):
        processor(images=image, sizes={"shortest_edge": 32})
    with pytest.raises(TypeError, match="padding"):
        processor(images=image, text=VOCABULARY, text_kwargs={"padding": "max_length"})


def test_shared_synonyms_are_refused_at_the_processor_with_the_message_of_parse_vocabulary(processor):
    with pytest.raises(ValueError, match="Synonym 'couch' names two classes: 'sofa,couch' \\(position 0\\)"):
        processor(images=random_image(), text=["sofa,couch", "couch,settee"])


def test_the_processor_hands_its_parsed_vocabulary_to_the_model(monkeypatch):
    from conftest import tiny_config

    import processing_ita
    from modeling_ita import ITAForOpenVocabSegmentation

    config = tiny_config()
    model = ITAForOpenVocabSegmentation(config).eval()
    processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(config, size=SMALL_SIZE))
    calls = []
    split = processing_ita._split_classes
    monkeypatch.setattr(processing_ita, "_split_classes", lambda names: calls.append(list(names)) or split(names))
    inputs = processor(images=random_image(), text=VOCABULARY, return_tensors="pt")
    assert processor(text=inputs["class_names"])["class_names"] is inputs["class_names"]  # taken as it is
    with torch.no_grad():
        outputs = model(**inputs)
    assert calls == [VOCABULARY]  # once, at the processor: neither the second call nor the model parsed again
    assert outputs.ensemble_log_probs.shape[-1] == len(VOCABULARY) + 1
