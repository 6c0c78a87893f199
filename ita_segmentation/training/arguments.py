"""The command-line arguments of a training run (`scripts/train.py`, `ita-train`) that are the project's own:
which model (`ITAModelArguments`), which data (`ITADataArguments`), and FC-CLIP's recipe (`ITARecipeArguments`:
the ITA-specific training settings, and the `TrainingArguments` fields whose defaults FC-CLIP's recipe changes).

Light to import (standard library only), so that `ita-train` checks them before torch is loaded;
`training_arguments.ITATrainingArguments` joins `ITARecipeArguments` with transformers' `TrainingArguments`.
"""

from dataclasses import dataclass, field

from ..dataset_layouts import LAYOUTS
from .defaults import (
    BACKBONE_LR_MULTIPLIER,
    COCO_DECAY_STEPS,
    COCO_MAX_ITER,
    DEFAULT_CROP_SIZE,
    DEFAULT_MAX_SCALE,
    DEFAULT_MIN_SCALE,
)

__all__ = ["ITADataArguments", "ITAModelArguments", "ITARecipeArguments"]


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
            "choices": list(LAYOUTS),
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
class ITARecipeArguments:
    """FC-CLIP's recipe: the `TrainingArguments` fields whose defaults it changes, with the settings that keep
    per-image targets intact (`remove_unused_columns=False`, `eval_do_concat_batches=False`,
    `batch_eval_metrics=True`), and the training settings of this project (learning-rate schedule, backbone
    factor). Not used alone: `ITATrainingArguments` puts these fields over `TrainingArguments`."""

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
