"""`ITATrainingArguments`: transformers' `TrainingArguments` (which imports torch) with FC-CLIP's recipe
(`arguments.ITARecipeArguments`) over it."""

from dataclasses import dataclass

from transformers import TrainingArguments

from .arguments import ITARecipeArguments

__all__ = ["ITATrainingArguments"]


@dataclass
class ITATrainingArguments(ITARecipeArguments, TrainingArguments):
    """`TrainingArguments` with FC-CLIP's recipe as defaults, and the settings that keep per-image targets intact
    (`remove_unused_columns=False`, `eval_do_concat_batches=False`, `batch_eval_metrics=True`).

    `ITARecipeArguments` stands before `TrainingArguments` in the method resolution order, so dataclasses
    collects its fields last: the recipe's defaults replace `TrainingArguments`' (each field keeping its place)
    and its new fields follow `TrainingArguments`' own, as in a subclass that declares them all."""
