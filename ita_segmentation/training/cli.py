"""`ita-train` (`scripts/train.py`): train with the transformers Trainer (see `trainer`).

Its arguments are `trainer.ITAModelArguments`, `ITADataArguments` and `ITATrainingArguments`, parsed by
transformers' `HfArgumentParser`; `ITATrainingArguments` extends `TrainingArguments`, which imports torch, so
for now `--help` takes as long as that.
"""

import sys
from collections.abc import Sequence

__all__ = ["PROG", "main"]

PROG = "ita-train"


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`ita-train`: returns the exit status (0 trained, 1 the data or the model was refused, 2 usage error)."""
    from modeling_ita.loading import ModelLoadingError

    from ..evaluation.data_check import DataCheckError
    from .trainer import main as train

    try:
        train(None if argv is None else list(argv))
    except (DataCheckError, ModelLoadingError, FileExistsError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0
