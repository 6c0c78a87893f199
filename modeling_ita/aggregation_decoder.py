"""Image-text aggregation decoder: FC-CLIP's masked-attention decoder with dominant-category text queries.

With `config.decoder_self_attention=True` and no text queries this is FC-CLIP's (Mask2Former's)
multi-scale masked-attention decoder. ITA puts `config.num_dominant_categories` text queries in front
of the learnable queries and drops the self-attention sub-layers, so every layer is masked
cross-attention to one pixel-decoder level followed by a feed-forward network.

Tensors are batch-first (`[B, Q, C]`); the original keeps them sequence-first, which gives the same
numbers. Module names follow the original predictor so that its weights convert by renaming alone.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .layers import ITAMLP, ITASinePositionEmbedding, classification_logits, mask_pool

__all__ = [
    "ITAMaskedCrossAttention",
    "ITAQuerySelfAttention",
    "ITADecoderFeedForward",
    "ITAAggregationDecoderLayer",
    "ITAAggregationDecoder",
    "masked_attention_mask",
]


# Depth of the mask and class embedding MLPs: fixed in the original (not a config option there either).
HEAD_MLP_LAYERS = 3


def _xavier_uniform_matrices(module):
    # The original re-initialises every matrix of a sub-layer (attention projections included) with
    # Xavier-uniform after torch's default init; biases and norms keep torch's init.
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class _ITAPostNormAttention(nn.Module):
    """Multi-head attention with a residual connection and post-norm: the shared part of both attention
    sub-layers (`attention`, `norm`, dropout; Xavier-initialised matrices)."""

    def __init__(self, config):
        super().__init__()
        self.attention = nn.MultiheadAttention(
            config.hidden_dim, config.decoder_attention_heads, dropout=config.decoder_dropout, batch_first=True
        )
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.dropout = nn.Dropout(config.decoder_dropout)
        self._reset_parameters()

    def _reset_parameters(self):
        _xavier_uniform_matrices(self)


class ITAMaskedCrossAttention(_ITAPostNormAttention):
    """Queries attend to one flattened feature level, blocked where the previous mask says so; post-norm.

    The projections are those of `self.attention` (an `nn.MultiheadAttention`, whose parameter names the
    original's state dict uses); the attention itself runs through `F.scaled_dot_product_attention` with a
    mask shared by the heads. `nn.MultiheadAttention` would need the mask repeated per head and turns it
    into a float tensor of that size on every call (`[B * heads, Q, h * w]`, 22 M elements per layer at
    stride 8 of an 800x1088 input); the arithmetic is the same.
    """

    def forward(self, queries, memory, attention_mask, memory_with_pos, query_pos):
        """`queries`/`query_pos` [B, Q, C]; `memory` [B, HW, C], the values' input, and `memory_with_pos`, the
        memory plus its position embedding (the keys' input, computed once for the layers of a level);
        `attention_mask` bool [B, 1, Q, HW] with True = blocked, or None."""
        attention = self.attention
        batch, num_queries, channels = queries.shape
        heads = attention.num_heads
        query_weight, key_weight, value_weight = attention.in_proj_weight.chunk(3)
        query_bias, key_bias, value_bias = attention.in_proj_bias.chunk(3)

        def split_heads(x):  # [B, L, C] -> [B, heads, L, C / heads]
            return x.view(batch, x.shape[1], heads, channels // heads).transpose(1, 2)

        query = split_heads(F.linear(queries + query_pos, query_weight, query_bias))
        key = split_heads(F.linear(memory_with_pos, key_weight, key_bias))
        value = split_heads(F.linear(memory, value_weight, value_bias))
        if attention_mask is not None:  # additive float mask: a boolean one SDPA converts twice per call on CPU
            attention_mask = query.new_zeros(attention_mask.shape).masked_fill_(attention_mask, float("-inf"))
        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=attention.dropout if self.training else 0.0,
        )  # [B, heads, Q, C / heads]
        attended = attention.out_proj(attended.transpose(1, 2).reshape(batch, num_queries, channels))
        return self.norm(queries + self.dropout(attended))


class ITAQuerySelfAttention(_ITAPostNormAttention):
    """Self-attention among the queries (FC-CLIP only; ITA removes it); post-norm."""

    def forward(self, queries, query_pos):
        queries_with_pos = queries + query_pos
        attended, _ = self.attention(query=queries_with_pos, key=queries_with_pos, value=queries, need_weights=False)
        return self.norm(queries + self.dropout(attended))


class ITADecoderFeedForward(nn.Module):
    """Linear -> ReLU -> linear, residual, post-norm."""

    def __init__(self, config):
        super().__init__()
        self.linear1 = nn.Linear(config.hidden_dim, config.decoder_ffn_dim)
        self.linear2 = nn.Linear(config.decoder_ffn_dim, config.hidden_dim)
        self.norm = nn.LayerNorm(config.hidden_dim)
        self.dropout = nn.Dropout(config.decoder_dropout)
        self._reset_parameters()

    def _reset_parameters(self):
        _xavier_uniform_matrices(self)

    def forward(self, queries):
        hidden = self.linear2(self.dropout(F.relu(self.linear1(queries))))
        return self.norm(queries + self.dropout(hidden))


class ITAAggregationDecoderLayer(GradientCheckpointingLayer):
    """Masked cross-attention -> self-attention (only if `config.decoder_self_attention`) -> FFN.

    Call it with positional tensors: under gradient checkpointing they are what gets replayed.
    """

    def __init__(self, config):
        super().__init__()
        self.cross_attention = ITAMaskedCrossAttention(config)
        self.self_attention = ITAQuerySelfAttention(config) if config.decoder_self_attention else None
        self.ffn = ITADecoderFeedForward(config)

    def forward(self, queries, memory, attention_mask, memory_with_pos, query_pos):
        queries = self.cross_attention(queries, memory, attention_mask, memory_with_pos, query_pos)
        if self.self_attention is not None:
            queries = self.self_attention(queries, query_pos)
        return self.ffn(queries)


@torch.no_grad()
def masked_attention_mask(mask_logits, size=None):
    """Cross-attention mask for the next layer from the current mask predictions.

    Args:
        mask_logits: `[B, Q, H, W]` mask logits.
        size: `(h, w)` of the feature level the next layer attends to; the logits are resized to it
            bilinearly. None: they already have that size.

    Returns:
        Bool `[B, 1, Q, h * w]` (one mask for all heads), True where a query may not attend (its mask's
        sigmoid is below 0.5 there). A query blocked everywhere is let attend everywhere instead, so that
        its attention softmax stays defined.
    """
    if size is not None and tuple(mask_logits.shape[-2:]) != tuple(size):
        mask_logits = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    blocked = mask_logits.sigmoid().flatten(2) < 0.5  # [B, Q, h*w]; no gradient (torch.no_grad)
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.unsqueeze(1)


def _resize_to_levels(features, sizes):
    """`features` [B, C, H, W] resized bilinearly (align_corners=False) to each of `sizes`.

    PyTorch's CPU kernel converts a channels-first input to channels-last on every call that shrinks it more
    than twofold (a copy of the whole input); converting once for all such sizes gives the same maps (tested)
    for one copy instead of one per level.
    """
    height, width = features.shape[-2:]
    channels_last = None
    resized = []
    for size in sizes:
        if tuple(size) == (height, width):
            resized.append(features)
            continue
        source = features
        if 2 * size[0] < height or 2 * size[1] < width:
            if channels_last is None:
                channels_last = features.contiguous(memory_format=torch.channels_last)
            source = channels_last
        resized.append(F.interpolate(source, size=tuple(size), mode="bilinear", align_corners=False))
    return resized


class ITAAggregationDecoder(nn.Module):
    """Multi-scale masked-attention decoder with FC-CLIP's mask-pooled text classification head.

    Parameter names mirror the original `sem_seg_head.predictor`: `query_feat`, `query_embed`,
    `level_embed`, `layers.{i}`, `decoder_norm`, `mask_embed`, `mask_pooling_proj`, `class_embed`,
    `logit_scale`.
    """

    def __init__(self, config):
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

    def _reset_parameters(self):
        nn.init.constant_(self.logit_scale, self.config.logit_scale_init)

    def _mask_logits(self, normed_queries, mask_features):
        """Mask logits [B, Q, h, w] of the normalised queries [B, Q, C] on `mask_features` [B, mask_dim, h, w]."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed_queries), mask_features)

    def predict(self, queries, mask_features, classifier, synonym_to_class, num_classes):
        """Class and mask logits of the current queries [B, Q, C] -> ([B, Q, K + 1], [B, Q, H/4, W/4])."""
        queries = self.decoder_norm(queries)
        mask_logits = self._mask_logits(queries, mask_features)  # [B, Q, H/4, W/4]
        pooled = self.mask_pooling_proj(mask_pool(mask_features, mask_logits))  # [B, Q, C]
        logit_scale = self.logit_scale.exp().clamp(max=self.config.logit_scale_max)
        class_logits = classification_logits(
            self.class_embed(pooled + queries), classifier, logit_scale, synonym_to_class, num_classes
        )  # [B, Q, K + 1]
        return class_logits, mask_logits

    def forward(
        self,
        multi_scale_features,
        mask_features,
        text_queries,
        classifier,
        synonym_to_class,
        num_classes,
        output_intermediate_predictions=True,
    ):
        """
        Args:
            multi_scale_features: `num_feature_levels` maps `[B, hidden_dim, h_l, w_l]`, strides 32, 16, 8.
            mask_features: `[B, mask_dim, H/4, W/4]`.
            text_queries: `[B, num_dominant_categories, hidden_dim]` dominant-category text queries, or
                None when `num_dominant_categories` is 0.
            classifier: `[S + 1, clip_embed_dim]` L2-normalised synonym embeddings, void last.
            synonym_to_class: `[S]` long, the class of each synonym.
            num_classes: K.
            output_intermediate_predictions: return the prediction of the initial queries and of every layer
                (deep supervision, auxiliary logits). False returns only the last one and computes, between
                layers, only what the next layer's attention mask needs: the mask logits at that layer's
                feature level. Bilinear resizing is linear, so resizing the mask features before the product
                with the mask embeddings instead of the stride-4 logits after it gives the same logits up to
                float rounding, for 4 to 64 times fewer products, and the class head is skipped.

        Returns:
            A list of tuples `(class_logits [B, Q, K + 1], mask_logits [B, Q, H/4, W/4])`: `decoder_layers + 1`
            of them (the initial queries, then one after every layer), or only the last one; Q = text queries
            + learnable queries.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        batch_size = mask_features.shape[0]

        memories, memories_with_pos, level_sizes = [], [], []
        for level, features in enumerate(multi_scale_features):
            level_sizes.append(tuple(features.shape[-2:]))
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
            with torch.no_grad():
                level_mask_features = _resize_to_levels(mask_features, level_sizes)
            for i, layer in enumerate(self.layers):
                level = i % self.num_feature_levels
                attention_mask = masked_attention_mask(
                    self._mask_logits(self.decoder_norm(queries), level_mask_features[level])
                )
                queries = layer(queries, memories[level], attention_mask, memories_with_pos[level], query_pos)
            return [self.predict(queries, mask_features, classifier, synonym_to_class, num_classes)]

        predictions = [self.predict(queries, mask_features, classifier, synonym_to_class, num_classes)]
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            attention_mask = masked_attention_mask(predictions[-1][1], level_sizes[level])
            queries = layer(queries, memories[level], attention_mask, memories_with_pos[level], query_pos)
            predictions.append(self.predict(queries, mask_features, classifier, synonym_to_class, num_classes))
        return predictions
