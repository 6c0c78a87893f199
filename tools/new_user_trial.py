"""A replayable new-user trial: bad and unusual inputs at every door, each outcome classified automatically.

Every case runs a real door in a subprocess (the console commands `ita-segment`, `ita-evaluate`, `ita-train`,
`ita-convert`, `ita-export`, `ita-web`, `python app.py`, or a Python snippet of the public API), with a tiny model
and synthetic images made once per trial, and declares what a demanding new user should get:

- `refuse`: exit status 1 or 2 (for Python: an exception of a user-facing type), a message with every phrase of
  the case (regular expressions, case-insensitive: the problem, the value, the way out), no traceback, and no user
  file changed;
- `accept`: exit status 0 and a check of what was written (or printed); `or_refuse` phrases, where given, make a
  refusal that names the cause acceptable too (e.g. an extreme image refused with its size named).

Each outcome is one of: clear (refused as expected), accepted (accepted and the output checked), misleading
(refused, but the message lacks a phrase, names a wrong cause, or a valid input was refused), traceback (a Python
traceback for a user error, an internal-error exit 70, a crash, or a non user-facing exception from the Python API),
silent (exit 0 where a refusal was expected, or a wrong output accepted), overwrite (a user file changed or
vanished), timeout (no answer within the case's time).

    .venv/bin/python tools/new_user_trial.py --clone -j 2 --report /tmp/trial.json
    .venv/bin/python tools/new_user_trial.py -k segment-labels   # only the cases whose name contains it

`--clone` runs the trial in a fresh `git clone` of this checkout (its committed state) under /tmp, with this
checkout's `.venv` python and the clone first on `sys.path`; without it, the checkout itself is tried. The
expectations are what a user needs, not what the code says today: do not tune them to its output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]
VENV_PYTHON = CHECKOUT / ".venv" / "bin" / "python"

KINDS = ("clear", "accepted", "misleading", "traceback", "silent", "overwrite", "timeout")

DOOR_FUNCTIONS = {
    "ita-segment": "segment",
    "ita-evaluate": "evaluate",
    "ita-train": "train",
    "ita-convert": "convert",
    "ita-export": "export",
    "ita-web": "web",
}

# Exceptions a Python user may meet for a mistake of theirs; anything else from the API is a crash of the project.
USER_FACING_EXCEPTIONS = ("ValueError", "TypeError", "OSError", "ITAUserError", "ModelLoadingError")

SYNTHETIC_NAMES = ("red circle", "blue square", "yellow triangle", "green background", "gray background")
LABELS = ["red circle", "blue square", "green background"]


# ------------------------------------------------------------------------------------------------ the cases
@dataclass
class Case:
    """One input a new user tries. `door` is a command (`ita-segment`, ..., `app.py`) or `python`; `args` its
    arguments (placeholders `@case@`, `@model@`, `@images@`, `@fixtures@`, `@dataset@`, `@port@`) or, for
    `python`, the snippet (variables CASE, MODEL, IMAGES, FIXTURES, DATASET and `result(obj)` to report)."""

    name: str
    door: str
    args: list[str] | str
    expect: str  # "refuse" or "accept"
    phrases: Sequence[str] = ()  # regexes the refusal must contain (refuse), or that a refusal may name (or_refuse)
    wrong: Sequence[str] = ()  # regexes naming a wrong cause: their presence makes a refusal misleading
    check: Callable[[Run], str | None] | None = None  # accept: None when the output is right, else the problem
    or_refuse: Sequence[str] | None = None  # accept: a refusal with these phrases is clear too
    prepare: Callable[[Context], object] | None = None
    hashed: Sequence[str] = ("@case@/in",)  # user files (folders) that must not change; the model always
    timeout: float = 120.0
    silent_on_timeout: bool = False  # a server that keeps running where it should have refused
    what: str = ""  # one line: what the new user tried

    def describe(self) -> str:
        if isinstance(self.args, str):
            return self.what or "python snippet"
        return self.what or " ".join([self.door, *self.args])


@dataclass
class Context:
    """Where a case runs: its own folder (`case/in` for the user's files, `case/out` for outputs)."""

    case: Path
    fixtures: Path
    port: int = 0
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    @property
    def model(self) -> Path:
        return self.fixtures / "model"

    @property
    def images(self) -> Path:
        return self.fixtures / "images"

    @property
    def dataset(self) -> Path:
        return self.fixtures / "dataset"

    def substitute(self, text: str, escape: bool = False) -> str:
        values = {
            "@case@": str(self.case),
            "@model@": str(self.model),
            "@images@": str(self.images),
            "@fixtures@": str(self.fixtures),
            "@dataset@": str(self.dataset),
            "@port@": str(self.port),
        }
        for key, value in values.items():
            text = text.replace(key, re.escape(value) if escape else value)
        return text

    def copy(self, name: str, to: str = "in", as_name: str | None = None) -> Path:
        """Copy the fixture image `name` into the case's folder `to`."""
        target = self.case / to / (as_name or name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.images / name, target)
        return target

    def write(self, relative: str, content: str | bytes, encoding: str = "utf-8") -> Path:
        target = self.case / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_bytes(content.encode(encoding))
        return target


@dataclass
class Run:
    """What a case's door did."""

    context: Context
    status: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    raised: dict[str, Any] | None = None  # python door: the exception, if any
    results: list[Any] = field(default_factory=list)  # python door: what `result(obj)` reported

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def message(self) -> str:
        if self.raised is not None:
            return f"{self.raised['type']}: {self.raised['message']}"
        return self.stderr


# --------------------------------------------------------------------------------------- checks of accepted runs
def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    with open(path, "rb") as handle:
        header = handle.read(24)
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def segment_outputs(
    stems: Sequence[str], sizes: Sequence[tuple[int, int]] | None = None, task: str = "semantic"
) -> Callable[[Run], str | None]:
    """Check: `case/out` holds `<stem>.json` and the label map (or panoptic / instance PNG) of each stem, of the
    given (height, width), and nothing for any other image."""
    suffix = {"semantic": "_labels.png", "panoptic": "_panoptic.png", "instance": "_instances.png"}[task]

    def check(run: Run) -> str | None:
        out = run.context.case / "out"
        if not out.is_dir():
            return "no output folder written"
        jsons = sorted(p.name for p in out.glob("*.json") if p.name != "manifest.json" and not p.name.startswith("."))
        for index, stem in enumerate(stems):
            summary_path, label_path = out / f"{stem}.json", out / f"{stem}{suffix}"
            if not summary_path.is_file() or not label_path.is_file():
                return f"missing {summary_path.name} or {label_path.name} (has {jsons})"
            if sizes is not None:
                height, width = sizes[index]
                got = _png_size(label_path)
                if got != (width, height):
                    return f"{label_path.name} is {got[0]}x{got[1]} (WxH), the image is {width}x{height}"
        return None

    return check


def summary(run: Run, stem: str) -> dict[str, Any]:
    return dict(json.loads((run.context.case / "out" / f"{stem}.json").read_text(encoding="utf-8")))


def vocabulary_is(stem: str, names: Sequence[str]) -> Callable[[Run], str | None]:
    """Check: the JSON of `stem` lists exactly `names` as its vocabulary (as given: no BOM, no CR, no cut)."""

    def check(run: Run) -> str | None:
        problem = segment_outputs([stem])(run)
        if problem:
            return problem
        vocabulary = summary(run, stem).get("vocabulary")
        flat = [
            entry if isinstance(entry, str) else json.dumps(entry, ensure_ascii=False) for entry in vocabulary or []
        ]
        if flat != list(names):
            return f"vocabulary written as {flat!r:.200}, expected {list(names)!r:.200}"
        return None

    return check


def both(*checks: Callable[[Run], str | None]) -> Callable[[Run], str | None]:
    def check(run: Run) -> str | None:
        for one in checks:
            problem = one(run)
            if problem:
                return problem
        return None

    return check


def stderr_says(*patterns: str) -> Callable[[Run], str | None]:
    """Check: the run's messages (standard error and output) match each pattern (a warning the user needs)."""

    def check(run: Run) -> str | None:
        missing = [p for p in patterns if not matches(run.context, p, run.output)]
        return f"no word of {missing} in the messages" if missing else None

    return check


def python_result(predicate: Callable[[list[Any]], str | None]) -> Callable[[Run], str | None]:
    def check(run: Run) -> str | None:
        if not run.results:
            return "the snippet reported nothing"
        return predicate(run.results)

    return check


def file_absent(relative: str) -> Callable[[Run], str | None]:
    def check(run: Run) -> str | None:
        return f"{relative} exists" if (run.context.fixtures / relative).exists() else None

    return check


# ------------------------------------------------------------------------------------------- case preparations
def copies(*names: str, to: str = "in") -> Callable[[Context], None]:
    def prepare(context: Context) -> None:
        for name in names:
            context.copy(name, to)

    return prepare


def writes(
    files: dict[str, str | bytes], encoding: str = "utf-8", images: Sequence[str] = ("scene.jpg",)
) -> Callable[[Context], None]:
    def prepare(context: Context) -> None:
        for name in images:
            context.copy(name)
        for relative, content in files.items():
            context.write(relative, content, encoding)

    return prepare


def chain(*steps: Callable[[Context], object]) -> Callable[[Context], None]:
    def prepare(context: Context) -> None:
        for step in steps:
            step(context)

    return prepare


def folders(*relative: str) -> Callable[[Context], None]:
    """Create (empty) folders in the case's folder."""

    def prepare(context: Context) -> None:
        for name in relative:
            (context.case / name).mkdir(parents=True, exist_ok=True)

    return prepare


def link(relative: str, target: str) -> Callable[[Context], None]:
    """A symbolic link `case/relative` pointing at `target` (placeholders allowed)."""

    def prepare(context: Context) -> None:
        path = context.case / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(context.substitute(target), path)

    return prepare


def take_port(context: Context) -> None:
    """Listen on the case's port, as another program would, until the case ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", context.port))
    listener.listen(1)
    context.cleanups.append(listener.close)


def immutable_folder(relative: str) -> Callable[[Context], None]:
    """An existing, empty folder nobody may write to (root ignores chmod: `chattr +i`, else chmod 555)."""

    def prepare(context: Context) -> None:
        folder = context.case / relative
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if done:
            context.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(folder)], capture_output=True))
        else:
            folder.chmod(0o555)
            context.cleanups.append(lambda: folder.chmod(0o755))

    return prepare


def model_copy(edit: Callable[[Path], object] | None = None, to: str = "in/model") -> Callable[[Context], None]:
    def prepare(context: Context) -> None:
        target = context.case / to
        shutil.copytree(context.model, target)
        if edit is not None:
            edit(target)

    return prepare


def edit_config(**values: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(values)
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    return edit


def first_run(*args: str) -> Callable[[Context], None]:
    """Run `ita-segment` once as part of the preparation (an earlier run of the user's)."""

    def prepare(context: Context) -> None:
        done = run_door_process(context, "ita-segment", [context.substitute(a) for a in args], 300)
        if done.status != 0:
            raise RuntimeError(f"the preparing run failed ({done.status}): {done.stderr[-800:]}")

    return prepare


def seg(
    *inputs: str,
    extra: Sequence[str] = (),
    labels: Sequence[str] = LABELS,
    labels_file: str | None = None,
    output: str = "@case@/out",
    model: str = "@model@",
) -> list[str]:
    """`ita-segment` arguments (by default the tiny model, three classes, output `case/out`)."""
    vocabulary = ["--labels-file", labels_file] if labels_file else ["--labels", *labels]
    return [*inputs, "--model", model, *vocabulary, "--output", output, "--quiet", *extra]


def evaluate(
    *extra: str, dataset: str = "@dataset@", split: str = "validation", vocabulary: str = "@fixtures@/classes.txt"
) -> list[str]:
    """`ita-evaluate` arguments on the synthetic label-map folders."""
    return [
        "--model", "@model@", "--dataset", dataset, "--dataset-layout", "label_folders", "--split", split,
        "--vocabulary-file", vocabulary, "--output", "@case@/out", "--no-progress", *extra,
    ]  # fmt: skip


def train(
    *extra: str,
    dataset: str = "@dataset@",
    class_names: Sequence[str] = SYNTHETIC_NAMES,
    output_dir: str = "@case@/out/run",
) -> list[str]:
    """`ita-train` arguments: two steps of the tiny model on the synthetic label-map folders, 64-pixel crops."""
    return [
        "--model_name_or_path", "@model@", "--dataset_name_or_path", dataset, "--dataset_layout", "label_folders",
        "--train_split", "validation", "--class_names", *class_names, "--crop_size", "64",
        "--per_device_train_batch_size", "2", "--max_steps", "2", "--output_dir", output_dir,
        "--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--dataloader_num_workers", "0",
        *extra,
    ]  # fmt: skip


WAY_OUT_BATCH = r"at least 1|positive|must be (>|greater|≥)|>= ?1|1 or more"
RANGE_0_1 = r"between 0 and 1|0\.?0? ?(-|to|and) ?1\b|\[0(\.0)?, ?1(\.0)?\]"


def _says_which_vocabulary(run: Run) -> str | None:
    """A forward without classes may use the model's training vocabulary, if it says so."""
    if re.search(r"training vocabulary", run.stdout + run.stderr):
        return None
    return "segmented into some vocabulary without saying which (no class names given)"


POSITIVE = r"positive|at least|greater|> ?0|>= ?1|≥|more than 0|larger than 0|0 or more"
NOT_FOUND = r"not found|does not exist|no such|not exist|missing"

PY_LOAD = textwrap.dedent(
    """
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor
    import modeling_ita
    model = AutoModel.from_pretrained(MODEL).eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    """
)


def build_cases() -> list[Case]:  # noqa: C901 - one declaration per case
    """Every case of the trial, in report order."""
    cases: list[Case] = []
    add = cases.append

    # ------------------------------------------------------------------ ita-segment: images
    add(Case("segment-ok-semantic", "ita-segment", seg("@case@/in/scene.jpg"), "accept", prepare=copies("scene.jpg"),
             check=segment_outputs(["scene"], [(96, 128)])))  # fmt: skip
    add(Case("segment-odd-colour-modes", "ita-segment", seg("@case@/in"), "accept",
             prepare=copies("cmyk.jpg", "gray16.png", "palette.png", "rgba.png", "gray.png"),
             check=segment_outputs(["cmyk", "gray16", "palette", "rgba", "gray"], [(96, 128)] * 5),
             what="ita-segment in/ (CMYK JPEG, 16-bit grey PNG, palette PNG, RGBA PNG, 8-bit grey PNG)"))  # fmt: skip
    add(Case("segment-exif-rotated", "ita-segment", seg("@case@/in/exif.jpg"), "accept", prepare=copies("exif.jpg"),
             check=segment_outputs(["exif"], [(128, 80)]),
             what="ita-segment exif.jpg (stored 128x80, EXIF orientation 6: upright 80 wide, 128 high)"))  # fmt: skip
    add(Case("segment-webp-tiff-uppercase", "ita-segment", seg("@case@/in"), "accept",
             prepare=chain(copies("scene.webp"), lambda c: c.copy("scene.tif", as_name="photo.TIFF"),
                           lambda c: c.copy("beach.png", as_name="BEACH.PNG")),
             check=segment_outputs(["BEACH", "photo", "scene"], [(80, 120), (96, 128), (96, 128)]),
             what="ita-segment in/ (scene.webp, photo.TIFF, BEACH.PNG: WebP, TIFF, upper-case extensions)"))  # fmt: skip
    add(Case("segment-truncated-jpeg", "ita-segment", seg("@case@/in/truncated.jpg"), "refuse",
             phrases=["truncated.jpg", r"truncat|incomplete|damaged|corrupt|cannot be read|broken"],
             prepare=copies("truncated.jpg")))  # fmt: skip
    add(Case("segment-empty-file", "ita-segment", seg("@case@/in/empty.jpg"), "refuse",
             phrases=["empty.jpg", r"empty|0 bytes|no data"], prepare=copies("empty.jpg")))  # fmt: skip
    add(Case("segment-text-file-named-jpg", "ita-segment", seg("@case@/in/notes.jpg"), "refuse",
             phrases=["notes.jpg", r"not an image|not a (valid )?(jpeg|image)|cannot identify|unrecognized|unknown image"],
             prepare=copies("notes.jpg")))  # fmt: skip
    add(Case("segment-1x1-image", "ita-segment", seg("@case@/in/dot.png"), "accept", prepare=copies("dot.png"),
             check=segment_outputs(["dot"], [(1, 1)]), or_refuse=["dot.png", r"1 ?x ?1", r"small|at least"]))  # fmt: skip
    add(Case("segment-5000x3-image", "ita-segment", seg("@case@/in/strip.png"), "accept", prepare=copies("strip.png"),
             check=segment_outputs(["strip"], [(3, 5000)]), or_refuse=["strip.png", r"5000 ?x ?3|3 ?x ?5000", r"aspect|thin|small|at least"]))  # fmt: skip
    add(Case("segment-huge-dimension-claim", "ita-segment", seg("@case@/in/bomb.png"), "refuse",
             phrases=["bomb.png", r"60,?000 ?[x×] ?60,?000|3,?600,?000,?000", r"too (large|big)|exceeds|limit",
                      r"resiz|smaller|downscal|at most"], prepare=copies("bomb.png"),
             what="ita-segment bomb.png (a 138-byte PNG whose header claims 60000x60000)"))  # fmt: skip
    add(Case("segment-symlink-loop", "ita-segment", seg("@case@/in/loop.jpg"), "refuse",
             phrases=["loop.jpg", r"symbolic link|symlink|links? to itself|link loop|too many levels"],
             prepare=link("in/loop.jpg", "loop.jpg"),
             what="ita-segment loop.jpg (a symbolic link to itself)"))  # fmt: skip
    add(Case("segment-dangling-link-in-folder", "ita-segment", seg("@case@/in"), "refuse",
             phrases=["gone.jpg", r"link|not found|does not exist|missing"],
             prepare=chain(copies("scene.jpg"), link("in/gone.jpg", "@case@/nowhere.jpg")),
             what="ita-segment in/ (scene.jpg and gone.jpg, a link to a file that is gone)"))  # fmt: skip
    add(Case("segment-appledouble-junk-in-folder", "ita-segment", seg("@case@/in"), "accept",
             prepare=chain(copies("scene.jpg"), lambda c: c.write("in/._scene.jpg", b"\x00\x05\x16\x07" + bytes(4092))),
             check=segment_outputs(["scene"], [(96, 128)]),
             what="ita-segment in/ (scene.jpg and macOS's hidden ._scene.jpg resource file)"))  # fmt: skip
    add(Case("segment-missing-image", "ita-segment", seg("@case@/in/holiday.jpg"), "refuse",
             phrases=["holiday.jpg", NOT_FOUND], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-folder-without-images", "ita-segment", seg("@case@/in"), "refuse",
             phrases=[r"@case@/in", r"no image", r"\.jpg"],
             prepare=lambda c: (c.write("in/readme.txt", "hello"), c.write("in/data.csv", "a,b")) and None))  # fmt: skip
    add(Case("segment-same-file-twice", "ita-segment", seg("@case@/in/scene.jpg", "@case@/in/scene.jpg"), "accept",
             prepare=copies("scene.jpg"), check=segment_outputs(["scene"], [(96, 128)]),
             or_refuse=["scene.jpg", r"twice|more than once|duplicate"]))  # fmt: skip
    add(Case("segment-same-stem-two-folders", "ita-segment", seg("@case@/in/a/photo.jpg", "@case@/in/b/photo.png"),
             "refuse", phrases=[r"a/photo\.jpg", r"b/photo\.png", r"photo_overlay\.png|photo\.json|same (output|file|name)|both",
                               r"rename|separate|one at a time|another --output"],
             prepare=lambda c: (c.copy("scene.jpg", "in/a", "photo.jpg"), c.copy("beach.png", "in/b", "photo.png")) and None))  # fmt: skip
    add(Case("segment-unicode-file-name", "ita-segment", seg("@case@/in/été 😀 photo.jpg"), "accept",
             prepare=lambda c: c.copy("scene.jpg", as_name="été 😀 photo.jpg") and None,
             check=segment_outputs(["été 😀 photo"], [(96, 128)])))  # fmt: skip
    long_stem = "vacation-" + "x" * 240
    add(Case("segment-very-long-file-name", "ita-segment", seg(f"@case@/in/{long_stem}.jpg"), "accept",
             prepare=lambda c: c.copy("scene.jpg", as_name=f"{long_stem}.jpg") and None,
             check=lambda run: None if len(list((run.context.case / "out").glob("*.json"))) == 1 else "no JSON written",
             or_refuse=[r"vacation-x+", r"too long|255|name length"],
             what="ita-segment vacation-xxx...(249 characters).jpg: its outputs' names would pass 255 bytes"))  # fmt: skip

    # ------------------------------------------------------------------ ita-segment: output folder
    add(Case("segment-output-read-only", "ita-segment", seg("@case@/in/scene.jpg"), "refuse",
             phrases=[r"@case@/out", r"permission|not permitted|read-only|cannot write|not writable"],
             prepare=chain(copies("scene.jpg"), immutable_folder("out")),
             what="ita-segment --output out/ (an existing folder nobody may write to)"))  # fmt: skip
    add(Case("segment-output-not-empty", "ita-segment", seg("@case@/in/scene.jpg", output="@case@/in"), "refuse",
             phrases=[r"@case@/in", r"not empty|already (has|holds|contains)", "--overwrite"],
             prepare=copies("scene.jpg", "beach.png"), what="ita-segment in/scene.jpg --output in/ (no --overwrite)"))  # fmt: skip
    add(Case("segment-output-is-a-file", "ita-segment", seg("@case@/in/scene.jpg", output="@case@/in/notes.txt"), "refuse",
             phrases=["notes.txt", r"not a (folder|directory)|is a file|exists"],
             prepare=writes({"in/notes.txt": "my notes"})))  # fmt: skip
    add(Case("segment-output-is-input-semantic", "ita-segment",
             seg("@case@/in", output="@case@/in", extra=["--overwrite"]), "refuse",
             phrases=["scene_labels.png", r"yours|not written by|would (replace|overwrite)|own|input"],
             prepare=lambda c: (c.copy("scene.jpg"), c.copy("beach.png", as_name="scene_labels.png")) and None,
             what="ita-segment in/ --output in/ --overwrite, where in/scene_labels.png is the user's own photo"))  # fmt: skip
    add(Case("segment-output-is-input-instance", "ita-segment",
             seg("@case@/in", output="@case@/in", extra=["--overwrite", "--task", "instance"]), "refuse",
             phrases=["beach_instances.png", r"yours|not written by|would (replace|overwrite)|own|input"],
             prepare=lambda c: (c.copy("beach.png"), c.copy("scene.jpg", as_name="beach_instances.png")) and None,
             what="ita-segment in/ --task instance --output in/ --overwrite, in/beach_instances.png the user's photo"))  # fmt: skip
    add(Case("segment-overwrite-keeps-other-files", "ita-segment",
             seg("@case@/in/scene.jpg", output="@case@/prev", extra=["--overwrite"]), "accept",
             hashed=("@case@/in", "@case@/prev/notes.txt"),
             prepare=chain(copies("scene.jpg"), first_run(*seg("@case@/in/scene.jpg", output="@case@/prev")),
                           lambda c: c.write("prev/notes.txt", "mine") and None),
             check=lambda run: None if (run.context.case / "prev" / "scene.json").is_file() else "scene.json not written",
             what="ita-segment scene.jpg --output prev/ --overwrite, prev/ holding an earlier run and the user's notes.txt"))  # fmt: skip

    # ------------------------------------------------------------------ ita-segment: vocabularies
    add(Case("segment-labels-empty-string", "ita-segment", seg("@case@/in/scene.jpg", labels=["", "dog"]), "refuse",
             phrases=[r"empty|blank", r"--labels|class"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-labels-only-commas", "ita-segment", seg("@case@/in/scene.jpg", labels=[",,", "dog"]), "refuse",
             phrases=[r"empty|blank|no name", r",,|comma"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-labels-duplicate", "ita-segment", seg("@case@/in/scene.jpg", labels=["cat", "dog", "cat"]),
             "refuse", phrases=[r"\bcat\b", r"twice|duplicate|more than once|repeated"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-labels-synonym-in-two-classes", "ita-segment",
             seg("@case@/in/scene.jpg", labels=["sofa,couch", "couch", "wall"]), "refuse",
             phrases=["couch", r"sofa,couch", r"both|two classes|more than one|twice"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-labels-unicode", "ita-segment", seg("@case@/in/scene.jpg", labels=["chat noir", "狗", "Ünïcødé"]),
             "accept", prepare=copies("scene.jpg"), check=vocabulary_is("scene", ["chat noir", "狗", "Ünïcødé"])))  # fmt: skip
    add(Case("segment-labels-emoji", "ita-segment", seg("@case@/in/scene.jpg", labels=["🐱", "🌳", "sky"]), "accept",
             prepare=copies("scene.jpg"),
             check=both(vocabulary_is("scene", ["🐱", "🌳", "sky"]), stderr_says(r"glyph|font|cannot (draw|show)|legend"))))  # fmt: skip
    add(Case("segment-labels-2000-characters", "ita-segment",
             seg("@case@/in/scene.jpg", labels=["a " * 1000, "dog"]), "accept", prepare=copies("scene.jpg"),
             check=stderr_says(r"long|token|truncat|cut", r"77|\d+ tokens"),
             or_refuse=[r"long|token", r"77|\d+ (tokens|characters)"],
             what="ita-segment --labels 'a a a ... (2000 characters)' dog"))  # fmt: skip
    add(Case("segment-labels-file-bom", "ita-segment", seg("@case@/in/scene.jpg", labels_file="@case@/in/classes.txt"),
             "accept", prepare=writes({"in/classes.txt": "\ufeffcat\ndog\nsky\n"}),
             check=vocabulary_is("scene", ["cat", "dog", "sky"]),
             what="ita-segment --labels-file classes.txt (saved by Notepad: UTF-8 with a byte-order mark)"))  # fmt: skip
    add(Case("segment-labels-file-crlf-blank-lines", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@model@", "--labels-file", "@case@/in/classes.txt", "--output", "@case@/out"],
             "accept", prepare=writes({"in/classes.txt": "cat\r\n\r\ndog\r\n  \r\nsky\r\n"}),
             check=vocabulary_is("scene", ["cat", "dog", "sky"]),
             what="ita-segment --labels-file classes.txt (Windows line ends, blank lines)"))  # fmt: skip
    add(Case("segment-labels-file-latin1", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@model@", "--labels-file", "@case@/in/classes.txt", "--output", "@case@/out"],
             "accept", prepare=writes({"in/classes.txt": "café\ncrème brûlée\nsky\n"}, encoding="latin-1"),
             check=vocabulary_is("scene", ["café", "crème brûlée", "sky"]),
             or_refuse=["classes.txt", r"utf-?8|encoding|decode"],
             what="ita-segment --labels-file classes.txt (saved in Latin-1: café, crème brûlée)"))  # fmt: skip
    add(Case("segment-labels-file-is-folder", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@model@", "--labels-file", "@case@/in", "--output", "@case@/out"],
             "refuse", phrases=[r"@case@/in", r"(is )?a (folder|directory)"], wrong=[r"does not exist|not found"],
             prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-labels-file-empty", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@model@", "--labels-file", "@case@/in/classes.txt", "--output", "@case@/out"],
             "refuse", phrases=["classes.txt", r"empty|no class"], prepare=writes({"in/classes.txt": "\n\n"})))  # fmt: skip
    add(Case("segment-labels-file-70000-classes", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@model@", "--labels-file", "@case@/in/classes.txt", "--output", "@case@/out", "--quiet"],
             "accept", timeout=200, prepare=writes({"in/classes.txt": "".join(f"thing {i}\n" for i in range(70000))}),
             check=segment_outputs(["scene"], [(96, 128)]), or_refuse=["70,?000", r"too many|at most|limit|most"],
             what="ita-segment --labels-file classes.txt (70,000 classes)"))  # fmt: skip
    add(Case("segment-labels-and-labels-file", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@model@", "--labels", "cat", "--labels-file", "@case@/in/c.txt", "--output", "@case@/out"],
             "refuse", phrases=["--labels", "--labels-file", r"not allowed|one of|either|both"],
             prepare=writes({"in/c.txt": "dog\n"})))  # fmt: skip
    add(Case("segment-no-vocabulary", "ita-segment", ["@case@/in/scene.jpg", "--model", "@model@", "--output", "@case@/out"],
             "refuse", phrases=["--labels", "--labels-file"], prepare=copies("scene.jpg")))  # fmt: skip

    # ------------------------------------------------------------------ ita-segment: model, device, options
    add(Case("segment-model-missing-folder", "ita-segment",
             seg("@case@/in/scene.jpg", model="./my-model"), "refuse",
             phrases=["my-model", r"not found|does not exist|no such|neither"], wrong=[r"repo id must|repo_id"],
             prepare=copies("scene.jpg"), what="ita-segment --model ./my-model (a folder that does not exist)"))  # fmt: skip
    add(Case("segment-model-empty-folder", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@case@/in/model", "--labels", "cat", "--output", "@case@/out"], "refuse",
             phrases=[r"@case@/in/model", r"config\.json"], prepare=chain(copies("scene.jpg"), folders("in/model")),
             what="ita-segment --model empty-folder/"))  # fmt: skip
    add(Case("segment-model-is-bert", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@fixtures@/bert", "--labels", "cat", "--output", "@case@/out"], "refuse",
             phrases=[r"bert", r"ITA|FC-CLIP|not a segmentation|model_type"],
             wrong=[r"hidden_dim must|AttributeError"], prepare=copies("scene.jpg"),
             what="ita-segment --model bert-folder/ (a BERT model's folder)"))  # fmt: skip
    add(Case("segment-model-weights-missing", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@case@/in/model", "--labels", "cat", "--output", "@case@/out"], "refuse",
             phrases=[r"model\.safetensors|weights", r"no |missing|not found|does not"],
             prepare=chain(copies("scene.jpg"), model_copy(lambda f: (f / "model.safetensors").unlink())),
             what="ita-segment --model model/ (config.json but model.safetensors deleted)"))  # fmt: skip
    add(Case("segment-model-config-wrong-type", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@case@/in/model", "--labels", "cat", "--output", "@case@/out"], "refuse",
             phrases=["ensemble_alpha", "high", r"number|float"],
             prepare=chain(copies("scene.jpg"), model_copy(edit_config(ensemble_alpha="high"))),
             what='ita-segment --model model/ (config.json says "ensemble_alpha": "high")'))  # fmt: skip
    add(Case("segment-model-config-bad-json", "ita-segment",
             ["@case@/in/scene.jpg", "--model", "@case@/in/model", "--labels", "cat", "--output", "@case@/out"], "refuse",
             phrases=[r"config\.json", r"json|line \d+"],
             prepare=chain(copies("scene.jpg"), model_copy(lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:-40] + ",,}"))),
             what="ita-segment --model model/ (config.json edited by hand, left as broken JSON)"))  # fmt: skip
    add(Case("segment-dtype-float16-cpu", "ita-segment", seg("@case@/in/scene.jpg", extra=["--device", "cpu", "--dtype", "float16"]),
             "accept", prepare=copies("scene.jpg"), check=segment_outputs(["scene"], [(96, 128)]),
             or_refuse=["float16", r"cpu", r"float32|bfloat16"], wrong=[r"reduction dim|non-zero size"]))  # fmt: skip
    add(Case("segment-device-cuda-without-gpu", "ita-segment", seg("@case@/in/scene.jpg", extra=["--device", "cuda:1"]),
             "refuse", phrases=[r"cuda", r"not available|no (cuda|gpu)|does not have|not found|no nvidia driver|cannot be used", r"--device cpu|cpu"],
             prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-device-gpu-word", "ita-segment", seg("@case@/in/scene.jpg", extra=["--device", "gpu"]),
             "refuse", phrases=[r"'?gpu'?", r"cuda", r"cpu"], prepare=copies("scene.jpg"),
             what="ita-segment --device gpu (a word torch does not know)"))  # fmt: skip
    add(Case("segment-backend-onnx-on-pytorch-folder", "ita-segment", seg("@case@/in/scene.jpg", extra=["--backend", "onnxruntime"]),
             "refuse", phrases=[r"onnx", r"ita-export"], wrong=[r"--output\s+@model@(\s|$)"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-batch-size-0", "ita-segment", seg("@case@/in/scene.jpg", extra=["--batch-size", "0"]), "refuse",
             phrases=["--batch-size", r"\b0\b", WAY_OUT_BATCH], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-batch-size-words", "ita-segment", seg("@case@/in/scene.jpg", extra=["--batch-size", "four"]), "refuse",
             phrases=["--batch-size", "four", r"int|number"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-batched-sizes-match-single", "ita-segment",
             seg("@case@/in", extra=["--batch-size", "8"]), "accept", prepare=copies("scene.jpg", "beach.png", "tall.png"),
             check=lambda run: same_as_single_runs(run, ["beach", "scene", "tall"]),
             what="ita-segment in/ --batch-size 8 (three images of different sizes): same label maps as one by one"))  # fmt: skip
    add(Case("segment-alpha-out-of-range", "ita-segment", seg("@case@/in/scene.jpg", extra=["--alpha", "1.5"]), "refuse",
             phrases=["--alpha", r"1\.5", RANGE_0_1], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-threshold-out-of-range", "ita-segment",
             seg("@case@/in/scene.jpg", extra=["--task", "panoptic", "--threshold", "2"]), "refuse",
             phrases=["--threshold", r"\b2\b", RANGE_0_1], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-task-unknown", "ita-segment", seg("@case@/in/scene.jpg", extra=["--task", "depth"]), "refuse",
             phrases=["depth", "semantic", "panoptic", "instance"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-stuff-not-a-class", "ita-segment",
             seg("@case@/in/scene.jpg", extra=["--task", "panoptic", "--stuff", "sky"]), "refuse",
             phrases=["sky", r"not (one of|in|among|a class)|unknown|no such class"], prepare=copies("scene.jpg")))  # fmt: skip
    add(Case("segment-stuff-with-semantic", "ita-segment",
             seg("@case@/in/scene.jpg", extra=["--stuff", "green background"]), "accept", prepare=copies("scene.jpg"),
             check=both(segment_outputs(["scene"]), stderr_says(r"--stuff", r"panoptic|ignored|no effect")),
             or_refuse=["--stuff", r"panoptic"], what="ita-segment --stuff 'green background' (with the default semantic task)"))  # fmt: skip
    add(Case("segment-panoptic-ok", "ita-segment", seg("@case@/in/scene.jpg", extra=["--task", "panoptic"]), "accept",
             prepare=copies("scene.jpg"),
             check=both(segment_outputs(["scene"], [(96, 128)], "panoptic"), empty_result_explained("scene"))))  # fmt: skip

    # ------------------------------------------------------------------ ita-evaluate
    add(Case("evaluate-ok", "ita-evaluate", evaluate(), "accept", hashed=("@dataset@",),
             check=lambda run: evaluation_written(run)))  # fmt: skip
    add(Case("evaluate-dataset-typo", "ita-evaluate", evaluate(dataset="@case@/in/datset"), "refuse",
             phrases=["datset", r"not (a folder|found)|does not exist|no such"], wrong=[r"(cannot|could not) (reach|connect)"],
             prepare=folders("in"),
             what="ita-evaluate --dataset datset (a typo, offline)"))  # fmt: skip
    add(Case("evaluate-dataset-empty-split", "ita-evaluate", evaluate(dataset="@case@/in/ds"), "refuse",
             phrases=[r"validation", r"no images|empty|no (\.png )?(label|samples)"],
             prepare=folders("in/ds/images/validation", "in/ds/annotations/validation")))  # fmt: skip
    add(Case("evaluate-label-out-of-range", "ita-evaluate", evaluate(dataset="@case@/in/ds"), "refuse",
             phrases=[r"scene_0_00001", r"\b200\b", r"--skip-bad-samples|classes|ignore"], prepare=lambda c: bad_dataset(c, "value"),
             what="ita-evaluate --dataset ds/ (one label map holds class 200; 5 classes)"))  # fmt: skip
    add(Case("evaluate-label-size-mismatch", "ita-evaluate", evaluate(dataset="@case@/in/ds"), "refuse",
             phrases=[r"scene_0_00002", r"size|shape|\bis \d+ ?x ?\d+", r"\d+ ?x ?\d+"], prepare=lambda c: bad_dataset(c, "size"),
             what="ita-evaluate --dataset ds/ (one label map smaller than its image)"))  # fmt: skip
    add(Case("evaluate-vocabulary-too-short", "ita-evaluate",
             evaluate(vocabulary="@case@/in/two.txt"), "refuse",
             phrases=["two.txt", r"\b2\b", r"\b[34]\b|classes|label"], prepare=writes({"in/two.txt": "red circle\nblue square\n"}, images=()),
             what="ita-evaluate --vocabulary-file two.txt (2 classes; the label maps use 5)"))  # fmt: skip
    add(Case("evaluate-benchmark-unknown", "ita-evaluate",
             ["--model", "@model@", "--benchmark", "ade999", "--output", "@case@/out"], "refuse",
             phrases=["ade999", "ade150", "pc59"]))  # fmt: skip
    add(Case("evaluate-benchmark-without-data", "ita-evaluate",
             ["--model", "@model@", "--benchmark", "ade150", "--output", "@case@/out", "--data-dir", "@case@/in"], "refuse",
             phrases=["ADEChallengeData2016", r"@case@/in|--data-dir", r"not found|missing|no "],
             prepare=folders("in")))  # fmt: skip
    add(Case("evaluate-batch-size-0", "ita-evaluate", evaluate("--batch-size", "0"), "refuse",
             phrases=["--batch-size", r"\b0\b", WAY_OUT_BATCH]))  # fmt: skip
    add(Case("evaluate-split-missing", "ita-evaluate", evaluate(split="test"), "refuse",
             phrases=[r"\btest\b", r"validation", r"split"], what="ita-evaluate --split test (the dataset has validation only)"))  # fmt: skip
    add(Case("evaluate-output-has-results", "ita-evaluate", evaluate(), "refuse",
             phrases=[r"@case@/out", "--overwrite"], hashed=("@case@/out",),
             prepare=lambda c: (c.write("out/dataset/results.json", '{"mine": 1}'), c.write("out/results.md", "# my notes")) and None,
             what="ita-evaluate --output out/ (out/ holds an earlier evaluation's results; no --overwrite)"))  # fmt: skip

    # ------------------------------------------------------------------ ita-train
    add(Case("train-ok-two-steps", "ita-train", train(), "accept", timeout=300, hashed=("@dataset@",),
             check=lambda run: None if list((run.context.case / "out/run").rglob("*.safetensors")) else "no weights saved"))  # fmt: skip
    add(Case("train-batch-size-0", "ita-train", train("--per_device_train_batch_size", "0"), "refuse",
             phrases=["per_device_train_batch_size", r"\b0\b", WAY_OUT_BATCH]))  # fmt: skip
    add(Case("train-max-steps-0", "ita-train", train("--max_steps", "0"), "refuse",
             phrases=["max_steps", r"\b0\b", r"at least 1|positive|num_train_epochs|-1"]))  # fmt: skip
    add(Case("train-dataset-missing", "ita-train", train(dataset="@case@/in/my_dataset"), "refuse",
             phrases=["my_dataset", r"not (a folder|found)|does not exist|no such"], wrong=[r"(cannot|could not) (reach|connect)"],
             prepare=folders("in")))  # fmt: skip
    add(Case("train-resume-without-checkpoint", "ita-train", train("--resume_from_checkpoint", "last"), "refuse",
             phrases=[r"checkpoint", r"@case@/out/run|output_dir", r"no checkpoint|none|not found|no "]))  # fmt: skip
    add(Case("train-learning-rate-negative", "ita-train", train("--learning_rate", "-0.001"), "refuse",
             phrases=["learning_rate", r"-0\.001", POSITIVE]))  # fmt: skip
    add(Case("train-min-scale-above-max", "ita-train", train("--min_scale", "3", "--max_scale", "0.5"), "refuse",
             phrases=["min_scale", "max_scale", r"\b3\b|0\.5"]))  # fmt: skip
    add(Case("train-output-dir-is-file", "ita-train", train(output_dir="@case@/in/notes.txt"),
             "refuse", phrases=["notes.txt", r"not a (folder|directory)|is a file|exists"], prepare=writes({"in/notes.txt": "x"}, images=())))  # fmt: skip
    add(Case("train-misspelt-option", "ita-train", train("--epochs", "3"), "refuse",
             phrases=["--epochs", r"unrecognized|unknown", r"num_train_epochs"], what="ita-train ... --epochs 3 (the option is --num_train_epochs)"))  # fmt: skip
    add(Case("train-class-names-too-few", "ita-train", train(class_names=["red circle", "blue square"]), "refuse",
             phrases=[r"\b2\b", r"\b[345]\b|label|class"], what="ita-train --class_names 'red circle' 'blue square' (the label maps use 5 classes)"))  # fmt: skip

    # ------------------------------------------------------------------ ita-convert
    add(Case("convert-missing-checkpoint", "ita-convert", ["--checkpoint", "@case@/in/fcclip.pth", "--output", "@case@/out"],
             "refuse", phrases=["fcclip.pth", NOT_FOUND], prepare=folders("in")))  # fmt: skip
    add(Case("convert-pickle-that-runs-code", "ita-convert", ["--checkpoint", "@fixtures@/evil.pth", "--output", "@case@/out"],
             "refuse", phrases=["evil.pth", r"code|unsafe|weights_only|not (only )?(tensors|weights)|untrusted"],
             wrong=[r"damaged|corrupt"], hashed=("@fixtures@/evil.pth",), check=None,
             what="ita-convert --checkpoint evil.pth (a pickle whose loading would run a shell command)"))  # fmt: skip
    add(Case("convert-random-bytes", "ita-convert", ["--checkpoint", "@fixtures@/random.pth", "--output", "@case@/out"],
             "refuse", phrases=["random.pth", r"not a (pytorch )?checkpoint|cannot be read|not a torch|unreadable|invalid"],
             hashed=("@fixtures@/random.pth",)))  # fmt: skip
    add(Case("convert-empty-file", "ita-convert", ["--checkpoint", "@case@/in/model.pth", "--output", "@case@/out"],
             "refuse", phrases=["model.pth", r"empty|0 bytes"], prepare=writes({"in/model.pth": b""}, images=())))  # fmt: skip
    add(Case("convert-checkpoint-is-folder", "ita-convert", ["--checkpoint", "@case@/in", "--output", "@case@/out"],
             "refuse", phrases=[r"@case@/in", r"(is )?a (folder|directory)"], prepare=writes({"in/model.pth": b"x"}, images=())))  # fmt: skip
    add(Case("convert-no-model-weights", "ita-convert", ["--checkpoint", "@fixtures@/optimizer-only.pth", "--output", "@case@/out"],
             "refuse", phrases=["optimizer-only.pth", r"no (model )?weights|not an? (FC-CLIP|ITA)|no .*model"],
             hashed=("@fixtures@/optimizer-only.pth",), what="ita-convert --checkpoint optimizer-only.pth (a torch file of an epoch count and optimizer state)"))  # fmt: skip
    add(Case("convert-detectron2-pkl", "ita-convert", ["--checkpoint", "@fixtures@/model_final.pkl", "--output", "@case@/out"],
             "refuse", phrases=["model_final.pkl", r"\.pkl", r"\.pth|not supported"], hashed=("@fixtures@/model_final.pkl",)))  # fmt: skip
    add(Case("convert-output-is-checkpoint-folder", "ita-convert",
             ["--checkpoint", "@case@/in/fcclip.pth", "--output", "@case@/in", "--overwrite"], "refuse",
             phrases=["--output", r"fcclip\.pth|checkpoint", r"same|inside|contains|holds"],
             prepare=lambda c: c.write("in/fcclip.pth", (c.fixtures / "random.pth").read_bytes()),
             what="ita-convert --checkpoint in/fcclip.pth --output in/ --overwrite"))  # fmt: skip
    add(Case("convert-config-overrides-bad-json", "ita-convert",
             ["--checkpoint", "@fixtures@/random.pth", "--output", "@case@/out", "--config-overrides", "{num_queries: 100}"],
             "refuse", phrases=["--config-overrides", r"json", r"num_queries|\{|line \d+,? column \d+"]))  # fmt: skip

    # ------------------------------------------------------------------ ita-export
    add(Case("export-missing-model", "ita-export", ["--model", "@case@/in/nothing", "--output", "@case@/out"], "refuse",
             phrases=["nothing", NOT_FOUND], wrong=[r"repo id must"], prepare=folders("in")))  # fmt: skip
    add(Case("export-output-is-model-folder", "ita-export", ["--model", "@case@/in/model", "--output", "@case@/in/model", "--overwrite"],
             "refuse", phrases=["--output", r"@case@/in/model", r"same|model folder|model's own folder|its own|input"], prepare=model_copy(), timeout=240,
             what="ita-export --model model/ --output model/ --overwrite"))  # fmt: skip
    add(Case("export-atol-negative", "ita-export", ["--model", "@model@", "--output", "@case@/out", "--atol", "-1"], "refuse",
             phrases=["--atol", "-1", POSITIVE + r"|>= ?0|non-negative|not negative"]))  # fmt: skip
    add(Case("export-output-not-empty", "ita-export", ["--model", "@model@", "--output", "@case@/in"], "refuse",
             phrases=[r"@case@/in", r"not empty", "--overwrite"], prepare=writes({"in/notes.txt": "mine"}, images=())))  # fmt: skip

    # ------------------------------------------------------------------ ita-web / app.py
    add(Case("web-port-taken", "ita-web", ["--model", "@model@", "--port", "@port@"], "refuse", prepare=take_port,
             phrases=[r"@port@", r"in use|taken|busy|already", "--port"], wrong=[r"server_port|GRADIO_SERVER_PORT"],
             timeout=90, silent_on_timeout=True, what="ita-web --port P (another program listens on P)"))  # fmt: skip
    add(Case("app-missing-model", "app.py", ["--model", "./missing-model", "--port", "@port@"], "refuse",
             phrases=["missing-model", r"not found|does not exist|no such|neither"], wrong=[r"repo id must"],
             timeout=90, silent_on_timeout=True))  # fmt: skip
    add(Case("web-max-upload-mb-0", "ita-web", ["--model", "@model@", "--port", "@port@", "--max-upload-mb", "0"], "refuse",
             phrases=["--max-upload-mb", r"\b0\b", POSITIVE], timeout=90, silent_on_timeout=True))  # fmt: skip
    add(Case("web-max-upload-mb-words", "app.py", ["--model", "@model@", "--port", "@port@", "--max-upload-mb", "20MB"], "refuse",
             phrases=["--max-upload-mb", "20MB", r"number|invalid"], timeout=90, silent_on_timeout=True))  # fmt: skip
    add(Case("web-port-out-of-range", "ita-web", ["--model", "@model@", "--port", "70000"], "refuse",
             phrases=["--port", "70000", r"65535|range"], timeout=90, silent_on_timeout=True))  # fmt: skip
    add(Case("web-queue-size-0", "ita-web", ["--model", "@model@", "--port", "@port@", "--queue-size", "0"], "refuse",
             phrases=["--queue-size", r"\b0\b", POSITIVE], timeout=90, silent_on_timeout=True))  # fmt: skip
    add(Case("web-device-cuda-without-gpu", "ita-web", ["--model", "@model@", "--port", "@port@", "--device", "cuda"], "refuse",
             phrases=["cuda", r"not available|no (cuda|gpu)|does not have|no nvidia driver|cannot be used", r"cpu"], timeout=90, silent_on_timeout=True))  # fmt: skip
    add(Case("app-share-option", "app.py", ["--model", "@model@", "--share"], "refuse",
             phrases=["--share", r"unrecognized|unknown", r"--host"], timeout=90, silent_on_timeout=True,
             what="python app.py --share (gradio's usual option; here --host says who may connect)"))  # fmt: skip

    # ------------------------------------------------------------------ Python API
    py = "python"
    add(Case("python-empty-vocabulary", py, PY_LOAD + "processor(images=Image.open(IMAGES + '/scene.jpg'), text=[], return_tensors='pt')\n",
             "refuse", phrases=[r"empty|no class|at least one"], what="processor(images=image, text=[])"))  # fmt: skip
    add(Case("python-text-as-one-string", py, PY_LOAD + textwrap.dedent(
        """
        inputs = processor(images=Image.open(IMAGES + '/scene.jpg'), text="cat", return_tensors='pt')
        with torch.no_grad():
            outputs = model(**inputs)
        result({"classes": int(outputs.class_queries_logits.shape[-1]) - 1})
        """), "accept", check=python_result(lambda r: None if r[0]["classes"] == 1 else f"text='cat' became {r[0]['classes']} classes"),
        or_refuse=[r"string|\bstr\b", r"list"], what="processor(images=image, text='cat') (one string, not a list)"))  # fmt: skip
    add(Case("python-forward-without-vocabulary", py, PY_LOAD + textwrap.dedent(
        """
        inputs = processor(images=Image.open(IMAGES + '/scene.jpg'), return_tensors='pt')
        model(**inputs)
        """), "accept", check=_says_which_vocabulary,
        or_refuse=[r"class_names|vocabulary|text", r"no |missing|without|needs|required"],
        what="model(**processor(images=image)) (no classes given: the training vocabulary, said so, or a refusal)"))  # fmt: skip
    add(Case("python-target-sizes-swapped", py, PY_LOAD + textwrap.dedent(
        """
        image = Image.open(IMAGES + '/tall.png')  # 64 wide, 128 high
        inputs = processor(images=image, text=['red circle', 'blue square', 'green background'], return_tensors='pt')
        with torch.no_grad():
            outputs = model(**inputs)
        label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size])[0]
        result({"shape": list(label_map.shape)})
        """), "accept", check=stderr_says(r"target_sizes", r"height, width|\(h, ?w\)|swap|transpos"),
        or_refuse=[r"target_sizes", r"height, width|swap|transpos"],
        what="post_process_semantic_segmentation(outputs, target_sizes=[image.size]) (width, height: swapped)"))  # fmt: skip
    add(Case("python-target-sizes-count", py, PY_LOAD + textwrap.dedent(
        """
        image = Image.open(IMAGES + '/scene.jpg')
        inputs = processor(images=image, text=['cat', 'dog'], return_tensors='pt')
        with torch.no_grad():
            outputs = model(**inputs)
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(96, 128), (96, 128)])
        """), "refuse", phrases=[r"target_sizes", r"\b2\b", r"\b1\b"], what="post_process(outputs of 1 image, target_sizes for 2)"))  # fmt: skip
    add(Case("python-batch-of-different-sizes", py, PY_LOAD + textwrap.dedent(
        """
        names = ['red circle', 'blue square', 'yellow triangle', 'green background', 'gray background']
        images = [Image.open(IMAGES + '/beach.png').convert('RGB'), Image.open(IMAGES + '/tall.png').convert('RGB')]
        def label_maps(batch):
            inputs = processor(images=batch, text=names, return_tensors='pt')
            with torch.no_grad():
                outputs = model(**inputs)
            sizes = [im.size[::-1] for im in batch]
            return processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        together = label_maps(images)
        alone = [label_maps([im])[0] for im in images]
        result({"differ": [float((a != b).float().mean()) for a, b in zip(together, alone)]})
        """), "accept",
        check=lambda run: None if not run.results or max(run.results[0]["differ"]) == 0 or re.search(r"padd", run.output, re.I)
        else f"batched label maps differ from single runs on {run.results[0]['differ']} of the pixels, no warning",
        what="processor(images=[80x120, 128x64 images]) + model: each the same as alone (or a warning)"))  # fmt: skip
    add(Case("python-pipeline-missing-image", py, textwrap.dedent(
        """
        from transformers import pipeline
        import modeling_ita
        segmenter = pipeline('zero-shot-image-segmentation', model=MODEL)
        segmenter(CASE + '/holiday.jpg', candidate_labels=['cat', 'dog'])
        """), "refuse", phrases=["holiday.jpg", NOT_FOUND], what="pipeline(...)('holiday.jpg' that does not exist)"))  # fmt: skip
    add(Case("python-pipeline-panoptic-unknown-stuff", py, textwrap.dedent(
        """
        from transformers import pipeline
        import modeling_ita
        segmenter = pipeline('zero-shot-image-segmentation', model=MODEL)
        segmenter(IMAGES + '/scene.jpg', candidate_labels=['cat', 'dog'], subtask='panoptic', stuff_labels=['sky'])
        """), "refuse", phrases=["sky", r"not (one of|in|among)|unknown|candidate_labels"]))  # fmt: skip
    add(Case("python-automodel-empty-folder", py, "import os\nfrom transformers import AutoModel\nimport modeling_ita\n"
             "os.makedirs(CASE + '/new-model', exist_ok=True)\nAutoModel.from_pretrained(CASE + '/new-model')\n", "refuse",
             phrases=[r"config\.json", r"empty"], what="AutoModel.from_pretrained('new-model/') (an empty folder)"))  # fmt: skip
    add(Case("python-model-class-on-bert", py, "from modeling_ita import ITAForOpenVocabSegmentation\n"
             "ITAForOpenVocabSegmentation.from_pretrained(FIXTURES + '/bert')\n", "refuse",
             phrases=[r"bert", r"\bita\b|model_type"], wrong=[r"hidden_dim must"],
             what="ITAForOpenVocabSegmentation.from_pretrained('bert/') (a BERT model's folder)"))  # fmt: skip
    add(Case("python-from-pretrained-missing-local", py, "from modeling_ita import ITAForOpenVocabSegmentation\n"
             "ITAForOpenVocabSegmentation.from_pretrained('./checkpoints/my-ita')\n", "refuse",
             phrases=[r"checkpoints/my-ita", r"not found|does not exist|no such|neither|offline"], wrong=[r"repo id must"],
             what="ITAForOpenVocabSegmentation.from_pretrained('./checkpoints/my-ita') (offline, no such folder)"))  # fmt: skip
    add(Case("python-duplicate-classes", py, PY_LOAD + "processor(images=Image.open(IMAGES + '/scene.jpg'), text=['cat', 'dog', 'cat'], return_tensors='pt')\n",
             "refuse", phrases=[r"\bcat\b", r"twice|duplicate|more than once|repeated"], what="processor(text=['cat', 'dog', 'cat'])"))  # fmt: skip
    return cases


def same_as_single_runs(run: Run, stems: Sequence[str]) -> str | None:
    """Check: label maps of a batched run equal those of a run with --batch-size 1."""
    problem = segment_outputs(stems)(run)
    if problem:
        return problem
    args = seg("@case@/in", output="@case@/single", extra=["--batch-size", "1"])
    single = run_door_process(run.context, "ita-segment", [run.context.substitute(a) for a in args], 300)
    if single.status != 0:
        return f"the --batch-size 1 run failed: {single.stderr[-300:]}"
    from PIL import Image

    differing = []
    for stem in stems:
        with (
            Image.open(run.context.case / "out" / f"{stem}_labels.png") as a,
            Image.open(run.context.case / "single" / f"{stem}_labels.png") as b,
        ):
            if a.tobytes() != b.tobytes():
                differing.append(stem)
    if differing and not re.search(r"padd", run.output, re.I):
        return f"label maps of {differing} differ from --batch-size 1, no warning"
    return None


def empty_result_explained(stem: str) -> Callable[[Run], str | None]:
    """Check: a panoptic/instance result with no segment says so (and names the threshold)."""

    def check(run: Run) -> str | None:
        data = summary(run, stem)
        segments = data.get("segments_info", data.get("segments", data.get("instances")))
        if segments:
            return None
        if re.search(r"no (\w+ )?segment|nothing|0 segments", run.output, re.I) and re.search(
            r"threshold", run.output, re.I
        ):
            return None
        return "0 segments written, exit 0, no word of it (or of --threshold)"

    return check


def evaluation_written(run: Run) -> str | None:
    found = list((run.context.case / "out").rglob("results.json"))
    if not found:
        return "no results.json"
    data = json.loads(found[0].read_text())
    text = json.dumps(data)
    return None if re.search(r'"mIoU"|"miou"', text, re.I) else "results.json has no mIoU"


def bad_dataset(context: Context, kind: str) -> None:
    """A copy of the synthetic dataset with one bad label map (value 200, wrong size, or missing)."""
    from PIL import Image

    root = context.case / "in" / "ds"
    shutil.copytree(context.dataset, root)
    labels = root / "annotations" / "validation"
    if kind == "value":
        path = labels / "scene_0_00001.png"
        with Image.open(path) as image:
            pixels = image.load()
            assert pixels is not None
            pixels[3, 3] = 200
            image.save(path)
    elif kind == "size":
        path = labels / "scene_0_00002.png"
        with Image.open(path) as image:
            image.crop((0, 0, 32, 40)).save(path)
    else:
        (labels / "scene_0_00003.png").unlink()


# ------------------------------------------------------------------------------------------ fixtures (built once)
FIXTURE_SCRIPT = textwrap.dedent(
    r"""
    import io, json, os, struct, sys, zlib
    from pathlib import Path
    import numpy as np
    import torch
    from PIL import Image
    from ita_segmentation.synthetic import (
        SYNTHETIC_CLASS_NAMES, draw_synthetic_scene, make_synthetic_dataset, toy_clip_config, toy_config,
        write_label_map_folders,
    )
    from image_processing_ita import ITAImageProcessor
    from modeling_ita import ITAForOpenVocabSegmentation, ITAProcessor

    root = Path(sys.argv[1])
    torch.manual_seed(0)
    config = toy_config(
        width=32, clip_config=toy_clip_config(width=32, heads=2), num_queries=6, dominant_category_image_size=32,
        train_vocabulary=["cat,kitty", "dog", "sofa,couch", "wall", "grass", "sky"], train_num_points=64,
    )
    model = ITAForOpenVocabSegmentation(config)
    with torch.no_grad():  # several classes per image, as in the tests' spread weights
        for name, parameter in model.named_parameters():
            if parameter.ndim > 1 and name.startswith(("decoder.mask_embed", "decoder.class_embed")):
                parameter.normal_(0.0, 1.0)
    model.save_pretrained(root / "model")
    processor = ITAProcessor(image_processor=ITAImageProcessor.for_model_config(
        model.config, size={"shortest_edge": 96, "longest_edge": 160}))
    processor.save_pretrained(root / "model")

    images = root / "images"
    images.mkdir()
    def scene(height, width, seed):
        return Image.fromarray(draw_synthetic_scene(np.random.default_rng(seed), height, width)[0])
    base = scene(96, 128, 1)
    base.save(images / "scene.jpg", quality=92)
    scene(80, 120, 2).save(images / "beach.png")
    scene(128, 64, 3).save(images / "tall.png")
    base.save(images / "scene.webp")
    base.save(images / "scene.tif")
    base.convert("CMYK").save(images / "cmyk.jpg")
    Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257)).save(images / "gray16.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(images / "palette.png")
    base.convert("RGBA").save(images / "rgba.png")
    base.convert("L").save(images / "gray.png")
    base.save(images / "anim.gif")
    stored = scene(80, 128, 4)  # stored 128 wide, 80 high; orientation 6: shown rotated, 80 wide, 128 high
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(images / "exif.jpg", exif=exif)
    data = (images / "scene.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.jpg").write_text("Shopping list: milk, eggs, bread\n")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(images / "dot.png")
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (3, 5000, 3), dtype=np.uint8)).save(images / "strip.png")

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(60000), 9)) + chunk(b"IEND", b"")
    (images / "bomb.png").write_bytes(bomb)

    dataset = make_synthetic_dataset(4, image_size=64, seed=0)
    write_label_map_folders(dataset, root / "dataset", split="validation")
    (root / "classes.txt").write_text("".join(name + "\n" for name in SYNTHETIC_CLASS_NAMES))

    from transformers import BertConfig, BertModel
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         vocab_size=100)).save_pretrained(root / "bert")

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("touch " + str(root / "evil-ran"),))
    torch.save({"model": RunsCode()}, root / "evil.pth")
    (root / "random.pth").write_bytes(np.random.default_rng(6).bytes(4096))
    torch.save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, root / "optimizer-only.pth")
    import pickle
    with open(root / "model_final.pkl", "wb") as handle:
        pickle.dump({"model": {"backbone.stem.weight": np.zeros((4, 3, 2, 2), np.float32)}, "__author__": "d2"}, handle)
    print("fixtures ready")
    """
)


# ------------------------------------------------------------------------------------------------ running
@dataclass
class Trial:
    root: Path  # the code tried (the clone or the checkout)
    python: Path
    work: Path  # fixtures and case folders
    keep_going: bool = True

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(self.root),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            HF_HOME=str(self.work / "hf-home"),
            ITA_VOCABULARY_CACHE=str(self.work / "vocabulary-cache"),
            PYTHONUNBUFFERED="1",
            GRADIO_ANALYTICS_ENABLED="False",
            OMP_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
        )
        env.pop("PYTHONSTARTUP", None)
        return env


TRIAL: Trial | None = None


def command_line(trial: Trial, door: str, args: Sequence[str]) -> list[str]:
    """What the user types, through the tried code: a console script is its `ita_cli` function, with the tried
    code first on sys.path (the checkout's editable install would otherwise answer)."""
    python = str(trial.python)
    if door == "app.py":
        return [python, str(trial.root / "app.py"), *args]
    function = DOOR_FUNCTIONS[door]
    code = f"import sys; sys.path.insert(0, {str(trial.root)!r}); import ita_cli; sys.exit(ita_cli.{function}(prog={door!r}))"
    return [python, "-c", code, *args]


PYTHON_HARNESS = textwrap.dedent(
    """
    import json, sys, traceback, warnings
    sys.path.insert(0, {root!r})
    warnings.simplefilter("always")
    CASE, MODEL, IMAGES, FIXTURES, DATASET = {case!r}, {model!r}, {images!r}, {fixtures!r}, {dataset!r}
    def result(obj):
        print("TRIAL-RESULT " + json.dumps(obj), flush=True)
    try:
        exec(compile({snippet!r}, "<case>", "exec"), {{"result": result, "CASE": CASE, "MODEL": MODEL, "IMAGES": IMAGES,
             "FIXTURES": FIXTURES, "DATASET": DATASET, "__name__": "__trial__"}})
    except Exception as error:
        mro = [cls.__name__ for cls in type(error).__mro__]
        traceback.print_exc()
        print("TRIAL-RAISED " + json.dumps({{"type": type(error).__name__, "mro": mro, "message": str(error)}}), flush=True)
        sys.exit(3)
    """
)


def run_door_process(context: Context, door: str, args: Sequence[str] | str, timeout: float) -> Run:
    """Run one door in its own process group; kill the group on timeout."""
    trial = TRIAL
    assert trial is not None
    if door == "python":
        assert isinstance(args, str)
        code = PYTHON_HARNESS.format(
            root=str(trial.root), case=str(context.case), model=str(context.model), images=str(context.images),
            fixtures=str(context.fixtures), dataset=str(context.dataset), snippet=args,
        )  # fmt: skip
        argv = [str(trial.python), "-c", code]
    else:
        assert not isinstance(args, str)
        argv = command_line(trial, door, args)
    start = time.monotonic()
    process = subprocess.Popen(
        argv, cwd=context.case, env=trial.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace", start_new_session=True,
    )  # fmt: skip
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    seconds = time.monotonic() - start
    run = Run(context, None if timed_out else process.returncode, stdout, stderr, seconds, timed_out)
    for line in stdout.splitlines():
        if line.startswith("TRIAL-RESULT "):
            run.results.append(json.loads(line.removeprefix("TRIAL-RESULT ")))
        elif line.startswith("TRIAL-RAISED "):
            run.raised = json.loads(line.removeprefix("TRIAL-RAISED "))
    return run


def file_hashes(paths: Sequence[Path]) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for path in paths:
        if path.is_symlink() and not path.exists():
            continue
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            if path.is_dir()
            else []
        )
        for file in files:
            hashes[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def last_words(run: Run) -> str:
    """The line of the run that a user reads: the error line, else the last line."""
    if run.raised is not None:
        return f"{run.raised['type']}: {run.raised['message']}".replace("\n", " ")[:300]
    lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("TRIAL-")]
    said = [line for line in lines if re.search(r"error|warning|skipp", line, re.I)][-2:]
    if said:
        return " | ".join(line[:300] for line in said)
    return (lines[-1] if lines else run.stdout.strip().splitlines()[-1:] and run.stdout.strip().splitlines()[-1] or "")[
        :300
    ]


def matches(context: Context, pattern: str, text: str) -> bool:
    """`pattern` (placeholders allowed) is in `text`; the trial's own folder names (a case's folder is named after
    the case: `.../segment-missing-image/`) are masked first, so that they never pass for a word of the message."""
    masked = text.replace(str(context.case), "<case>").replace(str(context.fixtures), "<fixtures>")
    masked = masked.replace(str(context.case.parent.parent), "<work>")
    neutral = Context(case=Path("<case>"), fixtures=Path("<fixtures>"), port=context.port)
    return re.search(neutral.substitute(pattern, escape=True), masked, re.I) is not None


def classify(case: Case, run: Run, changed: list[str]) -> tuple[str, str]:
    """(kind, note) of a case's run."""
    context = run.context
    words = last_words(run)
    if changed:
        return "overwrite", f"changed or removed {', '.join(Path(p).name for p in changed[:5])}; said: {words}"
    if run.timed_out:
        if case.silent_on_timeout:
            return "silent", f"still running after {case.timeout:.0f} s (served instead of refusing)"
        return "timeout", f"no answer within {case.timeout:.0f} s"
    crashed = (
        "Traceback (most recent call last)" in run.stderr
        and run.raised is None
        or run.status == 70
        or "internal error" in run.stderr
        or (run.status not in (0, 1, 2, 3) and run.raised is None)
    )
    if run.raised is not None and not any(name in USER_FACING_EXCEPTIONS for name in run.raised["mro"]):
        return "traceback", f"raised {words}"
    if crashed:
        return "traceback", f"exit {run.status}: {words}"
    refused = run.raised is not None or run.status in (1, 2)
    message = run.message()
    if case.expect == "refuse":
        if not refused:
            return "silent", f"exit 0 ({words or 'no message'})"
        missing = [p for p in case.phrases if not matches(context, p, message)]
        wrong = [p for p in case.wrong if matches(context, p, message)]
        if wrong:
            return "misleading", f"names a wrong cause ({wrong[0]!r}): {words}"
        if missing:
            return "misleading", f"lacks {missing}: {words}"
        return "clear", f"exit {run.status}: {words}" if run.raised is None else words
    if refused:
        wrong = [p for p in case.wrong if matches(context, p, message)]
        if case.or_refuse is not None and not wrong and all(matches(context, p, message) for p in case.or_refuse):
            return "clear", f"refused with the cause named (exit {run.status}): {words}"
        return "misleading", f"refused a valid input (exit {run.status}): {words}"
    problem = case.check(run) if case.check is not None else None
    if problem:
        return "silent", f"exit 0 but {problem}"
    return "accepted", f"exit 0, output checked ({run.seconds:.1f} s)"


@dataclass
class Outcome:
    name: str
    door: str
    tried: str
    expect: str
    kind: str
    note: str
    status: int | None
    seconds: float
    stderr_tail: str


def run_case(case: Case, trial: Trial) -> Outcome:
    context = Context(case=trial.work / "cases" / case.name, fixtures=trial.work / "fixtures", port=free_port())
    if context.case.exists():
        subprocess.run(["chattr", "-R", "-i", str(context.case)], capture_output=True)
        shutil.rmtree(context.case)
    context.case.mkdir(parents=True)
    try:
        if case.prepare is not None:
            case.prepare(context)
        watched = [Path(context.substitute(p)) for p in case.hashed] + [context.model, context.images, context.dataset]
        before = file_hashes(watched)
        args = case.args if isinstance(case.args, str) else [context.substitute(a) for a in case.args]
        run = run_door_process(context, case.door, args, case.timeout)
        after = file_hashes(watched)
        changed = sorted(p for p in before if after.get(p) != before[p])
        if case.name == "convert-pickle-that-runs-code" and (context.fixtures / "evil-ran").exists():
            changed.append(str(context.fixtures / "evil-ran (the pickle's command ran)"))
        kind, note = classify(case, run, changed)
    except Exception as error:  # noqa: BLE001 - a broken case is reported, the trial goes on
        return Outcome(case.name, case.door, context.substitute(case.describe()), case.expect, "timeout" if isinstance(error, subprocess.TimeoutExpired) else "traceback",
                       f"the trial itself failed: {type(error).__name__}: {error}", None, 0.0, "")  # fmt: skip
    finally:
        for cleanup in reversed(context.cleanups):
            cleanup()
    tried = (
        context.substitute(case.describe())
        .replace(str(context.case) + "/", "")
        .replace(str(trial.work / "fixtures") + "/", "")
    )
    return Outcome(case.name, case.door, tried, case.expect, kind, note.replace(str(context.case) + "/", ""), run.status,
                   round(run.seconds, 1), run.stderr[-2000:])  # fmt: skip


def build_fixtures(trial: Trial) -> None:
    fixtures = trial.work / "fixtures"
    if (fixtures / "classes.txt").exists():
        return
    fixtures.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(trial.python), "-c", f"import sys; sys.path.insert(0, {str(trial.root)!r})\n" + FIXTURE_SCRIPT, str(fixtures)],
        cwd=trial.root, env=trial.environment(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"building the fixtures failed:\n{done.stderr[-3000:]}")


def check_code_origin(trial: Trial) -> None:
    """The tried code is what runs: `ita_cli` and `modeling_ita` import from `trial.root`."""
    code = f"import sys; sys.path.insert(0, {str(trial.root)!r}); import ita_cli, ita_segmentation; print(ita_cli.__file__); print(ita_segmentation.__file__)"
    done = subprocess.run(
        [str(trial.python), "-c", code], env=trial.environment(), capture_output=True, text=True, cwd="/"
    )
    for line in done.stdout.split():
        if not Path(line).resolve().is_relative_to(trial.root.resolve()):
            raise SystemExit(f"the tried code would come from {line}, not from {trial.root}")


@contextmanager
def clone_of_checkout(keep: bool, commit: str | None = None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ita-trial-clone-"))
    subprocess.run(["git", "clone", "-q", str(CHECKOUT), str(folder / "ita")], check=True)
    if commit:
        subprocess.run(["git", "-C", str(folder / "ita"), "checkout", "-q", commit], check=True)
    try:
        yield folder / "ita"
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def print_table(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = {kind: sum(1 for o in outcomes if o.kind == kind) for kind in KINDS}
    doors = sorted({o.door for o in outcomes})
    print()
    print(f"{'door':14s} " + " ".join(f"{k:>10s}" for k in KINDS) + f" {'total':>7s}")
    for door in doors:
        row = [sum(1 for o in outcomes if o.door == door and o.kind == k) for k in KINDS]
        print(f"{door:14s} " + " ".join(f"{n:10d}" for n in row) + f" {sum(row):7d}")
    print(f"{'all':14s} " + " ".join(f"{counts[k]:10d}" for k in KINDS) + f" {len(outcomes):7d}")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clone", action="store_true", help="try a fresh git clone of this checkout (committed state)")
    parser.add_argument("--commit", help="with --clone: try this commit instead of HEAD (to replay a trial)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (and the clone) afterwards")
    parser.add_argument("--work", type=Path, help="work folder for fixtures and cases (default: a new one in /tmp)")
    parser.add_argument("-k", dest="pattern", help="only the cases whose name contains PATTERN (a regex)")
    parser.add_argument("-j", dest="jobs", type=int, default=1, help="cases run at once (default 1)")
    parser.add_argument("--report", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    options = parser.parse_args(argv)
    if options.jobs < 1:
        parser.error(f"-j {options.jobs}: give at least 1")

    cases = build_cases()
    if options.pattern:
        cases = [c for c in cases if re.search(options.pattern, c.name)]
    names = [c.name for c in cases]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise SystemExit(f"case names used twice: {sorted(duplicated)}")
    if options.list:
        for case in cases:
            print(f"{case.name:45s} {case.expect:7s} {case.describe()[:120]}")
        return 0
    if not cases:
        parser.error(f"-k {options.pattern}: no case matches")

    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    work = options.work or Path(tempfile.mkdtemp(prefix="ita-trial-"))
    with clone_of_checkout(options.keep, options.commit) if options.clone else _same(CHECKOUT) as root:
        global TRIAL
        trial = Trial(root=root, python=python, work=work)
        TRIAL = trial
        check_code_origin(trial)
        start = time.monotonic()
        print(f"trying {root} ({len(cases)} cases, -j {options.jobs}); work folder {work}", flush=True)
        build_fixtures(trial)
        print(f"fixtures built in {time.monotonic() - start:.0f} s", flush=True)
        outcomes: dict[str, Outcome] = {}
        lock = threading.Lock()
        # the slowest cases first, so that the pool ends together
        ordered = sorted(cases, key=lambda c: -c.timeout)
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            futures = {pool.submit(run_case, case, trial): case for case in ordered}
            for future in as_completed(futures):
                outcome = future.result()
                with lock:
                    outcomes[outcome.name] = outcome
                    print(
                        f"{outcome.kind:10s} {outcome.name:45s} {outcome.seconds:6.1f}s  {outcome.note[:220]}",
                        flush=True,
                    )
        ordered_outcomes = [outcomes[c.name] for c in cases]
        counts = print_table(ordered_outcomes)
        print(f"\n{len(cases)} cases in {time.monotonic() - start:.0f} s")
        bad = [o for o in ordered_outcomes if o.kind not in ("clear", "accepted")]
        if bad:
            print("\nnot clear or accepted:")
            for o in bad:
                print(f"- [{o.kind}] {o.name}: {o.tried[:200]}\n    -> {o.note[:400]}")
        if options.report:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            report = {
                "code": str(root), "commit": commit, "clone": options.clone, "counts": counts, "cases": len(cases),
                "seconds": round(time.monotonic() - start, 1),
                "outcomes": [o.__dict__ for o in ordered_outcomes],
            }  # fmt: skip
            options.report.write_text(json.dumps(report, indent=2, ensure_ascii=False))
            print(f"report: {options.report}")
    if not options.keep and options.work is None:
        subprocess.run(["chattr", "-R", "-i", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


@contextmanager
def _same(path: Path) -> Iterator[Path]:
    yield path


if __name__ == "__main__":
    sys.exit(main())
