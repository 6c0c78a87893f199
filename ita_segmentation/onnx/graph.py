"""What the ONNX files compute, and their interface: the modules that are exported, their inputs and outputs.

Two graphs are exported from one model:

- the segmentation graph (`model.onnx`), the model's inference forward: the images, their sizes and an encoded
  vocabulary in (the text embeddings are inputs, so one file serves any vocabulary), the class and mask logits,
  the out-of-vocabulary logits, the ensemble's log-probabilities and (ITA) the dominant categories' ids out. ITA's
  CLIP view of each image (`dominant_category_pixel_values`, made by the processor) is an input: the centre crop to
  each image's own size has data-dependent sizes that a graph cannot hold.
- the text tower (`text_encoder.onnx`): token ids `[N, L]` in, unnormalised CLIP text embeddings `[N, D]` out,
  over the given context (the caller cuts it after the last end-of-text token, as `encode_text` does).
"""

from typing import Any

import torch
from torch import Tensor, nn

from modeling_ita.vocabulary import ITAVocabulary

from .export_kernels import export_kernels

__all__ = [
    "ITAGraphVocabulary",
    "ITASegmentationGraph",
    "ITATextEncoderGraph",
    "segmentation_input_names",
    "segmentation_output_names",
    "segmentation_inputs",
    "trunk_stride",
    "TEXT_ENCODER_INPUT",
    "TEXT_ENCODER_OUTPUT",
    "truncate_context",
]

TEXT_ENCODER_INPUT = "input_ids"
TEXT_ENCODER_OUTPUT = "text_embeds"

# The vocabulary's tensors that are graph inputs, FC-CLIP's then ITA's.
VOCABULARY_INPUTS = ("text_classifier", "synonym_to_class", "overlap_mask")
CANDIDATE_INPUTS = ("name_embeddings", "text_query_embeddings")


class ITAGraphVocabulary(ITAVocabulary):
    """An encoded vocabulary made of graph inputs only (no strings): the number of classes K is the length of
    `overlap_mask`, so it stays a dimension of the graph instead of a constant."""

    @property
    def num_classes(self) -> int:
        assert self.overlap_mask is not None
        return self.overlap_mask.shape[0]  # a symbolic size while tracing


def _has_view_input(config: Any) -> bool:
    return config.num_dominant_categories > 0 and config.dominant_category_features != "dense_features"


def segmentation_input_names(config: Any) -> list[str]:
    """Names of the segmentation graph's inputs, in order, for a model of `config` (an `ITAConfig`)."""
    names = ["pixel_values", "image_sizes", *VOCABULARY_INPUTS]
    if config.num_dominant_categories > 0:
        names += CANDIDATE_INPUTS
    if _has_view_input(config):
        names.append("dominant_category_pixel_values")
    return names


def segmentation_output_names(config: Any) -> list[str]:
    """Names of the segmentation graph's outputs: fields of `ITAOpenVocabSegmentationOutput`."""
    names = ["class_queries_logits", "masks_queries_logits", "out_vocabulary_logits", "ensemble_log_probs"]
    if config.num_dominant_categories > 0:
        names.append("dominant_category_ids")
    return names


def segmentation_inputs(
    config: Any,
    pixel_values: Tensor,
    image_sizes: Tensor,
    vocabulary: ITAVocabulary,
    dominant_category_pixel_values: Tensor | None = None,
) -> dict[str, Tensor | None]:
    """The segmentation graph's inputs as a dict of tensors in input order, from the model's own arguments: an
    `ITAVocabulary` from `encode_vocabulary`, and for ITA the CLIP views."""
    values: dict[str, Tensor | None] = {"pixel_values": pixel_values, "image_sizes": image_sizes}
    values.update({name: getattr(vocabulary, name) for name in VOCABULARY_INPUTS})
    if config.num_dominant_categories > 0:
        if vocabulary.name_embeddings is None:
            raise ValueError("This vocabulary has no name embeddings: encode it with the ITA model it is used with")
        values.update({name: getattr(vocabulary, name) for name in CANDIDATE_INPUTS})
    if _has_view_input(config):
        values["dominant_category_pixel_values"] = dominant_category_pixel_values
    return {name: values[name] for name in segmentation_input_names(config)}


def trunk_stride(model: Any) -> int:
    """The CLIP trunk's total stride (32 for ConvNeXt): its last features' cells are this many pixels wide."""
    return int(model.backbone.clip_model.visual.trunk.feature_info[-1]["reduction"])


class ITASegmentationGraph(nn.Module):
    """`ITAForOpenVocabSegmentation`'s inference forward on tensors only: what `model.onnx` computes.

    The model runs with the export-friendly kernels (`export_kernels.py`), which trace with symbolic sizes; the
    other kernels follow the fast-path switch. Returns the tensors of `segmentation_output_names(model.config)`, in
    that order."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor,
        text_classifier: Tensor,
        synonym_to_class: Tensor,
        overlap_mask: Tensor,
        name_embeddings: Tensor | None = None,
        text_query_embeddings: Tensor | None = None,
        dominant_category_pixel_values: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        if _has_view_input(self.model.config) and dominant_category_pixel_values is None:
            raise ValueError(
                "Exporting needs dominant_category_pixel_values: the views are crops to each image's own size, "
                "which a graph cannot hold (the processor makes them)"
            )
        vocabulary = ITAGraphVocabulary(
            class_names=(),
            synonyms=(),
            synonym_to_class=synonym_to_class,
            text_classifier=text_classifier,
            overlap_mask=overlap_mask,
            name_embeddings=name_embeddings,
            text_query_embeddings=text_query_embeddings,
        )
        with export_kernels():
            outputs = self.model(
                pixel_values=pixel_values,
                image_sizes=image_sizes,
                vocabulary=vocabulary,
                dominant_category_pixel_values=dominant_category_pixel_values,
                return_dict=True,
            )
        return tuple(getattr(outputs, name) for name in segmentation_output_names(self.model.config))


class ITATextEncoderGraph(nn.Module):
    """The frozen CLIP text tower: token ids `[N, L]` -> unnormalised text embeddings `[N, D]`.

    The context is not cut inside the graph (where the cut depends on the values): callers pass ids already cut
    after the batch's last end-of-text token, which gives the full context's embeddings (causal attention)."""

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: Tensor) -> Tensor:
        embeddings: Tensor = self.backbone.encode_text(input_ids, normalize=False, truncate_context=False)
        return embeddings


def truncate_context(input_ids: Any) -> Tensor:
    """Token ids `[N, context]` cut after the batch's last end-of-text token (the largest id), as
    `ITACLIPBackbone.encode_text` cuts them: the text encoder graph's input."""
    input_ids = torch.as_tensor(input_ids)
    return input_ids[:, : int(input_ids.argmax(dim=-1).max()) + 1]
