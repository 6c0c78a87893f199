"""`ita-train`'s door, through the real command: every user error is refused with its exit status (2 usage, 1 data),
a message that names the option, the value and the way out, no traceback, and no user file changed; a run that
stopped resumes from its last checkpoint.

The refusals of the first test are answered before torch is imported (well under a second each); the others need
the full parser, the data or a checkpoint (a few seconds each). The checkpoint is written in this process by a tiny
run (`build_trainer`), which is cheaper than a command of its own."""

import json
import time
from pathlib import Path

import datasets
import pytest
from conftest import tiny_config
from doors.door_commands import assert_refused, file_hashes, run_command

from ita_segmentation.training.arguments import ITADataArguments, ITAModelArguments
from ita_segmentation.training.trainer import build_trainer
from ita_segmentation.training.training_arguments import ITATrainingArguments

QUICK = ("--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0")


def synthetic(config: Path, output: Path, *extra: object) -> list[object]:
    """A tiny run on generated shapes: 4 scenes of 48 pixels, 64-pixel crops, batch 2."""
    return [
        "--config_path",
        config,
        "--dataset_layout",
        "synthetic",
        "--synthetic_num_train_images",
        "4",
        "--synthetic_image_size",
        "48",
        "--crop_size",
        "64",
        "--per_device_train_batch_size",
        "2",
        "--output_dir",
        output,
        *QUICK,
        *extra,
    ]


@pytest.fixture
def user_files(tmp_path):
    """A config, a user's folder of their own files and a file: what the refusals must leave alone."""
    tiny_config().to_json_file(tmp_path / "config.json")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    return tmp_path


def test_impossible_values_and_missing_files_are_refused_before_any_work(user_files):
    root = user_files
    config, output = root / "config.json", root / "run"
    cases = [
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be at least 1"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size 0: must be at least 1"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0: must be at least 1"),
        (["--learning_rate", "-0.001"], "--learning_rate -0.001: must be 0 or more"),
        (["--max_steps", "0"], "--max_steps 0: a run of no steps is refused"),
        (["--max_steps=-5"], "--max_steps -5: must be a number of steps"),
        (["--max_train_samples", "0"], "--max_train_samples 0: must be at least 1"),
        (["--synthetic_num_train_images", "0"], "--synthetic_num_train_images 0: must be at least 1"),
        (["--min_scale", "2", "--max_scale", "1"], "--min_scale 2.0 is more than --max_scale 1.0"),
        (["--resume_from_checkpoint", "last"], f"--resume_from_checkpoint last: --output_dir {output} does not exist"),
        (["--resume_from_checkpoint", str(root / "gone")], f"--resume_from_checkpoint {root / 'gone'} does not exist"),
        (["--resume_from_checkpoint", str(root / "mine")], "is not a training checkpoint (it holds notes.txt"),
        (["--vocabulary_file", str(root / "classes.txt")], f"--vocabulary_file {root / 'classes.txt'} does not exist"),
        (["--bf16_full_eval"], "--bf16_full_eval on the CPU"),
        (["--precompute_dominant_categories_to", str(root / "mine")], "already holds notes.txt; give a new or empty"),
    ]
    before = file_hashes(root)
    started = time.perf_counter()
    for extra, phrase in cases:
        assert_refused(run_command("ita-train", *synthetic(config, output), *extra), 2, phrase)
    # The options that name other things: the config, the output folder, the data.
    assert_refused(
        run_command("ita-train", *synthetic(root / "missing.json", output)), 2, "--config_path", "does not exist"
    )
    for taken, phrase in ((root / "a_file", "is a file"), (root / "mine", "is not empty (notes.txt)")):
        assert_refused(run_command("ita-train", *synthetic(config, taken)), 2, f"--output_dir {taken}", phrase)
    no_data = ["--config_path", config, "--output_dir", output, *QUICK]
    assert_refused(run_command("ita-train", *no_data), 2, "no data: give --dataset_name_or_path")
    elapsed = time.perf_counter() - started
    assert file_hashes(root) == before and not output.exists()
    assert elapsed < 2.0 * (len(cases) + 4), elapsed  # answered before torch (a torch import alone takes seconds)


def test_data_that_is_not_there_or_empty_is_refused_by_name(user_files):
    root = user_files
    config, output = root / "config.json", root / "run"
    empty = root / "empty.parquet"
    datasets.Dataset.from_dict({"image": [], "label": []}).to_parquet(empty)
    before = file_hashes(root)
    data = ["--config_path", config, "--class_names", "cat", "dog", "--output_dir", output, *QUICK]
    typo = root / "dta" / "mine"  # a mistyped folder: written as a path, refused before torch
    refused = run_command("ita-train", *data, "--dataset_name_or_path", typo, "--max_steps", "1")
    assert_refused(refused, 2, f"--dataset_name_or_path {typo} does not exist (nor does {root / 'dta'})")
    # Written as a Hub id, offline: neither a folder here nor reachable on the Hub (segmentation_data says both).
    refused = run_command("ita-train", *data, "--dataset_name_or_path", "dta/mine", "--max_steps", "1", cwd=root)
    assert_refused(refused, 2, "dta/mine", "not on the Hub either", "HF_HUB_OFFLINE")
    refused = run_command("ita-train", *data, "--dataset_name_or_path", empty, "--max_steps", "1")
    assert_refused(refused, 1, str(empty), "has no rows")
    assert file_hashes(root) == before and not output.exists()


def tiny_checkpoint(root: Path) -> Path:
    """An output folder with checkpoint-1 and checkpoint-2 of a 2-step tiny run (trained in this process)."""
    output = root / "run"
    model_args = ITAModelArguments(config_path=str(root / "config.json"))
    data_args = ITADataArguments(
        dataset_layout="synthetic", synthetic_num_train_images=4, synthetic_image_size=48, crop_size=64
    )
    args = ITATrainingArguments(
        output_dir=str(output),
        use_cpu=True,
        per_device_train_batch_size=2,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        disable_tqdm=True,
    )
    build_trainer(model_args, data_args, args).train()
    return output


def test_a_checkpoint_of_another_config_is_refused_and_the_last_one_resumes(user_files):
    root = user_files
    output = tiny_checkpoint(root)
    tiny_config(num_queries=8).to_json_file(root / "other.json")
    before = file_hashes(root)

    # Another config: the fields that differ are named, before any weight is loaded.
    other = run_command("ita-train", *synthetic(root / "other.json", output, "--resume_from_checkpoint", "last"))
    assert_refused(other, 1, f"{output / 'checkpoint-2'} holds a model of another config", "num_queries: 6", "8 here")
    assert "size mismatch" not in other.stderr
    # The same folder without --resume_from_checkpoint: an earlier run, never overwritten silently.
    again = run_command("ita-train", *synthetic(root / "config.json", output, "--max_steps", "3"))
    assert_refused(again, 2, "is not empty", "--resume_from_checkpoint last", "--overwrite_output_dir")
    assert file_hashes(root) == before

    # Resumed from its last checkpoint, it trains the remaining step.
    resumed = run_command(
        "ita-train", *synthetic(root / "config.json", output, "--max_steps", "3", "--resume_from_checkpoint", "last")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 3
    assert (output / "checkpoint-3").is_dir()
    assert {path: digest for path, digest in file_hashes(root).items() if output not in path.parents} == {
        path: digest for path, digest in before.items() if output not in path.parents
    }
