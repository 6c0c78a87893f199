"""The export's errors, raised by the tracing, the check and the command. They derive from the project's user
errors (`ita_segmentation.errors`), so that every door reports them as one line with their exit status."""

from ..errors import ITADataError, ITAUsageError

__all__ = ["ITAExportError", "ITAExportMismatchError", "ITAExportUsageError"]


class ITAExportError(ITADataError, RuntimeError):
    """The export cannot be done: a model that cannot be loaded, a model that does not trace (exit status 1)."""


class ITAExportMismatchError(ITAExportError):
    """The exported graphs do not compute what the PyTorch model computes (the message names each difference)."""


class ITAExportUsageError(ITAUsageError, ITAExportError):
    """The command line asks for an export that must not be done, found before the model is loaded: an output
    folder that is not empty, the model's own folder, a folder that is already an export (exit status 2)."""
