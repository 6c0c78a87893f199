"""transformers' common conventions, checked on ITA's config, image processor and processor.

transformers tests every model's parts with shared mixins (`ConfigTester`, `ImageProcessingTestMixin`,
`ProcessorTesterMixin`); they are not in the wheel. These are our own tests of the properties those mixins check:
serialisation round trips, keyword arguments overriding saved settings, input types giving the same values, and
a processor's outputs being exactly its `model_input_names`.
"""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from transformers import AutoImageProcessor

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from processing_ita import ITAClassNames, ITAProcessor

SMALL_SIZE = {"shortest_edge": 48, "longest_edge": 80}
VOCABULARY = ["wall,walls", "sofa,couch", "cat"]


def random_image(height=40, width=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def register_image_processor():
    """`ProcessorMixin.from_pretrained` loads the image processor through `AutoImageProcessor`, which knows ITA's
    once `modeling_ita` is imported; registered here too, for this file alone."""
    try:
        AutoImageProcessor.register(ITAConfig, image_processor_classes={"torchvision": ITAImageProcessor})
    except ValueError:  # already registered
        pass


# ------------------------------------------------------------------------------------------------------ config
def test_config_json_string_holds_the_constructor_arguments():
    config = tiny_config(num_queries=7, ensemble_alpha=0.3)
    saved = json.loads(config.to_json_string())
    assert saved["model_type"] == "ita"
    assert saved["num_queries"] == 7 and saved["ensemble_alpha"] == 0.3
    assert saved["clip_config"] == config.clip_config


def test_config_json_file_round_trip(tmp_path):
    config = tiny_config(num_queries=7)
    config.to_json_file(tmp_path / "config.json")
    loaded = ITAConfig.from_json_file(tmp_path / "config.json")
    assert loaded.to_dict() == config.to_dict()


def test_config_save_and_load_round_trip_also_in_a_subfolder(tmp_path):
    config = tiny_config(num_queries=7)
    config.save_pretrained(tmp_path)
    config.save_pretrained(tmp_path / "sub")
    for loaded in (ITAConfig.from_pretrained(tmp_path), ITAConfig.from_pretrained(tmp_path, subfolder="sub")):
        assert loaded.to_dict() == {**config.to_dict(), "_name_or_path": loaded.to_dict().get("_name_or_path")}


def test_config_from_dict_and_from_pretrained_take_overriding_kwargs(tmp_path):
    config = tiny_config(num_queries=7)
    assert ITAConfig.from_dict(config.to_dict(), num_queries=5).num_queries == 5
    config.save_pretrained(tmp_path)
    loaded, unused = ITAConfig.from_pretrained(tmp_path, num_queries=3, return_unused_kwargs=True)
    assert loaded.num_queries == 3 and unused == {}


def test_config_can_be_built_without_arguments_and_takes_the_common_ones():
    config = ITAConfig(return_dict=False, output_hidden_states=True, dtype="float16")
    assert config.return_dict is False and config.output_hidden_states is True
    assert config.dtype == torch.float16
    assert ITAConfig().to_dict() == ITAConfig.from_dict(ITAConfig().to_dict()).to_dict()


def test_config_num_labels_sizes_the_label_maps():
    config = ITAConfig(num_labels=5)
    assert config.num_labels == 5 and len(config.id2label) == 5
    config.num_labels = 3
    assert config.num_labels == 3 and len(config.id2label) == 3


# --------------------------------------------------------------------------------------------- image processor
@pytest.fixture
def image_processor():
    return ITAImageProcessor(size=SMALL_SIZE, size_divisor=16, ignore_index=0, dominant_category_image_size=32)


def test_image_processor_json_string_holds_its_settings(image_processor):
    saved = json.loads(image_processor.to_json_string())
    assert saved["image_processor_type"] == "ITAImageProcessor"
    assert saved["size"] == SMALL_SIZE and saved["size_divisor"] == 16 and saved["ignore_index"] == 0
    assert saved["dominant_category_image_size"] == 32


def test_image_processor_json_file_round_trip(image_processor, tmp_path):
    image_processor.to_json_file(tmp_path / "preprocessor.json")
    loaded = ITAImageProcessor.from_json_file(tmp_path / "preprocessor.json")
    assert loaded.to_dict() == image_processor.to_dict()


def test_image_processor_save_and_load_round_trip(image_processor, tmp_path):
    image_processor.save_pretrained(tmp_path)
    assert ITAImageProcessor.from_pretrained(tmp_path).to_dict() == image_processor.to_dict()
    register_image_processor()
    assert AutoImageProcessor.from_pretrained(tmp_path).to_dict() == image_processor.to_dict()


def test_image_processor_from_dict_kwargs_override_the_saved_settings(image_processor):
    settings = image_processor.to_dict()
    loaded = ITAImageProcessor.from_dict(settings, size={"shortest_edge": 42}, do_pad=False)
    assert loaded.size.shortest_edge == 42 and loaded.size.longest_edge is None and loaded.do_pad is False
    assert loaded.size_divisor == 16  # the rest as saved


def test_image_processor_can_be_built_without_arguments():
    processor = ITAImageProcessor()
    assert processor.size.shortest_edge == 800 and processor.size.longest_edge == 1333
    assert ITAImageProcessor.from_dict(processor.to_dict()).to_dict() == processor.to_dict()


def test_pil_numpy_and_torch_inputs_give_the_same_pixel_values(image_processor):
    array = random_image()
    from_numpy = image_processor(array, return_tensors="pt")
    from_pil = image_processor(Image.fromarray(array), return_tensors="pt")
    from_torch = image_processor(torch.from_numpy(array).permute(2, 0, 1), return_tensors="pt")
    for key in image_processor.model_input_names:
        assert torch.equal(from_pil[key], from_numpy[key]) and torch.equal(from_torch[key], from_numpy[key])


def test_single_and_batched_inputs_shapes(image_processor):
    images = [random_image(seed=seed) for seed in range(3)]
    single = image_processor(images[0], return_tensors="pt")
    batched = image_processor(images, return_tensors="pt")
    stacked = image_processor(np.stack(images), return_tensors="pt")  # a 4-D array is a batch
    # 40 x 60 -> 48 x 72 (shortest edge 48), padded to multiples of 16: 48 x 80.
    assert tuple(single["pixel_values"].shape) == (1, 3, 48, 80)
    assert tuple(batched["pixel_values"].shape) == (3, 3, 48, 80)
    assert tuple(batched["dominant_category_pixel_values"].shape) == (3, 3, 32, 32)
    assert torch.equal(batched["pixel_values"][:1], single["pixel_values"])
    assert torch.equal(stacked["pixel_values"], batched["pixel_values"])


def test_image_processor_outputs_are_its_model_input_names(image_processor):
    assert set(image_processor(random_image(), return_tensors="pt")) == set(image_processor.model_input_names)
    fcclip = ITAImageProcessor(size=SMALL_SIZE, dominant_category_image_size=None)
    assert "dominant_category_pixel_values" not in fcclip.model_input_names
    assert set(fcclip(random_image(), return_tensors="pt")) == set(fcclip.model_input_names)


def test_numpy_return_tensors(image_processor):
    encoded = image_processor(random_image(), return_tensors="np")
    assert all(isinstance(encoded[key], np.ndarray) for key in image_processor.model_input_names)


# -------------------------------------------------------------------------------------------------- processor
@pytest.fixture(params=["ita", "fcclip"])
def processor(request):
    view = 32 if request.param == "ita" else None
    return ITAProcessor(ITAImageProcessor(size=SMALL_SIZE, dominant_category_image_size=view))


def test_processor_outputs_are_its_model_input_names(processor):
    inputs = processor(images=random_image(), text=VOCABULARY, return_tensors="pt")
    assert set(inputs) == set(processor.model_input_names)
    assert processor.model_input_names[0] == "pixel_values"  # the Trainer groups by the first input's length


def test_class_names_are_declared_no_tensor(processor):
    assert "class_names" in processor.skip_tensor_conversion
    inputs = processor(images=random_image(), text=VOCABULARY, return_tensors="pt")
    assert isinstance(inputs["class_names"], ITAClassNames) and inputs["class_names"] == VOCABULARY
    # Converting again, as a data collator may, leaves the vocabulary and the per-image targets alone.
    label_map = np.zeros((40, 60), dtype=np.uint8)
    label_map[:, 30:] = 2
    inputs = processor(images=random_image(), text=VOCABULARY, segmentation_maps=label_map, return_tensors="pt")
    inputs.convert_to_tensors("pt")
    assert isinstance(inputs["class_names"], ITAClassNames) and isinstance(inputs["mask_labels"], list)


def test_processor_matches_its_image_processor(processor):
    image = random_image()
    ours = processor(images=image, return_tensors="pt")
    theirs = processor.image_processor(image, return_tensors="pt")
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_flat_kwarg_applies_when_the_modality_dict_lacks_it(processor):
    image = random_image()
    bigger = {"shortest_edge": 64, "longest_edge": 128}
    inputs = processor(images=image, size=bigger, images_kwargs={"do_pad": True}, return_tensors="pt")
    assert tuple(inputs["image_sizes"][0].tolist()) == (64, 96)
    inputs = processor(images=image, do_resize=False, images_kwargs={"size": bigger}, return_tensors="pt")
    assert tuple(inputs["image_sizes"][0].tolist()) == (40, 60)


def test_modality_dict_and_common_kwargs_are_applied(processor):
    image = random_image()
    inputs = processor(
        images=image, images_kwargs={"size": {"shortest_edge": 64}}, common_kwargs={"return_tensors": "pt"}
    )
    assert isinstance(inputs["pixel_values"], torch.Tensor) and tuple(inputs["image_sizes"][0].tolist()) == (64, 96)


def test_processor_save_and_load_round_trip(processor, tmp_path):
    register_image_processor()
    processor.save_pretrained(tmp_path)
    loaded = ITAProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.model_input_names == processor.model_input_names


def test_processor_json_string_holds_the_image_processor(processor, tmp_path):
    saved = json.loads(processor.to_json_string())
    assert saved["processor_class"] == "ITAProcessor"
    assert saved["image_processor"] == json.loads(processor.image_processor.to_json_string())
    processor.to_json_file(tmp_path / "processor.json")
    assert json.loads((tmp_path / "processor.json").read_text()) == saved


def test_from_pretrained_kwargs_override_the_saved_image_processor_settings(processor, tmp_path):
    register_image_processor()
    processor.save_pretrained(tmp_path)
    loaded = ITAProcessor.from_pretrained(tmp_path, size={"shortest_edge": 64}, do_pad=False)
    assert loaded.image_processor.size.shortest_edge == 64 and loaded.image_processor.do_pad is False
    assert loaded.image_processor.dominant_category_image_size == processor.image_processor.dominant_category_image_size
