"""Training loss of ITA and FC-CLIP: Mask2Former's set-prediction loss.

Each image's predictions are paired one-to-one with its target masks by a Hungarian matcher; the
matched queries learn their target's class and mask, every other query learns the void class. Masks
are compared on sampled points rather than full maps (PointRend-style), which is why the stride-4
predictions never need to be upsampled: points are given in coordinates normalised to the padded
image, so the same point lands on the same place in the `[h, w]` predictions and the `[H, W]` targets.
"""

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from configuration_ita import ITAConfig

__all__ = [
    "point_sample",
    "mask_uncertainty",
    "sample_points_by_uncertainty",
    "pairwise_sigmoid_cross_entropy",
    "pairwise_dice",
    "sigmoid_cross_entropy_loss",
    "dice_loss",
    "ITAHungarianMatcher",
    "ITALoss",
]

# The +1 in the numerator and denominator of the dice ratio is part of Mask2Former's dice formula (it
# keeps an empty target against an empty prediction at zero loss); it is not a tuned hyper-parameter.
DICE_SMOOTHING = 1.0

_LOSS_KEY = re.compile(r"^loss_(ce|mask|dice)(_\d+)?$")


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly read `inputs` at normalised points.

    Args:
        inputs (`torch.Tensor` of shape `[N, C, H, W]`): maps to read.
        coords (`torch.Tensor` of shape `[N, P, 2]`): `(x, y)` in `[0, 1]`, relative to the whole map
            (pixel-area convention, as `grid_sample(align_corners=False)`).

    Returns:
        `torch.Tensor` of shape `[N, C, P]`.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(inputs.dtype)  # [N, P, 1, 2] in grid_sample's [-1, 1]
    return F.grid_sample(inputs, grid, mode="bilinear", align_corners=False).squeeze(3)


def mask_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of a mask logit: `-|logit|`, highest where the prediction is closest to 0.5."""
    return -logits.abs()


@torch.no_grad()
def sample_points_by_uncertainty(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """Choose points where each mask is most uncertain, plus uniformly random ones.

    `int(num_points * oversample_ratio)` candidates are drawn uniformly per mask; the
    `int(importance_sample_ratio * num_points)` whose *interpolated* logits are most uncertain are kept
    and the rest of the `num_points` are drawn afresh, uniformly (detectron2's
    `get_uncertain_point_coords_with_randomness`).

    Args:
        mask_logits (`torch.Tensor` of shape `[N, 1, h, w]`): mask logits.
        num_points (`int`): points per mask.
        oversample_ratio (`float`): candidates per kept point, at least 1.
        importance_sample_ratio (`float`): share of points chosen by uncertainty, in `[0, 1]`.

    Returns:
        `torch.Tensor` of shape `[N, num_points, 2]`: `(x, y)` in `[0, 1]`, float32.
    """
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(num_masks, num_candidates, 2, device=device)
    uncertainty = mask_uncertainty(point_sample(mask_logits.float(), candidates))[:, 0]  # [N, num_candidates]
    top = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(num_masks, num_random, 2, device=device)], dim=1)
    return chosen


def pairwise_sigmoid_cross_entropy(point_logits: Tensor, point_labels: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy of every prediction against every target.

    Args:
        point_logits (`torch.Tensor` of shape `[Q, P]`): predicted mask logits at P points.
        point_labels (`torch.Tensor` of shape `[N, P]`): target mask values (0..1) at the same points.

    Returns:
        `torch.Tensor` of shape `[Q, N]`.
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), so all pairs reduce to two matrix products.
    loss_if_positive = F.softplus(-point_logits)
    loss_if_negative = F.softplus(point_logits)
    total = loss_if_positive @ point_labels.t() + loss_if_negative @ (1 - point_labels).t()
    return total / point_logits.shape[1]


def pairwise_dice(point_logits: Tensor, point_labels: Tensor) -> Tensor:
    """Dice loss of every prediction against every target.

    Args:
        point_logits (`torch.Tensor` of shape `[Q, P]`): predicted mask logits at P points.
        point_labels (`torch.Tensor` of shape `[N, P]`): target mask values (0..1) at the same points.

    Returns:
        `torch.Tensor` of shape `[Q, N]`.
    """
    probs = point_logits.sigmoid()
    overlap = 2 * probs @ point_labels.t()
    size = probs.sum(-1)[:, None] + point_labels.sum(-1)[None, :]
    return 1 - (overlap + DICE_SMOOTHING) / (size + DICE_SMOOTHING)


def sigmoid_cross_entropy_loss(point_logits: Tensor, point_labels: Tensor, num_masks: float | Tensor) -> Tensor:
    """Sigmoid binary cross-entropy of matched pairs, averaged over points, summed over masks.

    Args:
        point_logits (`torch.Tensor` of shape `[M, P]`): matched mask logits at P points.
        point_labels (`torch.Tensor` of shape `[M, P]`): their targets at the same points.
        num_masks (`float` or scalar `torch.Tensor`): normaliser (target masks per process).

    Returns:
        Scalar `torch.Tensor`.
    """
    per_mask = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
    return per_mask.sum() / num_masks


def dice_loss(point_logits: Tensor, point_labels: Tensor, num_masks: float | Tensor) -> Tensor:
    """Dice loss of matched pairs, summed over masks.

    Args:
        point_logits (`torch.Tensor` of shape `[M, P]`): matched mask logits at P points.
        point_labels (`torch.Tensor` of shape `[M, P]`): their targets at the same points.
        num_masks (`float` or scalar `torch.Tensor`): normaliser (target masks per process).

    Returns:
        Scalar `torch.Tensor`.
    """
    probs = point_logits.sigmoid()
    overlap = 2 * (probs * point_labels).sum(-1)
    size = probs.sum(-1) + point_labels.sum(-1)
    per_mask = 1 - (overlap + DICE_SMOOTHING) / (size + DICE_SMOOTHING)
    return per_mask.sum() / num_masks


class ITAHungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target masks, per image, minimising

    `class_weight * (-p(target class)) + mask_weight * BCE + dice_weight * dice`

    with the mask terms measured on `train_num_points` uniformly random points, one set per image shared
    by all predictions and targets. Costs are computed in float32 with autocast off.

    Args:
        config ([`ITAConfig`]): uses `class_weight`, `mask_weight`, `dice_weight`, `train_num_points`.
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.class_weight = config.class_weight
        self.mask_weight = config.mask_weight
        self.dice_weight = config.dice_weight
        self.num_points = config.train_num_points

    @torch.no_grad()
    def cost_matrix(
        self, class_logits: Tensor, mask_logits: Tensor, class_labels: Tensor, mask_labels: Tensor
    ) -> Tensor:
        """Matching cost of one image.

        Args:
            class_logits (`torch.Tensor` of shape `[Q, K + 1]`): class logits, void last.
            mask_logits (`torch.Tensor` of shape `[Q, h, w]`): mask logits.
            class_labels (`torch.Tensor` of shape `[N]`): target classes in `[0, K)`.
            mask_labels (`torch.Tensor` of shape `[N, H, W]`): target masks, 0/1.

        Returns:
            `torch.Tensor` of shape `[Q, N]`, float32.
        """
        device_type = class_logits.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            class_probs = class_logits.float().softmax(-1)  # [Q, K + 1]
            cost_class = -class_probs[:, class_labels.to(class_probs.device)]

            coords = torch.rand(1, self.num_points, 2, device=mask_logits.device)
            point_logits = point_sample(mask_logits[:, None].float(), coords.expand(mask_logits.shape[0], -1, -1))
            point_labels = point_sample(
                mask_labels[:, None].to(device=mask_logits.device, dtype=torch.float32),
                coords.expand(mask_labels.shape[0], -1, -1),
            )
            point_logits, point_labels = point_logits[:, 0], point_labels[:, 0]  # [Q, P], [N, P]

            cost_mask = pairwise_sigmoid_cross_entropy(point_logits, point_labels)
            cost_dice = pairwise_dice(point_logits, point_labels)
        return self.class_weight * cost_class + self.mask_weight * cost_mask + self.dice_weight * cost_dice

    @torch.no_grad()
    def forward(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every image of a batch.

        Args:
            class_queries_logits (`torch.Tensor` of shape `[B, Q, K + 1]`): class logits, void last.
            masks_queries_logits (`torch.Tensor` of shape `[B, Q, h, w]`): mask logits.
            mask_labels (`list[torch.Tensor]`): B tensors `[N_i, H, W]` of 0/1 target masks.
            class_labels (`list[torch.Tensor]`): B long tensors `[N_i]`.

        Returns:
            `list[tuple[torch.LongTensor, torch.LongTensor]]`: per image `(query_indices, target_indices)`,
            each of length `min(Q, N_i)`, on the CPU; query indices ascending.
        """
        indices = []
        for class_logits, mask_logits, masks, labels in zip(
            class_queries_logits, masks_queries_logits, mask_labels, class_labels
        ):
            cost = self.cost_matrix(class_logits, mask_logits, labels, masks).cpu()
            query_idx, target_idx = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(query_idx, dtype=torch.long), torch.as_tensor(target_idx, dtype=torch.long))
            )
        return indices


class ITALoss(nn.Module):
    """Mask2Former's set-prediction loss over a per-call vocabulary of K classes plus void.

    Returns unweighted terms: `loss_ce` (cross-entropy over K + 1 classes, void weighted by
    `no_object_weight`, unmatched queries target void), `loss_mask` (sigmoid BCE) and `loss_dice` on
    `train_num_points` points per matched mask, chosen by uncertainty; the mask terms are divided by the
    number of target masks averaged over processes. With `deep_supervision`, every auxiliary prediction
    `i` is matched on its own and adds `loss_ce_{i}`, `loss_mask_{i}`, `loss_dice_{i}`.
    [`~ITALoss.weighted_total`] applies the config's weights.

    Args:
        config ([`ITAConfig`]): uses the loss fields (`class_weight`, `mask_weight`, `dice_weight`,
            `no_object_weight`, `train_num_points`, `oversample_ratio`, `importance_sample_ratio`,
            `deep_supervision`).
    """

    def __init__(self, config: ITAConfig):
        super().__init__()
        self.matcher = ITAHungarianMatcher(config)
        self.no_object_weight = config.no_object_weight
        self.num_points = config.train_num_points
        self.oversample_ratio = config.oversample_ratio
        self.importance_sample_ratio = config.importance_sample_ratio
        self.deep_supervision = config.deep_supervision
        self.term_weights = {"ce": config.class_weight, "mask": config.mask_weight, "dice": config.dice_weight}

    def loss_labels(
        self, class_queries_logits: Tensor, class_labels: list[Tensor], indices: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """Weighted cross-entropy of all queries; matched queries target their class, the rest void.

        Args:
            class_queries_logits (`torch.Tensor` of shape `[B, Q, K + 1]`): float32 class logits.
            class_labels (`list[torch.Tensor]`): B long tensors `[N_i]`.
            indices: the matcher's output.

        Returns:
            Scalar `torch.Tensor`.
        """
        batch_size, num_queries, num_classes_with_void = class_queries_logits.shape
        device = class_queries_logits.device
        void_class = num_classes_with_void - 1
        # K changes with the vocabulary of each call, so the class weights are built here, not once.
        class_weights = torch.ones(num_classes_with_void, device=device)
        class_weights[void_class] = self.no_object_weight

        targets = torch.full((batch_size, num_queries), void_class, dtype=torch.long, device=device)
        for image, ((query_idx, target_idx), labels) in enumerate(zip(indices, class_labels)):
            targets[image, query_idx.to(device)] = labels.to(device)[target_idx.to(device)]
        return F.cross_entropy(class_queries_logits.transpose(1, 2), targets, weight=class_weights)

    def loss_masks(
        self,
        masks_queries_logits: Tensor,
        mask_labels: list[Tensor],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Sigmoid BCE and dice of matched masks on points chosen by uncertainty.

        Args:
            masks_queries_logits (`torch.Tensor` of shape `[B, Q, h, w]`): float32 mask logits.
            mask_labels (`list[torch.Tensor]`): B tensors `[N_i, H, W]` of 0/1 target masks.
            indices: the matcher's output.
            num_masks (scalar `torch.Tensor`): normaliser.

        Returns:
            `(loss_mask, loss_dice)`, two scalar `torch.Tensor`s.
        """
        device = masks_queries_logits.device
        predicted = torch.cat(
            [masks_queries_logits[image, query_idx.to(device)] for image, (query_idx, _) in enumerate(indices)]
        )  # [M, h, w]
        if predicted.shape[0] == 0:
            # No target in the batch: zero, but still tied to the graph so every parameter gets a gradient.
            zero = masks_queries_logits.new_zeros(()) + 0.0 * masks_queries_logits.sum()
            return zero, zero

        coords = sample_points_by_uncertainty(
            predicted[:, None], self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )  # [M, P, 2]
        label_chunks = []
        start = 0
        with torch.no_grad():
            for masks, (_, target_idx) in zip(mask_labels, indices):
                count = target_idx.numel()
                if count:
                    targets = masks[target_idx.to(masks.device)].to(device=device, dtype=torch.float32)
                    label_chunks.append(point_sample(targets[:, None], coords[start : start + count])[:, 0])
                start += count
        point_labels = torch.cat(label_chunks)  # [M, P]
        point_logits = point_sample(predicted[:, None], coords)[:, 0]  # [M, P]
        return (
            sigmoid_cross_entropy_loss(point_logits, point_labels, num_masks),
            dice_loss(point_logits, point_labels, num_masks),
        )

    def num_target_masks(self, class_labels: list[Tensor], device: torch.device) -> Tensor:
        """Target masks in the batch, averaged over processes, at least 1: the mask terms' normaliser."""
        num_masks = torch.tensor(float(sum(len(labels) for labels in class_labels)), device=device)
        world_size = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            world_size = torch.distributed.get_world_size()
        return torch.clamp(num_masks / world_size, min=1)

    def _terms(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        num_masks: Tensor,
    ) -> dict[str, Tensor]:
        indices = self.matcher(class_queries_logits, masks_queries_logits, mask_labels, class_labels)
        loss_mask, loss_dice = self.loss_masks(masks_queries_logits, mask_labels, indices, num_masks)
        return {
            "loss_ce": self.loss_labels(class_queries_logits, class_labels, indices),
            "loss_mask": loss_mask,
            "loss_dice": loss_dice,
        }

    def forward(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: list[Tensor],
        class_labels: list[Tensor],
        auxiliary_predictions: Sequence[Mapping[str, Tensor]] | None = None,
    ) -> dict[str, Tensor]:
        """Compute the unweighted loss terms.

        Args:
            class_queries_logits (`torch.Tensor` of shape `[B, Q, K + 1]`): final class logits, void last.
            masks_queries_logits (`torch.Tensor` of shape `[B, Q, h, w]`): final mask logits at stride 4 of
                the padded input.
            mask_labels (`list[torch.Tensor]`): B tensors `[N_i, H, W]` of 0/1 target masks at the padded
                input resolution (`N_i` may be 0).
            class_labels (`list[torch.Tensor]`): B long tensors `[N_i]` with classes in `[0, K)`.
            auxiliary_predictions (`list[dict]`, *optional*): intermediate predictions, each a dict with
                `"class_queries_logits"` and `"masks_queries_logits"` shaped as above; used only with
                `config.deep_supervision`.

        Returns:
            `dict[str, torch.Tensor]` of scalars: `loss_ce`, `loss_mask`, `loss_dice`, and with deep
            supervision `loss_ce_{i}`, `loss_mask_{i}`, `loss_dice_{i}` for each auxiliary prediction i.
        """
        # Half-precision logits would make the softmax, BCE and dice sums lossy: compute in float32.
        with torch.autocast(device_type=class_queries_logits.device.type, enabled=False):
            num_masks = self.num_target_masks(class_labels, class_queries_logits.device)
            losses = self._terms(
                class_queries_logits.float(), masks_queries_logits.float(), mask_labels, class_labels, num_masks
            )
            if self.deep_supervision and auxiliary_predictions is not None:
                for i, prediction in enumerate(auxiliary_predictions):
                    aux = self._terms(
                        prediction["class_queries_logits"].float(),
                        prediction["masks_queries_logits"].float(),
                        mask_labels,
                        class_labels,
                        num_masks,
                    )
                    losses.update({f"{key}_{i}": value for key, value in aux.items()})
        return losses

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """Sum of the terms of [`~ITALoss.forward`], each times `class_weight`, `mask_weight` or `dice_weight`.

        Args:
            losses (`dict[str, torch.Tensor]`): terms named `loss_{ce,mask,dice}` or `loss_{ce,mask,dice}_{i}`.

        Returns:
            Scalar `torch.Tensor`.
        """
        total: Tensor | float = 0.0
        for key, value in losses.items():
            match = _LOSS_KEY.match(key)
            if match is None:
                raise KeyError(f"ITALoss.weighted_total: unknown loss term {key!r}")
            total = total + self.term_weights[match.group(1)] * value
        return torch.as_tensor(total) if isinstance(total, float) else total
