"""`ita-segment` / `python -m modeling_ita` end to end on a tiny checkpoint, and the visualisation helpers."""

import json
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
from PIL import Image

from modeling_ita.apps.cli import main, write_label_map
from modeling_ita.apps.visualization import color_palette, colorize_label_map, legend_entries, overlay

LABELS = ["cat", "sofa,couch", "wall"]


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
    assert summary["pixel_shares"].keys() == expected.keys()
    for name, share in expected.items():
        assert summary["pixel_shares"][name] == pytest.approx(share)
    assert sum(summary["pixel_shares"].values()) == pytest.approx(1.0)
    assert [segment["label"] for segment in summary["segments"]] == list(summary["pixel_shares"])
    for segment in summary["segments"]:
        assert vocabulary[segment["class_id"]] == segment["label"]

    with Image.open(output / f"{stem}_overlay.png") as overlay_image:
        assert overlay_image.mode == "RGB" and overlay_image.size == (width, height)
    return label_map


def test_one_image(model_dir, tmp_path):
    image = save_image(tmp_path / "room.png", 60, 84)
    output = tmp_path / "out" / "nested"  # created, parents too
    assert run(model_dir, image, "--labels", *LABELS, "--output", output) == 0
    check_outputs(output, image, LABELS, model_dir)
    assert sorted(p.name for p in output.iterdir()) == ["room.json", "room_labels.png", "room_overlay.png"]


def test_directory_batched_equals_one_by_one(model_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    # Resized to 96x206 and 96x96: different padded frames in one batch.
    images = [save_image(folder / "a.jpg", 70, 150, seed=2), save_image(folder / "c.PNG", 48, 48, seed=3)]
    (folder / "notes.txt").write_text("not an image")
    assert run(model_dir, folder, "--labels", *LABELS, "--output", tmp_path / "batched", "--batch-size", "2") == 0
    assert run(model_dir, folder, "--labels", *LABELS, "--output", tmp_path / "single") == 0
    assert sorted(p.name for p in (tmp_path / "batched").glob("*.json")) == ["a.json", "c.json"]
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
    assert not list(output.glob("truncated*")) and not list(output.glob("empty*"))


def test_fail_fast_stops_at_the_first_bad_image(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_empty.png").write_bytes(b"")
    save_image(folder / "b_good.png", 40, 40)
    output = tmp_path / "out"
    assert run(model_dir, folder, "--labels", *LABELS, "--output", output, "--fail-fast") == 1
    assert "a_empty.png" in capsys.readouterr().err
    assert not list(output.iterdir())


def test_usage_errors_come_before_loading_the_model(tmp_path, capsys):
    image = save_image(tmp_path / "room.png", 32, 32)
    missing_model = tmp_path / "no-model"  # loading it would fail with exit 1, not 2
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

    with pytest.raises(SystemExit) as exit_info:  # argparse: --labels needs at least one class
        run(missing_model, image, "--labels", "--output", tmp_path / "out")
    assert exit_info.value.code == 2


def test_unloadable_model_exits_1(tmp_path, capsys):
    image = save_image(tmp_path / "room.png", 32, 32)
    assert run(tmp_path / "no-model", image, "--labels", "cat", "--output", tmp_path / "out") == 1
    assert "cannot load model" in capsys.readouterr().err


def test_python_m_help_and_console_script():
    completed = subprocess.run(
        [sys.executable, "-m", "modeling_ita", "--help"], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: python -m modeling_ita" in completed.stdout
    for option in ("--model", "--labels", "--labels-file", "--output", "--batch-size", "--device", "--dtype"):
        assert option in completed.stdout
    scripts = {entry.name: entry.value for entry in entry_points(group="console_scripts")}
    assert scripts.get("ita-segment") == "modeling_ita.apps.cli:main"


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


def test_overlay_blends_colours_and_draws_a_legend():
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

    with_legend = np.asarray(overlay(image, label_map, names, alpha=1.0))
    differs = (with_legend != np.asarray(plain)).any(axis=-1)
    assert differs[:30, :60].any()  # the legend, top left
    assert not differs[60:, :].any() and not differs[:, 120:].any()  # nothing else changed
    assert legend_entries(label_map, names) == [(0, "cat", 100 / 160), (2, "wall", 60 / 160)]

    with pytest.raises(ValueError, match="3 classes"):
        overlay(image, label_map + 1, names)
    with pytest.raises(ValueError, match="label map"):
        overlay(image, label_map[:-1], names)
