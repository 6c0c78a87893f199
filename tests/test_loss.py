import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import modeling_ita.loss as loss_module
from configuration_ita import ITAConfig
from modeling_ita.loss import (
    ITAHungarianMatcher,
    ITALoss,
    dice_loss,
    pairwise_dice,
    pairwise_sigmoid_cross_entropy,
    point_sample,
    sample_points_by_uncertainty,
    sigmoid_cross_entropy_loss,
)

NUM_CLASSES = 5
NUM_QUERIES = 6
MASK_SIZE = 16  # predictions at stride 4 ...
IMAGE_SIZE = 64  # ... of the padded input, where the targets live


@pytest.fixture
def config():
    return ITAConfig(train_num_points=256)


def block_targets():
    """Three block masks at stride 4, their full-resolution targets and classes."""
    coarse = torch.zeros(3, MASK_SIZE, MASK_SIZE)
    half = MASK_SIZE // 2
    coarse[0, :, :half] = 1
    coarse[1, :half, half:] = 1
    coarse[2, half:, half:] = 1
    targets = F.interpolate(coarse[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest")[0]
    return coarse, targets, torch.tensor([1, 3, 0])


def predictions_for(coarse, labels, queries, confidence):
    """Logits where `queries[j]` predicts target j exactly and every other query predicts void."""
    class_logits = torch.zeros(1, NUM_QUERIES, NUM_CLASSES + 1)
    class_logits[0, :, NUM_CLASSES] = confidence
    class_logits[0, queries] = 0.0
    class_logits[0, queries, labels] = confidence
    mask_logits = torch.full((1, NUM_QUERIES, MASK_SIZE, MASK_SIZE), -confidence)
    mask_logits[0, queries] = confidence * (2 * coarse - 1)
    return class_logits, mask_logits


def brute_force_assignment(cost):
    """Cheapest assignment of every column to a distinct row, by enumeration."""
    num_rows, num_cols = cost.shape
    best = min(
        itertools.permutations(range(num_rows), num_cols),
        key=lambda rows: sum(cost[r, c].item() for c, r in enumerate(rows)),
    )
    return {c: r for c, r in enumerate(best)}


def greedy_assignment(cost):
    """Repeatedly take the cheapest remaining entry (the baseline the Hungarian method must beat)."""
    cost = cost.clone()
    pairs = {}
    for _ in range(cost.shape[1]):
        flat = int(cost.argmin())
        row, col = divmod(flat, cost.shape[1])
        pairs[col] = row
        cost[row, :] = float("inf")
        cost[:, col] = float("inf")
    return pairs


# --- point sampling -----------------------------------------------------------------------------


def test_point_sample_reads_pixel_centres_and_interpolates():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    coords = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [1.0 / 4, 1.0 / 3]]])  # (x, y)
    values = point_sample(image, coords)
    assert values.shape == (1, 1, 3)
    # Pixel (0, 0), pixel (2, 3), and the midpoint of pixels (0,0), (0,1), (1,0), (1,1).
    torch.testing.assert_close(values[0, 0], torch.tensor([0.0, 11.0, (0 + 1 + 4 + 5) / 4]))


def test_uncertainty_sampling_concentrates_on_the_decision_boundary():
    torch.manual_seed(0)
    # Logits are zero on the vertical line x = 0.5 and grow with the distance from it.
    ramp = torch.linspace(-1, 1, 32).expand(32, 32)[None, None].repeat(2, 1, 1, 1)
    focused = sample_points_by_uncertainty(ramp, num_points=200, oversample_ratio=4.0, importance_sample_ratio=1.0)
    uniform = sample_points_by_uncertainty(ramp, num_points=200, oversample_ratio=4.0, importance_sample_ratio=0.0)
    assert focused.shape == uniform.shape == (2, 200, 2)
    assert focused.min() >= 0 and focused.max() <= 1
    # Keeping the 25% least certain candidates leaves points within about 1/8 of the line.
    assert (focused[..., 0] - 0.5).abs().max() < 0.2
    assert (uniform[..., 0] - 0.5).abs().max() > 0.4


def test_uncertainty_sampling_mixes_in_random_points():
    torch.manual_seed(0)
    ramp = torch.linspace(-1, 1, 32).expand(32, 32)[None, None]
    points = sample_points_by_uncertainty(ramp, num_points=400, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert points.shape == (1, 400, 2)
    # The first 300 come from uncertainty, the last 100 are uniform.
    assert (points[0, :300, 0] - 0.5).abs().max() < 0.25
    assert (points[0, 300:, 0] - 0.5).abs().max() > 0.3


# --- pairwise costs and point losses against hand computation ----------------------------------


def bce(x, t):
    return -(t * math.log(1 / (1 + math.exp(-x))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-x))))


def dice(xs, ts):
    ps = [1 / (1 + math.exp(-x)) for x in xs]
    return 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)


def test_point_losses_match_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    num_masks = 4.0
    expected_bce = sum(sum(bce(x, t) for x, t in zip(xr, tr)) / 3 for xr, tr in zip(logits.tolist(), labels.tolist()))
    expected_dice = sum(dice(xr, tr) for xr, tr in zip(logits.tolist(), labels.tolist()))
    assert sigmoid_cross_entropy_loss(logits, labels, num_masks).item() == pytest.approx(
        expected_bce / num_masks, rel=1e-5
    )
    assert dice_loss(logits, labels, num_masks).item() == pytest.approx(expected_dice / num_masks, rel=1e-5)

    pair_bce = pairwise_sigmoid_cross_entropy(logits, labels)
    pair_dice = pairwise_dice(logits, labels)
    assert pair_bce.shape == pair_dice.shape == (2, 2)
    for q, n in itertools.product(range(2), range(2)):
        xs, ts = logits[q].tolist(), labels[n].tolist()
        assert pair_bce[q, n].item() == pytest.approx(sum(bce(x, t) for x, t in zip(xs, ts)) / 3, rel=1e-5)
        assert pair_dice[q, n].item() == pytest.approx(dice(xs, ts), rel=1e-5)


def test_mask_terms_equal_hand_computation_on_forced_points(config, monkeypatch):
    coarse, targets, labels = block_targets()
    torch.manual_seed(0)
    mask_logits = torch.randn(1, NUM_QUERIES, MASK_SIZE, MASK_SIZE)
    class_logits = torch.randn(1, NUM_QUERIES, NUM_CLASSES + 1)

    # Every stride-4 pixel centre: there a prediction is read exactly, and so is a nearest-upsampled
    # target (the point lies between four equal full-resolution pixels).
    ys, xs = torch.meshgrid(torch.arange(MASK_SIZE), torch.arange(MASK_SIZE), indexing="ij")
    centres = torch.stack([(xs + 0.5) / MASK_SIZE, (ys + 0.5) / MASK_SIZE], -1).reshape(1, -1, 2)

    def all_centres(mask_logits, num_points, oversample_ratio, importance_sample_ratio):
        return centres.expand(mask_logits.shape[0], -1, -1)

    monkeypatch.setattr(loss_module, "sample_points_by_uncertainty", all_centres)
    criterion = ITALoss(config)
    matches = [(torch.tensor([0, 2, 5]), torch.tensor([2, 0, 1]))]
    monkeypatch.setattr(criterion.matcher, "forward", lambda *args: matches)

    losses = criterion(class_logits, mask_logits, [targets], [labels])
    expected_bce = expected_dice = 0.0
    for query, target in zip(*matches[0]):
        xs_, ts_ = mask_logits[0, query].flatten().tolist(), coarse[target].flatten().tolist()
        expected_bce += sum(bce(x, t) for x, t in zip(xs_, ts_)) / len(xs_)
        expected_dice += dice(xs_, ts_)
    assert losses["loss_mask"].item() == pytest.approx(expected_bce / 3, rel=1e-4)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice / 3, rel=1e-4)


# --- matcher ------------------------------------------------------------------------------------


def test_matcher_beats_greedy_on_hand_made_cost(config, monkeypatch):
    # 4 queries, 3 targets. Greedy takes (q0, t0) = 0 first, then (q2, t1) = 0.5, and pays 9 for t2:
    # 9.5 in all. The optimum, t0 -> q1, t1 -> q2, t2 -> q0, pays 1 + 0.5 + 1.5 = 3.
    cost = torch.tensor(
        [
            [0.0, 1.0, 1.5],
            [1.0, 9.0, 9.0],
            [9.0, 0.5, 9.0],
            [9.0, 9.0, 9.0],
        ]
    )
    optimum = brute_force_assignment(cost)
    greedy = greedy_assignment(cost)
    assert optimum != greedy

    matcher = ITAHungarianMatcher(config)
    monkeypatch.setattr(matcher, "cost_matrix", lambda *args: cost)
    dummy_logits = torch.zeros(1, 4, NUM_CLASSES + 1)
    dummy_masks = torch.zeros(1, 4, 2, 2)
    [(query_idx, target_idx)] = matcher(dummy_logits, dummy_masks, [torch.zeros(3, 8, 8)], [torch.zeros(3).long()])
    assert query_idx.dtype == target_idx.dtype == torch.long
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == optimum == {0: 1, 1: 2, 2: 0}


def test_matcher_class_cost_is_weighted_negative_probability():
    config = ITAConfig(train_num_points=64, class_weight=3.0, mask_weight=0.0, dice_weight=0.0)
    # Greedy would give query 0 class 0 (p = 0.6); the optimum gives it class 1 (0.35 + 0.55 > 0.6 + 0.05).
    probs = torch.tensor(
        [
            [0.6, 0.35, 0.0, 0.05],
            [0.55, 0.05, 0.0, 0.4],
            [0.0, 0.0, 0.9, 0.1],
        ]
    ).clamp_min(1e-6)
    class_logits = probs.log()
    labels = torch.tensor([0, 1, 2])
    matcher = ITAHungarianMatcher(config)
    cost = matcher.cost_matrix(class_logits, torch.zeros(3, 4, 4), labels, torch.zeros(3, 16, 16))
    expected = -3.0 * (probs / probs.sum(-1, keepdim=True))[:, labels]
    torch.testing.assert_close(cost, expected)
    assert brute_force_assignment(cost) != greedy_assignment(cost)

    [(query_idx, target_idx)] = matcher(class_logits[None], torch.zeros(1, 3, 4, 4), [torch.zeros(3, 16, 16)], [labels])
    assert dict(zip(target_idx.tolist(), query_idx.tolist())) == brute_force_assignment(cost) == {0: 1, 1: 0, 2: 2}


def test_matcher_recovers_the_permutation_of_perfect_predictions(config):
    torch.manual_seed(0)
    coarse, targets, labels = block_targets()
    queries = torch.tensor([4, 0, 2])
    class_logits, mask_logits = predictions_for(coarse, labels, queries, confidence=12.0)
    # Second image: same targets, other queries.
    other = torch.tensor([1, 5, 3])
    class_logits_2, mask_logits_2 = predictions_for(coarse, labels, other, confidence=12.0)
    matches = ITAHungarianMatcher(config)(
        torch.cat([class_logits, class_logits_2]),
        torch.cat([mask_logits, mask_logits_2]),
        [targets, targets],
        [labels, labels],
    )
    for (query_idx, target_idx), expected in zip(matches, (queries, other)):
        assert dict(zip(target_idx.tolist(), query_idx.tolist())) == dict(enumerate(expected.tolist()))


# --- the loss -----------------------------------------------------------------------------------


def test_loss_is_near_zero_for_perfect_and_large_for_wrong_predictions(config):
    torch.manual_seed(0)
    coarse, targets, labels = block_targets()
    queries = torch.tensor([4, 0, 2])
    criterion = ITALoss(config)
    perfect = criterion(*predictions_for(coarse, labels, queries, confidence=12.0), [targets], [labels])
    wrong_labels = (labels + 1) % NUM_CLASSES
    # Wrong classes and confidently empty masks.
    class_logits, _ = predictions_for(coarse, wrong_labels, queries, confidence=12.0)
    wrong = criterion(class_logits, torch.full((1, NUM_QUERIES, MASK_SIZE, MASK_SIZE), -12.0), [targets], [labels])

    assert set(perfect) == set(wrong) == {"loss_ce", "loss_mask", "loss_dice"}
    for losses in (perfect, wrong):
        for value in losses.values():
            assert value.ndim == 0 and torch.isfinite(value) and value >= 0
    # A small residue is left by the mask terms: bilinear reads straddling a mask boundary see a soft
    # target, and uncertainty sampling puts most points there.
    assert perfect["loss_ce"] < 1e-3
    assert perfect["loss_mask"] < 0.15
    assert perfect["loss_dice"] < 0.1
    assert wrong["loss_ce"] > 5 and wrong["loss_mask"] > 2 and wrong["loss_dice"] > 0.9
    assert criterion.weighted_total(wrong) > 30 * criterion.weighted_total(perfect)


def test_gradients_reach_both_logit_tensors(config):
    torch.manual_seed(0)
    _, targets, labels = block_targets()
    class_logits = torch.randn(2, NUM_QUERIES, NUM_CLASSES + 1, requires_grad=True)
    mask_logits = torch.randn(2, NUM_QUERIES, MASK_SIZE, MASK_SIZE, requires_grad=True)
    criterion = ITALoss(config)
    losses = criterion(class_logits, mask_logits, [targets, targets[:2]], [labels, labels[:2]])
    criterion.weighted_total(losses).backward()
    for tensor in (class_logits, mask_logits):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_cross_entropy_with_one_query_and_one_target(config):
    class_logits = torch.tensor([[[0.3, -1.2, 2.0, 0.1]]])  # K = 3
    losses = ITALoss(config)(class_logits, torch.zeros(1, 1, 4, 4), [torch.ones(1, 16, 16)], [torch.tensor([1])])
    z = class_logits[0, 0].tolist()
    expected = -(z[1] - math.log(sum(math.exp(v) for v in z)))
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_classes", [3, 7])
def test_cross_entropy_weights_void_by_no_object_weight(config, monkeypatch, num_classes):
    torch.manual_seed(0)
    num_queries = 3
    class_logits = torch.randn(1, num_queries, num_classes + 1)
    criterion = ITALoss(config)
    monkeypatch.setattr(criterion.matcher, "forward", lambda *args: [(torch.tensor([1]), torch.tensor([0]))])
    losses = criterion(class_logits, torch.zeros(1, num_queries, 4, 4), [torch.ones(1, 16, 16)], [torch.tensor([2])])

    void = num_classes
    targets = [void, 2, void]
    weights = [config.no_object_weight if t == void else 1.0 for t in targets]
    nll = []
    for q, t in enumerate(targets):
        z = class_logits[0, q].tolist()
        nll.append(math.log(sum(math.exp(v) for v in z)) - z[t])
    expected = sum(w * n for w, n in zip(weights, nll)) / sum(weights)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)


def test_image_without_targets(config):
    torch.manual_seed(0)
    _, targets, labels = block_targets()
    class_logits = torch.randn(2, NUM_QUERIES, NUM_CLASSES + 1, requires_grad=True)
    mask_logits = torch.randn(2, NUM_QUERIES, MASK_SIZE, MASK_SIZE, requires_grad=True)
    criterion = ITALoss(config)
    empty_masks, empty_labels = torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE), torch.zeros(0, dtype=torch.long)

    # One image empty, one not: everything finite, the empty image's queries all learn void.
    mixed = criterion(class_logits, mask_logits, [empty_masks, targets], [empty_labels, labels])
    assert all(torch.isfinite(v) and v >= 0 for v in mixed.values())
    assert mixed["loss_mask"] > 0

    # Both empty: no mask terms, CE is the mean void NLL (the void weight cancels in the mean).
    losses = criterion(class_logits, mask_logits, [empty_masks, empty_masks], [empty_labels, empty_labels])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    expected_ce = -class_logits.detach().log_softmax(-1)[..., NUM_CLASSES].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
    criterion.weighted_total(losses).backward()
    assert class_logits.grad.abs().sum() > 0 and mask_logits.grad is not None


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_auxiliary_terms_follow_deep_supervision(deep_supervision):
    torch.manual_seed(0)
    config = ITAConfig(train_num_points=64, deep_supervision=deep_supervision)
    _, targets, labels = block_targets()

    def prediction():
        return torch.randn(1, NUM_QUERIES, NUM_CLASSES + 1), torch.randn(1, NUM_QUERIES, MASK_SIZE, MASK_SIZE)

    class_logits, mask_logits = prediction()
    auxiliary = [dict(zip(("class_queries_logits", "masks_queries_logits"), prediction())) for _ in range(2)]
    losses = ITALoss(config)(class_logits, mask_logits, [targets], [labels], auxiliary_predictions=auxiliary)
    aux_keys = {f"loss_{term}_{i}" for term in ("ce", "mask", "dice") for i in range(2)}
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"} | (aux_keys if deep_supervision else set())
    if deep_supervision:
        # Auxiliary predictions are scored on their own logits, not the final ones.
        assert losses["loss_ce_0"] != losses["loss_ce"]


def test_weighted_total_applies_the_config_weights():
    config = ITAConfig(class_weight=2.0, mask_weight=5.0, dice_weight=7.0)
    losses = {
        "loss_ce": torch.tensor(1.0),
        "loss_mask": torch.tensor(10.0),
        "loss_dice": torch.tensor(100.0),
        "loss_ce_0": torch.tensor(1000.0),
        "loss_dice_3": torch.tensor(10000.0),
    }
    total = ITALoss(config).weighted_total(losses)
    assert total.item() == pytest.approx(2 * 1 + 5 * 10 + 7 * 100 + 2 * 1000 + 7 * 10000)
    with pytest.raises(KeyError, match="loss_box"):
        ITALoss(config).weighted_total({"loss_box": torch.tensor(1.0)})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(config, dtype):
    _, targets, labels = block_targets()
    torch.manual_seed(0)
    class_logits = torch.randn(1, NUM_QUERIES, NUM_CLASSES + 1).to(dtype)
    mask_logits = (4 * torch.randn(1, NUM_QUERIES, MASK_SIZE, MASK_SIZE)).to(dtype)
    criterion = ITALoss(config)
    torch.manual_seed(1)
    half = criterion(class_logits, mask_logits, [targets], [labels])
    torch.manual_seed(1)  # same random points
    full = criterion(class_logits.float(), mask_logits.float(), [targets], [labels])
    for key in full:
        assert half[key].dtype == torch.float32
        assert half[key].item() == pytest.approx(full[key].item(), rel=1e-6)


def test_mask_normaliser_is_averaged_over_processes(config, monkeypatch):
    # Simulate a second process that holds 5 target masks.
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor.add_(5.0))
    criterion = ITALoss(config)
    assert criterion.num_target_masks([torch.zeros(2), torch.zeros(1)], "cpu").item() == pytest.approx(4.0)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor)
    assert criterion.num_target_masks([torch.zeros(0)], "cpu").item() == 1.0  # clamped
