"""The one place an exception becomes a message and an exit status (`ita_segmentation.errors`), and its use by
every `ita_cli` command: user errors are one line, bugs a traceback and where to report them."""

import errno
import subprocess
import sys

import pytest

from ita_segmentation.errors import (
    EXIT_BUG,
    EXIT_INTERRUPTED,
    ITADataError,
    ITAUsageError,
    report_error,
    run_door,
    user_error,
)


def raise_(error):
    def work():
        raise error

    return work


def test_user_errors_are_one_line_with_their_status(capsys):
    assert run_door("ita-x", raise_(ITAUsageError("--batch-size must be >= 1, got 0"))) == 2
    assert capsys.readouterr().err == "ita-x: error: --batch-size must be >= 1, got 0\n"
    assert run_door("ita-x", raise_(ITADataError("the checkpoint holds another config"))) == 1
    assert capsys.readouterr().err == "ita-x: error: the checkpoint holds another config\n"


def test_a_bug_shows_its_traceback_and_where_to_report_it(capsys):
    assert run_door("ita-x", raise_(RuntimeError("index out of range in the decoder"))) == EXIT_BUG == 70
    error = capsys.readouterr().err
    assert error.startswith("Traceback") and "RuntimeError: index out of range in the decoder" in error
    assert "ita-x: internal error: this is a bug in ita-segmentation" in error.splitlines()[-1]


def test_interrupted_status_and_argparse_statuses_are_returned(capsys):
    assert run_door("ita-x", raise_(KeyboardInterrupt())) == EXIT_INTERRUPTED == 130
    assert "ita-x: interrupted" in capsys.readouterr().err
    assert run_door("ita-x", raise_(SystemExit(2))) == 2
    assert run_door("ita-x", raise_(SystemExit(None))) == 0
    assert run_door("ita-x", lambda: None) == 0 and run_door("ita-x", lambda: 1) == 1


def test_environment_problems_are_data_errors_not_bugs(capsys):
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/a_labels.png")
    assert report_error("ita-x", full) == 1
    assert capsys.readouterr().err == "ita-x: error: No space left on device (/data/out/a_labels.png)\n"
    assert isinstance(user_error(MemoryError()), ITADataError)
    assert user_error(OSError(errno.EIO, "I/O error")) is None  # not known to be the user's: a bug report
    assert user_error(ValueError("x")) is None


def test_the_model_folder_s_loading_error_is_a_data_error():
    from modeling_ita.loading import ModelLoadingError

    found = user_error(ModelLoadingError("model.safetensors lacks 12 weights"))
    assert isinstance(found, ITADataError) and str(found) == "model.safetensors lacks 12 weights"


@pytest.mark.parametrize("command", ["segment", "evaluate", "convert", "export", "train", "web"])
def test_every_command_returns_usage_errors_to_python_callers(command):
    """argparse's usage errors come back as the status 2 from `ita_cli`, not as SystemExit, without torch."""
    code = (
        "import sys, ita_cli\n"
        f"status = ita_cli.{command}(['--no-such-option'])\n"
        "assert status == 2, status\n"
        "assert 'torch' not in sys.modules\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "usage:" in completed.stderr and ": error: " in completed.stderr
    assert "Traceback" not in completed.stderr


def test_ita_segment_refuses_a_missing_model_and_a_missing_gpu_before_torch(tmp_path):
    """What needs no model is checked before torch is imported: a model folder that is not there, a CUDA device
    on a machine without an NVIDIA driver."""
    from ita_segmentation.locations import has_nvidia_driver

    cases = [(["--model", str(tmp_path / "missing")], "does not exist")]
    if not has_nvidia_driver():
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text('{"model_type": "ita"}')
        cases.append((["--model", str(tmp_path / "model"), "--device", "cuda"], "cuda"))
    for arguments, phrase in cases:
        code = (
            "import sys, ita_cli\n"
            f"status = ita_cli.segment(['photo.jpg', '--labels', 'cat', '--output', 'out', *{arguments!r}])\n"
            "assert status == 2, status\n"
            "assert 'torch' not in sys.modules\n"
        )
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert phrase in completed.stderr and "Traceback" not in completed.stderr
