"""Dominant Category Unearthing (DCU): CLIP ranks the vocabulary zero-shot for each image and the top-k names,
projected into the decoder's width, become text queries of the aggregation decoder.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ITADominantCategoryUnearthing", "clip_center_crop"]


def clip_center_crop(pixel_values, image_sizes, size):
    """open_clip's eval view of each image: its unpadded region, shortest side resized to `size` (bicubic,
    antialiased), centre crop `size` x `size`. Input and output are CLIP-normalised: [B, 3, size, size].

    The original applies the same steps to the uint8 image with PIL; resizing normalised values instead
    differs only by PIL's rounding to uint8.
    """
    views = []
    for image, (height, width) in zip(pixel_values, image_sizes.tolist()):
        image = image[:, :height, :width]
        short, long = min(height, width), max(height, width)
        new_long = int(size * long / short)  # torchvision's Resize(int) rule
        new_size = (size, new_long) if height <= width else (new_long, size)
        image = F.interpolate(image[None].float(), size=new_size, mode="bicubic", align_corners=False, antialias=True)
        top = int(round((new_size[0] - size) / 2.0))
        left = int(round((new_size[1] - size) / 2.0))
        views.append(image[0, :, top : top + size, left : left + size])
    return torch.stack(views).to(pixel_values.dtype)


class ITADominantCategoryUnearthing(nn.Module):
    """Ranks candidate names per image and turns the top-k into text queries.

    `projection` is the original `add_tgt_em` ([clip_dim, hidden], an `nn.Embedding` weight used as a matrix,
    hence its N(0, 1) initialisation): trainable, while CLIP stays frozen.
    """

    def __init__(self, config):
        super().__init__()
        self.num_categories = config.num_dominant_categories
        self.image_size = config.dominant_category_image_size
        self.projection = nn.Parameter(torch.empty(config.clip_embed_dim, config.hidden_dim))
        self._reset_parameters()

    def _reset_parameters(self):
        nn.init.normal_(self.projection)

    @torch.no_grad()
    def rank(self, backbone, pixel_values, image_sizes, candidate_embeddings):
        """Indices [B, k] of the top-k candidates per image, best first.

        `candidate_embeddings` [N, D] are the L2-normalised bare-name embeddings of the vocabulary's synonyms
        plus the extra candidates. With fewer than k candidates the ranking is repeated until the k slots are
        full (the original fails there).
        """
        views = clip_center_crop(pixel_values, image_sizes, self.image_size)
        image_embeddings = backbone.encode_image(views, normalize=True)  # [B, D]
        scale = backbone.logit_scale.exp()
        probs = (scale * image_embeddings.float() @ candidate_embeddings.float().t()).softmax(dim=-1)  # [B, N]
        order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
        slots = torch.arange(self.num_categories, device=order.device) % order.shape[-1]
        return order[:, slots]

    def forward(self, name_embeddings):
        """Text queries [B, k, hidden] from the chosen names' embeddings [B, k, D]."""
        return name_embeddings.to(self.projection.dtype) @ self.projection
