"""Pixel decoder of ITA and FC-CLIP: Mask2Former's multi-scale deformable-attention pixel decoder.

The paper's Detail Enhancement Module is this decoder fed with the frozen CLIP ConvNeXt features.
The stride 32, 16 and 8 maps go through a deformable-attention encoder (Deformable DETR's encoder,
without padding masks); a lateral 1x1 conv and a 3x3 conv then carry the result to stride 4, where
a 1x1 conv gives the mask features.

Sub-module names follow the original state dict (`sem_seg_head.pixel_decoder.*`), so converting a
checkpoint is a prefix rename. Deformable attention is written with `F.grid_sample` (`kernels.py`): it is
exact, differentiable and needs no compiled operator, on CPU or GPU; `kernels.py` chooses its fast path.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as hf_init
from transformers.utils.generic import ModelOutput

from configuration_ita import ITAConfig

from .kernels import conv2d, deformable_attention, tokens_to_maps, use_kernel_forward
from .layers import ITASinePositionEmbedding

__all__ = [
    "ITAPixelDecoderOutput",
    "ITAMultiScaleDeformableAttention",
    "ITAPixelDecoderEncoderLayer",
    "ITAPixelDecoderEncoder",
    "ITAPixelDecoderTransformer",
    "ITAConv2dNormActivation",
    "ITAPixelDecoder",
]


@dataclass
class ITAPixelDecoderOutput(ModelOutput):
    """What the pixel decoder returns (Mask2Former's `Mask2FormerPixelDecoderOutput`).

    Args:
        mask_features: `[B, mask_dim, H/4, W/4]`, the per-pixel embeddings the queries' mask embeddings meet.
        multi_scale_features: the `num_feature_levels` encoded maps `[B, pixel_decoder_dim, h_l, w_l]`, coarsest
            first (strides 32, 16, 8): the levels the decoder's layers attend to in turn.
    """

    mask_features: Tensor | None = None
    multi_scale_features: tuple[Tensor, ...] | None = None


class ITAMultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), as in Mask2Former's pixel decoder.

    Each query looks at `pixel_decoder_num_points` points per head and level around its reference
    point; offsets are predicted in pixels of each level and the weights are a softmax over all the
    levels and points of a head.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.embed_dim = config.pixel_decoder_dim
        self.num_heads = config.pixel_decoder_attention_heads
        self.num_levels = config.num_feature_levels
        self.num_points = config.pixel_decoder_num_points
        if self.embed_dim % self.num_heads:
            raise ValueError(f"pixel_decoder_dim={self.embed_dim} is not divisible by {self.num_heads} heads")
        samples_per_query = self.num_heads * self.num_levels * self.num_points
        self.sampling_offsets = nn.Linear(self.embed_dim, samples_per_query * 2)
        self.attention_weights = nn.Linear(self.embed_dim, samples_per_query)
        self.value_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.output_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self._reset_parameters()

    def _sampling_offset_ring(self) -> Tensor:
        """The initial offset bias: head h points along angle 2*pi*h/heads, point p at distance p + 1.

        Directions are scaled so that their larger coordinate is 1, so the first point of each head
        falls on one of the 8 neighbouring pixels. Returns `[heads * levels * points * 2]`.
        """
        device = self.sampling_offsets.bias.device
        angles = torch.arange(self.num_heads, dtype=torch.float32, device=device) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [heads, 2]
        directions = directions / directions.abs().amax(dim=-1, keepdim=True)
        distances = torch.arange(1, self.num_points + 1, dtype=torch.float32, device=device)
        ring = directions[:, None, None, :] * distances[None, None, :, None]  # [heads, 1, points, 2]
        return ring.expand(-1, self.num_levels, -1, -1).flatten()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # transformers' `copy_` skips a tensor already loaded from a checkpoint, like the torch.nn.init
        # functions do while transformers initialises missing weights.
        hf_init.copy_(self.sampling_offsets.bias, self._sampling_offset_ring())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.constant_(projection.bias, 0.0)

    def forward(
        self, query: Tensor, value: Tensor, reference_points: Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> Tensor:
        """
        Args:
            query: `[B, Lq, d]`, the features plus their position embeddings.
            value: `[B, S, d]`, the levels flattened row-major and concatenated.
            reference_points: `[B or 1, Lq, 2]`, (x, y) in [0, 1], shared by all levels.
            spatial_shapes: list of `(height, width)` of each level.

        Returns:
            `[B, Lq, d]`.
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(batch, -1, heads, self.embed_dim // heads)  # [B, S, heads, d / heads]
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)  # in pixels
        logits = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        attended = deformable_attention(value, reference_points, offsets, logits, spatial_shapes)
        output: Tensor = self.output_proj(attended)
        return output


@use_kernel_forward("ITAPixelDecoderEncoderLayer")
class ITAPixelDecoderEncoderLayer(nn.Module):
    """Deformable self-attention over all levels then a ReLU feed-forward, each followed by LayerNorm.

    Its fast path (`kernels.encoder_layer_in_token_chunks`) projects the values once and runs the tokens in chunks.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        dim = config.pixel_decoder_dim
        self.self_attn = ITAMultiScaleDeformableAttention(config)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, config.pixel_decoder_ffn_dim)
        self.linear2 = nn.Linear(config.pixel_decoder_ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.pixel_decoder_dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The original transformer xavier-initialises every matrix it holds, then re-initialises the
        # attention modules; what remains of that here is xavier on the feed-forward weights. Their
        # biases keep nn.Linear's default, as in the original.
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            bound = 1 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.bias, -bound, bound)
        for norm in (self.norm1, self.norm2):
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        attended = self.self_attn(hidden_states + position_embeddings, hidden_states, reference_points, spatial_shapes)
        hidden_states = self.norm1(hidden_states + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(hidden_states), inplace=True)))
        hidden_states = self.norm2(hidden_states + self.dropout(ffn))
        return hidden_states


class ITAPixelDecoderEncoder(nn.Module):
    """A stack of deformable encoder layers; every query's reference point is its own pixel centre."""

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            ITAPixelDecoderEncoderLayer(config) for _ in range(config.pixel_decoder_encoder_layers)
        )

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised to (0, 1) by that level's size: `[1, S, 2]` as (x, y).

        The original scales them by each level's valid ratio; without padding masks every ratio is 1.
        """
        points = []
        for height, width in spatial_shapes:
            y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
            points.append(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1))  # [h*w, 2]
        return torch.cat(points, dim=0)[None]

    def forward(
        self, hidden_states: Tensor, position_embeddings: Tensor, spatial_shapes: Sequence[tuple[int, int]]
    ) -> Tensor:
        reference_points = self.reference_points(spatial_shapes, hidden_states.device).to(hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, reference_points, spatial_shapes)
        return hidden_states


class ITAPixelDecoderTransformer(nn.Module):
    """Encoder-only deformable transformer: flattens the levels, adds a learned embedding per level to
    the sine position embedding, encodes, and returns the levels as maps again."""

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, config.pixel_decoder_dim))
        self.encoder = ITAPixelDecoderEncoder(config)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)

    def forward(self, sources: list[Tensor], position_embeddings: list[Tensor]) -> list[Tensor]:
        """
        Args:
            sources: list of `[B, d, h_l, w_l]`, coarsest level first.
            position_embeddings: list of `[B, d, h_l, w_l]`, as `sources`.

        Returns:
            list of `[B, d, h_l, w_l]`, the encoded levels.
        """
        spatial_shapes = [(source.shape[-2], source.shape[-1]) for source in sources]
        hidden_states = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], dim=1)  # [B, S, d]
        positions = torch.cat(
            [
                position.flatten(2).transpose(1, 2) + self.level_embed[level]
                for level, position in enumerate(position_embeddings)
            ],
            dim=1,
        )  # [B, S, d]
        hidden_states = self.encoder(hidden_states, positions, spatial_shapes)
        return tokens_to_maps(hidden_states, spatial_shapes)


class ITAConv2dNormActivation(nn.Conv2d):
    """Conv2d with an optional `norm` sub-module and activation (detectron2's `Conv2d`, whose state-dict
    keys it keeps: `weight`, `bias`, `norm.*`). Initialised with Caffe2's "xavier" fill, i.e.
    kaiming-uniform with a=1 and zero bias, as Mask2Former does for these convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        norm: nn.Module | None = None,
        activation: nn.Module | None = None,
    ):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.norm = norm
        self.activation = activation
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=1)
        if self.bias is not None:
            nn.init.constant_(self.bias, 0.0)
        if self.norm is not None:
            nn.init.ones_(cast(Tensor, self.norm.weight))
            nn.init.zeros_(cast(Tensor, self.norm.bias))

    def forward(self, x: Tensor) -> Tensor:
        x = conv2d(x, self.weight, self.bias, cast(tuple[int, int], self.padding))
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ITAPixelDecoder(nn.Module):
    """Mask2Former's `MSDeformAttnPixelDecoder` (the Detail Enhancement Module of ITA).

    Args:
        config: [`ITAConfig`].
        feature_channels: channels of the backbone maps, finest first, strides doubling from 4
            (ConvNeXt-L: `[192, 384, 768, 1536]` at strides 4, 8, 16, 32). The coarsest
            `config.num_feature_levels` maps feed the deformable encoder; each finer one gets an FPN
            step (`adapter_{i}`, `layer_{i}`, numbered from the finest), down to the mask features.
    """

    def __init__(self, config: ITAConfig, feature_channels: Sequence[int]):
        super().__init__()
        dim = config.pixel_decoder_dim
        num_levels = config.num_feature_levels
        if len(feature_channels) < num_levels:
            raise ValueError(f"got {len(feature_channels)} feature maps, need at least num_feature_levels={num_levels}")
        groups = config.group_norm_groups
        self.num_feature_levels = num_levels
        self.num_fpn_levels = len(feature_channels) - num_levels
        # Coarsest first: res5, res4, res3 for ConvNeXt.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, dim, kernel_size=1), nn.GroupNorm(groups, dim))
            for channels in feature_channels[::-1][:num_levels]
        )
        self.position_embedding = ITASinePositionEmbedding(dim // 2)
        self.transformer = ITAPixelDecoderTransformer(config)
        self.mask_features = ITAConv2dNormActivation(dim, config.mask_dim, kernel_size=1)
        for index, channels in enumerate(feature_channels[: self.num_fpn_levels], start=1):
            adapter = ITAConv2dNormActivation(channels, dim, 1, bias=False, norm=nn.GroupNorm(groups, dim))
            layer = ITAConv2dNormActivation(
                dim, dim, 3, bias=False, norm=nn.GroupNorm(groups, dim), activation=nn.ReLU(inplace=True)
            )
            self.add_module(f"adapter_{index}", adapter)
            self.add_module(f"layer_{index}", layer)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for projection in self.input_proj:
            conv, norm = cast(nn.Conv2d, projection[0]), cast(nn.GroupNorm, projection[1])  # type: ignore[index]
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.constant_(cast(Tensor, conv.bias), 0.0)
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(self, features: Sequence[Tensor]) -> ITAPixelDecoderOutput:
        """
        Args:
            features: backbone maps, finest first (`ITACLIPBackboneOutput.feature_maps`: res2 to res5).

        Returns:
            [`ITAPixelDecoderOutput`]: the mask features `[B, mask_dim, H/4, W/4]` and the `num_feature_levels`
            encoded maps `[B, pixel_decoder_dim, h, w]`, coarsest first (strides 32, 16, 8).
        """
        # Deformable attention is kept out of reduced precision, as in the original, which runs the
        # whole pixel decoder with autocast disabled on float32 inputs. Parameters cast to another
        # dtype on purpose (`model.half()`) set the dtype instead.
        dtype = self.mask_features.weight.dtype
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            features = [feature.to(dtype) for feature in features]
            coarse_to_fine = features[::-1]
            sources, positions = [], []
            for projection, feature in zip(self.input_proj, coarse_to_fine[: self.num_feature_levels]):
                sources.append(projection(feature))  # [B, d, h, w]
                positions.append(self.position_embedding(feature).to(dtype))  # [B, d, h, w]
            maps = self.transformer(sources, positions)

            for index in range(self.num_fpn_levels, 0, -1):
                lateral = getattr(self, f"adapter_{index}")(features[index - 1])  # [B, d, 2h, 2w]
                upsampled = F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                # In place: at stride 4 a fresh [B, d, H/4, W/4] tensor costs more to allocate than the sum.
                maps.append(getattr(self, f"layer_{index}")(upsampled.add_(lateral)))

            mask_features = self.mask_features(maps[-1])  # [B, mask_dim, H/4, W/4]
        return ITAPixelDecoderOutput(
            mask_features=mask_features, multi_scale_features=tuple(maps[: self.num_feature_levels])
        )
