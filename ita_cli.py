"""The console commands `ita-segment`, `ita-evaluate`, `ita-convert`, `ita-export`, `ita-train` and `ita-web`.

Each command's arguments and work live in its wing's `cli` module (`ita_segmentation.apps.cli`,
`ita_segmentation.evaluation.cli`, `ita_segmentation.hub.cli`, `ita_segmentation.onnx.cli`,
`ita_segmentation.training.cli`); this module only hands the command line to it, importing that module alone.
Those modules parse with the standard library and import torch once the arguments are well formed, so `--help`
and usage errors answer at once. The files in `scripts/` call these functions.

Every function runs its command through `ita_segmentation.errors.run_door`, the one place an exception becomes a
message and an exit status: 0 done, 1 the data or the model was refused (`ITADataError`), 2 a usage error
(`ITAUsageError`, argparse's errors: returned, not raised), 70 a bug of this project (traceback, then where to
report it), 130 interrupted.
"""

from collections.abc import Sequence

from ita_segmentation.errors import run_door

__all__ = ["convert", "evaluate", "export", "segment", "train", "web"]


def segment(argv: Sequence[str] | None = None, prog: str = "ita-segment") -> int:
    """`ita-segment`: returns the exit status (0 done, 1 some image or the model failed, 2 usage error)."""
    from ita_segmentation.apps.cli import main

    return run_door(prog, lambda: main(argv, prog))


def evaluate(argv: Sequence[str] | None = None, prog: str = "ita-evaluate") -> int:
    """`ita-evaluate`: returns the exit status (0 done, 1 the data, the model or the run failed, 2 usage error)."""
    from ita_segmentation.evaluation.cli import main

    return run_door(prog, lambda: main(argv, prog))


def convert(argv: Sequence[str] | None = None, prog: str = "ita-convert") -> int:
    """`ita-convert`: returns the exit status (0 written, 1 the conversion or the upload failed, 2 usage error or
    a taken output folder)."""
    from ita_segmentation.hub.cli import main

    return run_door(prog, lambda: main(argv, prog))


def export(argv: Sequence[str] | None = None, prog: str = "ita-export") -> int:
    """`ita-export`: returns the exit status (0 written, 1 failed or mismatched, 2 usage error)."""
    from ita_segmentation.onnx.cli import main

    return run_door(prog, lambda: main(argv, prog))


def train(argv: Sequence[str] | None = None, prog: str = "ita-train") -> int:
    """`ita-train`: returns the exit status (0 trained, 1 the data or the model was refused, 2 usage error)."""
    from ita_segmentation.training.cli import main

    return run_door(prog, lambda: main(argv, prog))


def web(argv: Sequence[str] | None = None, prog: str = "ita-web") -> int:
    """`ita-web` (`python app.py`): serve the web page; returns the exit status."""
    from ita_segmentation.apps.web_cli import web

    return run_door(prog, lambda: web(argv, prog))
