"""Each speed kernel of `modeling_ita/kernels.py` and `postprocessing_ita.py` against its plain reference."""

import math

import conftest
import pytest
import torch
import torch.nn.functional as F
from test_pixel_decoder import TINY_CHANNELS, backbone_features, perturb_parameters

import postprocessing_ita
from modeling_ita import kernels
from modeling_ita.kernels import (
    conv2d,
    conv2d_fast,
    deformable_attention,
    deformable_attention_on_maps,
    deformable_attention_reference,
    deformable_value_maps,
    mask_pool_fast,
    mask_pool_reference,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_fast,
    multi_scale_deformable_attention_reference,
    resize_to_levels_fast,
    resize_to_levels_reference,
    token_chunked,
    tokens_to_maps_fast,
    tokens_to_maps_reference,
)
from modeling_ita.pixel_decoder import ITAConv2dNormActivation, ITAPixelDecoder
from postprocessing_ita import (
    bilinear_combine,
    bilinear_resize_rows,
    bilinear_taps,
    resized_argmax,
    semantic_map,
    semantic_map_reference,
    semantic_scores,
    semantic_scores_reference,
)


@pytest.fixture(autouse=True)
def fast_paths_on():
    """These tests pair each fast path with its plain formula, so they run with the fast paths on even when the
    suite runs with them off (`ITA_FAST_PATHS=0`); the tests of the switch turn them off themselves."""
    with kernels.use_fast_paths(True):
        yield


# ----------------------------------------------------------------------------------------------------------
# Deformable attention
# ----------------------------------------------------------------------------------------------------------


def bilinear_sample_reference(level_map, x, y):
    """Sample `level_map` [C, H, W] at (x, y) in [0, 1] (edges of the border pixels), zeros outside."""
    channels, height, width = level_map.shape
    px, py = x * width - 0.5, y * height - 0.5  # pixel centres sit at integer coordinates
    x0, y0 = math.floor(px), math.floor(py)
    result = torch.zeros(channels, dtype=level_map.dtype)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
        if 0 <= xi < width and 0 <= yi < height:
            result += weight * level_map[:, yi, xi]
    return result


def deformable_inputs(batch=2, queries=5, heads=2, head_dim=3, points=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (4, 2), (1, 6)]
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim, generator=generator)
    # Reach past the borders to exercise zero padding.
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    return shapes, value, locations, weights


def test_core_matches_per_point_bilinear_reference():
    shapes, value, locations, weights = deformable_inputs()
    batch, queries, heads, _, points, _ = locations.shape
    head_dim = value.shape[-1]

    output = multi_scale_deformable_attention_fast(value, shapes, locations, weights)

    assert output.shape == (batch, queries, heads * head_dim)
    assert (locations < 0).any() and (locations > 1).any()
    starts = [0, 15, 23]
    expected = torch.zeros_like(output)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = torch.zeros(head_dim)
                for level, (h, w) in enumerate(shapes):
                    level_map = value[b, starts[level] : starts[level] + h * w, m].t().reshape(head_dim, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, level, p].tolist()
                        acc += weights[b, q, m, level, p] * bilinear_sample_reference(level_map, x, y)
                expected[b, q, m * head_dim : (m + 1) * head_dim] = acc
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    # The spatial shapes may also come as a tensor, as in the original interface.
    torch.testing.assert_close(
        multi_scale_deformable_attention_fast(value, torch.tensor(shapes), locations, weights), output
    )
    # The name the figure calls runs the fast path.
    assert torch.equal(multi_scale_deformable_attention(value, shapes, locations, weights), output)
    # The plain formula kept beside the kernel gives the same numbers.
    torch.testing.assert_close(multi_scale_deformable_attention_reference(value, shapes, locations, weights), output)


def test_deformable_attention_matches_the_plain_formula_with_gradients():
    """Softmax, locations from offsets in pixels and sampling, laid out queries-last: the plain formula's values and
    gradients, with reference points shared by the batch (as the encoder passes them)."""
    shapes, value, _, _ = deformable_inputs()
    generator = torch.Generator().manual_seed(1)
    batch, queries, heads, levels, points = 2, 7, 2, len(shapes), 3
    reference_points = torch.rand(1, queries, 2, generator=generator)
    offsets = (torch.randn(batch, queries, heads, levels, points, 2, generator=generator) * 2).requires_grad_()
    logits = torch.randn(batch, queries, heads, levels * points, generator=generator).requires_grad_()
    value.requires_grad_()

    ours = deformable_attention_on_maps(deformable_value_maps(value, shapes), reference_points, offsets, logits, shapes)
    reference = deformable_attention_reference(value, reference_points, offsets, logits, shapes)
    assert torch.equal(deformable_attention(value, reference_points, offsets, logits, shapes), ours)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    probe = torch.randn(ours.shape, generator=generator)
    gradients = torch.autograd.grad((ours * probe).sum(), (value, offsets, logits))
    reference_gradients = torch.autograd.grad((reference * probe).sum(), (value, offsets, logits))
    for gradient, expected in zip(gradients, reference_gradients):
        assert gradient.abs().sum() > 0
        torch.testing.assert_close(gradient, expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Token chunks, convolutions, layouts, resizes
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
def test_token_chunked_equals_one_call_on_all_tokens(chunk_size):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 10, 4, generator=generator, requires_grad=True)
    shared = torch.randn(1, 10, 4, generator=generator)  # broadcast over the batch, as reference points are

    def layer(x, y):
        return torch.layer_norm(x * y.sigmoid(), (4,)).relu()

    chunked = token_chunked(layer, tokens, shared, chunk_size=chunk_size)
    whole = layer(tokens, shared)
    torch.testing.assert_close(chunked, whole)
    (gradient,) = torch.autograd.grad(chunked.square().sum(), tokens)
    (expected,) = torch.autograd.grad(whole.square().sum(), tokens)
    torch.testing.assert_close(gradient, expected)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_token_chunks_give_the_same_result_and_gradients(monkeypatch, chunk):
    """The pixel decoder's encoder layers run their tokens in chunks (64x96 input: 6 + 24 + 96 = 126 tokens);
    any chunk size gives the result and the gradients of one chunk holding every token."""
    decoder = ITAPixelDecoder(conftest.tiny_config(), TINY_CHANNELS)
    perturb_parameters(decoder)
    features = backbone_features(2, 64, 96)

    def run():
        decoder.zero_grad()
        decoded = decoder(features)
        mask, levels = decoded.mask_features, decoded.multi_scale_features
        (mask.square().mean() + sum(level.sin().mean() for level in levels)).backward()
        grads = {name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None}
        return [mask.detach(), *[level.detach() for level in levels]], grads

    monkeypatch.setattr(kernels, "ENCODER_TOKEN_CHUNK", 10_000)
    whole, whole_grads = run()
    monkeypatch.setattr(kernels, "ENCODER_TOKEN_CHUNK", chunk)
    chunked, chunked_grads = run()
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert whole_grads.keys() == chunked_grads.keys() and "transformer.encoder.layers.0.linear1.weight" in whole_grads
    for name in whole_grads:
        torch.testing.assert_close(whole_grads[name], chunked_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_one_by_one_convolution_as_matrix_product_matches_conv2d(bias):
    torch.manual_seed(0)
    conv = ITAConv2dNormActivation(6, 5, kernel_size=1, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
        x = torch.randn(2, 6, 7, 9)
        torch.testing.assert_close(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias), atol=1e-6, rtol=1e-6)
        # One image, and a 3x3 kernel (F.conv2d itself).
        torch.testing.assert_close(conv2d_fast(x[:1], conv.weight, conv.bias), F.conv2d(x[:1], conv.weight, conv.bias))
        weight = torch.randn(5, 6, 3, 3)
        torch.testing.assert_close(conv2d_fast(x, weight, None, 1), F.conv2d(x, weight, None, padding=1))
        torch.testing.assert_close(
            conv2d(x, conv.weight, conv.bias), conv2d_fast(x, conv.weight, conv.bias), atol=0, rtol=0
        )


def test_tokens_to_maps_are_channels_first_copies():
    shapes = [(2, 3), (4, 5)]
    tokens = torch.randn(2, 26, 7)
    maps = tokens_to_maps_fast(tokens, shapes)
    assert [tuple(m.shape) for m in maps] == [(2, 7, 2, 3), (2, 7, 4, 5)]
    assert all(m.is_contiguous() for m in maps)
    torch.testing.assert_close(maps[1][1, :, 2, 3], tokens[1, 6 + 2 * 5 + 3], rtol=0, atol=0)
    # The plain formula gives the same values as views of the tokens.
    for view, copy in zip(tokens_to_maps_reference(tokens, shapes), maps, strict=True):
        assert torch.equal(view, copy) and not view.is_contiguous()


def test_level_resizes_equal_plain_bilinear_resizes():
    features = torch.randn(2, 5, 64, 96, generator=torch.Generator().manual_seed(0))
    sizes = [(8, 12), (16, 24), (32, 48), (64, 96), (7, 11)]
    references = resize_to_levels_reference(features, sizes)
    for size, resized, reference in zip(sizes, resize_to_levels_fast(features, sizes), references, strict=True):
        expected = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        assert torch.equal(resized, expected) and torch.equal(reference, expected)


# ----------------------------------------------------------------------------------------------------------
# Mask pooling
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query_chunk", [1, 2, 32])
def test_mask_pool_averages_features_inside_each_binarised_mask(query_chunk):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 6, generator=generator)
    mask_logits = torch.randn(2, 5, 8, 12, generator=generator)  # twice the feature size: resized first
    mask_logits[1, 4] = -1.0  # an empty mask pools to zeros
    pooled = mask_pool_fast(features, mask_logits, query_chunk=query_chunk)
    resized = F.interpolate(mask_logits, size=(4, 6), mode="bilinear", align_corners=False)
    assert pooled.shape == (2, 5, 3)
    for b in range(2):
        for q in range(5):
            inside = resized[b, q] > 0
            expected = features[b][:, inside].mean(dim=-1) if inside.any() else torch.zeros(3)
            torch.testing.assert_close(pooled[b, q], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, mask_pool_reference(features, mask_logits), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pool", [mask_pool_reference, mask_pool_fast])
def test_mask_pool_of_float16_features_does_not_overflow(pool):
    """Sums over many pixels of float16 features pass 65504: pooled in float32, the averages stay finite."""
    features = torch.full((1, 2, 128, 128), 60.0, dtype=torch.float16)  # 16,384 pixels x 60 = 983,040
    mask_logits = torch.ones(1, 3, 128, 128, dtype=torch.float16)
    pooled = pool(features, mask_logits)
    assert pooled.dtype == torch.float16 and torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled, torch.full((1, 3, 2), 60.0, dtype=torch.float16))


# ----------------------------------------------------------------------------------------------------------
# The registry and the fast-path switch
# ----------------------------------------------------------------------------------------------------------


def test_the_switch_chooses_every_fast_path_or_every_reference():
    with_fast_path = [name for name, entry in kernels.REGISTRY.items() if entry.fast is not None]
    assert {
        "deformable_attention",
        "ITAPixelDecoderEncoderLayer",
        "conv2d",
        "mask_pool",
        "tokens_to_maps",
        "resize_to_levels",
        "multi_scale_deformable_attention",
    } <= set(with_fast_path)
    before = kernels.fast_paths_enabled()
    with kernels.use_fast_paths(True):
        assert all(kernels.implementation(name) is kernels.REGISTRY[name].fast for name in with_fast_path)
        with kernels.use_fast_paths(False):
            assert not kernels.fast_paths_enabled()
            assert all(kernels.implementation(name) is kernels.REGISTRY[name].reference for name in kernels.REGISTRY)
            assert kernels.implementation("mask_pool") is mask_pool_reference
        assert kernels.fast_paths_enabled()
    assert kernels.fast_paths_enabled() == before
    # Without a block the call switches for good (as torch.set_grad_enabled).
    kernels.use_fast_paths(False)
    try:
        assert not kernels.fast_paths_enabled()
    finally:
        kernels.use_fast_paths(before)


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("off", False), ("1", True), ("", True)])
def test_the_environment_variable_starts_the_process_with_fast_paths_off(value, enabled):
    import os
    import subprocess
    import sys

    code = "from modeling_ita import kernels; print(kernels.fast_paths_enabled(), kernels.implementation('conv2d').__name__)"
    env = {**os.environ, kernels.FAST_PATHS_ENV: value}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(enabled), "conv2d_fast" if enabled else "conv2d_reference"]


def test_replaced_kernels_win_over_the_switch_and_restore_what_they_replaced():
    def doubled(x, weight, bias=None, padding=0):
        return 2 * F.conv2d(x, weight, bias, padding=padding)

    x, weight = torch.randn(1, 3, 4, 5), torch.randn(2, 3, 1, 1)
    with kernels.replaced_kernels({"conv2d": doubled}):
        for enabled in (True, False):
            with kernels.use_fast_paths(enabled):
                torch.testing.assert_close(conv2d(x, weight), 2 * F.conv2d(x, weight))
        with kernels.replaced_kernels({"conv2d": conv2d_fast}):  # nested blocks stack
            assert kernels.implementation("conv2d") is conv2d_fast
        assert kernels.implementation("conv2d") is doubled
    torch.testing.assert_close(conv2d(x, weight), F.conv2d(x, weight))
    with pytest.raises(KeyError, match="no kernel named \\['conv3d'\\]"):
        with kernels.replaced_kernels({"conv3d": doubled}):
            pass


def test_pixel_decoder_with_fast_paths_off_runs_the_figure_and_gives_the_same_values_and_gradients():
    """The encoder layer's own forward (one call, the plain deformable attention) against its fast path (values
    projected once, tokens in chunks): same outputs and gradients up to float rounding."""
    decoder = ITAPixelDecoder(conftest.tiny_config(), TINY_CHANNELS)
    perturb_parameters(decoder)
    features = backbone_features(2, 64, 96)

    def run(enabled):
        decoder.zero_grad()
        with kernels.use_fast_paths(enabled):
            decoded = decoder(features)
        (
            decoded.mask_features.square().mean() + sum(level.sin().mean() for level in decoded.multi_scale_features)
        ).backward()
        grads = {name: p.grad.clone() for name, p in decoder.named_parameters() if p.grad is not None}
        return [decoded.mask_features.detach(), *[level.detach() for level in decoded.multi_scale_features]], grads

    fast, fast_grads = run(True)
    plain, plain_grads = run(False)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == plain_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# Bilinear resampling for post-processing
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(200, 800), (800, 600), (37, 53), (333, 1000), (5, 5), (1, 7), (7, 1)])
def test_row_resize_matches_torch_bilinear(sizes):
    """Rows resized with PyTorch's own weights (a source coordinate rounded once): the same rows as F.interpolate
    up to float rounding, for any band."""
    input_size, output_size = sizes
    maps = torch.randn(3, input_size, 11, generator=torch.Generator().manual_seed(0)) * 4
    expected = F.interpolate(maps[None], size=(output_size, 11), mode="bilinear", align_corners=False)[0]
    taps = bilinear_taps(input_size, output_size)
    rows_first = maps.transpose(0, 1).contiguous()  # [rows, 3, 11]
    resized = bilinear_resize_rows(rows_first, taps, 0, output_size, 0)
    torch.testing.assert_close(resized.transpose(0, 1), expected, atol=1e-6, rtol=0)
    # A band of output rows from only the input rows it needs.
    start, stop = output_size // 3, max(output_size // 3 + 1, 2 * output_size // 3)
    first, last = int(taps[0][start]), int(taps[1][stop - 1])
    band = bilinear_resize_rows(rows_first[first : last + 1], taps, start, stop, first)
    torch.testing.assert_close(band.transpose(0, 1), expected[:, start:stop], atol=1e-6, rtol=0)


def combine_everywhere(maps, size):
    """`bilinear_combine` applied to every pixel and channel of `maps` [C, h, w]."""
    top, bottom, top_weight, bottom_weight = bilinear_taps(maps.shape[-2], size[0])
    left, right, left_weight, right_weight = bilinear_taps(maps.shape[-1], size[1])
    rows = [maps[:, top], maps[:, bottom]]
    return bilinear_combine(
        rows[0][:, :, left],
        rows[0][:, :, right],
        rows[1][:, :, left],
        rows[1][:, :, right],
        left_weight,
        right_weight,
        top_weight[:, None],
        bottom_weight[:, None],
    )


def test_fused_addcmul_probe_tells_whether_addcmul_rounds_once():
    generator = torch.Generator().manual_seed(0)
    first, weight, second = (torch.rand(100_000, generator=generator) for _ in range(3))
    rounded_once = second.double().addcmul_(first.double(), weight.double()).float()
    assert postprocessing_ita._fused_addcmul("cpu") == torch.equal(torch.addcmul(second, first, weight), rounded_once)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "sizes", [((19, 23), (137, 153)), ((80, 107), (300, 400)), ((50, 70), (101, 67)), ((40, 30), (40, 97))]
)
def test_bilinear_combine_is_pytorch_cpu_arithmetic(monkeypatch, sizes, fused):
    """Bit for bit the values of PyTorch's CPU kernel, its generic path: outputs with height + width > 128 and more
    than 3 channels (with one thread, 3 channels take the channels-last kernel). Both ways of rounding once: a
    float32 `addcmul` where it fuses (`fused`, when this CPU's does) and float64 arithmetic rounded."""
    if fused and not postprocessing_ita._fused_addcmul("cpu"):
        pytest.skip("torch.addcmul does not fuse on this CPU")
    monkeypatch.setattr(postprocessing_ita, "_fused_addcmul", lambda device_type: fused)
    (height, width), size = sizes
    maps = torch.rand(5, height, width, generator=torch.Generator().manual_seed(0)) * 3 - 1
    expected = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    assert torch.equal(combine_everywhere(maps, size), expected)


def score_maps(kind, classes, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(classes, height, width, generator=generator)
    if kind == "structured":  # regions of one class, smooth inside, with boundaries of every orientation
        coarse = torch.randn(classes, max(height // 6, 1), max(width // 6, 1), generator=generator) * 3
        noise = 0.01 * torch.randn(classes, height, width, generator=generator)
        return F.interpolate(coarse[None], size=(height, width), mode="nearest")[0] + noise
    if kind == "ties":  # a few exactly representable levels: ties everywhere, before and after resizing
        return torch.randint(0, 3, (classes, height, width), generator=generator).float() / 4
    if kind == "duplicated":  # classes 0 and 2 identical and mostly ahead: exact ties wherever they win
        scores = torch.rand(classes, height, width, generator=generator)
        scores[0] += 0.5
        scores[2] = scores[0]
        return scores
    if kind == "rounding":  # two classes a few units of rounding apart, the second one first by an ulp or less
        base = torch.rand(height, width, generator=generator) + 0.5
        step = torch.randint(-2, 3, (height, width), generator=generator).float()
        scores = torch.zeros(classes, height, width)
        scores[0] = base
        scores[1] = base + step * torch.finfo(torch.float32).eps * base
        return scores
    raise ValueError(kind)


SIZE_CASES = [
    ((19, 23), (137, 153)),  # upscaling by non-integer factors
    ((20, 30), (80, 120)),  # integer factors
    ((50, 70), (37, 53)),  # downscaling
    ((40, 30), (97, 61)),  # up in one direction, stronger in the other
    ((20, 20), (20, 57)),  # one axis unchanged
    ((1, 5), (4, 9)),  # a single source row
    ((17, 29), (150, 201)),
]


@pytest.mark.parametrize("whole_rows", [False, True])
@pytest.mark.parametrize("kind", ["random", "structured", "ties", "duplicated", "rounding"])
@pytest.mark.parametrize("sizes", SIZE_CASES)
def test_resized_argmax_matches_the_full_resize(monkeypatch, kind, sizes, whole_rows):
    """Labels identical to the arg-max of every class resized (first of tied classes); winning scores equal to
    the resized maximum. Bit for bit where PyTorch runs its generic CPU kernel (outputs with height + width > 128),
    whose arithmetic the kernel reproduces; for smaller outputs PyTorch rounds differently, so there classes
    within rounding of each other ("rounding" maps) may come out either way. Either way of mixing: boundary
    pixels alone, or (`whole_rows`) every pixel of target rows that have any."""
    monkeypatch.setattr(postprocessing_ita, "_DENSE_TARGET_SHARE", 0.0 if whole_rows else 1.0)
    monkeypatch.setattr(postprocessing_ita, "_DENSE_CANDIDATE_SHARE", 0.0)
    (height, width), size = sizes
    scores = score_maps(kind, 2 if kind == "rounding" else 5, height, width)
    resized = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    expected_scores, expected_labels = resized.max(0)
    generic_kernel = sum(size) > 128
    comparable = torch.ones(size, dtype=torch.bool)
    if kind == "rounding" and not generic_kernel:
        best_two = resized.topk(2, dim=0).values
        comparable = best_two[0] - best_two[1] > 1e-6 * best_two[0].abs()
        assert not comparable.all()
    for chunk_elements in (2**22, 40):  # one band, or bands of one source row and a few pixels per chunk
        labels, winning = resized_argmax(scores, size, winning_scores=True, chunk_elements=chunk_elements)
        assert torch.equal(labels[comparable], expected_labels[comparable])
        if generic_kernel:
            assert torch.equal(winning, expected_scores)
        else:
            torch.testing.assert_close(winning, expected_scores, atol=1e-6, rtol=1e-6)
    if kind in ("ties", "duplicated"):  # the case is real: resized classes tie for the maximum somewhere
        best_two = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0].topk(2, dim=0).values
        assert (best_two[0] == best_two[1]).any()


def record_calls(monkeypatch, owner, name):
    """Wraps `owner.name` for the test so that each call's result is recorded; returns the list of results."""
    calls = []
    original = getattr(owner, name)

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(owner, name, recording)
    return calls


@pytest.mark.parametrize("structured", [False, True])
def test_whole_row_mixing_gives_the_boundary_mixing_values(monkeypatch, structured):
    """Target rows mixed whole (`_ResizedArgmax._fill_rows`) hold exactly the labels and winning scores of the
    boundary pixels mixed one by one, in the semantic map at a photo-like size; the plain formula's labels."""
    class_probs, mask_logits = semantic_inputs(num_classes=7, grid=(32, 48), structured=structured, seed=7)
    arguments = (class_probs, mask_logits, (120, 190), (128, 192), (400, 700))
    calls = record_calls(monkeypatch, postprocessing_ita._ResizedArgmax, "_fill_rows")
    monkeypatch.setattr(postprocessing_ita, "_DENSE_BAND_SHARE", 0.0)  # every band's scores at hand for every pixel
    monkeypatch.setattr(
        postprocessing_ita, "_DENSE_CANDIDATE_SHARE", 0.0
    )  # whatever the classes kept in boundary cells
    results = {}
    for share in (0.0, 1.0):
        monkeypatch.setattr(postprocessing_ita, "_DENSE_TARGET_SHARE", share)
        calls.clear()
        results[share] = semantic_map(*arguments, chunk_elements=20_000)
        assert bool(calls) == (share == 0.0)
    assert torch.equal(results[0.0][0], results[1.0][0]) and torch.equal(results[0.0][1], results[1.0][1])
    assert torch.equal(results[0.0][0], semantic_map_reference(*arguments)[0])


def test_whole_rows_only_where_boundary_cells_keep_most_classes(monkeypatch):
    """Boundaries everywhere: with every class close to every other the rows are mixed whole; with two classes
    competing and the rest far below, boundary pixels are mixed one by one with the two candidates."""
    generator = torch.Generator().manual_seed(0)
    close = torch.rand(6, 30, 40, generator=generator)
    two = torch.full((6, 30, 40), -5.0)
    two[:2] = torch.rand(2, 30, 40, generator=generator)
    calls = record_calls(monkeypatch, postprocessing_ita._ResizedArgmax, "_fill_rows")
    for scores, whole in ((close, True), (two, False)):
        calls.clear()
        labels, _ = resized_argmax(scores, (120, 160))
        expected = F.interpolate(scores[None], size=(120, 160), mode="bilinear", align_corners=False)[0].argmax(0)
        assert torch.equal(labels, expected)
        assert bool(calls) == whole


def test_resized_argmax_mixes_classes_only_along_label_boundaries(monkeypatch):
    """A map split into two classes, left and right: only output pixels whose source pixels straddle the split
    take every class's scores; elsewhere the label is the sources' shared class."""
    scores = torch.zeros(3, 40, 50)
    scores[0, :, :20] = 1.0
    scores[1, :, 20:] = 1.0
    mixed = record_calls(monkeypatch, postprocessing_ita, "bilinear_combine")
    labels, _ = resized_argmax(scores, (160, 200))
    # [pixels, classes]: the full computation
    mixed_pixels = [result.shape[0] for result in mixed if result.dim() == 2 and result.shape[-1] == 3]
    left, right = postprocessing_ita.bilinear_taps(50, 200)[:2]
    straddling = int(((left < 20) & (right >= 20)).sum())  # output columns reading both sides
    assert sum(mixed_pixels) == 160 * straddling and 0 < straddling <= 8
    expected = F.interpolate(scores[None], size=(160, 200), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(labels, expected)


def test_boundary_pixels_mix_only_the_classes_that_can_win(monkeypatch):
    """Along a boundary between two of 40 classes, a class whose highest corner score is below another's lowest
    cannot win in the cell: only the two sides' classes are mixed there, and labels and winning scores are still
    those of every class resized."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 30, 50, generator=generator) * 0.1 - 1.0  # classes that never come close
    scores[3] = 0.0
    scores[7] = 0.0
    scores[3, :, :20] = 1.0
    scores[7, :, 20:] = 1.0
    mixed = record_calls(monkeypatch, postprocessing_ita, "bilinear_combine")
    labels, _ = resized_argmax(scores, (120, 200), winning_scores=False)
    widths = [result.shape[-1] for result in mixed if result.dim() == 2]  # [pixels, classes mixed]
    assert widths and set(widths) == {2}
    monkeypatch.undo()
    resized = F.interpolate(scores[None], size=(120, 200), mode="bilinear", align_corners=False)[0]
    assert torch.equal(labels, resized.argmax(0))
    assert torch.equal(resized_argmax(scores, (120, 200), winning_scores=True)[1], resized.max(0).values)


def test_undecided_sources_are_those_within_rounding():
    scores = torch.tensor([[1.0, 1.0 - 2**-20, 0.0], [1.0, 0.5, 0.2], [0.0, 0.0, 0.0], [-1.0, -1.0 - 2**-10, -3.0]])
    labels, best, decided = postprocessing_ita._top_two(scores)
    assert labels.tolist() == [0, 0, 0, 0]
    assert decided.tolist() == [False, True, False, True]
    torch.testing.assert_close(best, torch.tensor([1.0, 1.0, 0.0, -1.0]))


def semantic_inputs(num_queries=6, num_classes=5, grid=(16, 24), seed=0, structured=False):
    generator = torch.Generator().manual_seed(seed)
    class_probs = torch.randn(num_queries, num_classes + 1, generator=generator).softmax(-1)[:, :-1]
    if structured:  # large regions of nearly saturated masks, as a trained model gives
        coarse = torch.randn(num_queries, grid[0] // 4, grid[1] // 4, generator=generator) * 8
        mask_logits = F.interpolate(coarse[None], size=grid, mode="bilinear", align_corners=False)[0]
    else:
        mask_logits = torch.randn(num_queries, *grid, generator=generator) * 3
    return class_probs, mask_logits


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("masks_first", [False, True])
@pytest.mark.parametrize("target_size", [(50, 70), (37, 53), (150, 215), (301, 197), (50, 400)])
def test_semantic_map_matches_the_plain_formula(masks_first, target_size, structured):
    """The banded kernel and, when the target is larger than the image, the boundary-driven one: labels equal
    to the plain formula's, scores up to float rounding; the 64x96 frame holds a 50x70 image."""
    class_probs, mask_logits = semantic_inputs(structured=structured)
    arguments = (class_probs, mask_logits, (50, 70), (64, 96), target_size)
    expected_labels, expected_scores = semantic_map_reference(*arguments, masks_first=masks_first)
    for chunk_elements in (2**22, 3000):
        labels, scores = semantic_map(*arguments, masks_first=masks_first, chunk_elements=chunk_elements)
        assert torch.equal(labels, expected_labels)
        torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
        only_labels, none = semantic_map(
            *arguments, masks_first=masks_first, winning_scores=False, chunk_elements=chunk_elements
        )
        assert none is None and torch.equal(only_labels, labels)
    full = semantic_scores(*arguments, masks_first=masks_first, chunk_elements=3000)
    assert full.shape == (class_probs.shape[1], *target_size)
    torch.testing.assert_close(
        full, semantic_scores_reference(*arguments, masks_first=masks_first), atol=1e-5, rtol=1e-5
    )


def test_semantic_map_with_one_class_or_tied_classes():
    class_probs, mask_logits = semantic_inputs(num_classes=1)
    arguments = (class_probs, mask_logits, (64, 96), (64, 96), (150, 230))
    labels, _ = semantic_map(*arguments)
    assert (labels == 0).all()
    class_probs, mask_logits = semantic_inputs(num_classes=4, structured=True)
    class_probs[:, 3] = class_probs[:, 0]  # classes 0 and 3 tie wherever they win: 0 is the label
    arguments = (class_probs, mask_logits, (64, 96), (64, 96), (150, 230))
    labels, _ = semantic_map(*arguments)
    expected, _ = semantic_map_reference(*arguments)
    assert (expected == 0).any() and not (labels == 3).any()
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("structured", [False, True])
def test_grid_decisions_hold_at_every_frame_pixel(structured):
    """A class decided for a grid cell wins at every frame pixel upsampled from that cell (the plain formula at the
    frame's size); saturated masks leave most cells decided, noisy ones fewer."""
    class_probs, mask_logits = semantic_inputs(num_classes=7, grid=(16, 24), structured=structured, seed=3)
    decisions = postprocessing_ita._grid_decisions(
        class_probs, mask_logits, chunk_elements=500
    )  # chunks of a few grid rows
    assert torch.equal(decisions, postprocessing_ita._grid_decisions(class_probs, mask_logits, chunk_elements=2**22))
    labels, _ = semantic_map_reference(class_probs, mask_logits, (64, 96), (64, 96), (64, 96))
    rows = bilinear_taps(16, 64)[0]
    columns = bilinear_taps(24, 96)[0]
    cell_labels = decisions[rows][:, columns]  # each frame pixel's cell decision
    decided = cell_labels >= 0
    assert torch.equal(labels[decided], cell_labels[decided])
    assert decided.any() and not decided.all()
    if structured:
        assert decided.float().mean() > 0.5


def test_upsampled_logits_at_pixels_equal_the_full_upsampling():
    _, mask_logits = semantic_inputs()
    logits_at = postprocessing_ita._upsampled_logits(mask_logits, (64, 96))
    rows, columns = torch.meshgrid(torch.arange(64), torch.arange(96), indexing="ij")
    values = logits_at(rows.flatten(), columns.flatten()).t().reshape(-1, 64, 96)
    expected = F.interpolate(mask_logits[None], size=(64, 96), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_semantic_map_scores_only_the_pixels_the_grid_leaves_open(monkeypatch):
    """With saturated masks most image pixels get their class from the grid's bounds: the class scores of only a
    minority are computed, the banded full computation is not used, and the labels are the plain formula's, for a
    photo-like target and a smaller one."""
    class_probs, mask_logits = semantic_inputs(num_classes=7, grid=(32, 48), structured=True, seed=5)
    scored = []
    compute = postprocessing_ita._PixelScores.compute

    def counting(self, rows, columns):
        scored.append(rows.numel())
        return compute(self, rows, columns)

    def unused(*args, **kwargs):
        raise AssertionError("the banded full computation ran")

    monkeypatch.setattr(postprocessing_ita._PixelScores, "compute", counting)
    monkeypatch.setattr(postprocessing_ita, "_target_bands", unused)
    for target_size in ((400, 700), (90, 150)):
        scored.clear()
        arguments = (class_probs, mask_logits, (120, 190), (128, 192), target_size)
        labels, _ = semantic_map(*arguments, chunk_elements=20_000)
        assert torch.equal(labels, semantic_map_reference(*arguments)[0])
        assert 0 < sum(scored) < 0.5 * 120 * 190


@pytest.mark.parametrize("structured", [False, True])
def test_a_probe_of_grid_rows_skips_deciding_a_grid_too_open_to_use(monkeypatch, structured):
    """Every eighth grid row under the image estimates the share of cells the grid leaves open. Noisy masks and a
    target smaller than the image: the probe already leaves more open than the grid path can afford, the grid is
    not decided whole, and the banded path gives the plain formula's labels. Saturated masks: the probe lets the
    grid path run."""
    class_probs, mask_logits = semantic_inputs(num_classes=7, grid=(64, 48), structured=structured, seed=7)
    image_size, frame_size, target_size = (250, 190), (256, 192), (200, 160)
    affordable = 200 * 160 / (250 * 190)  # 0.67
    probe = postprocessing_ita._probe_undecided_share(class_probs, mask_logits, image_size, frame_size)
    whole = postprocessing_ita._undecided_share(
        postprocessing_ita._grid_decisions(class_probs, mask_logits, 2**22), image_size, frame_size
    )
    assert abs(probe - whole) < 0.1
    assert (probe > affordable) == (not structured) and (whole > affordable) == (not structured)
    decided, grid_decisions = [], postprocessing_ita._grid_decisions

    def spy(*args, **kwargs):
        decided.append(True)
        return grid_decisions(*args, **kwargs)

    monkeypatch.setattr(postprocessing_ita, "_grid_decisions", spy)
    arguments = (class_probs, mask_logits, image_size, frame_size, target_size)
    labels, _ = semantic_map(*arguments, chunk_elements=20_000)
    assert torch.equal(labels, semantic_map_reference(*arguments)[0])
    assert bool(decided) == structured


@pytest.mark.parametrize("dense_share", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("structured", [False, True])
def test_bands_the_grid_leaves_open_are_scored_whole_with_the_same_labels(monkeypatch, structured, dense_share):
    """Bands of image rows whose grid is mostly open are scored whole by matrix products, the others pixel by
    pixel: either way (forced by the share: 0 scores every band whole, 1 none), the plain formula's labels and
    scores, for a photo-like target and a smaller one."""
    class_probs, mask_logits = semantic_inputs(num_classes=7, grid=(32, 48), structured=structured, seed=6)
    monkeypatch.setattr(postprocessing_ita, "_DENSE_BAND_SHARE", dense_share)
    calls = {"whole": 0, "pixels": 0}
    frame_rows, compute = postprocessing_ita._FrameRows.__call__, postprocessing_ita._PixelScores.compute

    def whole(self, *args):
        calls["whole"] += 1
        return frame_rows(self, *args)

    def pixels(self, *args):
        calls["pixels"] += 1
        return compute(self, *args)

    monkeypatch.setattr(postprocessing_ita._FrameRows, "__call__", whole)
    monkeypatch.setattr(postprocessing_ita._PixelScores, "compute", pixels)
    for target_size in ((90, 150), (400, 700)):  # the last: larger than the image, the boundary-following path
        calls.update(whole=0, pixels=0)
        arguments = (class_probs, mask_logits, (120, 190), (128, 192), target_size)
        expected_labels, expected_scores = semantic_map_reference(*arguments)
        labels, scores = semantic_map(*arguments, chunk_elements=20_000)
        assert torch.equal(labels, expected_labels)
        torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
    if dense_share == 0.0:
        assert calls["whole"] > 0 and calls["pixels"] == 0
    elif dense_share == 1.0:
        assert calls["whole"] == 0 and calls["pixels"] > 0
    elif not structured:  # noisy masks leave most bands open, saturated ones few
        assert calls["whole"] > calls["pixels"]


# ------------------------------------------------------------------------------------------------ on a GPU
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")


def clear_margin(scores):
    """Pixels of `[K, H, W]` scores whose two best classes are further apart than float rounding."""
    best_two = scores.topk(2, dim=0).values
    return best_two[0] - best_two[1] > 1e-5 * best_two[0].abs().clamp_min(1.0)


@CUDA
@pytest.mark.parametrize("kind", ["random", "structured", "ties", "duplicated"])
@pytest.mark.parametrize("sizes", [((19, 23), (137, 153)), ((50, 70), (37, 53)), ((17, 29), (150, 201))])
def test_resized_argmax_on_the_gpu(kind, sizes):
    """On a GPU the kernel stays on the device and gives the labels of PyTorch's CUDA resize wherever two classes
    are not within rounding, and of the CPU there too; exactly tied classes give the first."""
    (height, width), size = sizes
    scores = score_maps(kind, 5, height, width).to(GPU)
    resized = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    labels, winning = resized_argmax(scores, size, winning_scores=True, chunk_elements=40)
    assert labels.device.type == winning.device.type == GPU.type
    clear = clear_margin(resized)
    assert torch.equal(labels[clear], resized.argmax(0)[clear])
    torch.testing.assert_close(winning, resized.max(0).values, atol=1e-5, rtol=1e-5)
    on_cpu, _ = resized_argmax(scores.cpu(), size)
    assert torch.equal(labels.cpu()[clear.cpu()], on_cpu[clear.cpu()])
    if kind == "duplicated":  # classes 0 and 2 are the same maps: 2 never wins
        assert not (labels == 2).any()


@CUDA
@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("masks_first", [False, True])
def test_semantic_map_on_the_gpu(structured, masks_first):
    """The post-processing kernel on a GPU: for a photo-sized target, a smaller one and the image's own size, the
    labels of the plain formula computed there (clear margins), winning scores up to rounding, and the CPU's labels."""
    class_probs, mask_logits = semantic_inputs(num_classes=7, grid=(32, 48), structured=structured, seed=5)
    for target_size in ((400, 700), (90, 150), (120, 190)):
        arguments = (class_probs, mask_logits, (120, 190), (128, 192), target_size)
        on_gpu = (class_probs.to(GPU), mask_logits.to(GPU), *arguments[2:])
        labels, winning = semantic_map(*on_gpu, masks_first=masks_first, chunk_elements=20_000)
        assert labels.device.type == GPU.type
        expected = semantic_scores_reference(*on_gpu, masks_first=masks_first)
        clear = clear_margin(expected)
        assert clear.float().mean() > 0.99
        assert torch.equal(labels[clear], expected.argmax(0)[clear])
        torch.testing.assert_close(winning, expected.max(0).values, atol=1e-5, rtol=1e-5)
        on_cpu, _ = semantic_map(*arguments, masks_first=masks_first)
        assert torch.equal(labels.cpu()[clear.cpu()], on_cpu[clear.cpu()])
