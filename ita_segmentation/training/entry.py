"""The training run of `ita-train` and `scripts/train.py`: the three argument groups parsed by transformers'
`HfArgumentParser` (`parse_arguments`, every `TrainingArguments` option included), the checks made before any long
work (`check_run`: the values, files and folders of `checks.py` again, half precision on the CPU, the config of
the checkpoint to resume; `check_output_dir`: an earlier run is neither overwritten nor mixed with silently), and
the run itself (`main`, `run`).

The command (`cli.py`) checks the project's own arguments with the standard library first and imports this
module (torch, transformers) once they are well formed.
"""

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from transformers import HfArgumentParser, TrainingArguments

from configuration_ita import ITAConfig

from ..errors import ITADataError, ITAUsageError
from .arguments import ITADataArguments, ITAModelArguments
from .checks import (
    HALF_EVALUATION,
    check_locations,
    check_output_folders,
    check_values,
    compare_configs,
    refuse_half_precision_evaluation_on_cpu,
    resolve_checkpoint,
)
from .loading import load_model, load_processor, planned_config
from .precompute import precompute_dominant_categories
from .trainer import ITATrainer, build_trainer, class_names_of, explicit_class_names, load_training_rows
from .training_arguments import ITATrainingArguments

__all__ = ["build_parser", "check_output_dir", "check_run", "main", "parse_arguments", "run"]

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
    """Raise `ITAUsageError` when `output_dir` is a file, cannot be written, or holds an earlier run's files and
    this run neither resumes it nor was told to overwrite it (`overwrite_output_dir`): its checkpoints and model
    would be replaced silently."""
    check_output_folders(
        {
            "output_dir": training_args.output_dir,
            "resume_from_checkpoint": training_args.resume_from_checkpoint,
            "overwrite_output_dir": getattr(training_args, "overwrite_output_dir", False),
        }
    )


def check_run(
    model_args: ITAModelArguments, data_args: ITADataArguments, training_args: TrainingArguments
) -> tuple[ITAConfig, str | None]:
    """Every check made before the data is read and the model loaded (`checks.py`), on the parsed arguments:
    values, files, output folders, half precision on the CPU, what the model's config allows, and the checkpoint to
    resume, whose config must be the model's. Returns the model's config (`loading.planned_config`) and the
    checkpoint folder to resume (None: a new run)."""
    values = {**vars(training_args), **vars(data_args), **vars(model_args)}
    check_values(values)
    check_locations(values)
    check_output_folders(values)
    if training_args.device.type == "cpu":
        refuse_half_precision_evaluation_on_cpu([(name, getattr(training_args, name)) for name in HALF_EVALUATION])
    config = planned_config(model_args)
    without_ranking = not config.num_dominant_categories
    if without_ranking and data_args.precompute_dominant_categories_to:
        raise ITAUsageError(
            "--precompute_dominant_categories_to: this model (FC-CLIP, num_dominant_categories 0) has no "
            "dominant-category text queries, so there is nothing to rank; give an ITA model"
        )
    if without_ranking and data_args.dominant_categories == "column":
        raise ITAUsageError(
            "--dominant_categories column needs a model with dominant-category text queries (ITA); this one is "
            "FC-CLIP (num_dominant_categories 0): leave the option out"
        )
    if data_args.precompute_dominant_categories_to:
        return config, None
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    if checkpoint is not None:
        compare_configs(checkpoint, _checkpoint_config(checkpoint), config.to_dict())
    return config, checkpoint


def _checkpoint_config(checkpoint: str) -> dict[str, Any]:
    """The full config (defaults filled in) of the model saved in `checkpoint`."""
    path = Path(checkpoint) / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ITADataError(
            f"--resume_from_checkpoint {checkpoint}: its config.json cannot be read ({error}); give another "
            "checkpoint-<step> folder"
        ) from None
    if not isinstance(saved, dict) or saved.get("model_type") != ITAConfig.model_type:
        kind = saved.get("model_type") if isinstance(saved, dict) else None
        raise ITADataError(
            f"--resume_from_checkpoint {checkpoint} holds a {kind or 'non-ITA'} model, not an ITA one; give a "
            "checkpoint of an ita-train run"
        )
    return ITAConfig.from_pretrained(checkpoint).to_dict()


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
    config, checkpoint = check_run(model_args, data_args, training_args)
    if data_args.precompute_dominant_categories_to:
        explicit_names = explicit_class_names(data_args)
        rows = load_training_rows(data_args, explicit_names)
        class_names = class_names_of(rows, explicit_names, "the training data")
        model = load_model(model_args, class_names, config).to(training_args.device)  # type: ignore[arg-type]
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

    trainer = build_trainer(model_args, data_args, training_args, config=config)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer
