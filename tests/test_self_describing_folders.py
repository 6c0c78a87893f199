"""Every folder the model's `save_pretrained` writes describes itself (modeling_ita/remote_code.py): it carries the
model folder's source files and the `auto_map` / `custom_pipelines` entries naming them, so it loads without this
package (`trust_remote_code=True`), and with the package's own registered classes where the package is imported."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import WITHOUT_THE_PACKAGE, tiny_config
from transformers import AutoModel, AutoModelForUniversalSegmentation, AutoProcessor, pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from image_processing_ita import ITAImageProcessor
from modeling_ita import ITAForOpenVocabSegmentation
from modeling_ita.pipeline import ZeroShotImageSegmentationPipeline
from modeling_ita.remote_code import CUSTOM_PIPELINES, REMOTE_CODE_ENTRY_POINTS, REMOTE_CODE_FILES, describe_folder
from processing_ita import ITAProcessor

TASK = "zero-shot-image-segmentation"
LABELS = ["cat,kitty", "sofa,couch", "wall", "sky"]
PROJECT_MODULES = {"modeling_ita", "configuration_ita", "image_processing_ita", "postprocessing_ita", "processing_ita"}


def save_tiny(folder, model_first=True):
    """A tiny model and its processor saved into `folder` in the Trainer's order (model, then processor) or the
    other one."""
    torch.manual_seed(0)
    config = tiny_config()
    model = ITAForOpenVocabSegmentation(config).eval()
    with torch.no_grad():  # spread: at init scale every pixel gets one class, which would compare little
        for name, parameter in model.named_parameters():
            if name.startswith(("decoder.mask_embed", "decoder.class_embed")) and parameter.dim() >= 2:
                parameter.normal_()
    size = {"shortest_edge": 96, "longest_edge": 160}
    processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(config, size=size))
    savers = [model.save_pretrained, processor.save_pretrained]
    for save in savers if model_first else savers[::-1]:
        save(folder)
    return model, processor


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "checkpoint-7"  # as the Trainer names its checkpoints
    save_tiny(path)
    return path


def test_a_saved_folder_carries_the_source_files_and_names_them(folder):
    names = {path.name for path in folder.iterdir()}
    assert set(REMOTE_CODE_FILES) <= names
    assert {"pipeline.py", "loading.py", "postprocessing_ita.py"} <= names
    for name in REMOTE_CODE_FILES:  # flat: imported relatively, every relative import in the folder
        assert not PROJECT_MODULES & set(get_imports(folder / name)), name
        assert all(f"{relative}.py" in names for relative in get_relative_imports(folder / name)), name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == REMOTE_CODE_ENTRY_POINTS
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline.ZeroShotImageSegmentationPipeline"
    for entry in config["auto_map"].values():
        assert f"{entry.split('.')[0]}.py" in names
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_ita.ITAProcessor"}
    assert processor_config["image_processor"]["auto_map"] == {
        "AutoImageProcessor": "image_processing_ita.ITAImageProcessor"
    }


@pytest.mark.parametrize("model_first", [True, False])
def test_either_saving_order_names_the_processor(tmp_path, model_first):
    save_tiny(tmp_path, model_first=model_first)
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_ita.ITAProcessor"


def test_the_model_in_memory_keeps_its_config(tmp_path):
    model, _ = save_tiny(tmp_path)
    assert getattr(model.config, "custom_pipelines", None) is None
    assert getattr(model.config, "auto_map", None) is None


def test_a_processor_saved_alone_names_no_code_it_lacks(tmp_path):
    ITAProcessor().save_pretrained(tmp_path)
    assert "auto_map" not in json.loads((tmp_path / "processor_config.json").read_text())


def test_resaving_a_folder_with_a_stale_auto_map_writes_its_files(folder, tmp_path):
    model = AutoModel.from_pretrained(folder)
    model.config.auto_map = {"AutoModel": "gone.Missing"}  # as a folder converted by an older version
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == REMOTE_CODE_ENTRY_POINTS
    assert model.config.auto_map == {"AutoModel": "gone.Missing"}


def test_with_the_package_the_registered_classes_load_it(folder):
    model = AutoModel.from_pretrained(folder)
    assert type(model) is ITAForOpenVocabSegmentation
    assert type(AutoModelForUniversalSegmentation.from_pretrained(folder)) is ITAForOpenVocabSegmentation
    assert type(AutoProcessor.from_pretrained(folder)) is ITAProcessor
    # The folder's custom_pipelines entry does not demand trust_remote_code where the task is registered.
    segmenter = pipeline(TASK, model=str(folder), device="cpu")
    assert type(segmenter) is ZeroShotImageSegmentationPipeline


REMOTE = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """

    import numpy as np
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, image_file, output_file = sys.argv[1:]
    labels = ["cat,kitty", "sofa,couch", "wall", "sky"]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    segmenter = pipeline("zero-shot-image-segmentation", model=folder, trust_remote_code=True, device="cpu")
    result = segmenter(np.load(image_file), candidate_labels=labels)
    np.save(output_file, result["label_map"])
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    print(json.dumps({
        "model": type(model).__module__ + "." + type(model).__name__,
        "processor": type(processor).__module__ + "." + type(processor).__name__,
        "pipeline": type(segmenter).__module__ + "." + type(segmenter).__name__,
        "model_in_pipeline": type(segmenter.model).__module__,
        "labels": [segment["label"] for segment in result["segments"]],
        "leaked": leaked,
    }))
    """
)


def test_the_folder_loads_and_segments_without_the_package(folder, tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        OMP_NUM_THREADS=str(torch.get_num_threads()),  # the same float order as this process
    )
    env.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", REMOTE, str(folder), str(tmp_path / "image.npy"), str(tmp_path / "label_map.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    remote = json.loads(completed.stdout.strip().splitlines()[-1])
    assert remote["leaked"] == []
    for key in ("model", "processor", "pipeline", "model_in_pipeline"):
        assert remote[key].startswith("transformers_modules."), remote
    assert remote["model"].endswith(".modeling_ita.ITAForOpenVocabSegmentation")
    assert remote["processor"].endswith(".processing_ita.ITAProcessor")
    assert remote["pipeline"].endswith(".pipeline.ZeroShotImageSegmentationPipeline")

    expected = pipeline(TASK, model=str(folder), device="cpu")(image, candidate_labels=LABELS)
    assert len(expected["segments"]) >= 2  # a comparison of several classes
    assert remote["labels"] == [segment["label"] for segment in expected["segments"]]
    np.testing.assert_array_equal(np.load(tmp_path / "label_map.npy"), expected["label_map"])


def test_a_folder_without_weights_names_no_model(tmp_path):
    """The ONNX export's PyTorch side: the configuration and the processor load without the package; no AutoModel
    entry and no pipeline entry, as there are no PyTorch weights."""
    config = tiny_config()
    config.save_pretrained(tmp_path)
    ITAProcessor(image_processor=ITAImageProcessor.for_model_config(config)).save_pretrained(tmp_path)
    written = describe_folder(tmp_path, with_model=False)
    assert set(written) == set(REMOTE_CODE_FILES)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == {key: value for key, value in REMOTE_CODE_ENTRY_POINTS.items() if key != "AutoModel"}
    assert "custom_pipelines" not in saved
    assert json.loads((tmp_path / "processor_config.json").read_text())["auto_map"]["AutoProcessor"]
