"""`ita-segment` on several processes: `accelerate launch` with two CPU processes writes what one process writes,
byte for byte, each image by one of them (the manifest says which); a run killed with SIGKILL and finished with
`--resume` redoes only the images that were not finished and ends as one process's run.

The one-process reference runs here, with one thread, as every launched process does (OMP_NUM_THREADS=1), so
that floats are computed alike."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TWO_LOCAL_PROCESSES
from PIL import Image

from ita_cli import segment

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["cat", "sofa,couch", "wall"]
NUM_IMAGES = 8


def write_photos(folder: Path, count: int = NUM_IMAGES) -> list[Path]:
    folder.mkdir()
    paths = []
    for index in range(count):
        rng = np.random.default_rng(index)
        array = rng.integers(0, 256, (36 + 4 * index, 48, 3), dtype=np.uint8)
        array[:, :16, 2] = 240
        Image.fromarray(array).save(folder / f"photo{index}.png")
        paths.append(folder / f"photo{index}.png")
    return paths


def environment(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **extra)


def image_outputs(folder: Path) -> dict[str, bytes]:
    """The per-image files of a run (not its manifest and summary), by name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name not in ("manifest.jsonl", "run_summary.json")
    }


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The photos and one process's outputs of them (with one thread)."""
    root = tmp_path_factory.mktemp("many")
    photos = write_photos(root / "photos")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status = segment([str(root / "photos"), "--model", str(tiny_model_dir), "--labels", *LABELS, "--output",
                          str(root / "one"), "--quiet"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return root, photos, image_outputs(root / "one")


def test_two_accelerate_processes_write_what_one_writes(tiny_model_dir, one_process, tmp_path):
    root, photos, expected = one_process
    (tmp_path / "broken.png").write_bytes(b"not an image")
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        *TWO_LOCAL_PROCESSES,
        "-m",
        "ita_segmentation",
        str(root / "photos"),
        str(tmp_path / "broken.png"),
        "--model",
        str(tiny_model_dir),
        "--labels",
        *LABELS,
        "--output",
        str(tmp_path / "two"),
    ]
    completed = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    # One image failed: the run says so, both processes exit with status 1 (the launcher's own report, with its
    # traceback, lists each), no traceback of ours; the other images are all written.
    assert completed.returncode == 1, completed.stderr[-3000:]
    assert "broken.png: cannot read image" in completed.stderr
    assert "8 image(s) segmented, 1 failed" in completed.stderr
    assert "exitcode  : 1" in completed.stderr and "ita_segmentation/apps" not in completed.stderr
    assert image_outputs(tmp_path / "two") == expected
    entries = manifest(tmp_path / "two")
    assert sorted(entry["id"] for entry in entries) == sorted(path.stem for path in photos)  # each image once
    assert {entry["process"] for entry in entries} == {0, 1}  # both processes wrote
    summary = json.loads((tmp_path / "two" / "run_summary.json").read_text())
    assert (summary["processes"], summary["images"], summary["segmented"], summary["failed"]) == (2, 9, 8, 1)
    assert [Path(failure["input"]).name for failure in summary["failures"]] == ["broken.png"]
    assert not (tmp_path / "two" / ".ita-segment").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _finished_lines(output: Path) -> list[dict]:
    lines = []
    for part in sorted((output / ".ita-segment").glob("process-*.jsonl")):
        for line in part.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line
                pass
    return [line for line in lines if "failed" not in line]


def test_a_killed_run_is_finished_by_resume(tiny_model_dir, one_process, tmp_path):
    """Two processes, started as `accelerate launch` starts them (its environment, without its launcher's start-up),
    are killed with SIGKILL after a few images; the same command plus --resume, on one process, redoes only the
    images that were not finished and leaves the finished ones untouched."""
    root, photos, expected = one_process
    output = tmp_path / "out"
    arguments = [str(root / "photos"), "--model", str(tiny_model_dir), "--labels", *LABELS, "--output", str(output)]
    port = str(_free_port())
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ita_segmentation", *arguments, "--quiet"],
            cwd=ROOT,
            env=environment(
                WORLD_SIZE="2",
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                ITA_SEGMENT_PAUSE_PER_IMAGE="0.5",
            ),  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for rank in range(2)
    ]
    deadline = time.monotonic() + 300
    try:
        while len(_finished_lines(output)) < 3:
            assert time.monotonic() < deadline, "the run did not get going"
            assert all(process.poll() is None for process in processes), processes[0].stderr.read()[-3000:]
            time.sleep(0.05)
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            process.stderr.close()
    finished = {line["id"]: line for line in _finished_lines(output)}
    assert 3 <= len(finished) < NUM_IMAGES
    assert not (output / "manifest.jsonl").read_text()  # merged at the end only: the run never got there
    before = {path.name: path.stat().st_mtime_ns for path in output.iterdir() if path.is_file()}

    # Without --resume the folder is refused (it is not empty), and the message points to --resume.
    refused = subprocess.run(
        [sys.executable, "-m", "ita_segmentation", *arguments, "--resume", "--overwrite"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 2 and "not allowed with argument" in refused.stderr

    resumed = subprocess.run(
        [sys.executable, "-m", "ita_segmentation", *arguments, "--resume", "--quiet"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert image_outputs(output) == expected
    entries = {entry["id"]: entry for entry in manifest(output)}
    assert sorted(entries) == sorted(path.stem for path in photos)
    # The finished images were skipped: their lines and files are the killed run's; at most one image per killed
    # process was in flight (its line written, its files not all renamed) and is redone.
    kept = [key for key, line in finished.items() if entries[key] == line]
    assert len(kept) >= len(finished) - 2
    for key in kept:
        for name in entries[key]["outputs"]:
            assert (output / name).stat().st_mtime_ns == before[name]
    redone = [key for key in entries if key not in kept]
    assert all(entries[key]["process"] == 0 for key in redone)  # the resumed run's one process
    summary = json.loads((output / "run_summary.json").read_text())
    assert (summary["already_done"], summary["segmented"]) == (len(kept), len(redone))
    assert not [path for path in output.iterdir() if path.name.startswith(".")]  # no temporary file, no parts
