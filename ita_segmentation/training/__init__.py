"""Training wing: augmentation, targets and batching (`data.py`), FC-CLIP's optimiser and schedule
(`recipe.py`), mIoU during training (`metrics.py`), the model to start from (`loading.py`), precomputed dominant
categories (`precompute.py`), the command-line arguments (`arguments.py`), and `ITATrainer` with its assembly
(`trainer.py`).

Training uses evaluation's metric and data check (`evaluation.metric`, `evaluation.data_check`); evaluation
never imports training. The data both read lives below them (`ita_segmentation.segmentation_data`).
"""

from .arguments import ITADataArguments, ITAModelArguments, ITATrainingArguments
from .loading import load_model, load_processor
from .metrics import ITASegmentationMetrics
from .precompute import precompute_dominant_categories
from .recipe import StepLRSchedule, build_parameter_groups, scaled_decay_steps
from .trainer import ITATrainer, build_trainer, main

__all__ = [
    "ITADataArguments",
    "ITAModelArguments",
    "ITASegmentationMetrics",
    "ITATrainer",
    "ITATrainingArguments",
    "StepLRSchedule",
    "build_parameter_groups",
    "build_trainer",
    "load_model",
    "load_processor",
    "main",
    "precompute_dominant_categories",
    "scaled_decay_steps",
]
