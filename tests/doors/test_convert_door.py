"""The `ita-convert` door: refusals end with their exit status and a one-line message, no traceback, and the
user's files unchanged."""

import pickle

import torch
from doors.door_commands import assert_refused, file_hashes, run_command


class RunsCode:
    """Pickled, it asks the loader to run a shell command that leaves a file behind."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_ita_convert_refuses_clearly_and_leaves_files_alone(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    # A checkpoint that would run a command when unpickled (tests/hub has torch.save's archive and other protocols).
    marker = tmp_path / "the-pickle-ran"
    with open(user / "runs_code.pth", "wb") as handle:
        pickle.dump({"model": RunsCode(marker)}, handle, protocol=2)
    torch.save({"model": {"backbone.weight": torch.zeros(3), "head.bias": torch.ones(2)}}, user / "wrong_keys.pth")
    (user / "taken").mkdir()
    (user / "taken" / "notes.txt").write_text("mine")
    (user / "classes.txt").write_text("cat\ndog\n")
    torch.save({"epoch": 3, "optimizer": {"lr": 1e-4}}, user / "optimizer_only.pth")
    before = file_hashes(user)

    completed = run_command("ita-convert", "--checkpoint", user / "taken", "--output", tmp_path / "out")
    assert_refused(completed, 2, "is a folder; give the checkpoint file itself")

    completed = run_command("ita-convert", "--checkpoint", user / "wrong_keys.pth", "--output", user, "--overwrite")
    assert_refused(completed, 2, f"--output {user} holds the input", "even with --overwrite")

    completed = run_command("ita-convert", "--checkpoint", user / "optimizer_only.pth", "--output", tmp_path / "out")
    assert_refused(completed, 1, "holds no model weights", "'epoch', 'optimizer'")

    completed = run_command("ita-convert", "--checkpoint", user / "missing.pth", "--output", tmp_path / "out")
    assert_refused(completed, 2, "missing.pth: no such file")

    completed = run_command(
        "ita-convert", "--checkpoint", user / "wrong_keys.pth", "--output", tmp_path / "out", "--store-vocabularies",
        "ade150", "ade20k-9000",
    )  # fmt: skip
    assert_refused(completed, 2, "--store-vocabularies ade20k-9000", "neither a benchmark", "ade150, ade847")

    completed = run_command("ita-convert", "--checkpoint", user / "wrong_keys.pth", "--output", user / "taken")
    assert_refused(completed, 2, "output folder", "is not empty (notes.txt)", "--overwrite")

    completed = run_command("ita-convert", "--checkpoint", user / "wrong_keys.pth", "--output", user / "wrong_keys.pth")
    assert_refused(completed, 2, "is the input", "choose a new or empty folder")

    completed = run_command("ita-convert", "--checkpoint", user / "runs_code.pth", "--output", tmp_path / "out")
    assert_refused(completed, 1, "runs_code.pth is a pickle that would run code when loaded", "system", "not loaded")
    assert "damaged" not in completed.stderr
    assert not marker.exists()  # refused, never run

    completed = run_command("ita-convert", "--checkpoint", user / "wrong_keys.pth", "--output", tmp_path / "out")
    assert_refused(completed, 1, "ita-convert: error: Not an FC-CLIP or ITA checkpoint: required keys are missing")

    assert not (tmp_path / "out").exists()
    assert file_hashes(user) == before
