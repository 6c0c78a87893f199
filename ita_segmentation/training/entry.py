"""The training run of `ita-train` and `scripts/train.py`: the three argument groups parsed by transformers'
`HfArgumentParser` (`parse_arguments`, every `TrainingArguments` option included), the check that an earlier
run is neither overwritten nor mixed with silently (`check_output_dir`), and the run itself (`main`, `run`).

The command (`cli.py`) checks the project's own arguments with the standard library first and imports this
module (torch, transformers) once they are well formed.
"""

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from transformers import HfArgumentParser, TrainingArguments

from configuration_ita import ITAConfig

from ..segmentation_data import resolve_class_names
from .arguments import ITADataArguments, ITAModelArguments
from .loading import load_model, load_processor
from .precompute import precompute_dominant_categories
from .trainer import ITATrainer, build_trainer, explicit_class_names, load_training_rows
from .training_arguments import ITATrainingArguments

__all__ = ["build_parser", "check_output_dir", "main", "parse_arguments", "run"]

logger = logging.getLogger(__name__)


def build_parser(prog: str | None = None) -> HfArgumentParser:
    """transformers' parser over the three argument groups: every option `ita-train` takes (`--help-all`)."""
    groups: Any = (ITAModelArguments, ITADataArguments, ITATrainingArguments)  # HfArgumentParser's hint is narrower
    return HfArgumentParser(groups) if prog is None else HfArgumentParser(groups, prog=prog)


def parse_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[ITAModelArguments, ITADataArguments, ITATrainingArguments]:
    """The three argument groups from `argv` (default: the command line), or from a single `.json` file."""
    parser = build_parser()
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    return cast(tuple[ITAModelArguments, ITADataArguments, ITATrainingArguments], tuple(parsed))


def check_output_dir(training_args: TrainingArguments) -> None:
    """Raise `FileExistsError` when `output_dir` holds an earlier run's files and this run neither resumes it nor
    was told to overwrite it (`overwrite_output_dir`): its checkpoints and model would be replaced silently."""
    if training_args.output_dir is None:
        return
    output = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint or getattr(training_args, "overwrite_output_dir", False):
        return
    content = sorted(path.name for path in output.iterdir()) if output.is_dir() else []
    if content:
        shown = ", ".join(content[:5]) + (f" and {len(content) - 5} more" if len(content) > 5 else "")
        raise FileExistsError(
            f"output_dir {output} is not empty ({shown}); resume that run with --resume_from_checkpoint last, "
            "choose another --output_dir, or give --overwrite_output_dir to train anew into it"
        )


def main(argv: Sequence[str] | None = None) -> ITATrainer | None:
    """Train (or, with `--precompute_dominant_categories_to`, rank dominant categories) with the arguments `argv`
    (default: the command line); returns the trainer."""
    return run(*parse_arguments(argv))


def run(
    model_args: ITAModelArguments, data_args: ITADataArguments, training_args: ITATrainingArguments
) -> ITATrainer | None:
    """Train (or, with `--precompute_dominant_categories_to`, rank dominant categories) with parsed arguments
    (`parse_arguments`); returns the trainer (`None` after ranking)."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
    )
    if data_args.precompute_dominant_categories_to:
        explicit_names = explicit_class_names(data_args)
        rows = load_training_rows(data_args, explicit_names)
        class_names = resolve_class_names(rows, class_names=explicit_names)
        model = load_model(model_args, class_names).to(training_args.device)  # type: ignore[arg-type]
        processor = load_processor(model_args, config=cast(ITAConfig, model.config))
        rows = precompute_dominant_categories(
            model,
            rows,
            class_names,
            processor.image_processor,
            data_args.image_column,
            data_args.dominant_categories_column,
            training_args.per_device_eval_batch_size,
        )
        rows.save_to_disk(data_args.precompute_dominant_categories_to)
        logger.info(
            "Saved %d rows with %r to %s",
            len(rows),
            data_args.dominant_categories_column,
            data_args.precompute_dominant_categories_to,
        )
        return None

    check_output_dir(training_args)
    trainer = build_trainer(model_args, data_args, training_args)
    resume: str | bool | None = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer
