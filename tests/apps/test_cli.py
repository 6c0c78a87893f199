"""`ita-segment` / `python -m ita_segmentation` end to end on a tiny checkpoint, and the visualisation helpers."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_model
from PIL import Image

from ita_cli import segment as main
from ita_segmentation.apps.outputs import SUMMARY_FIELDS, write_label_map
from ita_segmentation.apps.visualization import color_palette, colorize_label_map, legend_entries, overlay

LABELS = ["cat", "sofa,couch", "wall"]
ROOT = Path(__file__).resolve().parents[2]
# `ita-export`'s parser is light, but importing `ita_segmentation.onnx.cli` runs `ita_segmentation/onnx/__init__`.


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def save_image(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    array[:, : width // 3, 2] = 240
    Image.fromarray(array).save(path)
    return path


def run(model_dir, *args):
    return main([*map(str, args), "--model", str(model_dir), "--quiet"])


def check_outputs(output, image_path, vocabulary, model_dir):
    stem = image_path.stem
    with Image.open(image_path) as image:
        width, height = image.size
    summary = json.loads((output / f"{stem}.json").read_text())
    assert summary["image"] == str(image_path)
    assert summary["model"] == str(model_dir)
    assert summary["vocabulary"] == vocabulary
    assert summary["image_size"] == {"height": height, "width": width}

    with Image.open(output / f"{stem}_labels.png") as labels:
        assert labels.mode == "L" and labels.size == (width, height)
        label_map = np.asarray(labels)
    counts = np.bincount(label_map.ravel(), minlength=len(vocabulary))
    assert len(counts) == len(vocabulary)  # no id outside the vocabulary
    expected = {vocabulary[i]: counts[i] / label_map.size for i in np.flatnonzero(counts)}
    shares = {segment["label"]: segment["pixel_share"] for segment in summary["segments"]}
    assert shares.keys() == expected.keys()
    for name, share in expected.items():
        assert shares[name] == pytest.approx(share)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert [share for share in shares.values()] == sorted(shares.values(), reverse=True)  # largest first
    for segment in summary["segments"]:
        assert vocabulary[segment["class_id"]] == segment["label"]
        assert set(segment) == {"label", "class_id", "pixel_share", "score"}
    assert set(summary) == set(SUMMARY_FIELDS)

    with Image.open(output / f"{stem}_overlay.png") as overlay_image:  # the legend stands to the right
        assert overlay_image.mode == "RGB" and overlay_image.width > width and overlay_image.height >= height
    return label_map


def test_one_image(model_dir, tmp_path):
    image = save_image(tmp_path / "room.png", 60, 84)
    output = tmp_path / "out" / "nested"  # created, parents too
    assert run(model_dir, image, "--labels", *LABELS, "--output", output) == 0
    check_outputs(output, image, LABELS, model_dir)
    assert sorted(p.name for p in output.iterdir()) == [
        "manifest.jsonl",
        "room.json",
        "room_labels.png",
        "room_overlay.png",
        "run_summary.json",
    ]
    (line,) = (output / "manifest.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["id"] == "room" and entry["input"] == str(image) and entry["process"] == 0
    assert sorted(entry["outputs"]) == ["room.json", "room_labels.png", "room_overlay.png"]
    assert entry["outputs"]["room.json"]["bytes"] == (output / "room.json").stat().st_size
    summary = json.loads((output / "run_summary.json").read_text())
    assert (summary["images"], summary["segmented"], summary["failed"], summary["processes"]) == (1, 1, 0, 1)


def test_directory_batched_equals_one_by_one(model_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    # Resized to 96x206 and 96x96: different padded frames in one batch.
    images = [save_image(folder / "a.jpg", 70, 150, seed=2), save_image(folder / "c.PNG", 48, 48, seed=3)]
    (folder / "notes.txt").write_text("not an image")
    assert run(model_dir, folder, "--labels", *LABELS, "--output", tmp_path / "batched", "--batch-size", "2") == 0
    assert run(model_dir, folder, "--labels", *LABELS, "--output", tmp_path / "single") == 0
    assert sorted(p.name for p in (tmp_path / "batched").glob("*.json")) == ["a.json", "c.json", "run_summary.json"]
    for image in images:
        batched = check_outputs(tmp_path / "batched", image, LABELS, model_dir)
        single = check_outputs(tmp_path / "single", image, LABELS, model_dir)
        np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize(
    "text, vocabulary",
    [
        ("# a comment\ncat\nsofa, couch\n\nwall\n", ["cat", "sofa,couch", "wall"]),
        ("0:invalid_class_id\n2:sofa,couch\n1:cat\n3:wall\n", ["cat", "sofa,couch", "wall"]),
    ],
    ids=["names", "ids"],
)
def test_labels_file(model_dir, tmp_path, text, vocabulary):
    labels_file = tmp_path / "classes.txt"
    labels_file.write_text(text)
    image = save_image(tmp_path / "room.png", 40, 56)
    assert run(model_dir, image, "--labels-file", labels_file, "--output", tmp_path / "out") == 0
    check_outputs(tmp_path / "out", image, vocabulary, model_dir)


def test_bad_images_are_named_and_the_good_ones_still_written(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    good = save_image(folder / "good.png", 50, 60)
    full = save_image(tmp_path / "full.png", 64, 64).read_bytes()
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    (folder / "empty.png").write_bytes(b"")
    output = tmp_path / "out"
    assert run(model_dir, folder, "--labels", *LABELS, "--output", output, "--batch-size", "3") == 1
    stderr = capsys.readouterr().err
    assert "truncated.png" in stderr
    assert "empty.png" in stderr and "empty file" in stderr
    assert "1 image(s) segmented, 2 failed" in stderr
    check_outputs(output, good, LABELS, model_dir)
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["failed"] == 2 and sorted(Path(f["input"]).name for f in summary["failures"]) == [
        "empty.png",
        "truncated.png",
    ]
    assert [json.loads(line)["id"] for line in (output / "manifest.jsonl").read_text().splitlines()] == ["good"]
    assert not list(output.glob("truncated*")) and not list(output.glob("empty*"))


def test_fail_fast_stops_at_the_first_bad_image(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_empty.png").write_bytes(b"")
    save_image(folder / "b_good.png", 40, 40)
    output = tmp_path / "out"
    assert run(model_dir, folder, "--labels", *LABELS, "--output", output, "--fail-fast") == 1
    assert "a_empty.png" in capsys.readouterr().err
    assert sorted(path.name for path in output.iterdir()) == ["manifest.jsonl", "run_summary.json"]  # no image


def test_usage_errors_come_before_loading_the_model(tmp_path, capsys):
    image = save_image(tmp_path / "room.png", 32, 32)
    missing_model = tmp_path / "no-weights"  # loading it would fail with exit 1, not 2
    missing_model.mkdir()
    (missing_model / "config.json").write_text("{}")
    (tmp_path / "blank.txt").write_text("# only a comment\n\n")
    cases = [
        (["--labels", ""], "empty string"),
        (["--labels", "cat", "cat"], "Duplicate"),
        (["--labels", "sofa,couch", "couch,sofa"], "'sofa,couch' (position 0) and 'couch,sofa' (position 1)"),
        (["--labels-file", tmp_path / "blank.txt"], "holds no class"),
        (["--labels-file", tmp_path / "missing.txt"], "missing.txt does not exist"),
    ]
    for args, message in cases:
        assert run(missing_model, image, *args, "--output", tmp_path / "out") == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert run(missing_model, tmp_path / "nothing.png", "--labels", "cat", "--output", tmp_path / "out") == 2
    stderr = capsys.readouterr().err
    assert "nothing.png: no such file" in stderr and "no input images" in stderr

    (tmp_path / "other").mkdir()
    save_image(tmp_path / "other" / "room.jpg", 32, 32)
    assert run(missing_model, image, tmp_path / "other", "--labels", "cat", "--output", tmp_path / "out") == 2
    assert "same file stem" in capsys.readouterr().err

    # argparse: --labels needs at least one class
    assert run(missing_model, image, "--labels", "--output", tmp_path / "out") == 2


def test_model_problems_are_named(tmp_path, capsys):
    image = save_image(tmp_path / "room.png", 32, 32)
    # A folder that does not exist: said so, before loading anything (not transformers' "Repo id must be ...").
    assert run(tmp_path / "no-model", image, "--labels", "cat", "--output", tmp_path / "out") == 2
    assert f"model folder {tmp_path / 'no-model'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty-model").mkdir()
    assert run(tmp_path / "empty-model", image, "--labels", "cat", "--output", tmp_path / "out") == 2
    assert "has no config.json" in capsys.readouterr().err

    # A checkpoint that lacks weights (decoder_layers raised in config.json) is refused, naming them.
    broken = save_tiny_model(tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["decoder_layers"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    assert run(broken, image, "--labels", "cat", "--output", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "cannot load model" in err and "weight(s) missing from the checkpoint" in err
    assert f"decoder.layers.{config['decoder_layers'] - 1}.ffn.linear1.weight" in err
    assert not list((tmp_path / "out").iterdir())


def test_a_device_the_machine_lacks_is_a_usage_error(model_dir, tmp_path, capsys):
    import torch

    image = save_image(tmp_path / "room.png", 32, 32)
    assert run(model_dir, image, "--labels", "cat", "--output", tmp_path / "out", "--device", "cuda:7") == 2
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert "CUDA device(s), numbered from 0" in err
    else:
        assert "no NVIDIA driver" in err and "CUDA cannot be used" in err and "cannot load model" not in err
    assert run(model_dir, image, "--labels", "cat", "--output", tmp_path / "out", "--device", "gpu") == 2
    assert "'gpu' is not a torch device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_outputs_are_never_overwritten_silently(model_dir, tmp_path, capsys):
    image = save_image(tmp_path / "room.png", 40, 40)
    output = tmp_path / "out"
    assert run(model_dir, image, "--labels", *LABELS, "--output", output) == 0
    written = {path: path.stat().st_mtime_ns for path in output.iterdir()}
    assert run(model_dir, image, "--labels", *LABELS, "--output", output) == 2
    assert (
        f"output folder {output} is not empty (manifest.jsonl, room.json, room_labels.png, room_overlay.png, "
        "run_summary.json)" in capsys.readouterr().err
    )
    assert {path: path.stat().st_mtime_ns for path in output.iterdir()} == written
    (output / "notes.txt").write_text("mine")
    assert run(model_dir, image, "--labels", *LABELS, "--output", output, "--overwrite") == 0
    assert (output / "notes.txt").read_text() == "mine"
    check_outputs(output, image, LABELS, model_dir)


def test_its_own_outputs_are_never_inputs(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(folder / "a.png", 40, 40)
    save_image(folder / "b_labels.png", 40, 40)  # a photo whose name only looks like an output
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder) == 2  # not empty: it holds the photos
    capsys.readouterr()
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder, "--overwrite") == 0
    assert "leaving out" not in capsys.readouterr().err
    names = sorted(path.name for path in folder.iterdir())
    assert names == [
        "a.json",
        "a.png",
        "a_labels.png",
        "a_overlay.png",
        "b_labels.json",
        "b_labels.png",
        "b_labels_labels.png",
        "b_labels_overlay.png",
        "manifest.jsonl",
        "run_summary.json",
    ]
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder, "--overwrite") == 0
    assert "leaving out 4 file(s) that ita-segment wrote earlier" in capsys.readouterr().err
    assert sorted(path.name for path in folder.iterdir()) == names  # nothing segmented its own overlays


def test_an_output_that_would_replace_an_input_is_refused(model_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(folder / "a.png", 40, 40)
    save_image(folder / "a_overlay.png", 40, 40)  # a photo, not an output: no a.json names it
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder, "--overwrite") == 2
    assert "would replace an input image" in capsys.readouterr().err


@pytest.mark.parametrize(("task", "user_file"), [("panoptic", "a_panoptic.png"), ("instance", "a_instances.png")])
def test_a_panoptic_or_instance_output_that_would_replace_an_input_is_refused(
    model_dir, tmp_path, capsys, task, user_file
):
    """Every task's outputs are checked against the inputs: the user's photo named like the task's map survives."""
    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(folder / "a.png", 40, 40)
    save_image(folder / user_file, 40, 40)
    before = (folder / user_file).read_bytes()
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder, "--overwrite", "--task", task) == 2
    assert f"a{user_file[1:]} of" in capsys.readouterr().err
    assert (folder / user_file).read_bytes() == before
    assert sorted(path.name for path in folder.iterdir()) == ["a.png", user_file]


@pytest.mark.parametrize("task", ["panoptic", "instance"])
def test_a_panoptic_or_instance_run_never_reads_its_own_outputs_back(model_dir, tmp_path, capsys, task):
    folder = tmp_path / "photos"
    folder.mkdir()
    save_image(folder / "a.png", 40, 40)
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder, "--overwrite", "--task", task) == 0
    written = sorted(path.name for path in folder.iterdir())
    assert len(written) == 6  # the photo, its overlay, its map and its summary; the manifest, the run's summary
    capsys.readouterr()
    assert run(model_dir, folder, "--labels", *LABELS, "--output", folder, "--overwrite", "--task", task) == 0
    assert "leaving out 2 file(s) that ita-segment wrote earlier" in capsys.readouterr().err
    assert sorted(path.name for path in folder.iterdir()) == written


def _imports_after(call):
    """Run `call` (an expression, or statements setting `status`) in a fresh interpreter; returns its exit
    status, whether torch and transformers were imported, and the output."""
    code = (
        "import sys, ita_cli\n"
        f"try:\n    status = {call}\nexcept SystemExit as exit:\n    status = exit.code\n"
        "print(status, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    return completed.stdout.split()[-3:], completed.stdout + completed.stderr


def _run_main(path_or_module, *argv):
    """A call that runs `app.py` or `python -m MODULE` as `__main__` with the command line `argv`."""
    runner = "run_path" if path_or_module.endswith(".py") else "run_module"
    return (
        f"__import__('runpy').{runner}({path_or_module!r}, run_name='__main__') "
        f"if not sys.argv.extend({list(argv)!r}) else 1"
    )


@pytest.mark.parametrize(
    "call, status, message",
    [
        ("ita_cli.segment(['--help'])", "0", "usage: ita-segment"),
        ("ita_cli.segment(['photo.jpg', '--labels', 'cat'])", "2", "the following arguments are required"),
        (
            "ita_cli.segment(['photo.jpg', '--labels', 'cat', '--model', 'm', '--output', 'o', '--dtype', 'int8'])",
            "2",
            "--dtype: invalid choice: 'int8'",
        ),
        ("ita_cli.evaluate(['--help'])", "0", "usage: ita-evaluate"),
        (
            "ita_cli.evaluate(['--model', 'm', '--benchmark', 'coco', '--data-dir', 'd', '--output', 'o'])",
            "2",
            "Unknown benchmark 'coco'",
        ),
        (
            "ita_cli.evaluate(['--model', 'm', '--benchmark', 'ade150', '--output', 'o'])",
            "2",  # no data
            "give either --data-dir or --hub-dataset",
        ),
        (
            "ita_cli.evaluate(['--model', 'm', '--benchmark', 'ade150', '--data-dir', 'd', '--output', 'o', "
            "'--backend', 'tensorrt'])",
            "2",
            "invalid choice: 'tensorrt'",
        ),
        ("ita_cli.convert(['--help'])", "0", "usage: ita-convert"),
        ("ita_cli.convert(['--checkpoint', 'missing.pth', '--output', 'o'])", "2", "missing.pth"),
        pytest.param("ita_cli.export(['--help'])", "0", "usage: ita-export"),
        pytest.param("ita_cli.export(['--model', 'm', '--output', 'o', '--rtol', '-1'])", "2", "--rtol"),
        ("ita_cli.train(['--help'])", "0", "usage: ita-train"),
        (
            "ita_cli.train(['--output_dir', 'o', '--crop_size', 'big'])",
            "2",
            "--crop_size/--crop-size: invalid int value: 'big'",
        ),
        ("ita_cli.train(['--output_dir', 'o', '--dataset_layout', 'coco'])", "2", "invalid choice: 'coco'"),
        (
            "ita_cli.train(['--outptu_dir', 'o'])",
            "2",
            "unrecognized arguments: --outptu_dir; did you mean --output_dir",
        ),
        ("ita_cli.web(['--help'])", "0", "usage: ita-web"),
        ("ita_cli.web(['--port', 'eighty'])", "2", "--port: invalid int value: 'eighty'"),
        (_run_main("app.py", "--help"), "0", "usage: "),
        (_run_main("app.py", "--port", "eighty"), "2", "--port: invalid int value: 'eighty'"),
        (_run_main("ita_segmentation", "--help"), "0", "usage: python -m ita_segmentation"),
        (_run_main("ita_segmentation", "--batch-size", "two"), "2", "--batch-size: invalid int value: 'two'"),
        (_run_main("scripts/train.py", "--help"), "0", "usage: python scripts/train.py"),
        (_run_main("scripts/evaluate.py", "--help"), "0", "usage: "),
    ],
)
def test_help_and_usage_errors_come_before_torch_is_imported(call, status, message):
    (code, torch_imported, transformers_imported), output = _imports_after(call)
    assert code == status, output
    assert message in output, output
    assert (torch_imported, transformers_imported) == ("False", "False"), output


def test_an_unknown_task_is_a_usage_error(model_dir, tmp_path, capsys):
    # --task is checked against the pipeline's SUBTASKS, after the parser (the model folder imports torch).
    image = save_image(tmp_path / "a.png", 20, 20)
    status = main(
        [str(image), "--labels", "cat", "--model", str(model_dir), "--output", str(tmp_path / "out"), "--task", "depth"]
    )
    assert status == 2
    assert "--task: invalid choice 'depth' (choose from semantic, panoptic, instance)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_console_scripts_and_python_m():
    import configparser

    import ita_cli

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = [line.split("=") for line in setup["options.entry_points"]["console_scripts"].strip().splitlines()]
    scripts = {name.strip(): target.strip() for name, target in lines}
    assert scripts == {
        "ita-segment": "ita_cli:segment",
        "ita-evaluate": "ita_cli:evaluate",
        "ita-convert": "ita_cli:convert",
        "ita-train": "ita_cli:train",
        "ita-web": "ita_cli:web",
        "ita-export": "ita_cli:export",
    }
    for target in [target for target in scripts.values() if target.startswith("ita_cli:")]:
        assert callable(getattr(ita_cli, target.split(":")[1]))
    assert "ita_cli" in setup["options"]["py_modules"].split()

    completed = subprocess.run(
        [sys.executable, "-m", "ita_segmentation", "--help"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: python -m ita_segmentation" in completed.stdout
    for option in ("--model", "--labels", "--labels-file", "--output", "--overwrite", "--batch-size", "--device"):
        assert option in completed.stdout


def test_label_png_is_16_bit_above_256_classes(tmp_path):
    label_map = np.arange(12 * 30).reshape(12, 30) % 300
    write_label_map(label_map, 300, tmp_path / "labels.png")
    with Image.open(tmp_path / "labels.png") as image:
        assert image.mode.startswith("I")
        np.testing.assert_array_equal(np.asarray(image), label_map)
    write_label_map(label_map % 256, 256, tmp_path / "labels8.png")
    with Image.open(tmp_path / "labels8.png") as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), label_map % 256)


# ------------------------------------------------------------------------------------------------ visualisation
def test_palette_is_deterministic_prefix_stable_and_distinct():
    palette = color_palette(1000)
    assert palette.shape == (1000, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(color_palette(7), palette[:7])
    np.testing.assert_array_equal(color_palette(1000), palette)
    assert len({tuple(colour) for colour in palette[:300]}) == 300
    assert color_palette(0).shape == (0, 3)


def test_overlay_blends_colours_and_puts_the_legend_beside_the_image():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    label_map = np.zeros((120, 160), dtype=np.int64)
    label_map[:, 100:] = 2
    names = ["cat", "sofa,couch", "wall"]
    palette = color_palette(3)

    plain = overlay(image, label_map, names, alpha=1.0, legend=False)
    assert plain.mode == "RGB" and plain.size == image.size
    np.testing.assert_array_equal(np.asarray(plain), palette[label_map])
    np.testing.assert_array_equal(np.asarray(colorize_label_map(label_map, 3)), palette[label_map])
    np.testing.assert_array_equal(np.asarray(overlay(image, label_map, names, alpha=0.0, legend=False)), image)
    assert legend_entries(label_map, names) == [(0, "cat", 100 / 160), (2, "wall", 60 / 160)]

    # The legend stands to the right: the picture keeps every pixel, and the canvas keeps the image's height.
    blended = overlay(image, label_map, names, alpha=0.5, legend=False)
    with_legend = overlay(image, label_map, names, alpha=0.5)
    assert with_legend.height == 120 and with_legend.width > 160
    np.testing.assert_array_equal(np.asarray(with_legend)[:, :160], np.asarray(blended))
    # Region boundaries are drawn in the pure class colours, so each region can be matched with the legend.
    assert (np.asarray(blended)[:, 99] == palette[0]).all() and (np.asarray(blended)[:, 100] == palette[2]).all()
    assert not (np.asarray(blended)[:, 50] == palette[0]).all()

    with pytest.raises(ValueError, match="3 classes"):
        overlay(image, label_map + 1, names)
    with pytest.raises(ValueError, match="label map"):
        overlay(image, label_map[:-1], names)


# ----------------------------------------------------------------------------------------------------------
# --task panoptic | instance
# ----------------------------------------------------------------------------------------------------------


def decode_rle(encoded):
    height, width = encoded["size"]
    values, value = [], 0
    for count in encoded["counts"]:
        values += [value] * count
        value = 1 - value
    return np.array(values, dtype=bool).reshape(width, height).T


def test_panoptic_task_writes_coco_panoptic_png_and_json(model_dir, tmp_path):
    image = save_image(tmp_path / "room.png", 60, 84)
    output = tmp_path / "out"
    args = [image, "--labels", *LABELS, "--output", output, "--task", "panoptic", "--stuff", "wall", "--threshold", "0"]
    assert run(model_dir, *args) == 0
    assert sorted(p.name for p in output.iterdir()) == [
        "manifest.jsonl",
        "room.json",
        "room_overlay.png",
        "room_panoptic.png",
        "run_summary.json",
    ]
    summary = json.loads((output / "room.json").read_text())
    assert summary["task"] == "panoptic" and summary["file_name"] == "room_panoptic.png"
    assert [c["isthing"] for c in summary["categories"]] == [1, 1, 0]
    with Image.open(output / "room_panoptic.png") as png:
        assert png.mode == "RGB" and png.size == (84, 60)
        rgb = np.asarray(png).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    segments = summary["segments_info"]
    assert segments, "the tiny model gives segments at threshold 0"
    assert set(np.unique(ids).tolist()) - {0} == {segment["id"] for segment in segments}
    for segment in segments:
        mask = ids == segment["id"]
        assert segment["area"] == int(mask.sum())
        x, y, w, h = segment["bbox"]
        assert mask[y : y + h, x : x + w].sum() == mask.sum() and mask[y].any() and mask[:, x].any()
        assert LABELS[segment["category_id"]] == segment["label"]
        assert segment["was_fused"] == (segment["label"] == "wall")
    with Image.open(output / "room_overlay.png") as overlay_image:
        # The picture, then the legend beside it.
        assert overlay_image.mode == "RGB" and overlay_image.height == 60 and overlay_image.width > 84


def test_a_run_whose_images_have_no_segment_says_so(model_dir, tmp_path, capsys):
    """Nothing above the threshold is not a silent success: the last line says how many images have no segment
    and which option lowers the threshold; run_summary.json counts them."""
    image = save_image(tmp_path / "room.png", 60, 84)
    assert (
        run(
            model_dir,
            image,
            "--labels",
            *LABELS,
            "--output",
            tmp_path / "out",
            "--task",
            "panoptic",
            "--threshold",
            "1",
        )
        == 0
    )
    error = capsys.readouterr().err
    assert "1 of 1 image(s) have no panoptic segment: none reached the score threshold 1" in error
    assert "--threshold" in error
    assert json.loads((tmp_path / "out" / "run_summary.json").read_text())["without_segments"] == 1
    assert (
        run(
            model_dir,
            image,
            "--labels",
            *LABELS,
            "--output",
            tmp_path / "out0",
            "--task",
            "panoptic",
            "--threshold",
            "0",
        )
        == 0
    )
    assert "have no panoptic segment" not in capsys.readouterr().err


def test_instance_task_writes_masks(model_dir, tmp_path):
    image = save_image(tmp_path / "room.png", 60, 84)
    output = tmp_path / "out"
    assert run(model_dir, image, "--labels", *LABELS, "--output", output, "--task", "instance", "--threshold", "0") == 0
    assert sorted(p.name for p in output.iterdir()) == [
        "manifest.jsonl",
        "room.json",
        "room_instances.png",
        "room_overlay.png",
        "run_summary.json",
    ]
    summary = json.loads((output / "room.json").read_text())
    instances = summary["instances"]
    assert len(instances) > 1
    scores = [instance["score"] for instance in instances]
    assert scores == sorted(scores, reverse=True)
    with Image.open(output / "room_instances.png") as png:
        assert png.mode.startswith("I;16") and png.size == (84, 60)
        top = np.asarray(png).astype(np.int64)
    covered = np.zeros((60, 84), dtype=bool)
    for instance in instances:  # the PNG shows the highest-scoring instance covering each pixel
        mask = decode_rle(instance["segmentation"])
        assert instance["area"] == int(mask.sum())
        np.testing.assert_array_equal(top[mask & ~covered], instance["id"] + 1)
        covered |= mask
    assert (top[~covered] == 0).all()


def test_task_usage_errors(model_dir, tmp_path, capsys):
    image = save_image(tmp_path / "room.png", 20, 20)
    base = [image, "--labels", *LABELS, "--output", tmp_path / "out"]
    assert main([*map(str, base), "--model", str(model_dir), "--task", "panoptic", "--stuff", "sky"]) == 2
    assert "--stuff 'sky' is not a class of the vocabulary" in capsys.readouterr().err
    assert main([*map(str, base), "--model", str(model_dir), "--threshold", "0.5"]) == 2
    assert "--threshold apply to --task panoptic or instance" in capsys.readouterr().err
    assert main([*map(str, base), "--model", str(model_dir), "--task", "instance", "--threshold", "2"]) == 2
    assert "--threshold must lie in [0, 1]" in capsys.readouterr().err


def test_segment_overlay_colours_segments_and_outlines_them():
    from ita_segmentation.apps.visualization import segment_overlay

    image = Image.new("RGB", (10, 8), (0, 0, 0))
    first = np.zeros((8, 10), dtype=bool)
    first[2:7, 2:7] = True
    second = np.zeros((8, 10), dtype=bool)
    second[0:2, 7:10] = True
    result = np.asarray(segment_overlay(image, [first, second], ["a", "b"], alpha=0.5, legend=False)).astype(int)
    palette = color_palette(2).astype(float)
    np.testing.assert_array_equal(result[4, 4], np.round(0.5 * palette[0]))  # inside: blended
    np.testing.assert_array_equal(result[2, 4], np.round(0.55 * palette[0]))  # border: the darker outline
    np.testing.assert_array_equal(result[0, 9], np.round(0.55 * palette[1]))  # image border counts as outside
    np.testing.assert_array_equal(result[7, 0], [0, 0, 0])  # no segment: the image
    with pytest.raises(ValueError, match="mask 0 is 3x3 but the image is 8x10"):
        segment_overlay(image, [np.ones((3, 3), dtype=bool)], ["a"])


def test_legend_is_readable_on_a_thumbnail_and_on_a_large_photo():
    from PIL import ImageDraw

    from ita_segmentation.apps.visualization import _legend_font, legend_font_size, legend_panel

    names = [f"class with a long name {index}" for index in range(12)]
    texts = [f"{name} {1 / 12:.1%}" for name in names]
    entries = list(zip(color_palette(12), texts))
    ink_heights = {}
    for height in (128, 2000):
        font_size = legend_font_size(height)
        panel = legend_panel(entries, height, font_size)
        widest = ImageDraw.Draw(panel).textlength(texts[0], font=_legend_font(font_size))
        assert panel.height == height  # twelve rows fit in columns beside the image
        assert panel.width > widest  # no percentage cut off
        ink = np.asarray(panel.convert("L")) < 128
        assert np.flatnonzero(ink.any(axis=0)).max() < panel.width - 1  # a margin after the last character
        rows = np.flatnonzero(ink[:, : panel.width // 2].any(axis=1))
        ink_heights[height] = rows.max() - rows.min()
    assert legend_font_size(128) == 12 and legend_font_size(4000) == 160  # scaled to the image, within bounds
    assert ink_heights[2000] > 5 * ink_heights[128]  # the text grows with the image
