"""Training wing: datasets and augmentation, the Trainer recipe, and generated toy data."""

from .trainer import (
    ITADataArguments,
    ITAModelArguments,
    ITASegmentationMetrics,
    ITATrainer,
    ITATrainingArguments,
    StepLRSchedule,
    build_parameter_groups,
    build_trainer,
    load_model,
    load_processor,
    main,
    precompute_dominant_categories,
    scaled_decay_steps,
)

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
