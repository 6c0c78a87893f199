"""Small parts shared by the pixel decoder, the aggregation decoder and the classifiers (`mask_pool` is a kernel,
re-exported here)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import mask_pool

__all__ = ["ITASinePositionEmbedding", "ITAMLP", "mask_pool", "classification_logits"]


class ITASinePositionEmbedding(nn.Module):
    """DETR's 2-D sine/cosine position embedding (normalised coordinates, 2*pi scale), no padding mask.

    Returns `[B, 2 * num_pos_feats, H, W]` in float32: y features first, then x, as in Mask2Former.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        eps = 1e-6
        # cumsum of ones = 1..H; dividing by the last value normalises to (0, 1].
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=x.device)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=x.device)
        y_embed = y_embed / (height + eps) * self.scale
        x_embed = x_embed / (width + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, None] / dim_t  # [W, F]
        pos_y = y_embed[:, None] / dim_t  # [H, F]
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)), dim=2
        )
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)  # [B, 2F, H, W]


class ITAMLP(nn.Module):
    """Linear layers with ReLU between them (Mask2Former's `MLP`); keys `layers.{i}.weight`."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def classification_logits(
    embeddings: Tensor, classifier: Tensor, logit_scale: Tensor, synonym_to_class: Tensor, num_classes: int
) -> Tensor:
    """Cosine-similarity logits against a text classifier, max over each class's synonyms.

    Args:
        embeddings: `[B, Q, D]` query embeddings (normalised here).
        classifier: `[S + 1, D]` L2-normalised synonym embeddings, the void embedding last.
        logit_scale: scalar tensor, already exponentiated and clamped.
        synonym_to_class: `[S]` long tensor, the class index of each synonym row.
        num_classes: K, the number of classes.

    Returns:
        `[B, Q, K + 1]` logits; the last column is void.
    """
    embeddings = F.normalize(embeddings, dim=-1)
    logits = logit_scale * embeddings @ classifier.t().to(embeddings.dtype)  # [B, Q, S + 1]
    synonym_logits, void_logits = logits[..., :-1], logits[..., -1:]
    index = synonym_to_class.to(logits.device).expand(*synonym_logits.shape[:-1], -1)
    class_logits = synonym_logits.new_full((*synonym_logits.shape[:-1], num_classes), float("-inf"))
    class_logits = class_logits.scatter_reduce(-1, index, synonym_logits, reduce="amax", include_self=True)
    return torch.cat([class_logits, void_logits], dim=-1)
