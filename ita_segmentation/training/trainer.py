"""Training ITA and FC-CLIP with the `transformers` Trainer: arguments, optimiser, schedule, metrics.

The recipe is FC-CLIP's (Mask2Former's `train_net.py` and COCO panoptic base config):

- AdamW, lr 1e-4, weight decay 0.05, except no weight decay on the parameters of normalisation layers and of
  embedding layers (`build_optimizer`'s `WEIGHT_DECAY_NORM` and `WEIGHT_DECAY_EMBED` are 0): here the
  decoder's `query_feat`, `query_embed`, `level_embed`, the `void_embedding`, and the DCU projection (the
  original's `add_tgt_em`, an `nn.Embedding` inside the backbone). Biases of linear and convolution layers,
  the pixel decoder's `level_embed` (a bare parameter there) and the decoder's `logit_scale` keep weight
  decay, as in the original.
- Learning rate x 0.1 on the backbone side: in ITA the frozen CLIP plus the DCU projection, so only the
  projection is affected (CLIP is frozen and left out of the optimiser).
- Full-model gradient clipping at L2 norm 0.01 (Trainer's `max_grad_norm`).
- Step schedule: 10 warm-up iterations (linear from `lr_warmup_factor`, 1.0 in Mask2Former's config, which
  makes the warm-up flat), then x 0.1 at iterations 327,778 and 355,092 of 368,750, i.e. at the same fractions
  of `max_steps`.
- Batch 16 (e.g. 8 GPUs x `per_device_train_batch_size 2`), mixed precision with `--bf16`/`--fp16`.

`build_trainer` assembles model, processor, datasets, metrics and an `ITATrainer`; `main` is the command line of
`scripts/train.py`.
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed

from configuration_ita import COCO_PANOPTIC_VOCABULARY, ITAConfig
from image_processing_ita import ITAImageProcessor
from processing_ita import ITAProcessor

from modeling_ita.loading import check_model_location, load_segmentation_model
from modeling_ita.clip_backbone import ITACLIPBackbone, load_open_clip_weights
from .data import (
    DEFAULT_CROP_SIZE,
    DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE,
    IGNORE_LABEL,
    ITASegmentationCollator,
    ITASegmentationDataset,
    LargeScaleJitter,
    label_map_from_targets,
)
from ..segmentation_data import load_segmentation_dataset, resolve_class_names
from modeling_ita.dominant_categories import ITADominantCategoryUnearthing
from ..evaluation.data_check import check_segmentation_data
from ..evaluation.metric import SegmentationConfusionMatrix
from modeling_ita.modeling import ITAForOpenVocabSegmentation

__all__ = [
    "ITAModelArguments",
    "ITADataArguments",
    "ITATrainingArguments",
    "ITATrainer",
    "ITASegmentationMetrics",
    "StepLRSchedule",
    "build_parameter_groups",
    "scaled_decay_steps",
    "load_model",
    "load_processor",
    "build_trainer",
    "precompute_dominant_categories",
    "main",
]

logger = logging.getLogger(__name__)

# Mask2Former's COCO schedule (SOLVER.STEPS of SOLVER.MAX_ITER), as fractions of the run.
COCO_MAX_ITER = 368_750
COCO_DECAY_STEPS = (327_778, 355_092)
BACKBONE_LR_MULTIPLIER = 0.1  # SOLVER.BACKBONE_MULTIPLIER
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ITAModelArguments:
    """Which model to train."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A trained or converted ITA/FC-CLIP model (folder or Hub id) to fine-tune."}
    )
    config_path: str | None = field(
        default=None, metadata={"help": "An ITAConfig JSON file to build a new model from (instead of the defaults)."}
    )
    variant: str | None = field(
        default=None,
        metadata={
            "help": "For a new model without config_path: 'ita' (default) or 'fcclip'.",
            "choices": ["ita", "fcclip"],
        },
    )
    clip_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "open_clip weights for the frozen CLIP of a new model, e.g. the open_clip_pytorch_model.bin of "
            "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup (training from scratch)."
        },
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor to use; defaults to the model's, else a default ITAProcessor."}
    )


@dataclass
class ITADataArguments:
    """Which data, and how it is augmented."""

    dataset_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local folder/file (parquet, arrow, imagefolder, save_to_disk), COCO root "
            "(--dataset_layout coco_panoptic) or label-map root (--dataset_layout label_folders)."
        },
    )
    dataset_layout: str = field(
        default="auto",
        metadata={
            "help": "How the data is stored. auto: label-map folders when DATASET/images/<split> and "
            "DATASET/annotations/<split> exist, else what datasets.load_dataset reads.",
            "choices": ["auto", "coco_panoptic", "label_folders", "synthetic"],
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    train_split: str = field(default="train", metadata={"help": "Training split (train2017 for COCO)."})
    eval_split: str | None = field(default=None, metadata={"help": "Split to evaluate mIoU on, if any."})
    image_column: str = field(default="image", metadata={"help": "Column of the images."})
    label_column: str = field(
        default="label", metadata={"help": "Column of the label maps (or panoptic PNGs with --segments_column)."}
    )
    segments_column: str | None = field(
        default=None,
        metadata={"help": "Column of panoptic segment lists (id, category_id, iscrowd); set for coco_panoptic."},
    )
    vocabulary_file: str | None = field(
        default=None, metadata={"help": "Class names, one `id:name,synonym,...` line per class (FC-CLIP's format)."}
    )
    class_names: list[str] | None = field(
        default=None, metadata={"help": "Class names (synonyms comma-separated), instead of a vocabulary file."}
    )
    ignore_index: int = field(default=255, metadata={"help": "Label of unlabelled pixels in semantic label maps."})
    reduce_labels: bool = field(default=False, metadata={"help": "Label maps use 0 for background, classes from 1."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation images."})
    crop_size: int = field(default=DEFAULT_CROP_SIZE, metadata={"help": "Large-scale jitter crop (and target) size."})
    min_scale: float = field(default=DEFAULT_MIN_SCALE, metadata={"help": "Large-scale jitter: smallest scale."})
    max_scale: float = field(default=DEFAULT_MAX_SCALE, metadata={"help": "Large-scale jitter: largest scale."})
    random_flip: bool = field(default=True, metadata={"help": "Large-scale jitter: random horizontal flip."})
    eval_shortest_edge: int | None = field(
        default=None, metadata={"help": "Evaluation resize (shortest side); defaults to the processor's (800)."}
    )
    eval_longest_edge: int | None = field(
        default=None, metadata={"help": "Evaluation resize (longest side cap); defaults to the processor's (1333)."}
    )
    dominant_categories: str = field(
        default="online",
        metadata={
            "help": "Dominant categories for training: 'online' (ranked by the frozen CLIP at each step) or "
            "'column' (read from --dominant_categories_column, written by --precompute_dominant_categories_to).",
            "choices": ["online", "column"],
        },
    )
    dominant_categories_column: str = field(
        default="dominant_categories", metadata={"help": "Column of precomputed dominant-category names."}
    )
    precompute_dominant_categories_to: str | None = field(
        default=None,
        metadata={
            "help": "Instead of training: rank the training images' dominant categories with the model's CLIP and "
            "save the training split with that column to this folder (datasets.save_to_disk)."
        },
    )
    synthetic_num_train_images: int = field(default=64, metadata={"help": "Synthetic layout: training scenes."})
    synthetic_num_eval_images: int = field(default=16, metadata={"help": "Synthetic layout: evaluation scenes."})
    synthetic_image_size: int = field(default=64, metadata={"help": "Synthetic layout: side of the scenes."})
    image_subdir: str = field(
        default="images", metadata={"help": "Label-map folders: images in DATASET/<image_subdir>/<split>."}
    )
    label_subdir: str = field(
        default="annotations", metadata={"help": "Label-map folders: label maps in DATASET/<label_subdir>/<split>."}
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={
            "help": "Every label map is checked before training; by default any problem stops the run with the "
            "list. With this, the bad samples are left out and counted instead."
        },
    )


@dataclass
class ITATrainingArguments(TrainingArguments):
    """`TrainingArguments` with FC-CLIP's recipe as defaults, and the settings that keep per-image targets intact
    (`remove_unused_columns=False`, `eval_do_concat_batches=False`, `batch_eval_metrics=True`)."""

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (FC-CLIP: 1e-4)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay, except norms and embeddings."})
    max_grad_norm: float = field(default=0.01, metadata={"help": "Full-model gradient clipping, L2 norm."})
    warmup_steps: float = field(default=10, metadata={"help": "Warm-up iterations (Mask2Former: 10)."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (FC-CLIP: AdamW)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep mask_labels/class_labels."})
    eval_do_concat_batches: bool = field(default=False, metadata={"help": "Never concatenate per-image lists."})
    batch_eval_metrics: bool = field(default=True, metadata={"help": "Accumulate mIoU batch by batch."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter is used in each step."}
    )
    backbone_lr_multiplier: float = field(
        default=BACKBONE_LR_MULTIPLIER,
        metadata={"help": "Learning-rate factor of the backbone side (the DCU projection)."},
    )
    lr_schedule: str = field(
        default="step",
        metadata={
            "help": "'step': Mask2Former's warm-up then step decay; 'transformers': use --lr_scheduler_type.",
            "choices": ["step", "transformers"],
        },
    )
    lr_decay_steps: list[int] | None = field(
        default=None, metadata={"help": "Iterations of the x lr_decay_factor steps; default: scaled from COCO's."}
    )
    lr_decay_fractions: list[float] = field(
        default_factory=lambda: [step / COCO_MAX_ITER for step in COCO_DECAY_STEPS],
        metadata={"help": "Decay steps as fractions of max_steps when lr_decay_steps is not given."},
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "Learning-rate factor at each decay step."})
    lr_warmup_factor: float = field(
        default=1.0,
        metadata={"help": "Warm-up starts at this fraction of the rate (Mask2Former's WARMUP_FACTOR 1.0: no ramp)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train anew into an output_dir that is not empty (by default such a run stops: resume it with "
            "--resume_from_checkpoint last, or choose another output_dir)."
        },
    )


# ------------------------------------------------------------------------------------------------------------
# Optimiser and schedule
# ------------------------------------------------------------------------------------------------------------


def build_parameter_groups(model, learning_rate, weight_decay, backbone_lr_multiplier=0.1):
    """AdamW parameter groups of FC-CLIP/Mask2Former's `build_optimizer` (see the module docstring).

    Frozen parameters (CLIP) are left out. Returns up to four groups, each with `params`, `param_names`, `lr`,
    `weight_decay` and a `name` (`"decay"`, `"no_decay"`, `"backbone_decay"`, `"backbone_no_decay"`).
    """
    backbone_side = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, (ITACLIPBackbone, ITADominantCategoryUnearthing))
        for parameter in module.parameters()
    }
    groups = {}
    seen = set()
    for module_name, module in model.named_modules():
        # Embeddings: nn.Embedding layers, and the DCU projection (the original's `add_tgt_em` embedding).
        no_decay_module = isinstance(module, NORM_LAYERS + (nn.Embedding, ITADominantCategoryUnearthing))
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            backbone = id(parameter) in backbone_side
            name = ("backbone_" if backbone else "") + ("no_decay" if no_decay_module else "decay")
            group = groups.setdefault(
                name,
                {
                    "name": name,
                    "params": [],
                    "param_names": [],
                    "lr": learning_rate * (backbone_lr_multiplier if backbone else 1.0),
                    "weight_decay": 0.0 if no_decay_module else weight_decay,
                },
            )
            group["params"].append(parameter)
            group["param_names"].append(f"{module_name}.{parameter_name}" if module_name else parameter_name)
    order = ("decay", "no_decay", "backbone_decay", "backbone_no_decay")
    return [groups[name] for name in order if name in groups]


def scaled_decay_steps(num_training_steps, fractions):
    """Decay iterations at `fractions` of the run (COCO's 327,778 and 355,092 of 368,750 by default)."""
    return [int(round(fraction * num_training_steps)) for fraction in fractions]


@dataclass
class StepLRSchedule:
    """Learning-rate factor at an iteration: detectron2's `WarmupMultiStepLR` with linear warm-up.

    During the first `warmup_steps` iterations the factor ramps linearly from `warmup_factor` to 1; it is
    multiplied by `decay_factor` at each of `decay_steps`.
    """

    warmup_steps: int = 10
    warmup_factor: float = 1.0
    decay_steps: tuple = ()
    decay_factor: float = 0.1

    def __call__(self, step):
        factor = self.decay_factor ** sum(step >= milestone for milestone in self.decay_steps)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


# ------------------------------------------------------------------------------------------------------------
# Metrics and trainer
# ------------------------------------------------------------------------------------------------------------


class ITASegmentationMetrics:
    """`compute_metrics` for `batch_eval_metrics=True`: adds each batch's argmax maps to one confusion matrix
    (`evaluation.metric.SegmentationConfusionMatrix`, detectron2's protocol) and returns mean IoU, mean
    accuracy, pixel accuracy and frequency-weighted IoU at the last batch.

    Predictions and references arrive as `[B, L]` rows of flattened maps (from `ITATrainer.prediction_step`),
    padded with `IGNORE_LABEL`, which also marks unlabelled pixels.
    """

    def __init__(self, num_labels):
        self.confusion = SegmentationConfusionMatrix(num_labels, ignore_index=IGNORE_LABEL)

    def reset(self):
        self.confusion.reset()

    def __call__(self, eval_prediction, compute_result=False):
        predictions = _to_numpy(eval_prediction.predictions)
        references = _to_numpy(eval_prediction.label_ids)
        scored = references != IGNORE_LABEL
        self.confusion.update(predictions[scored], references[scored])
        if not compute_result:
            return {}
        scores = self.confusion.compute()
        self.confusion.reset()
        return {
            key: scores[key] for key in ("mean_iou", "mean_accuracy", "overall_accuracy", "frequency_weighted_iou")
        }


def _to_numpy(values):
    if isinstance(values, (list, tuple)):
        values = values[0]
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _pad_rows(rows, value=IGNORE_LABEL):
    length = max(row.numel() for row in rows)
    out = torch.full((len(rows), length), value, dtype=torch.long, device=rows[0].device)
    for index, row in enumerate(rows):
        out[index, : row.numel()] = row
    return out


class _DatasetEpochCallback(TrainerCallback):
    """Tells the training dataset the epoch, so the augmentation differs between epochs (accelerate does this
    only in single-process runs)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


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

    def __init__(self, *args, processing_class=None, **kwargs):
        # Trainer.train (transformers 5.24) assumes that a ProcessorMixin has a tokenizer (`align_special_tokens`),
        # and ITAProcessor has none: the Trainer gets the image processor, `_save` writes the whole processor.
        self.processor = processing_class
        image_processor = getattr(processing_class, "image_processor", processing_class)
        super().__init__(*args, processing_class=image_processor, **kwargs)
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

    def create_optimizer(self, model=None):
        model = self.model if model is None else model
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

    def create_scheduler(self, num_training_steps, optimizer=None):
        if getattr(self.args, "lr_schedule", "transformers") != "step":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = self.optimizer if optimizer is None else optimizer
            decay_steps = self.args.lr_decay_steps or scaled_decay_steps(
                num_training_steps, self.args.lr_decay_fractions
            )
            schedule = StepLRSchedule(
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                warmup_factor=self.args.lr_warmup_factor,
                decay_steps=tuple(decay_steps),
                decay_factor=self.args.lr_decay_factor,
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.processor is not None and self.processor is not self.processing_class:
            self.processor.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)

    def evaluate(self, *args, **kwargs):
        if hasattr(self.compute_metrics, "reset"):
            self.compute_metrics.reset()  # drop the counts of an interrupted evaluation
        return super().evaluate(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        loss = None if outputs.loss is None else outputs.loss.detach().float()
        if prediction_loss_only or "mask_labels" not in inputs:
            return loss, None, None
        if self.processing_class is None:
            raise ValueError("ITATrainer needs processing_class (an ITAProcessor) to turn predictions into label maps")
        label_maps = self.processing_class.post_process_semantic_segmentation(outputs)  # at each image's size
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


def load_model(model_args, class_names=None):
    """The model to train: `model_name_or_path` (fine-tuning), or a new one from `config_path`/`variant` with the
    CLIP weights of `clip_checkpoint`. `class_names` become the config's training vocabulary."""
    if model_args.model_name_or_path:
        if model_args.config_path or model_args.clip_checkpoint or model_args.variant:
            raise ValueError("Give model_name_or_path alone, or a new model's config_path/variant/clip_checkpoint")
        check_model_location(model_args.model_name_or_path)
        config = ITAConfig.from_pretrained(model_args.model_name_or_path)
        if class_names:
            config.train_vocabulary = list(class_names)
        # Strict: a checkpoint that lacks weights would fine-tune from random ones without a word.
        return load_segmentation_model(model_args.model_name_or_path, config=config)
    if model_args.config_path:
        if model_args.variant:
            raise ValueError("Give config_path or variant, not both (the config decides the variant)")
        config = ITAConfig.from_json_file(model_args.config_path)
    else:
        config = ITAConfig.fcclip() if model_args.variant == "fcclip" else ITAConfig()
    if class_names:
        config.train_vocabulary = list(class_names)
    model = ITAForOpenVocabSegmentation(config)
    if model_args.clip_checkpoint:
        load_open_clip_weights(model.backbone, model_args.clip_checkpoint)
    else:
        logger.warning("No clip_checkpoint: the frozen CLIP keeps its random initialisation")
    return model


def load_processor(model_args, data_args=None, config=None):
    """The processor saved with the model (or `processor_name_or_path`), else the default `ITAProcessor` for the
    model `config`; the data arguments' `eval_shortest_edge`/`eval_longest_edge` override its resize."""
    source = model_args.processor_name_or_path or model_args.model_name_or_path
    processor = None
    if source:
        try:
            processor = ITAProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            logger.warning("No processor in %s (%s); using a default ITAProcessor", source, error)
    if processor is None:
        image_processor = ITAImageProcessor() if config is None else ITAImageProcessor.for_model_config(config)
        processor = ITAProcessor(image_processor=image_processor)
    if data_args is not None and (data_args.eval_shortest_edge or data_args.eval_longest_edge):
        size = dict(processor.image_processor.size)
        size = {key: value for key, value in size.items() if value is not None}
        if data_args.eval_shortest_edge:
            size["shortest_edge"] = data_args.eval_shortest_edge
        if data_args.eval_longest_edge:
            size["longest_edge"] = data_args.eval_longest_edge
        settings = processor.image_processor.to_dict()
        settings.pop("image_processor_type", None)
        processor = ITAProcessor(image_processor=ITAImageProcessor(**{**settings, "size": size}))
    return processor


def _load_rows(data_args, split, max_samples, num_synthetic, class_names, unpaired=None):
    kwargs = {}
    if data_args.dataset_layout == "coco_panoptic":
        kwargs["class_names"] = class_names or COCO_PANOPTIC_VOCABULARY
    elif data_args.dataset_layout == "synthetic":
        kwargs.update(synthetic_num_images=num_synthetic, synthetic_image_size=data_args.synthetic_image_size)
    else:  # "auto" reads label-map folders too, when the folder has them
        kwargs.update(image_subdir=data_args.image_subdir, label_subdir=data_args.label_subdir, unpaired=unpaired)
        if data_args.dataset_layout == "auto" and data_args.dataset_config_name:
            kwargs["name"] = data_args.dataset_config_name
    return load_segmentation_dataset(
        data_args.dataset_name_or_path, split, layout=data_args.dataset_layout, max_samples=max_samples, **kwargs
    )


def _load_training_rows(data_args, class_names, unpaired=None):
    return _load_rows(
        data_args, data_args.train_split, data_args.max_train_samples, data_args.synthetic_num_train_images,
        class_names, unpaired,
    )


def _checked_rows(rows, class_names, data_args, training_args, unpaired, what):
    """`rows` after the pre-flight pass over every label map (`evaluation.data_check`): every problem found
    stops the run before the model is built, or, with `skip_bad_samples`, the bad samples are left out."""
    report = check_segmentation_data(
        rows,
        len(class_names),
        ignore_index=data_args.ignore_index,
        reduce_labels=data_args.reduce_labels,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        segments_column=_segments_column(data_args),
        unpaired=unpaired,
        num_workers=training_args.dataloader_num_workers,
        description=f"Checking {what}",
        progress=not training_args.disable_tqdm,
    )
    return report.raise_or_keep_good(rows, data_args.skip_bad_samples, what, log=logger.warning)


def _explicit_class_names(data_args):
    if data_args.vocabulary_file and data_args.class_names:
        raise ValueError("Give vocabulary_file or class_names, not both")
    if data_args.vocabulary_file:
        from ..vocabulary_files import read_vocabulary_file

        return read_vocabulary_file(data_args.vocabulary_file)
    return list(data_args.class_names) if data_args.class_names else None


def _segments_column(data_args):
    return "segments_info" if data_args.dataset_layout == "coco_panoptic" else data_args.segments_column


def precompute_dominant_categories(
    model, dataset, class_names, image_processor=None, image_column="image", column="dominant_categories", batch_size=8
):
    """Rank each image's dominant categories once, as ITA's training reads them from a precomputed file.

    Every image goes through `image_processor` (default: the model's, with the test-time 800/1333 resize) and
    the model's dominant-category unearthing (`model.dominant_categories.rank`: CLIP's zero-shot ranking of the
    vocabulary's synonyms plus the extra names on the processor's CLIP view of the image). Returns `dataset` with `column`
    added: per image, the k names, best first (names rather than indices keep the column valid if the
    vocabulary is reordered). Train with it through `ITASegmentationDataset(dominant_categories_column=...)`,
    or `scripts/train.py --dominant_categories column`.
    """
    if model.dominant_categories is None:
        raise ValueError("This model has no dominant-category text queries (FC-CLIP); nothing to precompute")
    if image_column not in dataset.column_names:
        raise KeyError(f"The dataset has no column {image_column!r}; its columns are {dataset.column_names}")
    if image_processor is None:
        image_processor = ITAImageProcessor.for_model_config(model.config)
    was_training = model.training
    model.eval()
    vocabulary = model.encode_vocabulary(list(class_names))
    names = vocabulary.candidate_names
    images = dataset.select_columns([image_column])
    rows = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size][image_column]
            inputs = image_processor(batch, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(device=model.device, dtype=model.dtype)
            views = inputs.get("dominant_category_pixel_values")
            ids = model.dominant_categories.rank(
                model.backbone,
                pixel_values,
                inputs["image_sizes"].to(model.device),
                vocabulary.name_embeddings,
                views=None if views is None else views.to(device=model.device, dtype=model.dtype),
            )
            rows.extend([[names[index] for index in row] for row in ids.tolist()])
    model.train(was_training)
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, rows, feature=datasets.List(datasets.Value("string")))


def build_trainer(model_args, data_args, training_args, callbacks=None):
    """Model, processor, datasets, metrics and `ITATrainer` from the three argument groups (what
    `scripts/train.py` runs)."""
    set_seed(training_args.seed)
    explicit_names = _explicit_class_names(data_args)
    unpaired = []
    train_rows = _load_training_rows(data_args, explicit_names, unpaired)
    class_names = resolve_class_names(train_rows, class_names=explicit_names)
    train_rows = _checked_rows(train_rows, class_names, data_args, training_args, unpaired, "the training data")
    eval_rows = eval_names = None
    if data_args.eval_split:
        unpaired = []
        eval_rows = _load_rows(
            data_args, data_args.eval_split, data_args.max_eval_samples, data_args.synthetic_num_eval_images,
            explicit_names, unpaired,
        )
        eval_names = resolve_class_names(eval_rows, class_names=explicit_names)
        eval_rows = _checked_rows(eval_rows, eval_names, data_args, training_args, unpaired, "the evaluation data")

    model = load_model(model_args, class_names)
    processor = load_processor(model_args, data_args, model.config)

    column = None
    candidate_names = None
    if data_args.dominant_categories == "column":
        if model.dominant_categories is None:
            raise ValueError("--dominant_categories column needs a model with dominant-category text queries (ITA)")
        column = data_args.dominant_categories_column
        candidate_names = model.encode_vocabulary(class_names).candidate_names
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    common = dict(
        image_processor=processor.image_processor,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        segments_column=_segments_column(data_args),
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
    eval_dataset = None
    if eval_rows is not None:
        eval_dataset = ITASegmentationDataset(eval_rows, class_names=eval_names, name="evaluation", **common)

    return ITATrainer(
        model=model,
        args=training_args,
        data_collator=ITASegmentationCollator(),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        compute_metrics=ITASegmentationMetrics(len(eval_names)) if eval_dataset is not None else None,
        callbacks=callbacks,
    )


def parse_arguments(argv=None):
    parser = HfArgumentParser((ITAModelArguments, ITADataArguments, ITATrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(sys.argv[1]))
    return parser.parse_args_into_dataclasses(args=argv)


def check_output_dir(training_args):
    """Raise `FileExistsError` when `output_dir` holds an earlier run's files and this run neither resumes it nor
    was told to overwrite it (`overwrite_output_dir`): its checkpoints and model would be replaced silently."""
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


def main(argv=None):
    """Train (or, with `--precompute_dominant_categories_to`, rank dominant categories); returns the trainer."""
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
    )
    if data_args.precompute_dominant_categories_to:
        explicit_names = _explicit_class_names(data_args)
        rows = _load_training_rows(data_args, explicit_names)
        class_names = resolve_class_names(rows, class_names=explicit_names)
        model = load_model(model_args, class_names).to(training_args.device)
        processor = load_processor(model_args, config=model.config)
        rows = precompute_dominant_categories(
            model, rows, class_names, processor.image_processor, data_args.image_column,
            data_args.dominant_categories_column, training_args.per_device_eval_batch_size,
        )
        rows.save_to_disk(data_args.precompute_dominant_categories_to)
        logger.info("Saved %d rows with %r to %s", len(rows), data_args.dominant_categories_column,
                    data_args.precompute_dominant_categories_to)
        return None

    check_output_dir(training_args)
    trainer = build_trainer(model_args, data_args, training_args)
    resume = training_args.resume_from_checkpoint
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
