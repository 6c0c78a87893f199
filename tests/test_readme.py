"""The README's usage examples run as written, against a tiny model folder and a generated image."""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language, text=None):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text() if text is None else text, flags=re.DOTALL)


def section(title):
    """The text of the README's `### title` section."""
    return README.read_text().split(f"### {title}\n")[1].split("\n## ")[0].split("\n### ")[0]


# Sections whose examples have tests of their own below.
OWN_TESTS = ("Panoptic and instance segmentation", "Web page")


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
    tested_elsewhere = [block for title in OWN_TESTS for block in code_blocks("python", section(title))]
    blocks = [block for block in code_blocks("python") if block not in tested_elsewhere]
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


# ----------------------------------------------------------------------------------------------------------
# Panoptic and instance segmentation, the web page
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spread_model_dir(tmp_path_factory):
    """A tiny model with spread random weights (several classes, see `save_tiny_model`)."""
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("readme-spread"), spread_weights=True)


def test_panoptic_and_instance_python_examples_run(spread_model_dir, image_path, capsys):
    processor_block, pipeline_block = code_blocks("python", section("Panoptic and instance segmentation"))
    namespace = {"MODEL": str(spread_model_dir), "IMAGE": str(image_path)}
    exec(processor_block, namespace)
    assert tuple(namespace["panoptic"]["segmentation"].shape) == (60, 80)
    assert tuple(namespace["instances"]["segmentation"].shape[1:]) == (60, 80)
    assert tuple(namespace["label_map"].shape) == (60, 80)
    namespace = {"MODEL": str(spread_model_dir), "IMAGE": str(image_path)}
    exec(pipeline_block, namespace)
    assert namespace["segment_map"].shape == (60, 80)
    assert all(segment["score"] >= 0.5 for segment in namespace["instances"])


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_panoptic_and_instance_command_lines_run(model_dir, image_path, tmp_path, task):
    block = code_blocks("bash", section("Panoptic and instance segmentation"))[0]
    line = next(line for line in block.splitlines() if f"--task {task}" in line)
    args = shlex.split(line)[1:]
    replace = {"photo.jpg": str(image_path), "MODEL": str(model_dir), "out/": str(tmp_path / "out")}
    args = [replace.get(arg, arg) for arg in args]
    from modeling_ita.apps.cli import main  # in-process: `python -m modeling_ita` itself is run above

    assert main([*args, "--quiet"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    picture = {"panoptic": "living_room_panoptic.png", "instance": "living_room_instances.png"}[task]
    assert written == sorted(["living_room.json", "living_room_overlay.png", picture])


def test_web_page_example_runs(model_dir, image_path, tmp_path):
    """`python app.py --model MODEL --port P` serves the page; one segmentation through gradio_client."""
    pytest.importorskip("gradio", reason="the web page needs the `demo` extra (Gradio)")
    from gradio_client import Client, handle_file

    block = code_blocks("bash", section("Web page"))[0]
    line = next(line for line in block.splitlines() if line.startswith("python app.py"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [{"MODEL": str(model_dir), "7860": str(port)}.get(arg, arg) for arg in shlex.split(line)[2:]]
    root = README.parent
    server = subprocess.Popen(
        [sys.executable, str(root / "app.py"), *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])},
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read().decode()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the page did not start listening within 120 s")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        picture, table, label_path = client.predict(
            handle_file(str(image_path)), "cat\nwall [stuff]", "semantic", api_name="/segment"
        )
        with Image.open(label_path) as label_map:
            assert label_map.size == (80, 60)
    finally:
        server.terminate()
        server.wait(timeout=30)
