"""Training ITA and FC-CLIP with the `transformers` Trainer: `ITATrainer`, and `build_trainer`, which assembles
model, processor, datasets and metrics from the three argument groups (the training run of `ita-train` and
`scripts/train.py` is `entry.main`).

The recipe is FC-CLIP's (Mask2Former's `train_net.py` and COCO panoptic base config): AdamW with its parameter
groups and step schedule (`recipe.py`), full-model gradient clipping at L2 norm 0.01 (Trainer's
`max_grad_norm`), batch 16 (e.g. 8 GPUs x `per_device_train_batch_size 2`), mixed precision with
`--bf16`/`--fp16`; the defaults are in `arguments.py`.

Every label map is checked (`evaluation.data_check`) before the model is built.
"""

import logging
import math
from collections.abc import Sequence
from typing import Any, cast

import datasets
import torch
from datasets.data_files import EmptyDatasetError
from torch import nn
from transformers import (
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from configuration_ita import COCO_PANOPTIC_VOCABULARY, ITAConfig
from image_processing_ita import ITAImageProcessor
from processing_ita import ITAProcessor

from ..errors import ITADataError, ITAUsageError
from ..evaluation.data_check import check_segmentation_data
from ..segmentation_data import Unpaired, load_segmentation_dataset, resolve_class_names
from ..vocabulary_files import read_vocabulary_file
from .arguments import ITADataArguments, ITAModelArguments
from .data import (
    IGNORE_LABEL,
    ITASegmentationCollator,
    ITASegmentationDataset,
    LargeScaleJitter,
    label_map_from_targets,
)
from .loading import load_model, load_processor, planned_config
from .metrics import ITASegmentationMetrics
from .recipe import BACKBONE_LR_MULTIPLIER, StepLRSchedule, build_parameter_groups, scaled_decay_steps
from .training_arguments import ITATrainingArguments

__all__ = [
    "ITATrainer",
    "build_trainer",
    "checked_rows",
    "class_names_of",
    "explicit_class_names",
    "load_split_rows",
    "load_training_rows",
    "segments_column",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------------------


def _pad_rows(rows: Sequence[torch.Tensor], value: int = IGNORE_LABEL) -> torch.Tensor:
    length = max(row.numel() for row in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long, device=rows[0].device)
    for index, row in enumerate(rows):
        out[index, : row.numel()] = row
    return out


class _DatasetEpochCallback(TrainerCallback):
    """Tells the training dataset the epoch, so the augmentation differs between epochs (accelerate does this
    only in single-process runs)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        set_epoch = getattr(self.trainer.train_dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class ITATrainer(Trainer):
    """`Trainer` with FC-CLIP's optimiser groups and step schedule, and an evaluation step that reduces each
    batch to argmax label maps.

    Evaluation needs `processing_class` (an `ITAProcessor` or `ITAImageProcessor`, for
    `post_process_semantic_segmentation`) and, with `compute_metrics` (`ITASegmentationMetrics`),
    `batch_eval_metrics=True`: each batch yields `[B, L]` predictions and references (flattened maps at the
    processed resolution, padded with `IGNORE_LABEL`), never the `[B, Q, H/4, W/4]` logits.

    With `ITATrainingArguments` the schedule is Mask2Former's step schedule (`lr_schedule="step"`); with plain
    `TrainingArguments` it is the one `lr_scheduler_type` names, and the backbone-side factor is 0.1.
    """

    def __init__(
        self, *args: Any, processing_class: ITAProcessor | ITAImageProcessor | None = None, **kwargs: Any
    ) -> None:
        kwargs["processing_class"] = processing_class
        super().__init__(*args, **kwargs)
        # The model's loss is already normalised (by the number of target masks, averaged over processes).
        self.model_accepts_loss_kwargs = False
        if self.compute_metrics is not None and not self.args.batch_eval_metrics:
            raise ValueError(
                "ITATrainer's metrics accumulate a confusion matrix batch by batch: set batch_eval_metrics=True "
                "(with eval_do_concat_batches=False)"
            )
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
            logger.warning(
                "Persistent dataloader workers keep the first epoch's augmentation seeds; prefer non-persistent ones"
            )
        self.add_callback(_DatasetEpochCallback(self))

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        model = cast(PreTrainedModel, self.model if model is None else model)
        if self.optimizer is None:
            groups = build_parameter_groups(
                model,
                self.args.learning_rate,
                self.args.weight_decay,
                getattr(self.args, "backbone_lr_multiplier", BACKBONE_LR_MULTIPLIER),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if getattr(self.args, "lr_schedule", "transformers") != "step":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = self.optimizer if optimizer is None else optimizer
            if optimizer is None:
                raise ValueError("ITATrainer.create_scheduler: create the optimizer first (create_optimizer)")
            args = cast(ITATrainingArguments, self.args)  # lr_schedule="step" comes with ITATrainingArguments
            decay_steps = args.lr_decay_steps or scaled_decay_steps(num_training_steps, args.lr_decay_fractions)
            schedule = StepLRSchedule(
                warmup_steps=args.get_warmup_steps(num_training_steps),
                warmup_factor=args.lr_warmup_factor,
                decay_steps=tuple(decay_steps),
                decay_factor=args.lr_decay_factor,
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        reset = getattr(self.compute_metrics, "reset", None)
        if reset is not None:
            reset()  # drop the counts of an interrupted evaluation
        return super().evaluate(*args, **kwargs)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = None if outputs.loss is None else outputs.loss.detach().float()
        if prediction_loss_only or "mask_labels" not in inputs:
            return loss, None, None
        if self.processing_class is None:
            raise ValueError("ITATrainer needs processing_class (an ITAProcessor) to turn predictions into label maps")
        processor = cast(ITAProcessor | ITAImageProcessor, self.processing_class)
        # One `[H, W]` label map per image, at its size (no scores asked for).
        label_maps = cast(list[torch.Tensor], processor.post_process_semantic_segmentation(outputs))
        predictions, references = [], []
        for label_map, size, masks, classes in zip(
            label_maps, outputs.image_sizes.tolist(), inputs["mask_labels"], inputs["class_labels"]
        ):
            predictions.append(label_map.flatten())
            references.append(label_map_from_targets(masks, classes, size).flatten().to(label_map.device))
        return loss, _pad_rows(predictions), _pad_rows(references)


# ------------------------------------------------------------------------------------------------------------
# Assembly
# ------------------------------------------------------------------------------------------------------------


def load_split_rows(
    data_args: ITADataArguments,
    split: str,
    max_samples: int | None,
    num_synthetic: int,
    class_names: Sequence[str] | None,
    unpaired: Unpaired | None = None,
) -> datasets.Dataset:
    """One split's rows as the data arguments describe them (`segmentation_data.load_segmentation_dataset`)."""
    kwargs: dict[str, Any] = {}
    if data_args.dataset_layout == "coco_panoptic":
        kwargs["class_names"] = class_names or COCO_PANOPTIC_VOCABULARY
    elif data_args.dataset_layout == "synthetic":
        kwargs.update(synthetic_num_images=num_synthetic, synthetic_image_size=data_args.synthetic_image_size)
    else:  # "auto" reads label-map folders too, when the folder has them
        kwargs.update(image_subdir=data_args.image_subdir, label_subdir=data_args.label_subdir, unpaired=unpaired)
        if data_args.dataset_layout == "auto" and data_args.dataset_config_name:
            kwargs["name"] = data_args.dataset_config_name
    try:
        return load_segmentation_dataset(
            data_args.dataset_name_or_path, split, layout=data_args.dataset_layout, max_samples=max_samples, **kwargs
        )
    except (FileNotFoundError, EmptyDatasetError) as error:
        # The user's data is not where the options say (a folder without label maps, an empty folder).
        raise ITADataError(
            f"--dataset_name_or_path {data_args.dataset_name_or_path} (split {split!r}): {error}; check the path, "
            "--dataset_layout and the split names"
        ) from error


def class_names_of(rows: datasets.Dataset, explicit_names: Sequence[str] | None, what: str) -> list[str]:
    """The vocabulary of `rows` (`segmentation_data.resolve_class_names`); a dataset that does not say its classes,
    or class names that cannot be used, raise `ITAUsageError` naming the options that give them."""
    try:
        return resolve_class_names(rows, class_names=explicit_names)
    except ValueError as error:
        raise ITAUsageError(f"the classes of {what}: {error} (--vocabulary_file or --class_names)") from None


def load_training_rows(
    data_args: ITADataArguments, class_names: Sequence[str] | None, unpaired: Unpaired | None = None
) -> datasets.Dataset:
    """The training split's rows."""
    return load_split_rows(
        data_args,
        data_args.train_split,
        data_args.max_train_samples,
        data_args.synthetic_num_train_images,
        class_names,
        unpaired,
    )


def checked_rows(
    rows: datasets.Dataset,
    class_names: Sequence[str],
    data_args: ITADataArguments,
    training_args: TrainingArguments,
    unpaired: Unpaired,
    what: str,
) -> datasets.Dataset:
    """`rows` after the pre-flight pass over every label map (`evaluation.data_check`): every problem found
    stops the run before the model is built, or, with `skip_bad_samples`, the bad samples are left out."""
    report = check_segmentation_data(
        rows,
        len(class_names),
        ignore_index=data_args.ignore_index,
        reduce_labels=data_args.reduce_labels,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        segments_column=segments_column(data_args),
        unpaired=unpaired,
        num_workers=training_args.dataloader_num_workers,
        description=f"Checking {what}",
        progress=not training_args.disable_tqdm,
        vocabulary=f"{_vocabulary_source(data_args)} ({len(class_names)} classes)",
    )
    kept = report.raise_or_keep_good(rows, data_args.skip_bad_samples, what, log=logger.warning)
    if len(kept) == 0:
        raise ITADataError(
            f"every one of the {len(rows)} samples of {what} was left out as bad (--skip_bad_samples): nothing "
            "is left to train on; fix the data (run without --skip_bad_samples for the list of problems)"
        )
    return kept


def explicit_class_names(data_args: ITADataArguments) -> list[str] | None:
    """The classes the data arguments name (`vocabulary_file` or `class_names`), or None: the dataset's own."""
    if data_args.vocabulary_file and data_args.class_names:
        raise ITAUsageError("--vocabulary_file and --class_names both name the classes; give one of them")
    if data_args.vocabulary_file:
        return read_vocabulary_file(data_args.vocabulary_file)
    return list(data_args.class_names) if data_args.class_names else None


def segments_column(data_args: ITADataArguments) -> str | None:
    """The column of panoptic segment lists: COCO panoptic's `segments_info`, else the one the arguments name."""
    return "segments_info" if data_args.dataset_layout == "coco_panoptic" else data_args.segments_column


def build_trainer(
    model_args: ITAModelArguments,
    data_args: ITADataArguments,
    training_args: TrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
    config: ITAConfig | None = None,
) -> ITATrainer:
    """Model, processor, datasets, metrics and `ITATrainer` from the three argument groups (what
    `scripts/train.py` runs); `config` is the model's when already read (`loading.planned_config`).

    The order keeps long work last: the processor (from the config) and the crop size it allows, then the data
    and its check, then the model."""
    set_seed(training_args.seed)
    config = planned_config(model_args) if config is None else config
    if data_args.dominant_categories == "column" and not config.num_dominant_categories:
        raise ITAUsageError(
            "--dominant_categories column needs a model with dominant-category text queries (ITA); this one is "
            "FC-CLIP (num_dominant_categories 0): leave the option out"
        )
    processor = load_processor(model_args, data_args, config)
    divisor = getattr(processor.image_processor, "size_divisor", 1) or 1
    if data_args.crop_size % divisor:
        raise ITAUsageError(
            f"--crop_size {data_args.crop_size}: must be a multiple of {divisor} (the model's largest stride; the "
            f"crop is padded to crop_size); give e.g. {max(divisor, round(data_args.crop_size / divisor) * divisor)}"
        )
    explicit_names = explicit_class_names(data_args)
    unpaired: Unpaired = []
    train_rows = load_training_rows(data_args, explicit_names, unpaired)
    class_names = class_names_of(train_rows, explicit_names, "the training data")
    train_rows = checked_rows(train_rows, class_names, data_args, training_args, unpaired, "the training data")
    eval_rows = eval_names = None
    if data_args.eval_split:
        unpaired = []
        eval_rows = load_split_rows(
            data_args,
            data_args.eval_split,
            data_args.max_eval_samples,
            data_args.synthetic_num_eval_images,
            explicit_names,
            unpaired,
        )
        eval_names = class_names_of(eval_rows, explicit_names, "the evaluation data")
        eval_rows = checked_rows(eval_rows, eval_names, data_args, training_args, unpaired, "the evaluation data")

    model = load_model(model_args, class_names, config)

    column = None
    candidate_names = None
    if data_args.dominant_categories == "column":
        column = data_args.dominant_categories_column
        candidate_names = model.encode_vocabulary(class_names).candidate_names
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    common: dict[str, Any] = dict(
        image_processor=processor.image_processor,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        segments_column=segments_column(data_args),
        ignore_index=data_args.ignore_index,
        reduce_labels=data_args.reduce_labels,
    )
    train_dataset = ITASegmentationDataset(
        train_rows,
        class_names=class_names,
        jitter=LargeScaleJitter(data_args.crop_size, data_args.min_scale, data_args.max_scale, data_args.random_flip),
        dominant_categories_column=column,
        candidate_names=candidate_names,
        num_dominant_categories=model.config.num_dominant_categories,
        seed=seed,
        name="training",
        **common,
    )
    eval_dataset = compute_metrics = None
    if eval_rows is not None and eval_names is not None:
        eval_dataset = ITASegmentationDataset(eval_rows, class_names=eval_names, name="evaluation", **common)
        compute_metrics = ITASegmentationMetrics(len(eval_names))

    return ITATrainer(
        model=model,
        args=training_args,
        data_collator=ITASegmentationCollator(),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )


def _vocabulary_source(data_args: ITADataArguments) -> str:
    """Where the class list came from, as the user gave it (named when label ids fall outside it)."""
    if data_args.vocabulary_file:
        return f"--vocabulary_file {data_args.vocabulary_file}"
    if data_args.class_names:
        return "--class_names"
    return "the dataset's ClassLabel feature"
