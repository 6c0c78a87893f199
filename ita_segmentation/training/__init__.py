"""Training wing: augmentation, targets and batching (`data.py`), FC-CLIP's optimiser and schedule
(`recipe.py`, its numbers in `defaults.py`), mIoU during training (`metrics.py`), the model to start from
(`loading.py`), precomputed dominant categories (`precompute.py`), the command-line arguments (`arguments.py`,
torch-free, and `training_arguments.py`), `ITATrainer` with its assembly (`trainer.py`), and the training run
of `ita-train` (`entry.py`; the command's parser is `cli.py`).

Training uses evaluation's metric and data check (`evaluation.metric`, `evaluation.data_check`); evaluation
never imports training. The data both read lives below them (`ita_segmentation.segmentation_data`).

The names below are imported on first use (most import torch), so that `ita-train` (`training.cli`) checks
its arguments before any of them is loaded.
"""

from typing import TYPE_CHECKING

from ita_segmentation.lazy_names import lazy_names

if TYPE_CHECKING:
    from .arguments import ITADataArguments, ITAModelArguments, ITARecipeArguments
    from .entry import check_output_dir, main, parse_arguments
    from .loading import load_model, load_processor
    from .metrics import ITASegmentationMetrics
    from .precompute import precompute_dominant_categories
    from .recipe import StepLRSchedule, build_parameter_groups, scaled_decay_steps
    from .trainer import ITATrainer, build_trainer
    from .training_arguments import ITATrainingArguments

# Public name -> the module of this package that defines it.
_HOMES = {
    "ITADataArguments": "arguments",
    "ITAModelArguments": "arguments",
    "ITARecipeArguments": "arguments",
    "ITATrainingArguments": "training_arguments",
    "check_output_dir": "entry",
    "main": "entry",
    "parse_arguments": "entry",
    "load_model": "loading",
    "load_processor": "loading",
    "ITASegmentationMetrics": "metrics",
    "precompute_dominant_categories": "precompute",
    "StepLRSchedule": "recipe",
    "build_parameter_groups": "recipe",
    "scaled_decay_steps": "recipe",
    "ITATrainer": "trainer",
    "build_trainer": "trainer",
}

__all__ = [
    "ITADataArguments",
    "ITAModelArguments",
    "ITARecipeArguments",
    "ITASegmentationMetrics",
    "ITATrainer",
    "ITATrainingArguments",
    "StepLRSchedule",
    "build_parameter_groups",
    "build_trainer",
    "check_output_dir",
    "load_model",
    "load_processor",
    "main",
    "parse_arguments",
    "precompute_dominant_categories",
    "scaled_decay_steps",
]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
