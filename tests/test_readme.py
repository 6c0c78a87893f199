"""The README's usage examples run as written, against a tiny model folder and a generated image."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_ita.apps.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("readme_image") / "living_room.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_readme_has_exactly_two_setup_commands():
    setup = README.read_text().split("## Set-up")[1].split("\n## ")[0]
    block = re.search(r"```bash\n(.*?)```", setup, flags=re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("index", range(3))
def test_python_examples_run(index, model_dir, image_path):
    blocks = [block for block in code_blocks("python") if "ITAOnnxModel" not in block]
    assert len(blocks) == 3  # Python usage, pipeline, FC-CLIP or ITA
    namespace = {"MODEL": str(model_dir), "IMAGE": str(image_path)}
    source = blocks[index]
    if "ITAConfig()" in source:  # full-size models: build on the meta device to keep the test fast
        with torch.device("meta"):
            exec(source, namespace)
        assert namespace["ita"].config.num_dominant_categories == 20
        assert namespace["fcclip"].config.decoder_self_attention
        return
    exec(source, namespace)
    label_map = namespace["label_map"]
    assert tuple(label_map.shape) == (60, 80)
    assert int(label_map.max()) < 4


def test_command_line_example_runs(model_dir, image_path, tmp_path):
    line = next(l for block in code_blocks("bash") for l in block.splitlines() if l.startswith("ita-segment photo.jpg"))
    args = line.split()[1:]
    args = [str(image_path) if a == "photo.jpg" else a for a in args if a != "photos/"]
    args = [str(model_dir) if a == "MODEL" else a for a in args]
    args = [str(tmp_path / "out") if a == "out/" else a for a in args]
    args = [a.strip('"') for a in args]
    result = subprocess.run([sys.executable, "-m", "modeling_ita", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["living_room.json", "living_room_labels.png", "living_room_overlay.png"]


def test_onnx_examples_run(ita_onnx_export, image_path, tmp_path):
    """The ONNX section: the `ita-export` line made the exported folder (the `ita_onnx_export` fixture runs it);
    the Python example and the `ita-segment` line run on that folder."""
    _, exported = ita_onnx_export
    (block,) = [block for block in code_blocks("python") if "ITAOnnxModel" in block]
    namespace = {"IMAGE": str(image_path)}
    exec(block.replace('"ita-onnx"', repr(str(exported))), namespace)
    assert type(namespace["model"]).__name__ == "ITAOnnxModel"
    assert tuple(namespace["label_map"].shape) == (60, 80) and int(namespace["label_map"].max()) < 4

    line = next(l for block in code_blocks("bash") for l in block.splitlines() if "--model ita-onnx" in l)
    args = [a.strip('"') for a in line.split()[1:]]
    args = [str(image_path) if a == "photo.jpg" else str(exported) if a == "ita-onnx" else a for a in args]
    args = [str(tmp_path / "out") if a == "out-onnx/" else a for a in args]
    assert main([*args, "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "living_room.json", "living_room_labels.png", "living_room_overlay.png"
    ]
