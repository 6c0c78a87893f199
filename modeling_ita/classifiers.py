"""The two classifiers of a query and their geometric ensemble.

In-vocabulary: the decoder's class embedding against the text classifier (`classification_logits`, called by the
decoder). Out-of-vocabulary: frozen CLIP's own head on CLIP features pooled inside each query's mask. At inference
the two are combined per class, with more weight on CLIP for classes unseen in training.
"""

import torch
import torch.nn.functional as F

from .clip_backbone import ITACLIPBackbone
from .layers import classification_logits, mask_pool
from .vocabulary import ITAVocabulary

__all__ = ["geometric_ensemble", "out_of_vocabulary_logits"]


def out_of_vocabulary_logits(
    backbone: ITACLIPBackbone,
    clip_dense_features: torch.Tensor,
    mask_logits: torch.Tensor,
    classifier: torch.Tensor,
    vocabulary: ITAVocabulary,
    logit_scale_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen CLIP classifies each query's mask-pooled dense features: logits `[B, Q, K + 1]` (void last) and
    `valid` `[B, Q]`, whether the mask covers any CLIP-feature cell."""
    masks = F.interpolate(mask_logits, size=clip_dense_features.shape[-2:], mode="bilinear", align_corners=False)
    pooled = mask_pool(clip_dense_features, masks)  # [B, Q, C]
    embeddings = backbone.pooled_embeddings(pooled)  # [B, Q, D]
    scale = torch.clamp(backbone.logit_scale.exp(), max=logit_scale_max)
    logits = classification_logits(embeddings, classifier, scale, vocabulary.synonym_to_class, vocabulary.num_classes)
    valid = (masks > 0).flatten(2).any(dim=-1)
    return logits, valid


def geometric_ensemble(
    in_vocabulary_logits: torch.Tensor,
    out_vocabulary_logits: torch.Tensor,
    overlap_mask: torch.Tensor,
    alpha: float,
    beta: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """FC-CLIP's geometric ensemble -> log-probabilities `[B, Q, K + 1]` (void last).

    Classes seen in training mix p_in^(1 - alpha) * p_out^alpha, unseen ones p_in^(1 - beta) * p_out^beta,
    computed in log space (the original multiplies probabilities, which can underflow to log(0) * 0 = NaN);
    the void probability of the in-vocabulary classifier scales the rest. `valid` `[B, Q]` switches the CLIP
    term off for queries whose mask covers no CLIP-feature cell.
    """
    log_p_in = in_vocabulary_logits[..., :-1].float().log_softmax(dim=-1)
    log_p_out = out_vocabulary_logits[..., :-1].float().log_softmax(dim=-1)
    alphas = torch.full_like(log_p_in[..., :1], alpha)
    betas = torch.full_like(log_p_in[..., :1], beta)
    if valid is not None:
        alphas = alphas * valid[..., None].to(alphas.dtype)
        betas = betas * valid[..., None].to(betas.dtype)
    seen = (1 - alphas) * log_p_in + alphas * log_p_out
    unseen = (1 - betas) * log_p_in + betas * log_p_out
    ensemble = torch.where(overlap_mask.bool(), seen, unseen)
    void = in_vocabulary_logits.float().softmax(dim=-1)[..., -1:]
    probs = torch.cat([ensemble.softmax(dim=-1) * (1.0 - void), void], dim=-1)
    return torch.log(probs + 1e-8)
