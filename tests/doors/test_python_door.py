"""The Python door: the checks the commands make before torch is imported (`ita_segmentation.locations`,
`ita_segmentation.dtypes`), and each bad input given through the Python API (processor, model, pipeline,
post-processing, loaders), asserting the error's type and message. In-process and fast."""

import json
import subprocess
import sys

import pytest

from ita_segmentation import locations
from ita_segmentation.errors import ITAUsageError
from ita_segmentation.locations import check_device_argument, check_model_argument


def _write_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# --model, before torch


@pytest.mark.parametrize("value", ["./missing", "/no/such/model", "~/no-such-ita-model", "a/b/c"])
def test_missing_model_folder_is_named(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ITAUsageError, match=r"model folder .* does not exist.*save_pretrained.*Hub id"):
        check_model_argument(value)


def test_partly_existing_path_is_a_missing_folder_not_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ITAUsageError, match=r"model folder models/missing does not exist"):
        check_model_argument("models/missing")


def test_hub_id_offline_not_cached_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ITAUsageError, match=r"not in the local cache.*HF_HUB_OFFLINE=1"):
        check_model_argument("someone/ita-model")
    # once the cache holds it, it passes
    snapshot = tmp_path / "cache" / "models--someone--ita-model" / "snapshots" / "abc"
    _write_config(snapshot, model_type="ita")
    check_model_argument("someone/ita-model")


def test_hub_id_online_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    check_model_argument("someone/ita-model")


def test_neither_folder_nor_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ITAUsageError, match=r"neither a folder here nor a Hugging Face Hub id"):
        check_model_argument("my model")


def test_folder_without_config_names_the_model_folders_inside(tmp_path):
    empty = tmp_path / "run"
    empty.mkdir()
    with pytest.raises(ITAUsageError, match=r"has no config.json.*save_pretrained"):
        check_model_argument(str(empty))
    _write_config(empty / "checkpoint-500", model_type="ita")
    with pytest.raises(ITAUsageError, match=r"model folders inside it: checkpoint-500"):
        check_model_argument(str(empty))


def test_a_file_and_a_bert_folder_are_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ITAUsageError, match=r"is a file, not a folder"):
        check_model_argument(str(weights))
    bert = _write_config(tmp_path / "bert", model_type="bert", hidden_size=768)
    with pytest.raises(ITAUsageError, match=r"holds a 'bert' model, not ITA/FC-CLIP"):
        check_model_argument(str(bert))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ITAUsageError, match=r"config.json cannot be read"):
        check_model_argument(str(broken))


def test_ita_and_onnx_export_folders_pass(tiny_model_dir, tmp_path):
    check_model_argument(str(tiny_model_dir))
    # an exported folder keeps the model's config.json beside its .onnx files and onnx_export.json
    exported = _write_config(tmp_path / "exported", model_type="ita")
    (exported / "onnx_export.json").write_text("{}", encoding="utf-8")
    (exported / "model.onnx").write_bytes(b"")
    check_model_argument(str(exported))


# ---------------------------------------------------------------------------------------------------------------
# --device, before torch


@pytest.mark.parametrize("value", [None, "auto", "cpu", "CPU", "xpu"])
def test_devices_that_pass(value):
    check_device_argument(value)


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "banana", "cuda:"])
def test_unknown_device_names(value):
    with pytest.raises(ITAUsageError, match=r"is not a torch device.*cpu, cuda"):
        check_device_argument(value)


def test_cuda_without_a_driver(monkeypatch):
    monkeypatch.setattr(locations, "has_nvidia_driver", lambda: False)
    for value in ("cuda", "cuda:1"):
        with pytest.raises(ITAUsageError, match=r"no NVIDIA driver.*--device cpu"):
            check_device_argument(value)
    monkeypatch.setattr(locations, "has_nvidia_driver", lambda: True)
    check_device_argument("cuda:0")


def test_mps_off_macos(monkeypatch):
    monkeypatch.setattr(locations.sys, "platform", "linux")
    with pytest.raises(ITAUsageError, match=r"mps .*only on macOS"):
        check_device_argument("mps")
    monkeypatch.setattr(locations.sys, "platform", "darwin")
    check_device_argument("mps")


def test_checks_import_no_torch():
    code = (
        "import sys; from ita_segmentation import locations, dtypes; "
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert completed.stdout.strip() == "ok", completed.stderr


# ---------------------------------------------------------------------------------------------------------------
# Byte-order marks and class files


def test_byte_order_mark_is_no_part_of_a_class_name():
    from processing_ita import parse_vocabulary

    vocabulary = parse_vocabulary(["\ufeffcat,kitty", "dog"])
    assert vocabulary.names == ("cat,kitty", "dog")
    assert vocabulary.synonyms[0] == ("cat", "kitty")
    # the BOM alone does not make a second "cat" a different class
    with pytest.raises(ValueError, match="Duplicate class name"):
        parse_vocabulary(["\ufeffcat", "cat"])


def test_class_files_with_byte_order_marks_and_other_encodings(tmp_path):
    from ita_segmentation.vocabulary_files import read_vocabulary_file

    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcat,kitty\ndog\n".encode())
    assert read_vocabulary_file(path) == ["cat,kitty", "dog"]
    path.write_bytes("\ufeffcat\n".encode() + "\ufeffdog\n".encode())  # two files saved with a BOM, concatenated
    assert read_vocabulary_file(path) == ["cat", "dog"]
    path.write_text("cat\ndög\n", encoding="utf-16")  # Windows' "Unicode": UTF-16 with its mark
    assert read_vocabulary_file(path) == ["cat", "dög"]
    path.write_bytes(b"cat\nd\xf6g\n")  # Latin-1
    with pytest.raises(ValueError, match=r"classes.txt is not UTF-8 text.*save it as UTF-8"):
        read_vocabulary_file(path)
    with pytest.raises(IsADirectoryError, match=r"is a folder; give a text file"):
        read_vocabulary_file(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing.txt does not exist"):
        read_vocabulary_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------------
# The strict loader, from_pretrained and the pipeline factory


@pytest.fixture
def bert_folder(tmp_path):
    return _write_config(tmp_path / "bert", model_type="bert", hidden_size=768, num_attention_heads=12)


def test_a_bert_folder_is_named_as_such_at_every_loader(bert_folder):
    from transformers import pipeline

    from modeling_ita import ITAForOpenVocabSegmentation
    from modeling_ita.loading import ModelLoadingError, load_segmentation_model

    with pytest.raises(ModelLoadingError, match=r"holds a 'bert' model, not ITA/FC-CLIP"):
        load_segmentation_model(bert_folder)
    with pytest.raises(ModelLoadingError, match=r"holds a 'bert' model, not ITA/FC-CLIP"):
        pipeline("zero-shot-image-segmentation", model=str(bert_folder))
    with pytest.raises(ValueError, match=r"holds a 'bert' model, not ITA/FC-CLIP") as error:
        ITAForOpenVocabSegmentation.from_pretrained(bert_folder)
    assert "hidden_dim" not in str(error.value)


def test_a_config_value_of_the_wrong_type_is_named_by_the_loader(tiny_model_dir, tmp_path):
    import shutil

    from modeling_ita.loading import ModelLoadingError, load_segmentation_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["ensemble_alpha"] = "high"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadingError, match=r"config.json of .* is invalid: ITAConfig.ensemble_alpha: .*'high'"):
        load_segmentation_model(folder)


def test_a_pickle_that_runs_code_is_called_so_and_a_truncated_one_damaged(tiny_model_dir, tmp_path):
    import os
    import shutil

    import torch
    from safetensors.torch import load_file

    from modeling_ita.loading import ModelLoadingError, load_segmentation_model

    class RunsCode:
        def __reduce__(self):
            return (os.getcwd, ())

    weights = load_file(tiny_model_dir / "model.safetensors")
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    torch.save({**weights, "extra": RunsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadingError, match=r"pickled checkpoint that would run code.*source you trust") as error:
        load_segmentation_model(folder)
    assert "damaged" not in str(error.value)
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadingError, match=r"cannot be read, the file is damaged"):
        load_segmentation_model(folder)


# ---------------------------------------------------------------------------------------------------------------
# Legend fonts


def test_legend_draws_accented_names_with_a_font_that_has_them():
    from ita_segmentation.apps import visualization

    font_size = 20
    assert visualization._font_for_text("cat", font_size) is visualization._legend_font(font_size)  # as before
    # Pillow's own font has no "é": a name with one is drawn with an installed font that has it
    assert not visualization._has_glyph(visualization._legend_font(font_size), "é")
    if not visualization._installed_font_files() and not visualization._fonts_with("é"):
        pytest.skip("no font with accented letters is installed here")
    font = visualization._font_for_text("café", font_size)
    assert font is not visualization._legend_font(font_size)
    assert all(visualization._has_glyph(font, character) for character in "café")


def test_a_glyph_no_font_has_is_named_once_with_its_class(caplog):
    import logging

    from ita_segmentation.apps import visualization
    from ita_segmentation.apps.visualization import color_palette, legend_panel

    name = "\U000f0001 widget"  # a private-use character: no font draws it
    visualization._warned_names.discard(name)
    with caplog.at_level(logging.WARNING, logger=visualization.__name__):
        first = legend_panel(list(zip(color_palette(2), ["cat", name])), 120, 14)
        legend_panel(list(zip(color_palette(2), ["cat", name])), 120, 14)
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1, said
    assert "U+F0001" in said[0] and repr(name) in said[0] and "install a font" in said[0]
    assert first.height == 120  # still drawn


# ---------------------------------------------------------------------------------------------------------------
# Through the model: the pipeline, the processor + model, post-processing


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_model_dir):
    from transformers import pipeline

    import modeling_ita  # noqa: F401  (registers the task)

    return pipeline("zero-shot-image-segmentation", model=str(tiny_model_dir), device="cpu")


def test_pipeline_labels_lose_their_byte_order_mark(tiny_pipeline):
    import numpy as np

    result = tiny_pipeline(np.zeros((48, 64, 3), np.uint8), candidate_labels=["\ufeffcat", "dog"])
    assert result["segments"] and all("\ufeff" not in segment["label"] for segment in result["segments"])
    assert {segment["label"] for segment in result["segments"]} <= {"cat", "dog"}


def test_pipeline_segments_an_image_of_extreme_aspect_ratio(tiny_pipeline):
    """10 x 4000 at the tiny processor's 96/160 sizes: detectron2's rule gives a short side of 0.4 -> 0 pixels."""
    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, (10, 4000, 3), dtype=np.uint8)
    result = tiny_pipeline(image, candidate_labels=["cat", "dog"])
    assert result["label_map"].shape == (10, 4000)
    assert abs(sum(segment["pixel_share"] for segment in result["segments"]) - 1) < 1e-6


def test_processor_and_model_batch_of_mixed_sizes_warns_and_swapped_targets_are_refused(tiny_model_dir, caplog):
    import logging

    import numpy as np
    import torch
    from transformers.utils import logging as transformers_logging

    import image_processing_ita
    from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

    processor = ITAProcessor.from_pretrained(tiny_model_dir)
    model = ITAForOpenVocabSegmentation.from_pretrained(tiny_model_dir).eval()
    wide, tall = np.zeros((60, 90, 3), np.uint8), np.zeros((90, 60, 3), np.uint8)
    transformers_logging.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="image_processing_ita"):
        inputs = processor(images=[wide, tall], text=["cat", "dog"], return_tensors="pt")
    assert [record.getMessage() for record in caplog.records] == [image_processing_ita.MIXED_FRAMES_WARNING]
    with torch.no_grad():
        outputs = model(**inputs)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(60, 90), (90, 60)])
    assert [tuple(label_map.shape) for label_map in maps] == [(60, 90), (90, 60)]
    with pytest.raises(ValueError, match=r"target_sizes\[0\] is \(90, 60\).*\(height, width\)"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(90, 60), (90, 60)])
    with pytest.raises(ValueError, match=r"target_sizes\[1\] is \(60, 90\)"):
        processor.post_process_panoptic_segmentation(outputs, target_sizes=[(60, 90), (60, 90)])


def test_a_config_without_model_type_is_left_to_itaconfig(tmp_path):
    """Only a model type other than ITA's is refused up front; a config.json without one is read with ITAConfig's
    defaults (the weights then decide)."""
    from modeling_ita.loading import check_model_location

    folder = _write_config(tmp_path / "plain")
    check_model_argument(str(folder))
    check_model_location(folder)


def test_an_image_file_that_is_not_there_is_named(tiny_pipeline, tmp_path):
    with pytest.raises(ValueError, match="holiday.jpg: no such file"):
        tiny_pipeline(str(tmp_path / "holiday.jpg"), candidate_labels=["cat"])
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        tiny_pipeline(str(tmp_path), candidate_labels=["cat"])


def test_an_image_whose_header_claims_too_many_pixels_says_the_way_out(tmp_path):
    from PIL import Image

    from image_processing_ita import open_image

    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # 4,096 pixels is more than twice this: PIL's decompression-bomb error
    try:
        with pytest.raises(ValueError, match="Resize it to fewer pixels first"):
            open_image(tmp_path / "bomb.png")
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_from_pretrained_names_a_local_folder_that_is_not_there(tmp_path):
    from modeling_ita import ITAForOpenVocabSegmentation

    for name in ("./checkpoints/my-ita", str(tmp_path / "missing")):
        with pytest.raises(OSError, match=f"model folder {name} does not exist"):
            ITAForOpenVocabSegmentation.from_pretrained(name)


def test_a_forward_without_class_names_says_which_vocabulary_it_used(tiny_model_dir, caplog):
    import logging

    import torch

    from modeling_ita import ITAForOpenVocabSegmentation

    model = ITAForOpenVocabSegmentation.from_pretrained(tiny_model_dir).eval()
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model(pixel_values=torch.zeros(1, 3, 64, 64))
    assert "no class_names (or vocabulary) given" in caplog.text
    assert f"training vocabulary ({len(model.config.train_vocabulary)} classes" in caplog.text
