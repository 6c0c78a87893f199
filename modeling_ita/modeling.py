"""`ITAForOpenVocabSegmentation`: ITA and FC-CLIP in one transformers model."""

import difflib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging
from transformers.utils.generic import ModelOutput

from configuration_ita import ITAConfig

from .aggregation_decoder import ITAAggregationDecoder, ITADecoderPrediction
from .classifiers import geometric_ensemble, out_of_vocabulary_logits
from .clip_backbone import ITACLIPBackbone, init_clip_weights
from .dominant_categories import ITADominantCategoryUnearthing
from .loss import ITALoss
from .pixel_decoder import ITAPixelDecoder
from .remote_code import config_entries, describe_processor_config, export_remote_code
from .vocabulary import ITAVocabulary, ITAVocabularyEncoder

__all__ = [
    "ITAOpenVocabSegmentationOutput",
    "ITAPreTrainedModel",
    "ITAForOpenVocabSegmentation",
]

logger = logging.get_logger(__name__)


def _names_a_local_folder(name: str) -> bool:
    """Whether a model name can only be a local path (a Hub id is `name` or `owner/name`, never `./x`, `/x`,
    `~/x`, `a/b/c` or `C:\\x`)."""
    return (
        name.startswith((".", "/", "~", "\\"))
        or os.path.isabs(name)
        or name.replace("\\", "/").count("/") > 1
        or (len(name) > 1 and name[1] == ":")
    )


@dataclass
class ITAOpenVocabSegmentationOutput(ModelOutput):
    """Output of [`ITAForOpenVocabSegmentation`]. Q = dominant categories + learnable queries, K = classes.

    Args:
        loss: weighted sum of all loss terms, when labels are given.
        class_queries_logits: `[B, Q, K + 1]` class logits of the decoder's (in-vocabulary) classifier, void last.
        masks_queries_logits: `[B, Q, H/4, W/4]` mask logits on the padded input's stride-4 grid.
        out_vocabulary_logits: `[B, Q, K + 1]` logits of frozen CLIP on mask-pooled features (eval mode only).
        ensemble_log_probs: `[B, Q, K + 1]` log-probabilities of the geometric ensemble of the two classifiers
            (eval mode only): the class scores post-processing uses.
        dominant_category_ids: `[B, k]` indices into `candidate_names` of the text queries' names (ITA only).
        dominant_categories: the k chosen names per image (ITA only).
        auxiliary_logits: the intermediate predictions, first to last: `ITADecoderPrediction`s (`ModelOutput`s,
            so also dicts) with `class_queries_logits` and `masks_queries_logits`.
        loss_dict: the unweighted loss terms.
        image_sizes: `[B, 2]` size of each image inside the padded batch.
        encoder_last_hidden_state: `[B, C_5, H/32, W/32]` the CLIP trunk's last stage (with `output_hidden_states`).
        pixel_decoder_last_hidden_state: `[B, mask_dim, H/4, W/4]` the pixel decoder's mask features (same).
        transformer_decoder_last_hidden_state: `[B, Q, hidden_dim]` the decoder's final queries (same).
        encoder_hidden_states: the CLIP trunk's stages `res2`..`res5` (strides 4 to 32), with `output_hidden_states`.
        pixel_decoder_hidden_states: the pixel decoder's encoded maps (strides 32, 16, 8), then the mask features.
        transformer_decoder_hidden_states: the queries entering each decoder layer, then the last layer's output.
        attentions: each decoder layer's masked cross-attention weights `[B, heads, Q, h_l * w_l]`, with
            `output_attentions`. None of these is computed unless asked for.
    """

    loss: torch.Tensor | None = None
    class_queries_logits: torch.Tensor | None = None
    masks_queries_logits: torch.Tensor | None = None
    out_vocabulary_logits: torch.Tensor | None = None
    ensemble_log_probs: torch.Tensor | None = None
    dominant_category_ids: torch.Tensor | None = None
    dominant_categories: list[list[str]] | None = None
    auxiliary_logits: list[ITADecoderPrediction] | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    image_sizes: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    pixel_decoder_last_hidden_state: torch.Tensor | None = None
    transformer_decoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor | None, ...] | None = None


class ITAPreTrainedModel(PreTrainedModel):  # type: ignore[no-untyped-call]
    config_class = ITAConfig
    base_model_prefix = "ita"
    main_input_name = "pixel_values"
    input_modalities = ["image", "text"]
    supports_gradient_checkpointing = True
    _no_split_modules = ["ITACLIPBackbone"]
    # The loss normalises by the number of target masks across processes (Mask2Former's rule); the Trainer's
    # `num_items_in_batch` has no use here and is not passed.
    accepts_loss_kwargs = False
    # The decoder's masked cross-attention runs through `F.scaled_dot_product_attention` whatever is asked (the
    # explicit softmax serves `output_attentions` only), so "sdpa" and transformers' always-valid "eager" give the
    # same numbers.
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The original initialisation: each ITA module knows its own scheme (`_reset_parameters`), plain torch
        # modules keep torch's defaults, the frozen CLIP open_clip's and timm's. transformers' init guard turns
        # these into no-ops for loaded weights, so only what a checkpoint lacks is drawn.
        if isinstance(module, open_clip.model.CLIP):
            init_clip_weights(module)
            return
        if getattr(module, "_ita_clip_part", False):
            return  # initialised with the whole CLIP above
        reset_parameters = getattr(module, "_reset_parameters", None)
        if reset_parameters is not None:
            reset_parameters()
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)):
            module.reset_parameters()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str] | None, *args: Any, **kwargs: Any
    ) -> Any:
        """transformers' `from_pretrained`, after refusing a local folder that does not exist by its name
        (transformers would take `./checkpoints/my-ita` for a malformed Hub id)."""
        name = os.fspath(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if name is not None and _names_a_local_folder(name) and not os.path.exists(os.path.expanduser(name)):
            raise OSError(
                f"model folder {name} does not exist: give a folder saved with save_pretrained (or by ita-convert or "
                "ita-train) or a Hugging Face Hub id such as owner/name"
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | os.PathLike[str],
        is_main_process: bool = True,
        vocabularies: Sequence[Sequence[str]] | Mapping[str, Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        """transformers' `save_pretrained`, and the folder describes itself: the model's source files (flat, see
        `remote_code`) and, in `config.json`, the `auto_map` and `custom_pipelines` entries that name them, so that
        the folder loads with `trust_remote_code=True` where this package is not installed (and with the package's
        own classes where it is imported). Processor files already in the folder get their `auto_map` too. The
        Trainer's checkpoints are written through here.

        The entries are set on the config only while it is written: the model in memory is left as it was.

        `vocabularies` (a list of vocabularies, each a list of class names, or a dict label -> class names) are
        encoded and stored in the folder (`vocabularies/<key>.safetensors`, see `store_vocabularies`), so a model
        loaded from it finds them without running its text tower.
        """
        if is_main_process:
            # Before the weights: `push_to_hub=True` uploads the folder at the end of transformers' method.
            export_remote_code(save_directory)
            describe_processor_config(save_directory)
            if vocabularies is not None:
                store = getattr(self, "store_vocabularies", None)
                if store is None:
                    raise ValueError(f"{type(self).__name__} has no vocabulary encoder: it cannot store vocabularies")
                store(save_directory, vocabularies)
        entries = config_entries(save_directory) if is_main_process else {}
        before = {name: self.config.__dict__[name] for name in entries if name in self.config.__dict__}
        try:
            for name, value in entries.items():
                setattr(self.config, name, value)
            super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        finally:
            for name in entries:
                if name in before:
                    setattr(self.config, name, before[name])
                else:
                    delattr(self.config, name)


class ITAForOpenVocabSegmentation(ITAPreTrainedModel):  # type: ignore[no-untyped-call]
    """Open-vocabulary semantic segmentation with ITA (or FC-CLIP, by config): segment an image into any
    vocabulary chosen at call time."""

    def __init__(self, config: ITAConfig):
        super().__init__(config)
        self.backbone = ITACLIPBackbone(config)  # frozen CLIP (feature extractor of the DEM)
        self.pixel_decoder = ITAPixelDecoder(config, self.backbone.feature_channels)  # DEM
        self.dominant_categories = (
            ITADominantCategoryUnearthing(config) if config.num_dominant_categories > 0 else None
        )  # DCU
        self.decoder = ITAAggregationDecoder(config)  # ITA module
        self.void_embedding = nn.Embedding(1, config.clip_embed_dim)
        self.criterion = ITALoss(config)
        self.vocabulary_encoder = ITAVocabularyEncoder(
            config.prompt_templates,
            config.train_vocabulary,
            extra_candidates=config.dominant_category_extra_names,
            batch_size=config.text_batch_size,
        )
        self.post_init()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------------------------------------ helpers
    def get_input_embeddings(self) -> nn.Module:
        raise NotImplementedError(_NO_TOKEN_EMBEDDINGS)

    def set_input_embeddings(self, value: nn.Module) -> None:
        raise NotImplementedError(_NO_TOKEN_EMBEDDINGS)

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        raise NotImplementedError(_NO_TOKEN_EMBEDDINGS)

    def encode_vocabulary(self, class_names: Sequence[str] | None = None) -> ITAVocabulary:
        """Encode (or fetch from the caches) a vocabulary; defaults to the config's training vocabulary. The
        vocabularies stored in the model's folder (`save_pretrained(..., vocabularies=...)`) are looked up first,
        then the disk cache (see `modeling_ita.vocabulary`)."""
        class_names = self.config.train_vocabulary if class_names is None else class_names
        return self.vocabulary_encoder.encode(
            self.backbone,
            class_names,
            with_name_embeddings=self.dominant_categories is not None,
            model_folder=self.name_or_path or None,
        )

    def store_vocabularies(
        self,
        save_directory: str | os.PathLike[str],
        vocabularies: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
    ) -> list[str]:
        """Encode `vocabularies` (a list of vocabularies, each a list of class names, or a dict label -> class
        names) and store them in the model folder `save_directory` as `vocabularies/<key>.safetensors`, keyed as
        the disk cache is (the text tower's weights, the templates, the names, the dtype): a model loaded from the
        folder uses them instead of encoding. Returns the files' paths."""
        labelled: list[tuple[str | None, Sequence[str]]]
        if isinstance(vocabularies, Mapping):
            labelled = [(str(label), names) for label, names in vocabularies.items()]
        else:
            if isinstance(vocabularies, str) or any(isinstance(names, str) for names in vocabularies):
                raise ValueError(
                    "vocabularies must be a list of vocabularies, each a list of class names (e.g. "
                    "vocabularies=[['cat', 'sofa,couch']]) or a dict label -> class names; got a list of strings"
                )
            labelled = [(None, names) for names in vocabularies]
        paths = []
        for label, names in labelled:
            path = self.vocabulary_encoder.store(
                self.backbone, save_directory, names, self.dominant_categories is not None, label=label
            )
            paths.append(str(path))
        return paths

    @staticmethod
    def _image_sizes(
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None,
        image_sizes: torch.Tensor | Sequence[Sequence[int]] | None,
    ) -> torch.Tensor:
        if image_sizes is not None:
            return torch.as_tensor(image_sizes, dtype=torch.long, device=pixel_values.device).view(-1, 2)
        if pixel_mask is not None:
            heights = pixel_mask.bool().any(dim=2).sum(dim=1)
            widths = pixel_mask.bool().any(dim=1).sum(dim=1)
            return torch.stack([heights, widths], dim=1).long()
        batch, _, height, width = pixel_values.shape
        return torch.tensor([[height, width]] * batch, dtype=torch.long, device=pixel_values.device)

    def text_classifier(self, vocabulary: ITAVocabulary) -> torch.Tensor:
        """[S + 1, D]: the vocabulary's synonym embeddings, then the learnable void embedding."""
        void = F.normalize(self.void_embedding.weight, dim=-1)
        return torch.cat([vocabulary.text_classifier.to(void.dtype), void], dim=0)

    def unearth_dominant_categories(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vocabulary: ITAVocabulary,
        dominant_category_ids: torch.Tensor | None = None,
        clip_dense_features: torch.Tensor | None = None,
        dominant_category_pixel_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Text queries [B, k, hidden] and the chosen candidate indices [B, k] (or None, None for FC-CLIP).

        CLIP ranks the candidates by their text-tower embeddings; the chosen ones' text queries are made from
        `vocabulary.text_query_embeddings` (category-bank rows when a bank is set). `clip_dense_features` (the main
        forward's `clip_vis_dense`) serve the `"dense_features"` ranking; `dominant_category_pixel_values` are the
        processor's CLIP views of the images."""
        if self.dominant_categories is None:
            return None, None
        if vocabulary.name_embeddings is None or vocabulary.text_query_embeddings is None:
            raise ValueError("This vocabulary has no name embeddings: encode it with model.encode_vocabulary()")
        if dominant_category_ids is None:
            dominant_category_ids = self.dominant_categories.rank(
                self.backbone,
                pixel_values,
                image_sizes,
                vocabulary.name_embeddings,
                clip_dense_features,
                views=dominant_category_pixel_values,
            )
        else:  # the caller's ids (the ranking's are in range by construction)
            dominant_category_ids = dominant_category_ids.to(vocabulary.name_embeddings.device)
            num_candidates = vocabulary.name_embeddings.shape[0]
            if dominant_category_ids.min() < 0 or dominant_category_ids.max() >= num_candidates:
                raise ValueError(
                    f"dominant_category_ids must index the {num_candidates} candidate names of the vocabulary "
                    f"(its synonyms plus {list(self.config.dominant_category_extra_names)}), got values in "
                    f"[{int(dominant_category_ids.min())}, {int(dominant_category_ids.max())}]"
                )
        if vocabulary.missing_from_bank and vocabulary.candidate_names is not None:
            chosen = [vocabulary.candidate_names[i] for i in torch.unique(dominant_category_ids).tolist()]
            vocabulary.warn_missing_from_bank(chosen, stacklevel=3)
        name_embeddings = vocabulary.text_query_embeddings[dominant_category_ids]  # [B, k, D]
        return self.dominant_categories(name_embeddings), dominant_category_ids

    # ------------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        class_names: list[str] | None = None,
        vocabulary: ITAVocabulary | None = None,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        dominant_category_ids: torch.Tensor | None = None,
        dominant_category_pixel_values: torch.Tensor | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ITAOpenVocabSegmentationOutput | tuple[Any, ...]:
        r"""
        Args:
            pixel_values: `[B, 3, H, W]` CLIP-normalised images, padded (see `ITAImageProcessor`).
            pixel_mask: `[B, H, W]`, 1 on real pixels; used to find each image's size when `image_sizes` is absent.
            image_sizes: `[B, 2]` each image's (height, width) inside the padded batch.
            class_names: the vocabulary, a list of classes, each a string of comma-separated synonyms. Defaults
                to the config's training vocabulary.
            vocabulary: a precomputed `ITAVocabulary` (`model.encode_vocabulary(class_names)`), instead of
                `class_names`.
            mask_labels: per image, `[N_i, H, W]` binary target masks (training).
            class_labels: per image, `[N_i]` target class indices into the vocabulary (training).
            dominant_category_ids: `[B, k]` precomputed dominant categories (indices into the vocabulary's
                synonyms followed by the extra candidates); ranked on the fly by CLIP when absent.
            dominant_category_pixel_values: `[B, 3, S, S]` the view CLIP ranks the vocabulary on (ITA only), made
                by the processor as the original makes it (PIL on the 8-bit image). Without it the model makes
                the view from `pixel_values` with a tensor resize, which can differ by a few grey levels.
            output_auxiliary_logits: return the intermediate predictions. They are computed only when asked for
                or when the deep-supervision loss needs them; otherwise the decoder computes only what its last
                prediction needs (the same prediction up to float rounding, several times faster).
            output_hidden_states: return each stage's hidden states (CLIP trunk, pixel decoder, decoder queries),
                with Mask2Former's field names. Defaults to `config.output_hidden_states`.
            output_attentions: return the decoder's cross-attention weights. Defaults to `config.output_attentions`.
        """
        pixel_values, dominant_category_pixel_values = self._check_inputs(
            pixel_values, dominant_category_pixel_values, vocabulary, mask_labels, class_labels, kwargs
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if vocabulary is None:
            if class_names is None and not self.training:
                # Training reads its vocabulary from the config; at inference a forgotten vocabulary is said once.
                logger.warning_once(
                    "ITAForOpenVocabSegmentation: no class_names (or vocabulary) given, so the model segments into "
                    f"its training vocabulary ({len(self.config.train_vocabulary)} classes, config.train_vocabulary); "
                    "pass class_names=[...] (or the processor's class_names) to choose the classes"
                )
            vocabulary = self.encode_vocabulary(class_names)
        image_sizes = self._image_sizes(pixel_values, pixel_mask, image_sizes)

        # Frozen CLIP -> pixel decoder (the detail enhancement module)
        features = self.backbone.extract_features(pixel_values)
        clip_dense_features = features.clip_vis_dense  # [B, C_5, H/32, W/32]
        assert clip_dense_features is not None
        pixel_decoded = self.pixel_decoder(features.feature_maps)
        mask_features, multi_scale_features = pixel_decoded.mask_features, pixel_decoded.multi_scale_features

        # Dominant category unearthing -> text queries
        text_queries, dominant_category_ids = self.unearth_dominant_categories(
            pixel_values,
            image_sizes,
            vocabulary,
            dominant_category_ids,
            clip_dense_features,
            dominant_category_pixel_values,
        )

        # Image-text aggregation decoder with the in-vocabulary classifier
        classifier = self.text_classifier(vocabulary)
        # Intermediate predictions only when something reads them: the deep-supervision loss or the caller.
        output_intermediate = bool(output_auxiliary_logits) or (
            mask_labels is not None and self.config.deep_supervision
        )
        decoded = self.decoder(
            multi_scale_features,
            mask_features,
            text_queries,
            classifier,
            vocabulary,
            output_intermediate_predictions=output_intermediate,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        class_queries_logits, masks_queries_logits = decoded.class_queries_logits, decoded.masks_queries_logits
        auxiliary = list(decoded.auxiliary_predictions or ())

        loss = loss_dict = None
        if mask_labels is not None and class_labels is not None:
            self._check_labels(mask_labels, class_labels, vocabulary.num_classes, pixel_values.shape[-2:])
            loss_dict = self.criterion(
                class_queries_logits,
                masks_queries_logits,
                mask_labels,
                class_labels,
                auxiliary if self.config.deep_supervision else None,
            )
            loss = self.criterion.weighted_total(loss_dict)

        # Inference: out-of-vocabulary classifier (frozen CLIP) and the geometric ensemble
        out_vocabulary_logits = ensemble_log_probs = None
        if not self.training:
            out_vocabulary_logits, valid = out_of_vocabulary_logits(
                self.backbone,
                clip_dense_features,
                masks_queries_logits,
                classifier,
                vocabulary,
                self.config.logit_scale_max,
            )
            ensemble_log_probs = geometric_ensemble(
                class_queries_logits,
                out_vocabulary_logits,
                vocabulary.overlap_mask,
                self.config.ensemble_alpha,
                self.config.ensemble_beta,
                valid if self.config.ensemble_on_valid_mask else None,
            )

        dominant_categories = None
        # Names are Python strings: a vocabulary made of tensors only (the ONNX graph's) has none, and gives the ids.
        if dominant_category_ids is not None and vocabulary.candidate_names is not None:
            names = vocabulary.candidate_names
            dominant_categories = [[names[i] for i in row] for row in dominant_category_ids.tolist()]

        output = ITAOpenVocabSegmentationOutput(
            loss=loss,
            class_queries_logits=class_queries_logits,
            masks_queries_logits=masks_queries_logits,
            out_vocabulary_logits=out_vocabulary_logits,
            ensemble_log_probs=ensemble_log_probs,
            dominant_category_ids=dominant_category_ids,
            dominant_categories=dominant_categories,
            auxiliary_logits=auxiliary if output_auxiliary_logits else None,
            loss_dict=loss_dict,
            image_sizes=image_sizes,
            attentions=decoded.attentions,
        )
        if output_hidden_states:
            output.encoder_hidden_states = features.feature_maps
            output.encoder_last_hidden_state = features.res5
            output.pixel_decoder_hidden_states = (*multi_scale_features, mask_features)
            output.pixel_decoder_last_hidden_state = mask_features
            output.transformer_decoder_hidden_states = decoded.hidden_states
            output.transformer_decoder_last_hidden_state = decoded.last_hidden_state
        return output if return_dict else output.to_tuple()

    def _check_inputs(
        self,
        pixel_values: torch.Tensor,
        dominant_category_pixel_values: torch.Tensor | None,
        vocabulary: ITAVocabulary | None,
        mask_labels: list[torch.Tensor] | None,
        class_labels: list[torch.Tensor] | None,
        unexpected: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Refuse, by name, what `forward` cannot read; return the images in the model's dtype (the processor
        gives float32, on which a bfloat16 or float16 model would fail in its first convolution)."""
        if unexpected:
            raise TypeError(_unexpected_arguments_message(unexpected, self.forward))
        if (mask_labels is None) != (class_labels is None):
            raise ValueError("mask_labels and class_labels must be given together")
        images = {"pixel_values": pixel_values, "dominant_category_pixel_values": dominant_category_pixel_values}
        for name, value in images.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor (the processor's return_tensors='pt'), got {type(value)}"
                )
            if value.ndim != 4 or value.shape[1] != 3:
                fix = ""
                if value.ndim == 3 and value.shape[0] == 3:
                    fix = f"; for one image add the batch dimension: {name}[None]"
                elif value.ndim == 4 and value.shape[-1] == 3:
                    fix = f"; channels last? {name}.permute(0, 3, 1, 2)"
                raise ValueError(
                    f"{name} must be [batch, 3, height, width] RGB images, got shape {list(value.shape)}{fix}"
                )
        if vocabulary is not None and not isinstance(vocabulary, ITAVocabulary):
            raise TypeError(
                f"vocabulary must be an ITAVocabulary from model.encode_vocabulary(), got {type(vocabulary)}"
            )
        if pixel_values.is_floating_point():
            pixel_values = pixel_values.to(self.dtype)
        if dominant_category_pixel_values is not None and dominant_category_pixel_values.is_floating_point():
            dominant_category_pixel_values = dominant_category_pixel_values.to(self.dtype)
        return pixel_values, dominant_category_pixel_values

    @staticmethod
    def _check_labels(
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        num_classes: int,
        padded_size: Sequence[int],
    ) -> None:
        if len(mask_labels) != len(class_labels):
            raise ValueError(f"mask_labels has {len(mask_labels)} images but class_labels has {len(class_labels)}")
        for i, (masks, labels) in enumerate(zip(mask_labels, class_labels)):
            if masks.shape[0] != labels.shape[0]:
                raise ValueError(f"image {i}: {masks.shape[0]} masks but {labels.shape[0]} class labels")
            if tuple(masks.shape[-2:]) != tuple(padded_size):
                raise ValueError(
                    f"image {i}: mask_labels of size {tuple(masks.shape[-2:])} do not match the padded input "
                    f"{tuple(padded_size)}"
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(
                    f"image {i}: class_labels {labels.tolist()} fall outside the vocabulary of {num_classes} classes"
                )


_NO_TOKEN_EMBEDDINGS = (
    "ITA has no token embeddings to get, set or resize: its text tower is the frozen CLIP's, and the vocabulary "
    "is given per call as class names (model(..., class_names=[...]) or the processor's text=[...])"
)


def _unexpected_arguments_message(kwargs: dict[str, Any], function: Callable[..., Any]) -> str:
    """`TypeError` text naming each unknown keyword argument and the closest real one."""
    known = [name for name in inspect.signature(function).parameters if name != "kwargs"]
    parts = []
    for name in kwargs:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    owner = type(getattr(function, "__self__", None)).__name__
    return f"{owner}.forward() got unexpected keyword arguments: {', '.join(parts)}"
