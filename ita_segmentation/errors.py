"""The one user-error type of every door (the commands, the web launcher, the Python entry points of `ita_cli`)
and the one place that turns an exception into a message and an exit status.

- `ITAUsageError` (exit status 2): the command line or its inputs are wrong, found before any long work starts
  (a bad option, an empty vocabulary, a model folder that does not exist, an output folder that is taken).
- `ITADataError` (exit status 1): what the user gave was refused while working (a checkpoint of another config,
  an unreadable data set, an image the model cannot take, a full disk).
- Anything else is a bug in this project: `run_door` prints the traceback, then a line that says so and where to
  report it (exit status 70, `EX_SOFTWARE` of BSD's sysexits).

The wings' own error classes (`DataCheckError`, `CheckpointConversionError`, `ITAExportError`, ...) derive from
these two, so a door needs no list of them. The model folder (`modeling_ita`, the root `*_ita.py` files) is
self-contained and raises transformers' usual `ValueError`s and its `ModelLoadingError`; `user_error` recognises
the latter by its class, and the wings turn the former into one of ours where they call the model.

Standard library only: every `--help` and usage error answers before torch is imported.
"""

import errno
import importlib.metadata
import sys
import traceback
from collections.abc import Callable
from typing import TextIO

__all__ = [
    "EXIT_BUG",
    "EXIT_DATA",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ITADataError",
    "ITAUsageError",
    "ITAUserError",
    "issue_tracker",
    "report_error",
    "run_door",
    "user_error",
]

EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_BUG = 70
EXIT_INTERRUPTED = 130


def issue_tracker() -> str:
    """Where to report a bug: the package's declared issue tracker (its `Project-URL`), else its home page."""
    try:
        metadata = importlib.metadata.metadata("ita-segmentation")
    except importlib.metadata.PackageNotFoundError:
        return "this project's issue tracker"
    for entry in metadata.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in {"issues", "bug tracker", "tracker"}:
            return url.strip()
    home = (metadata.get_all("Home-page") or [""])[0]
    return home if home and home != "UNKNOWN" else "this project's issue tracker"


class ITAUserError(Exception):
    """A problem with what the user gave, never a bug of the project: reported as one line, no traceback."""

    exit_status = EXIT_DATA


class ITAUsageError(ITAUserError):
    """The command line or its inputs are wrong; found before any long work (exit status 2)."""

    exit_status = EXIT_USAGE


class ITADataError(ITAUserError):
    """The data, the model or the files were refused while working (exit status 1)."""

    exit_status = EXIT_DATA


# OSErrors that say something about the user's machine or files, never about the code.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}


def user_error(error: BaseException) -> ITAUserError | None:
    """The user error that `error` stands for, or None when it is a bug. `ITAUserError`s are themselves; the
    model folder's `ModelLoadingError` is a data error; a full disk, a missing permission or a read-only folder
    is a data error; so is running out of (GPU) memory, with the way out."""
    if isinstance(error, ITAUserError):
        return error
    loading = sys.modules.get("modeling_ita.loading")  # only ever raised once the model folder is imported
    if loading is not None and isinstance(error, loading.ModelLoadingError):
        return ITADataError(str(error))
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return ITADataError(f"{error.strerror or error}{where}")
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        return ITADataError(f"{first_line}: try a smaller --batch-size, smaller images or another --device")
    return None


def report_error(prog: str, error: BaseException, stream: TextIO | None = None) -> int:
    """Print `error` the way every door prints it; returns its exit status. A user error is one line
    `prog: error: message`; anything else is a bug: its traceback, then where to report it."""
    stream = sys.stderr if stream is None else stream
    found = user_error(error)
    if found is not None:
        message = str(found).strip() or type(found).__name__
        print(f"{prog}: error: {message}", file=stream)
        return found.exit_status
    traceback.print_exception(type(error), error, error.__traceback__, file=stream)
    print(
        f"{prog}: internal error: this is a bug in ita-segmentation, not a problem with what you gave it; please "
        f"report it ({issue_tracker()}) with the command line and the traceback above",
        file=stream,
    )
    return EXIT_BUG


def run_door(prog: str, work: Callable[[], int | None]) -> int:
    """Run a door's `work` and return its exit status: `work`'s own (None is 0), 2 for argparse's usage errors
    (returned, not raised, so that Python callers of `ita_cli` get a status too), 130 for Ctrl-C, and
    `report_error`'s for any exception."""
    try:
        status = work()
    except SystemExit as exit_:  # argparse: --help (0) and usage errors (2), already printed
        code = exit_.code
        if code is None or isinstance(code, int):
            return EXIT_OK if code is None else code
        print(f"{prog}: error: {code}", file=sys.stderr)  # sys.exit("message")
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place every exception becomes a message and a status
        return report_error(prog, error)
    return EXIT_OK if status is None else int(status)
