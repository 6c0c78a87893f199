"""`ita-export`'s door (and the onnxruntime backend's, where `ita-segment`/`ita-evaluate` meet an exported folder),
through the real commands: every refusal has its exit status (2 usage, 1 the model refused), a message that names
the value and the way out (an export goes into a new folder beside the model's, never into the model's own), no
traceback, and no user file changed.

No test here exports (a minute or more): each refusal comes before the model is traced; all but the last before
torch is imported. The exported folder is one as far as the checks look (config.json + onnx_export.json)."""

import json
import time
from pathlib import Path

import pytest
from doors.door_commands import assert_refused, file_hashes, run_command


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, tiny_model_dir):
    """The tiny model (copied: an output folder inside it must not touch the session's), an exported-looking
    folder, a BERT folder, a folder of the user's notes, a file."""
    root = tmp_path_factory.mktemp("export-door")
    model = root / "model"
    model.mkdir()
    for path in Path(tiny_model_dir).iterdir():
        if path.is_file():
            (model / path.name).write_bytes(path.read_bytes())
    exported = root / "exported"
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"model_type": "ita"}))
    (exported / "onnx_export.json").write_text(json.dumps({"format": "ita-onnx", "source": "runs/ita"}))
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (root / "notes").mkdir()
    (root / "notes" / "config.json").write_text('{"mine": true}\n')
    (root / "a_file.txt").write_text("not a folder\n")
    return root


def test_refused_before_torch_is_imported(user_files):
    root = user_files
    model = root / "model"
    cases = [
        (["--model", root / "no-such-model", "--output", root / "out"], ["no-such-model does not exist"]),
        (["--model", root / "bert", "--output", root / "out"], ["'bert' model", "not ITA"]),
        (
            ["--model", model, "--output", model, "--overwrite"],
            ["is the model's own folder", f"--output {model}-onnx"],
        ),
        (
            ["--model", model, "--output", model / "onnx"],
            ["is inside the model's folder", f"--output {model}-onnx"],
        ),
        (["--model", model, "--output", root], ["holds the model's folder", "separate new folder"]),
        (["--model", model, "--output", root / "notes"], ["notes is not empty", "--overwrite"]),
        (["--model", model, "--output", root / "notes", "--overwrite"], ["no earlier export", "empty or new folder"]),
        (["--model", model, "--output", root / "a_file.txt"], ["a_file.txt is a file"]),
        (
            ["--model", root / "exported", "--output", root / "out"],
            ["already an ONNX export", "runs/ita", "ita-segment or ita-evaluate"],
        ),
        (["--model", model, "--output", root / "out", "--atol", "-1"], ["--atol and --rtol must be >= 0"]),
    ]
    before = file_hashes(root)
    started = time.perf_counter()
    for arguments, phrases in cases:
        assert_refused(run_command("ita-export", *arguments), 2, *phrases)
    elapsed = time.perf_counter() - started
    assert file_hashes(root) == before
    assert not (root / "out").exists() and not (model / "onnx").exists()
    assert elapsed / len(cases) < 5, elapsed  # each before torch: about 0.3 s on an idle machine


def test_backends_refuse_the_other_kind_of_folder(user_files):
    """A PyTorch folder given as `--backend onnxruntime` is told to export into a new folder (never its own);
    an exported folder given as `--backend pytorch` is told to use onnxruntime or the folder it came from."""
    root = user_files
    model = root / "model"
    common = ["--benchmark", "pas21", "--data-dir", root, "--output", root / "out"]
    before = file_hashes(root)
    completed = run_command("ita-evaluate", "--model", model, *common, "--backend", "onnxruntime")
    assert_refused(completed, 2, f"ita-export --model {model} --output {model}-onnx", "--backend")
    assert f"--output {model}`" not in completed.stderr and f"--output {model} " not in completed.stderr
    completed = run_command("ita-evaluate", "--model", root / "exported", *common, "--backend", "pytorch")
    assert_refused(completed, 2, "written by ita-export", "--backend onnxruntime", "runs/ita")
    completed = run_command("ita-evaluate", "--model", root / "exported", *common, "--device", "cuda:0")
    assert_refused(completed, 2, "onnxruntime backend runs on the CPU")
    assert file_hashes(root) == before


def test_damaged_weights_are_refused_with_nothing_written(user_files, tmp_path):
    """A model whose weights file is cut short: loading it fails (exit 1, the file named), and no output folder or
    staging folder is left behind."""
    root = user_files
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "processor_config.json"):
        (broken / name).write_bytes((root / "model" / name).read_bytes())
    (broken / "model.safetensors").write_bytes((root / "model" / "model.safetensors").read_bytes()[:1000])
    before = file_hashes(tmp_path)
    completed = run_command("ita-export", "--model", broken, "--output", tmp_path / "out", "-q")
    assert_refused(completed, 1, "broken", "cannot be read", "again")
    assert file_hashes(tmp_path) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken"]
