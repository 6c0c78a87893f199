"""Image-text aggregation decoder: FC-CLIP's masked-attention decoder with dominant-category text queries.

With `config.decoder_self_attention=True` and no text queries this is FC-CLIP's (Mask2Former's)
multi-scale masked-attention decoder. ITA puts `config.num_dominant_categories` text queries in front
of the learnable queries and drops the self-attention sub-layers, so every layer is masked
cross-attention to one pixel-decoder level followed by a feed-forward network.

Tensors are batch-first (`[B, Q, C]`); the original keeps them sequence-first, which gives the same
numbers. Module names follow the original predictor so that its weights convert by renaming alone.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils.generic import ModelOutput

from configuration_ita import ITAConfig

from .kernels import kernel, mask_pool, resize_to_levels
from .layers import ITAMLP, ITASinePositionEmbedding, classification_logits
from .vocabulary import ITAVocabulary

__all__ = [
    "ITADecoderOutput",
    "ITADecoderPrediction",
    "ITAMaskedCrossAttention",
    "ITAQuerySelfAttention",
    "ITADecoderFeedForward",
    "ITAAggregationDecoderLayer",
    "ITAAggregationDecoder",
    "attention_mask_logits",
    "masked_attention_mask",
    "open_fully_blocked_queries",
]


# Depth of the mask and class embedding MLPs: fixed in the original (not a config option there either).
HEAD_MLP_LAYERS = 3


def _xavier_uniform_matrices(module: nn.Module) -> None:
    # The original re-initialises every matrix of a sub-layer (attention projections included) with
    # Xavier-uniform after torch's default init; biases and norms keep torch's init.
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class _ITAPostNormAttention(nn.Module):
    """Multi-head attention with a residual connection and post-norm: the shared part of both attention
    sub-layers (`attention`, `norm`, dropout; Xavier-initialised matrices)."""

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.attention = nn.MultiheadAttention(
            config.hidden_dim, config.decoder_attention_heads, dropout=config.decoder_dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.dropout = nn.Dropout(config.decoder_dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        _xavier_uniform_matrices(self)


class ITAMaskedCrossAttention(_ITAPostNormAttention):
    """Queries attend to one flattened feature level, blocked where the previous mask says so; post-norm.

    The projections are those of `self.attention` (an `nn.MultiheadAttention`, whose parameter names the
    original's state dict uses); the attention itself runs through `F.scaled_dot_product_attention` with one
    mask shared by the heads, where `nn.MultiheadAttention` would repeat it per head as a float tensor on every
    call. The arithmetic is the same.
    """

    def forward(
        self,
        queries: Tensor,
        memory: Tensor,
        attention_mask: Tensor | None,
        memory_with_pos: Tensor,
        query_pos: Tensor,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """`queries`/`query_pos` [B, Q, C]; `memory` [B, HW, C], the values' input, and `memory_with_pos`, the
        memory plus its position embedding (the keys' input, computed once for the layers of a level);
        `attention_mask` bool [B, 1, Q, HW] with True = blocked, or None. Returns the new queries and, with
        `output_attentions`, the attention weights [B, heads, Q, HW] (then computed explicitly, not by SDPA)."""
        attention = self.attention
        batch, num_queries, channels = queries.shape
        heads = attention.num_heads
        query_weight, key_weight, value_weight = attention.in_proj_weight.chunk(3)
        query_bias, key_bias, value_bias = attention.in_proj_bias.chunk(3)

        def split_heads(x: Tensor) -> Tensor:  # [B, L, C] -> [B, heads, L, C / heads]
            return x.view(batch, x.shape[1], heads, channels // heads).transpose(1, 2)

        query = split_heads(F.linear(queries + query_pos, query_weight, query_bias))
        key = split_heads(F.linear(memory_with_pos, key_weight, key_bias))
        value = split_heads(F.linear(memory, value_weight, value_bias))
        if attention_mask is not None:  # additive float mask: a boolean one SDPA converts twice per call on CPU
            attention_mask = query.new_zeros(attention_mask.shape).masked_fill_(attention_mask, float("-inf"))
        weights = None
        if output_attentions:
            scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])  # [B, heads, Q, HW]
            weights = (scores if attention_mask is None else scores + attention_mask).softmax(dim=-1)
            dropped = F.dropout(weights, attention.dropout, self.training)
            attended = dropped @ value
        else:
            attended = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=attention.dropout if self.training else 0.0,
            )  # [B, heads, Q, C / heads]
        attended = attention.out_proj(attended.transpose(1, 2).reshape(batch, num_queries, channels))
        return self.norm(queries + self.dropout(attended)), weights


class ITAQuerySelfAttention(_ITAPostNormAttention):
    """Self-attention among the queries (FC-CLIP only; ITA removes it); post-norm."""

    def forward(self, queries: Tensor, query_pos: Tensor) -> Tensor:
        queries_with_pos = queries + query_pos
        attended, _ = self.attention(query=queries_with_pos, key=queries_with_pos, value=queries, need_weights=False)
        output: Tensor = self.norm(queries + self.dropout(attended))
        return output


class ITADecoderFeedForward(nn.Module):
    """Linear -> ReLU -> linear, residual, post-norm."""

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.linear1 = nn.Linear(config.hidden_dim, config.decoder_ffn_dim)
        self.linear2 = nn.Linear(config.decoder_ffn_dim, config.hidden_dim)
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.dropout = nn.Dropout(config.decoder_dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        _xavier_uniform_matrices(self)

    def forward(self, queries: Tensor) -> Tensor:
        hidden = self.linear2(self.dropout(F.relu(self.linear1(queries))))
        output: Tensor = self.norm(queries + self.dropout(hidden))
        return output


class ITAAggregationDecoderLayer(GradientCheckpointingLayer):  # type: ignore[no-untyped-call]
    """Masked cross-attention -> self-attention (only if `config.decoder_self_attention`) -> FFN.

    Call it with positional tensors: under gradient checkpointing they are what gets replayed.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.cross_attention = ITAMaskedCrossAttention(config)
        self.self_attention = ITAQuerySelfAttention(config) if config.decoder_self_attention else None
        self.ffn = ITADecoderFeedForward(config)

    def forward(
        self,
        queries: Tensor,
        memory: Tensor,
        attention_mask: Tensor | None,
        memory_with_pos: Tensor,
        query_pos: Tensor,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """New queries, and the cross-attention weights with `output_attentions`."""
        queries, weights = self.cross_attention(
            queries, memory, attention_mask, memory_with_pos, query_pos, output_attentions
        )
        if self.self_attention is not None:
            queries = self.self_attention(queries, query_pos)
        return self.ffn(queries), weights


@torch.no_grad()
def attention_mask_logits(mask_logits: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """`[B, Q, h * w]`: the mask logits `[B, Q, H, W]` resized bilinearly to the attended level's `(h, w)` (None:
    they already have that size), which `masked_attention_mask` thresholds."""
    if size is not None and tuple(mask_logits.shape[-2:]) != tuple(size):
        mask_logits = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    return mask_logits.flatten(2)


@kernel
def masked_attention_mask(mask_logits: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Cross-attention mask for the next layer from the current mask predictions.

    Args:
        mask_logits: `[B, Q, H, W]` mask logits.
        size: `(h, w)` of the feature level the next layer attends to; the logits are resized to it
            bilinearly. None: they already have that size.

    Returns:
        Bool `[B, 1, Q, h * w]` (one mask for all heads), True where a query may not attend: where its mask's
        sigmoid is below 0.5 (`open_fully_blocked_queries` then lets a query blocked everywhere attend everywhere).

    A registry entry (`kernels.kernel`) without a fast path: the ONNX export's check replays the exported graph's
    thresholds through it (`ita_segmentation/onnx/replay.py`).
    """
    blocked = attention_mask_logits(mask_logits, size).sigmoid() < 0.5  # no gradient (torch.no_grad)
    return open_fully_blocked_queries(blocked)


def open_fully_blocked_queries(blocked: Tensor) -> Tensor:
    """Bool `[B, Q, h * w]` blocked cells -> the attention mask `[B, 1, Q, h * w]`: a query blocked everywhere is let
    attend everywhere instead, so that its attention softmax stays defined."""
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.unsqueeze(1)


@dataclass
class ITADecoderPrediction(ModelOutput):
    """One prediction of the decoder's queries (of the initial queries or after a layer).

    Args:
        class_queries_logits: `[B, Q, K + 1]` class logits of the in-vocabulary classifier, void last.
        masks_queries_logits: `[B, Q, H/4, W/4]` mask logits.
    """

    class_queries_logits: Tensor | None = None
    masks_queries_logits: Tensor | None = None


@dataclass
class ITADecoderOutput(ModelOutput):
    """What the decoder returns (Mask2Former's `Mask2FormerMaskedAttentionDecoderOutput`).

    Args:
        class_queries_logits: `[B, Q, K + 1]` the last layer's class logits, void last.
        masks_queries_logits: `[B, Q, H/4, W/4]` the last layer's mask logits.
        auxiliary_predictions: the predictions of the initial queries and of every layer but the last
            (`decoder_layers` of them), with `output_intermediate_predictions`.
        last_hidden_state: `[B, Q, C]` the last layer's queries.
        hidden_states: the queries `[B, Q, C]` entering each layer, then the last layer's output (asked for).
        attentions: each layer's cross-attention weights `[B, heads, Q, h_l * w_l]` (asked for).
    """

    class_queries_logits: Tensor | None = None
    masks_queries_logits: Tensor | None = None
    auxiliary_predictions: tuple[ITADecoderPrediction, ...] | None = None
    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor | None, ...] | None = None


def _given(tensor: Tensor | None) -> Tensor:
    """A field of a typed output that this module always fills."""
    assert tensor is not None
    return tensor


class ITAAggregationDecoder(nn.Module):
    """Multi-scale masked-attention decoder with FC-CLIP's mask-pooled text classification head.

    Parameter names mirror the original `sem_seg_head.predictor`: `query_feat`, `query_embed`,
    `level_embed`, `layers.{i}`, `decoder_norm`, `mask_embed`, `mask_pooling_proj`, `class_embed`,
    `logit_scale`.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.decoder_attention_heads
        self.num_feature_levels = config.num_feature_levels
        self.num_dominant_categories = config.num_dominant_categories

        self.position_embedding = ITASinePositionEmbedding(config.hidden_dim // 2)
        self.query_feat = nn.Embedding(config.num_queries, config.hidden_dim)
        # One positional row per query, text queries included (the original's NUM_OBJECT_QUERIES + 20).
        self.query_embed = nn.Embedding(config.total_queries, config.hidden_dim)
        self.level_embed = nn.Embedding(config.num_feature_levels, config.hidden_dim)
        self.layers = nn.ModuleList(ITAAggregationDecoderLayer(config) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(config.hidden_dim)

        self.mask_embed = ITAMLP(config.hidden_dim, config.hidden_dim, config.mask_dim, HEAD_MLP_LAYERS)
        self.mask_pooling_proj = nn.Sequential(
            nn.LayerNorm(config.hidden_dim), nn.Linear(config.hidden_dim, config.hidden_dim)
        )
        self.class_embed = ITAMLP(config.hidden_dim, config.hidden_dim, config.clip_embed_dim, HEAD_MLP_LAYERS)
        self.logit_scale = nn.Parameter(torch.empty(()))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.logit_scale, self.config.logit_scale_init)

    def _mask_logits(self, normed_queries: Tensor, mask_features: Tensor) -> Tensor:
        """Mask logits `[B, Q, h, w]` of the normalised queries `[B, Q, C]` on `mask_features` `[B, mask_dim, h, w]`."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed_queries), mask_features)

    def predict(
        self, queries: Tensor, mask_features: Tensor, classifier: Tensor, vocabulary: ITAVocabulary
    ) -> ITADecoderPrediction:
        """Class logits `[B, Q, K + 1]` and mask logits `[B, Q, H/4, W/4]` of the current queries `[B, Q, C]`."""
        queries = self.decoder_norm(queries)
        mask_logits = self._mask_logits(queries, mask_features)  # [B, Q, H/4, W/4]
        pooled = self.mask_pooling_proj(mask_pool(mask_features, mask_logits))  # [B, Q, C]
        logit_scale = self.logit_scale.exp().clamp(max=self.config.logit_scale_max)
        class_logits = classification_logits(
            self.class_embed(pooled + queries),
            classifier,
            logit_scale,
            vocabulary.synonym_to_class,
            vocabulary.num_classes,
        )  # [B, Q, K + 1]
        return ITADecoderPrediction(class_queries_logits=class_logits, masks_queries_logits=mask_logits)

    def forward(
        self,
        multi_scale_features: Sequence[Tensor],
        mask_features: Tensor,
        text_queries: Tensor | None,
        classifier: Tensor,
        vocabulary: ITAVocabulary,
        output_intermediate_predictions: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ITADecoderOutput:
        """
        Args:
            multi_scale_features: `num_feature_levels` maps `[B, hidden_dim, h_l, w_l]`, strides 32, 16, 8.
            mask_features: `[B, mask_dim, H/4, W/4]`.
            text_queries: `[B, num_dominant_categories, hidden_dim]` dominant-category text queries, or
                None when `num_dominant_categories` is 0.
            classifier: `[S + 1, clip_embed_dim]` L2-normalised synonym embeddings, void last.
            vocabulary: the encoded vocabulary (`synonym_to_class`, `num_classes`) behind `classifier`.
            output_intermediate_predictions: return the prediction of the initial queries and of every layer
                (deep supervision, auxiliary logits). False returns only the last one, and between layers
                computes only what the next layer's attention mask needs (see the loop).
            output_hidden_states: also return the queries entering each layer and the last layer's output.
            output_attentions: also return each layer's cross-attention weights (computed only then).

        Returns:
            [`ITADecoderOutput`]; Q = text queries + learnable queries.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}")
        batch_size = mask_features.shape[0]

        memories, memories_with_pos = [], []
        level_sizes: list[tuple[int, int]] = []
        for level, features in enumerate(multi_scale_features):
            level_sizes.append((features.shape[-2], features.shape[-1]))
            memory = features.flatten(2).transpose(1, 2) + self.level_embed.weight[level]  # [B, h*w, C]
            # The sine embedding is float32; follow the memory so a half-precision model stays in half.
            pos = self.position_embedding(features).flatten(2).transpose(1, 2).to(memory.dtype)  # [B, h*w, C]
            memories.append(memory)
            memories_with_pos.append(memory + pos)

        learnable = self.query_feat.weight.unsqueeze(0).expand(batch_size, -1, -1)  # [B, num_queries, C]
        if self.num_dominant_categories > 0:
            expected = (batch_size, self.num_dominant_categories, self.config.hidden_dim)
            if text_queries is None or tuple(text_queries.shape) != expected:
                got = None if text_queries is None else tuple(text_queries.shape)
                raise ValueError(f"text_queries must have shape {expected}, got {got}")
            queries = torch.cat([text_queries, learnable], dim=1)  # [B, Q, C]
        else:
            if text_queries is not None:
                raise ValueError("text_queries given but config.num_dominant_categories is 0")
            queries = learnable
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch_size, -1, -1)  # [B, Q, C]

        if not output_intermediate_predictions:
            # Only the attention masks are needed between layers. Resizing is linear, so the mask logits at a
            # level are the mask embeddings times the mask features resized to it (up to float rounding):
            # no stride-4 logits and no class head for the intermediate queries.
            with torch.no_grad():
                level_mask_features = resize_to_levels(mask_features, level_sizes)

        auxiliary_predictions: list[ITADecoderPrediction] = []
        hidden_states: list[Tensor] = []
        attentions: list[Tensor | None] = []
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            if output_intermediate_predictions:
                prediction = self.predict(queries, mask_features, classifier, vocabulary)
                auxiliary_predictions.append(prediction)
                attention_mask = masked_attention_mask(_given(prediction.masks_queries_logits), level_sizes[level])
            else:
                attention_mask = masked_attention_mask(
                    self._mask_logits(self.decoder_norm(queries), level_mask_features[level])
                )
            hidden_states.append(queries)
            queries, weights = layer(
                queries, memories[level], attention_mask, memories_with_pos[level], query_pos, output_attentions
            )
            attentions.append(weights)
        hidden_states.append(queries)
        prediction = self.predict(queries, mask_features, classifier, vocabulary)
        return ITADecoderOutput(
            class_queries_logits=prediction.class_queries_logits,
            masks_queries_logits=prediction.masks_queries_logits,
            auxiliary_predictions=tuple(auxiliary_predictions) if output_intermediate_predictions else None,
            last_hidden_state=queries,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
