"""The export's errors, raised by the tracing, the check and the command."""

__all__ = ["ITAExportError", "ITAExportMismatchError"]


class ITAExportError(RuntimeError):
    """The export cannot be done: a missing model, an output folder that is not empty, a model that does not trace."""


class ITAExportMismatchError(ITAExportError):
    """The exported graphs do not compute what the PyTorch model computes (the message names each difference)."""
