"""`ita-evaluate`'s door (and `scripts/evaluate_panoptic.py`'s), through the real commands: every user error is
refused with its exit status (2 usage, 1 data), a message that names the value and the way out, no traceback,
and no user file changed (the model, the dataset, the class list, the output folder's earlier contents).

The first tests' refusals are answered before torch is imported (well under a second each); the last needs the
data loaders (a few seconds each, one command per case)."""

import json
import shutil
import time
from pathlib import Path

import pytest
from doors.door_commands import assert_refused, file_hashes, run_command
from PIL import Image

from ita_segmentation.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic_dataset, write_label_map_folders


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, tiny_model_dir):
    """A user's dataset (label-map folders, 3 scenes), its class list, an exported-looking folder, a file and the
    tiny model: what every refusal must leave alone."""
    root = tmp_path_factory.mktemp("evaluate-door")
    rows = make_synthetic_dataset(3, 48, seed=3)
    write_label_map_folders(rows, root / "mine", split="validation")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SYNTHETIC_CLASS_NAMES))
    exported = root / "exported"  # what ita-export writes, as far as the pre-torch checks look
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"model_type": "ita"}))
    (exported / "onnx_export.json").write_text(json.dumps({"format": "ita-onnx", "source": "runs/ita"}))
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "empty").mkdir()
    return root, Path(tiny_model_dir)


def evaluate_args(root: Path, model: Path, *extra: object) -> list[object]:
    return [
        "--model",
        model,
        "--dataset",
        root / "mine",
        "--vocabulary-file",
        root / "classes.txt",
        "--output",
        root / "out",
        "--num-workers",
        "0",
        "--no-progress",
        *extra,
    ]


def test_refused_before_torch_is_imported(user_files):
    root, model = user_files
    taken = root / "taken"  # an earlier evaluation's results, and the user's own files in another output folder
    (taken / "mine").mkdir(parents=True)
    (taken / "mine" / "results.json").write_text(
        json.dumps({"benchmark": "mine", "display_name": "mine", "scores": {}})
    )
    (taken / "results.md").write_text("# Evaluation results\n")
    foreign = root / "foreign"
    (foreign / "mine").mkdir(parents=True)
    (foreign / "mine" / "results.json").write_text('{"my": "own results"}')
    notes = root / "notes"
    notes.mkdir()
    (notes / "results.md").write_text("# my notes\n")
    base = evaluate_args(root, model)
    with_output = base.index("--output") + 1
    cases = [
        (["--model", root / "no-such-model", *base[2:]], ["no-such-model does not exist", "save_pretrained"]),
        ([*base, "--backend", "onnxruntime"], ["--backend onnxruntime", "ita-export", f"--output {model}-onnx"]),
        (["--model", root / "exported", *base[2:], "--backend", "pytorch"], ["ita-export", "--backend onnxruntime"]),
        (["--model", root / "exported", *base[2:], "--dtype", "bfloat16"], ["--dtype bfloat16", "float32"]),
        ([*base, "--device", "gpu"], ["--device 'gpu'", "cuda"]),
        ([*base, "--batch-size", "0"], ["--batch-size must be at least 1, got 0"]),
        ([*base, "--max-samples", "0"], ["--max-samples must be at least 1"]),
        (["--model", model, "--dataset", root / "typo", *base[4:]], ["--dataset", "typo does not exist"]),
        (["--model", model, "--dataset", root / "empty", *base[4:]], ["is an empty folder"]),
        ([*base[:4], "--vocabulary-file", root / "mine", *base[6:]], ["--vocabulary-file", "is a folder"]),
        (
            [*base[:2], "--dataset", root / "a_file.txt", *base[4:], "--dataset-layout", "label_folders"],
            ["a_file.txt is not a folder", "label_folders reads"],
        ),
        (
            ["--model", model, "--benchmark", "ade999", "--data-dir", root, "--output", root / "out"],
            ["ade999", "ade150", "pc59"],
        ),
        (
            ["--model", model, "--benchmark", "ade150", "--data-dir", root / "nowhere", "--output", root / "out"],
            ["--data-dir", "nowhere does not exist", "DETECTRON2_DATASETS"],
        ),
        ([*base[:with_output], root / "a_file.txt", *base[with_output + 1 :]], ["a_file.txt is a file"]),
        (
            [*base[:with_output], taken, *base[with_output + 1 :]],
            ["holds an earlier evaluation's results", "--overwrite"],
        ),
        ([*base[:with_output], foreign, *base[with_output + 1 :], "--overwrite"], ["did not write", "another output"]),
        (
            [*base[:with_output], notes, *base[with_output + 1 :], "--overwrite"],
            ["results.md", "not written by", "starts '# my notes'"],
        ),
    ]
    before = file_hashes(root, model)
    started = time.perf_counter()
    for arguments, phrases in cases:
        completed = run_command("ita-evaluate", *arguments)
        assert_refused(completed, 2, *phrases)
    elapsed = time.perf_counter() - started
    assert file_hashes(root, model) == before
    assert not (root / "out").exists()
    # Each answered before torch was imported (about 0.3 s on an idle machine; generous for a loaded one).
    assert elapsed / len(cases) < 5, elapsed


def test_panoptic_script_refuses_before_torch(user_files):
    root, model = user_files
    common = ["--benchmark", "coco_panoptic", "--data-dir", root, "--output", root / "pq"]
    before = file_hashes(root, model)
    for arguments, phrases in [
        (["--model", root / "no-such-model", *common], ["no-such-model does not exist"]),
        (["--model", root / "exported", *common], ["ita-export", "PyTorch model folder"]),
        (["--model", model, *common[:3], root / "missing", *common[4:]], ["--data-dir", "missing is not a folder"]),
        (["--model", model, *common, "--max-samples", "0"], ["--max-samples must be at least 1"]),
    ]:
        assert_refused(run_command("scripts/evaluate_panoptic.py", *arguments), 2, *phrases)
    assert file_hashes(root, model) == before
    assert not (root / "pq").exists()


def test_refused_by_the_data_loaders(user_files, tmp_path):
    """Each refusal needs the data loaders (torch imported): a dataset name that is neither a folder here nor
    reachable on the Hub (offline), a dataset without its class list, label maps that fail the check (listed,
    nothing computed), an image cut short (named, not a traceback), a class list of the wrong length for a
    benchmark."""
    root, model = user_files
    bad = tmp_path / "bad"  # a copy of the dataset whose first label map holds class 200
    shutil.copytree(root / "mine", bad)
    first = sorted((bad / "annotations" / "validation").iterdir())[0]
    label = Image.open(first)
    label.putpixel((0, 0), 200)
    label.save(first)
    (tmp_path / "two.txt").write_text("red circle\nblue square\n")
    truncated = tmp_path / "truncated"  # a copy whose first image is cut halfway: its header reads, its pixels not
    shutil.copytree(root / "mine", truncated)
    first_image = sorted((truncated / "images" / "validation").iterdir())[0]
    first_image.write_bytes(first_image.read_bytes()[: first_image.stat().st_size // 2])
    cases = [
        (
            ["--model", model, "--dataset", "no_such_dataset", "--output", tmp_path / "out"],
            2,
            ["no_such_dataset is no file or folder here", "HF_HUB_OFFLINE"],
        ),
        (
            ["--model", model, "--dataset", root / "mine", "--output", tmp_path / "out", "--no-progress"],
            1,
            ["Cannot tell the class names", "--vocabulary-file"],
        ),
        (
            ["--model", model, "--dataset", bad, "--vocabulary-file", root / "classes.txt"]
            + ["--output", tmp_path / "out", "--num-workers", "0", "--no-progress"],
            1,
            [
                "class ids [200] are outside the vocabulary of 5 classes",
                "--skip-bad-samples",
                "nothing was computed",
                f"The class list is --vocabulary-file {root / 'classes.txt'} (5 classes)",
            ],
        ),
        (
            ["--model", model, "--dataset", truncated, "--vocabulary-file", root / "classes.txt"]
            + ["--output", tmp_path / "out-truncated", "--num-workers", "0", "--no-progress"],
            1,
            [f"{first_image}: the image cannot be read (image file is truncated)", "nothing was computed"],
        ),
        (
            ["--model", model, "--dataset", root / "mine", "--dataset-layout", "label_folders", "--split", "test"]
            + ["--vocabulary-file", root / "classes.txt", "--output", tmp_path / "out", "--no-progress"],
            2,
            ["has no split 'test'", "its splits: validation"],
        ),
        (
            ["--model", model, "--benchmark", "pas21", "--data-dir", tmp_path, "--vocabulary-file"]
            + [tmp_path / "two.txt", "--output", tmp_path / "out", "--no-progress"],
            1,
            ["two.txt lists 2 classes but the benchmark has 21"],
        ),
    ]
    before = file_hashes(root, model, tmp_path)
    for arguments, status, phrases in cases:
        assert_refused(run_command("ita-evaluate", *arguments), status, *phrases)
    assert file_hashes(root, model, tmp_path) == before
    assert not (tmp_path / "out").exists()
