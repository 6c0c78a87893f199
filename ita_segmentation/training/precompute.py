"""Dominant categories ranked once per training image, as ITA's training reads them from a precomputed file."""

from collections.abc import Sequence
from typing import cast

import datasets
import torch

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from modeling_ita.modeling import ITAForOpenVocabSegmentation

__all__ = ["precompute_dominant_categories"]


def precompute_dominant_categories(
    model: ITAForOpenVocabSegmentation,
    dataset: datasets.Dataset,
    class_names: Sequence[str],
    image_processor: ITAImageProcessor | None = None,
    image_column: str = "image",
    column: str = "dominant_categories",
    batch_size: int = 8,
) -> datasets.Dataset:
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
        image_processor = ITAImageProcessor.for_model_config(cast(ITAConfig, model.config))
    was_training = model.training
    model.eval()
    vocabulary = model.encode_vocabulary(list(class_names))
    names, name_embeddings = vocabulary.candidate_names, vocabulary.name_embeddings
    if names is None or name_embeddings is None:
        raise ValueError("The model encoded the vocabulary without candidate names to rank")
    images = dataset.select_columns([image_column])
    rows: list[list[str]] = []
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
                name_embeddings,
                views=None if views is None else views.to(device=model.device, dtype=model.dtype),
            )
            rows.extend([[names[index] for index in row] for row in ids.tolist()])
    model.train(was_training)
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, rows, feature=datasets.List(datasets.Value("string")))
