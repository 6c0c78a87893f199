"""The README's usage examples run as written, against a tiny model folder and a generated image."""

import json
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

from ita_segmentation.apps.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language, text=None):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text() if text is None else text, flags=re.DOTALL)


def section(title):
    """The text of the README's `### title` section."""
    return README.read_text().split(f"## {title}\n")[1].split("\n## ")[0].split("\n### ")[0]


# Sections whose examples have tests of their own below.
OWN_TESTS = (
    "Outputs and post-processing",
    "Panoptic and instance segmentation",
    "Web page",
    "ONNX and onnxruntime",
    "With the stock transformers Trainer",  # run by tests/training/test_stock_trainer.py
    "Labelling a collection",  # tests/apps/test_segment_many.py, test_dataset_io.py; its launch lines parsed below
)


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


# What every ita-segment run writes beside the images' files: one line per finished image, and the run's summary.
RUN_RECORDS = ("manifest.jsonl", "run_summary.json")


def commands(prefix):
    """The README's shell commands that start with `prefix`, continuation lines joined, split like a shell."""
    found = []
    for block in code_blocks("bash"):
        joined = block.replace("\\\n", " ")
        found += [shlex.split(line.split(" #")[0]) for line in joined.splitlines() if line.strip().startswith(prefix)]
    return found


def substitute(argv, replacements):
    return [replacements.get(argument, argument) for argument in argv]


def test_command_line_examples_run(model_dir, image_path, tmp_path, capsys):
    import torch

    import ita_cli

    first, second = [
        command
        for command in commands("ita-segment")
        if "--task" not in command and "ita-onnx" not in command and "demo_output/model" not in command
    ]
    (tmp_path / "photos").mkdir()
    Image.open(image_path).save(tmp_path / "photos" / "kitchen.png")
    (tmp_path / "classes.txt").write_text("cat\nsofa,couch\nwall\n")
    replacements = {
        "photo.jpg": str(image_path),
        "photos/": str(tmp_path / "photos"),
        "MODEL": str(model_dir),
        "classes.txt": str(tmp_path / "classes.txt"),
    }
    assert ita_cli.segment(substitute(first[1:], {**replacements, "out/": str(tmp_path / "out")})) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(
        [
            f"{stem}{suffix}"
            for stem in ("living_room", "kitchen")
            for suffix in (".json", "_labels.png", "_overlay.png")
        ]
        + list(RUN_RECORDS)
    )

    # The GPU example runs where there is a GPU, and says why not where there is none.
    status = ita_cli.segment(substitute(second[1:], {**replacements, "out/": str(tmp_path / "gpu")}))
    if torch.cuda.is_available():
        assert status == 0
    else:
        assert status == 2 and "CUDA cannot be used" in capsys.readouterr().err


def test_first_contact_example_names_what_make_demo_writes():
    """The example after `make demo` segments the demo's samples with its model and its classes."""
    from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES

    (example,) = [command for command in commands("ita-segment") if "demo_output/model" in command]
    demo = (Path(__file__).resolve().parents[1] / "scripts" / "demo.py").read_text()
    assert example[1] == "demo_output/samples" and '"samples"' in demo and '"model"' in demo
    assert example[example.index("--labels") + 1 : example.index("--labels") + 6] == list(SYNTHETIC_CLASS_NAMES)
    assert "source .venv/bin/activate" in README.read_text()


def test_collection_examples_parse_as_ita_segment_arguments():
    """Every `accelerate launch ... -m ita_segmentation` line of *Labelling a collection* is a valid ita-segment
    command line (the launch itself is tested by tests/apps/test_segment_many.py)."""
    from ita_segmentation.apps.cli import build_parser

    launched = [c for c in commands("accelerate launch") if "ita_segmentation" in c]
    assert len(launched) >= 4
    for command in launched:
        args = build_parser().parse_args(command[command.index("ita_segmentation") + 1 :])
        assert args.model == "MODEL" and str(args.output) == "labels"
    assert any("--resume" in c for c in launched) and any("--format" in c for c in launched)


def test_json_fields_are_documented():
    from ita_segmentation.apps.outputs import SEGMENT_FIELDS, SUMMARY_FIELDS

    table = README.read_text().split("The JSON file:")[1].split("\n\n")[1]
    documented = {cell.strip("` ") for row in table.splitlines()[2:] for cell in row.split("|")[1].split(",")}
    expected = set(SUMMARY_FIELDS) | {f"segments[].{field}" for field in SEGMENT_FIELDS}
    assert documented == expected
    assert "can exceed 1" in table


def label_folders(root, split, num_images=4):
    from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset, write_label_map_folders

    write_label_map_folders(make_synthetic_dataset(num_images, 48, seed=7), root, split=split)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_CLASS_NAMES))


def test_training_examples_run(model_dir, tmp_path):
    """The fine-tuning and resume examples run as written (placeholders filled, a tiny run appended: later
    options win); the 8-GPU COCO example parses (it needs the full-size model and COCO)."""
    import ita_cli
    from ita_segmentation.training.entry import parse_arguments

    coco, finetune, resume = (
        command[command.index("scripts/train.py") + 1 :]
        for command in [c for c in commands("accelerate launch") if "scripts/train.py" in c][:1]
        + commands("python scripts/train.py")
    )
    model_args, data_args, training_args = parse_arguments(coco + ["--use_cpu"])  # --bf16 needs a GPU or this
    assert data_args.dataset_layout == "coco_panoptic" and training_args.max_steps == 368750

    label_folders(tmp_path / "data", "train")
    replacements = {
        "MODEL": str(model_dir),
        "my/dataset": str(tmp_path / "data"),
        "classes.txt": str(tmp_path / "data" / "classes.txt"),
        "runs/finetune": str(tmp_path / "run"),
    }
    tiny = [
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--crop_size",
        "64",
        "--per_device_train_batch_size",
        "2",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    assert ita_cli.train(substitute(finetune, replacements) + tiny) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "checkpoint-2").is_dir()
    assert resume[-2:] == ["--resume_from_checkpoint", "last"]
    assert ita_cli.train(substitute(resume, replacements) + tiny + ["--max_steps", "3"]) == 0
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # continued from checkpoint-2, not from scratch


def test_evaluation_examples_run(model_dir, tmp_path, capsys):
    import datasets
    from evaluation.test_evaluate_script import write_split  # tests/evaluation, a namespace package here

    import ita_cli

    examples = [
        command[command.index("scripts/evaluate.py") + 1 :] for command in commands("python scripts/evaluate.py")
    ]
    launched = commands("accelerate launch")[-1]
    examples.append(launched[launched.index("scripts/evaluate.py") + 1 :])  # run here in one process
    assert len(examples) == 5
    root = tmp_path / "detectron2"
    for name in ("ade150", "ade847", "pc59", "pc459", "pas20", "pas21"):
        write_split(root, name, image_sizes=[(40, 30)] * 2)
    raw = write_split(tmp_path / "raw", "ade150", layout_index=1, image_sizes=[(40, 30)] * 2)  # 0 = other
    (tmp_path / "hub").mkdir()
    datasets.Dataset.from_dict(
        {"image": [str(image) for image, _ in raw], "annotation": [str(label) for _, label in raw]},
        features=datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()}),
    ).to_parquet(str(tmp_path / "hub" / "validation.parquet"))
    label_folders(tmp_path / "mine", "validation")
    replacements = {
        "fcclip-convnext-large": str(model_dir),
        "runs/finetune": str(model_dir),
        "$DETECTRON2_DATASETS": str(root),
        "USER/ADE20K-val": str(tmp_path / "hub"),
        "my/dataset": str(tmp_path / "mine"),
        "classes.txt": str(tmp_path / "mine" / "classes.txt"),
    }
    for argv in examples:
        output = argv[argv.index("--output") + 1]
        replacements[output] = str(tmp_path / output)
        assert ita_cli.evaluate(substitute(argv, replacements) + ["--num-workers", "0", "--no-progress"]) == 0, (
            capsys.readouterr().err
        )
    table = (tmp_path / "eval" / "fcclip" / "results.md").read_text()
    for display_name in ("A-150", "A-847", "PC-59", "PC-459", "PAS-20", "PAS-21"):
        assert f"| {display_name} |" in table
    assert (tmp_path / "eval" / "finetune" / "mine" / "results.json").is_file()
    assert json.loads((tmp_path / "eval" / "hub" / "ade150" / "results.json").read_text())["protocol"]["reduce_labels"]


def test_conversion_examples_run(tmp_path, capsys, monkeypatch):
    """Both converter examples, on the toy checkpoints of tests/data/parity (which need their toy CLIP config and
    templates added); the upload fails cleanly offline, after writing."""
    import ita_cli

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    parity = Path(__file__).resolve().parent / "data" / "parity"
    meta = json.loads((parity / "meta.json").read_text())
    toy = [
        "--clip-config",
        str(parity / "clip_config.json"),
        "--config-overrides",
        json.dumps({"prompt_templates": meta["prompt_templates"]}),
    ]
    first, second = (
        command[command.index("scripts/convert_checkpoint.py") + 1 :]
        for command in commands("python scripts/convert_checkpoint.py")
    )
    replacements = {
        "fcclip_cocopan.pth": str(parity / "fcclip_original.pth"),
        "ita.pth": str(parity / "ita_original.pth"),
        "Category/category_tensor.pt": str(parity / "category_bank.pt"),
        "fcclip-convnext-large": str(tmp_path / "fcclip"),
        "ita-convnext-large": str(tmp_path / "ita"),
    }
    assert ita_cli.convert(substitute(first, replacements) + toy) == 0
    assert ita_cli.convert(substitute(second, replacements) + toy) == 1  # written, then no network for the upload
    assert "hf upload my-user/ita-convnext-large" in capsys.readouterr().err
    for folder in ("fcclip", "ita"):
        assert (tmp_path / folder / "model.safetensors").is_file()
    assert (tmp_path / "ita" / "category_bank.safetensors").is_file()


def test_every_benchmark_layout_is_documented():
    from ita_segmentation.evaluation import BENCHMARKS

    table = README.read_text().split("Each benchmark's validation split")[1].split("\n\n")[1]
    for benchmark in BENCHMARKS.values():
        assert f"`{benchmark.name}` ({benchmark.display_name})" in table
        for layout in benchmark.layouts:  # A-847's second root, ade/, is named once in its row
            for folder in (layout.image_dir, layout.label_dir):
                assert f"`{folder.removeprefix('ade/')}" in table, folder
            if layout.split_file:
                assert layout.split_file.split("/")[-1] in table


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
    from ita_segmentation.apps.cli import main  # in-process: `python -m ita_segmentation` itself is run above

    assert main([*args, "--quiet"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    picture = {"panoptic": "living_room_panoptic.png", "instance": "living_room_instances.png"}[task]
    assert written == sorted(["living_room.json", "living_room_overlay.png", picture, *RUN_RECORDS])


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
        [sys.executable, str(root / "app.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
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
        picture, table, files, note = client.predict(
            handle_file(str(image_path)), "cat\nwall [stuff]", "semantic", 0.5, api_name="/segment"
        )
        label_path, overlay_path = files
        assert "classes present" in note
        with Image.open(label_path) as label_map:
            assert label_map.size == (80, 60)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_outputs_and_post_processing_example_runs(model_dir, image_path):
    usage = [block for block in code_blocks("python", section("Python"))][0]
    example = code_blocks("python", section("Outputs and post-processing"))[0]
    namespace = {"MODEL": str(model_dir), "IMAGE": str(image_path)}
    exec(usage, namespace)
    exec(example, namespace)
    result, outputs = namespace["result"], namespace["outputs"]
    assert tuple(result.segmentation.shape) == (60, 80)
    assert tuple(result.segmentation_scores.shape) == (4, 60, 80)
    assert torch.equal(result.segmentation, result.segmentation_scores.argmax(0))
    assert len(outputs.transformer_decoder_hidden_states) == namespace["model"].config.decoder_layers + 1
    documented = set(re.findall(r"^\| `(\w+)`", section("Outputs and post-processing"), flags=re.M))
    from modeling_ita import ITAOpenVocabSegmentationOutput

    assert documented <= set(ITAOpenVocabSegmentationOutput.__dataclass_fields__)


def test_onnx_examples_run(ita_onnx_export, image_path, tmp_path):
    """The ONNX section: the `ita-export` line made the exported folder (the `ita_onnx_export` fixture runs it);
    the Python example and the `ita-segment` line run on that folder."""
    _, exported = ita_onnx_export
    (block,) = code_blocks("python", section("ONNX and onnxruntime"))
    namespace = {"IMAGE": str(image_path)}
    exec(block.replace('"ita-onnx"', repr(str(exported))), namespace)
    assert type(namespace["model"]).__name__ == "ITAOnnxModel"
    assert tuple(namespace["label_map"].shape) == (60, 80) and int(namespace["label_map"].max()) < 4

    line = next(
        text
        for text in code_blocks("bash", section("ONNX and onnxruntime"))[0].splitlines()
        if "--model ita-onnx" in text
    )
    args = [a.strip('"') for a in line.split()[1:]]
    args = [str(image_path) if a == "photo.jpg" else str(exported) if a == "ita-onnx" else a for a in args]
    args = [str(tmp_path / "out") if a == "out-onnx/" else a for a in args]
    assert main([*args, "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["living_room.json", "living_room_labels.png", "living_room_overlay.png", *RUN_RECORDS]
    )
