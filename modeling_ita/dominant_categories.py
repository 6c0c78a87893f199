"""Dominant Category Unearthing (DCU): CLIP ranks the vocabulary zero-shot for each image and the top-k names,
projected into the decoder's width, become text queries of the aggregation decoder.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from configuration_ita import ITAConfig

from .clip_backbone import ITACLIPBackbone
from .kernels import kernel

__all__ = [
    "ITADominantCategoryUnearthing",
    "clip_center_crop",
    "dense_image_embeddings",
    "image_region_means",
    "top_k_cycled",
]


def clip_center_crop(pixel_values: Tensor, image_sizes: Tensor, size: int) -> Tensor:
    """open_clip's eval view of each image made from the model input: its unpadded region, shortest side
    resized to `size` (bicubic, antialiased), centre crop `size` x `size`. Input and output are CLIP-normalised:
    [B, 3, size, size].

    The model's only fallback for calls without the processor's view (`dominant_category_pixel_values`, made by
    `image_processing_ita.clip_view`); the ONNX runtime uses it too. The two views crop the same region but
    differ in their arithmetic: the processor resizes the 8-bit image with PIL, in two passes rounded to 8 bits,
    as the original does; this resizes the normalised (and already resized) model input as floats, so the
    pixels can differ by a few grey levels and flip near-ties of the ranking.
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


@kernel
def image_region_means(dense_features: Tensor, image_sizes: Tensor, padded_size: tuple[int, int]) -> Tensor:
    """[B, C] float32: the mean of the dense features [B, C, h, w] over the cells that cover each image (its
    unpadded region of the `padded_size` input, rounded up to whole cells)."""
    padded_height, padded_width = padded_size
    grid_height, grid_width = dense_features.shape[-2:]
    pooled = []
    for features, (height, width) in zip(dense_features, image_sizes.tolist()):
        rows = math.ceil(height * grid_height / padded_height)
        columns = math.ceil(width * grid_width / padded_width)
        pooled.append(features[:, :rows, :columns].float().mean(dim=(-2, -1)))  # [C]
    return torch.stack(pooled)


@kernel
def top_k_cycled(scores: Tensor, k: int) -> Tensor:
    """[B, k] indices of the k best of `scores` [B, N] per row, best first, ties in index order; with fewer than k
    candidates the ranking is repeated until the k slots are full."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    slots = torch.arange(k, device=order.device) % order.shape[-1]
    return order[:, slots]


def dense_image_embeddings(
    backbone: ITACLIPBackbone, dense_features: Tensor, image_sizes: Tensor, padded_size: tuple[int, int]
) -> Tensor:
    """Image embeddings [B, D] (not normalised) from the main forward's dense CLIP features [B, C, h, w]: the
    mean over the cells that cover each image (`image_region_means`), then CLIP's own pooling head, the way CLIP's
    image encoder pools its last stage."""
    pooled = image_region_means(dense_features, image_sizes, padded_size)[:, None].to(dense_features.dtype)  # [B, 1, C]
    return backbone.pooled_embeddings(pooled)[:, 0]


class ITADominantCategoryUnearthing(nn.Module):
    """Ranks candidate names per image and turns the top-k into text queries.

    `projection` is the original `add_tgt_em` ([clip_dim, hidden], an `nn.Embedding` weight used as a matrix,
    hence its N(0, 1) initialisation): trainable, while CLIP stays frozen.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.num_categories = config.num_dominant_categories
        self.image_size = config.dominant_category_image_size
        self.features = config.dominant_category_features
        self.projection = nn.Parameter(torch.empty(config.clip_embed_dim, config.hidden_dim))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.normal_(self.projection)

    @torch.no_grad()
    def rank(
        self,
        backbone: ITACLIPBackbone,
        pixel_values: Tensor,
        image_sizes: Tensor,
        candidate_embeddings: Tensor,
        dense_features: Tensor | None = None,
        views: Tensor | None = None,
    ) -> Tensor:
        """Indices [B, k] of the top-k candidates per image, best first.

        `candidate_embeddings` [N, D] are the L2-normalised bare-name embeddings of the vocabulary's synonyms
        plus the extra candidates. With fewer than k candidates the ranking is repeated until the k slots are
        full (the original fails there). With `config.dominant_category_features="dense_features"` the images
        are represented by `dense_features` (`clip_vis_dense` of the main forward) instead of a second CLIP
        forward on their centre crops; they are computed from `pixel_values` when not given. `views`
        [B, 3, S, S] are the CLIP views of the images (the processor's `dominant_category_pixel_values`); without
        them the views are made from `pixel_values` (`clip_center_crop`).
        """
        probs = self.ranking_probabilities(
            backbone, pixel_values, image_sizes, candidate_embeddings, dense_features, views
        )
        return top_k_cycled(probs, self.num_categories)

    @torch.no_grad()
    def ranking_probabilities(
        self,
        backbone: ITACLIPBackbone,
        pixel_values: Tensor,
        image_sizes: Tensor,
        candidate_embeddings: Tensor,
        dense_features: Tensor | None = None,
        views: Tensor | None = None,
    ) -> Tensor:
        """[B, N] CLIP's zero-shot probabilities of the N candidates per image (what `rank` sorts)."""
        if self.features == "dense_features":
            if dense_features is None:
                dense_features = backbone.extract_features(pixel_values).clip_vis_dense
            assert dense_features is not None
            padded_size = (pixel_values.shape[-2], pixel_values.shape[-1])
            image_embeddings = dense_image_embeddings(backbone, dense_features, image_sizes, padded_size)
            image_embeddings = F.normalize(image_embeddings, dim=-1)  # [B, D]
        else:
            if views is None:
                views = clip_center_crop(pixel_values, image_sizes, self.image_size)
            elif (
                tuple(views.shape[-2:]) != (self.image_size, self.image_size) or views.shape[0] != pixel_values.shape[0]
            ):
                raise ValueError(
                    f"dominant_category_pixel_values has shape {tuple(views.shape)}; this model ranks on "
                    f"{self.image_size}x{self.image_size} views, one per image of the batch of {len(pixel_values)} "
                    "(set the processor's dominant_category_image_size to the config's)"
                )
            image_embeddings = backbone.encode_image(views.to(pixel_values.dtype), normalize=True)  # [B, D]
        scale = backbone.logit_scale.exp()
        return (scale * image_embeddings.float() @ candidate_embeddings.float().t()).softmax(dim=-1)  # [B, N]

    def forward(self, name_embeddings: Tensor) -> Tensor:
        """Text queries [B, k, hidden] from the chosen names' embeddings [B, k, D]."""
        return name_embeddings.to(self.projection.dtype) @ self.projection
