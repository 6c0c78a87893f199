"""The `ita-segment` door, end to end through the real command: a user's file where an output would go is refused
for every task even with --overwrite (before the model is loaded, nothing changed), a folder that is not empty
points to --resume and --overwrite, --resume of a finished run leaves every file as it was, and bad arguments are
named. Each case asserts the exit status, the message, no traceback, and the hashes of the user's files."""

import json

import numpy as np
import pytest
import torch
from doors.door_commands import assert_refused, file_hashes, run_command
from PIL import Image

from ita_cli import segment

LABELS = ["cat", "sofa,couch", "wall"]


def photo(path, seed=0, size=(40, 52)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("task", "user_file", "phrase"),
    [
        # A photo named like the task's map, in the folder that is both input and output.
        ("panoptic", "scene_panoptic.png", "scene_panoptic.png of"),
        ("instance", "scene_instances.png", "scene_instances.png of"),
        # A file of the user's (not an image input) where the summary would go.
        ("semantic", "scene.json", "scene.json exists and was not written by ita-segment"),
    ],
)
def test_overwrite_never_replaces_a_users_file(tiny_model_dir, tmp_path, task, user_file, phrase):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "scene.jpg")
    if user_file.endswith(".png"):
        photo(folder / user_file, seed=1)
    else:
        (folder / user_file).write_text('{"my": "notes"}')
    before = file_hashes(tmp_path)
    completed = run_command(
        "ita-segment", folder, "--model", tiny_model_dir, "--labels", *LABELS, "--output", folder, "--overwrite",
        "--task", task,
    )  # fmt: skip
    assert_refused(completed, 2, phrase)
    assert file_hashes(tmp_path) == before
    assert "Loading weights" not in completed.stderr  # refused before the model is loaded


def test_a_folder_that_is_not_empty_and_resume_of_a_finished_run(tiny_model_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "a.png")
    photo(photos / "b.png", seed=2)
    output = tmp_path / "out"
    arguments = [photos, "--model", tiny_model_dir, "--labels", *LABELS, "--output", output, "--quiet"]
    assert segment([str(argument) for argument in arguments]) == 0  # here: no start-up cost
    before = file_hashes(tmp_path)

    completed = run_command("ita-segment", *arguments)
    assert_refused(completed, 2, f"output folder {output} is not empty", "--resume", "--overwrite")
    assert file_hashes(tmp_path) == before

    completed = run_command("ita-segment", *arguments, "--resume")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "0 image(s) segmented, 2 already done" in completed.stderr
    after = file_hashes(tmp_path)
    assert {path: digest for path, digest in after.items() if path.name != "run_summary.json"} == {
        path: digest for path, digest in before.items() if path.name != "run_summary.json"
    }  # the images were not written again; only the run's summary is new
    summary = json.loads((output / "run_summary.json").read_text())
    assert (summary["already_done"], summary["segmented"]) == (2, 0)

    # A user's file under the manifest's name is never replaced either.
    (output / "manifest.jsonl").write_text("my own list\n")
    before = file_hashes(tmp_path)
    completed = run_command("ita-segment", *arguments, "--overwrite")
    assert_refused(completed, 2, "manifest.jsonl exists and was not written by ita-segment")
    assert file_hashes(tmp_path) == before


def test_bad_arguments_are_named_before_any_work(tiny_model_dir, tmp_path):
    image = photo(tmp_path / "room.png")
    base = ["--model", tiny_model_dir, "--output", tmp_path / "out"]
    before = file_hashes(tmp_path)
    cases = [
        ([image, *base, "--labels", "cat", "--resume", "--overwrite"], "not allowed with argument"),
        ([*base, "--labels", "cat"], "give image files or folders, or --dataset"),
        ([image, *base, "--labels", "cat", "--split", "train"], "--split applies to --dataset"),
        ([image, *base, "--labels", "cat", "--dataset", tmp_path / "d.parquet"], "not both"),
        ([image, *base, "--labels", "cat", "--format", "csv"], "invalid choice: 'csv'"),
    ]
    for arguments, phrase in cases:
        assert_refused(run_command("ita-segment", *arguments), 2, phrase)
    assert file_hashes(tmp_path) == before

    # 70,000 classes do not fit a label map PNG: refused up front, not after the model ran (torch imported here).
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"class {index}\n" for index in range(70_000)))
    before = file_hashes(tmp_path)
    completed = run_command("ita-segment", image, *base, "--labels-file", classes)
    assert_refused(completed, 2, "70,000 classes do not fit the label map PNG", "65,536")
    assert file_hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_resume_of_a_parquet_run_adds_no_row_twice(tiny_model_dir, tmp_path):
    """--format parquet from files: --resume of a finished run writes nothing; --overwrite replaces the shards."""
    import datasets

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        photo(photos / f"p{index}.png", seed=index)
    output = tmp_path / "out"
    arguments = [photos, "--model", tiny_model_dir, "--labels", *LABELS, "--output", output, "--format", "parquet"]
    threads = torch.get_num_threads()
    try:
        assert segment([str(argument) for argument in [*arguments, "--quiet"]]) == 0
        before = file_hashes(output)
        assert segment([str(argument) for argument in [*arguments, "--quiet", "--resume"]]) == 0
        assert {path: digest for path, digest in file_hashes(output).items() if path.name != "run_summary.json"} == {
            path: digest for path, digest in before.items() if path.name != "run_summary.json"
        }
        assert segment([str(argument) for argument in [*arguments, "--quiet", "--overwrite"]]) == 0
    finally:
        torch.set_num_threads(threads)
    shards = sorted(path.name for path in output.glob("results-*.parquet"))
    assert shards == ["results-00000-00000.parquet"]
    rows = datasets.load_dataset("parquet", data_files=str(output / "results-*.parquet"), split="train")
    assert sorted(rows["id"]) == ["p0", "p1", "p2"]
    lines = (output / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["p0", "p1", "p2"]


def test_a_parquet_dataset_in_and_parquet_results_out(tiny_model_dir, tmp_path):
    """`--dataset FILE.parquet --id-column name --format parquet`: one row per image, loaded back by
    `datasets.load_dataset("parquet")` with its id, the image as given and a label map of the image's size."""
    import io

    import datasets

    names, images = [], []
    for index, size in enumerate([(40, 52), (36, 60), (48, 40)]):
        buffer = io.BytesIO()
        photo(tmp_path / f"x{index}.png", seed=index, size=size)
        buffer.write((tmp_path / f"x{index}.png").read_bytes())
        names.append(f"photo-{index}")
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"name": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_dict({"name": names, "image": images}, features=features).to_parquet(tmp_path / "d.parquet")
    output = tmp_path / "out"
    arguments = ["--dataset", tmp_path / "d.parquet", "--id-column", "name", "--model", tiny_model_dir]
    arguments += ["--labels", *LABELS, "--output", output, "--format", "parquet", "--quiet"]
    threads = torch.get_num_threads()
    try:
        assert segment([str(argument) for argument in arguments]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = datasets.load_dataset("parquet", data_files=str(output / "results-*.parquet"), split="train")
    assert sorted(rows["id"]) == names
    for row in rows:
        index = names.index(row["id"])
        with Image.open(tmp_path / f"x{index}.png") as original:
            assert row["image"].size == original.size
            assert row["label"].size == original.size  # the label map, at the image's size
        assert np.asarray(row["label"]).max() < len(LABELS)
    assert (output / "classes.txt").is_file()
