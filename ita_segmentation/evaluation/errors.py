"""The evaluation's refusals of what the user gave. They derive from the project's user errors
(`ita_segmentation.errors`), so that every door reports them as one line with their exit status, and from the
built-in error a Python caller would expect (`ValueError`, `FileNotFoundError`, `KeyError`, `FileExistsError`).

Standard library only."""

from ..errors import ITADataError, ITAUsageError

__all__ = ["EvaluationDataError", "MissingColumnError", "MissingDataError", "OutputFolderTakenError"]


class EvaluationDataError(ITADataError, ValueError):
    """The data cannot be evaluated as given: a class list of the wrong length, a dataset without class names, an
    image and label map that do not fit (exit status 1)."""


class MissingDataError(ITADataError, FileNotFoundError):
    """A benchmark's or dataset's files are not where they were looked for (the message names where)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class MissingColumnError(ITADataError, KeyError):
    """A dataset lacks the image or label column asked for (the message lists its columns)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""


class OutputFolderTakenError(ITAUsageError, FileExistsError):
    """The output folder already holds results (or files this program did not write) that a run would replace
    (exit status 2, found before any work)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
