"""ITAImageProcessor: detectron2-style resizing, normalisation, padding, input formats, segmentation targets and
semantic post-processing (on synthetic inputs and constructed model outputs; no model needed)."""

import io
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from image_processing_ita import ITA_PIXEL_MEAN, ITA_PIXEL_STD, ITAImageProcessor

SMALL_SIZE = {"shortest_edge": 64, "longest_edge": 100}
MEAN = torch.tensor(ITA_PIXEL_MEAN).view(3, 1, 1)
STD = torch.tensor(ITA_PIXEL_STD).view(3, 1, 1)


@pytest.fixture
def small():
    """Shortest side 64, longest at most 100: same code paths as the 800/1333 default, small tensors."""
    return ITAImageProcessor(size=SMALL_SIZE)


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def to_0_255(pixel_values):
    """Undo the normalisation of one `[3, H, W]` image."""
    return pixel_values * STD + MEAN


# ----------------------------------------------------------------------------------------------------------
# Resizing, padding, masks, sizes
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, resized, padded",
    [
        (480, 640, (800, 1067), (800, 1088)),
        (320, 321, (800, 803), (800, 832)),  # 802.5 rounds half up, as int(x + 0.5) does
        (640, 480, (1067, 800), (1088, 800)),
        (100, 1000, (133, 1333), (160, 1344)),  # 800 x 8000 would exceed 1333: the long side is capped
        (1000, 100, (1333, 133), (1344, 160)),
        (1200, 1600, (800, 1067), (800, 1088)),
        (800, 800, (800, 800), (800, 800)),
    ],
)
def test_default_resize_follows_resize_shortest_edge(height, width, resized, padded):
    outputs = ITAImageProcessor()(np.zeros((height, width, 3), dtype=np.uint8), return_tensors="pt")
    assert outputs["image_sizes"].tolist() == [list(resized)]
    assert outputs["image_sizes"].dtype == torch.long
    assert tuple(outputs["pixel_values"].shape) == (1, 3, *padded)
    assert outputs["pixel_values"].dtype == torch.float32
    assert tuple(outputs["pixel_mask"].shape) == (1, *padded)
    # padded_frame is the one home of that rule: from the input size, or from the resized size.
    processor = ITAImageProcessor()
    assert processor.padded_frame(height, width) == padded
    assert processor.padded_frame(*resized, resized=True) == padded


def test_padded_frame_follows_the_processor_s_options():
    processor = ITAImageProcessor(size=SMALL_SIZE, size_divisor=16)
    assert processor.padded_frame(20, 60) == (48, 112)  # resized to 33x100, then rounded up to 16
    assert processor.padded_frame(33, 100, resized=True) == (48, 112)
    assert ITAImageProcessor(do_resize=False).padded_frame(33, 100) == (64, 128)
    assert ITAImageProcessor(do_pad=False).padded_frame(400, 600) == (800, 1200)  # no padding: the resized size


def test_configurable_size_and_divisor():
    processor = ITAImageProcessor(size=SMALL_SIZE, size_divisor=16)
    outputs = processor([random_image(30, 45), random_image(20, 60)], return_tensors="pt")
    # 30x45 -> 64x96; 20x60 -> 64x192 is too long -> scaled to 33.3x100 -> 33x100.
    assert outputs["image_sizes"].tolist() == [[64, 96], [33, 100]]
    assert tuple(outputs["pixel_values"].shape) == (2, 3, 64, 112)


def test_batch_is_zero_padded_bottom_right_with_pixel_mask(small):
    outputs = small([random_image(64, 96, seed=1), random_image(40, 62, seed=2)], return_tensors="pt")
    assert outputs["image_sizes"].tolist() == [[64, 96], [64, 99]]
    pixel_values, pixel_mask = outputs["pixel_values"], outputs["pixel_mask"]
    assert tuple(pixel_values.shape) == (2, 3, 64, 128)
    for index, (height, width) in enumerate(outputs["image_sizes"].tolist()):
        expected_mask = torch.zeros(64, 128, dtype=torch.long)
        expected_mask[:height, :width] = 1
        assert torch.equal(pixel_mask[index], expected_mask)
        assert (pixel_values[index][:, pixel_mask[index] == 0] == 0).all()
        assert (pixel_values[index, :, :height, :width] != 0).any()


def test_normalisation_of_a_constant_image(small):
    image = np.empty((64, 96, 3), dtype=np.uint8)
    image[...] = (10, 128, 250)
    pixel_values = small(image, return_tensors="pt")["pixel_values"][0]
    expected = (torch.tensor([10.0, 128.0, 250.0]) - torch.tensor(ITA_PIXEL_MEAN)) / torch.tensor(ITA_PIXEL_STD)
    assert torch.allclose(pixel_values, expected.view(3, 1, 1).expand_as(pixel_values), atol=1e-6)
    # The constants are OpenAI CLIP's mean/std on 0..1 expressed on 0..255.
    clip_expected = (torch.tensor([10.0, 128.0, 250.0]) / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(
        OPENAI_CLIP_STD
    )
    assert torch.allclose(expected, clip_expected, atol=1e-5)
    # ... so the usual transformers convention (rescale to 0..1, 0..1 constants) gives the same input.
    usual = ITAImageProcessor(
        size=SMALL_SIZE, do_rescale=True, rescale_factor=1 / 255, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )
    assert torch.allclose(usual(image, return_tensors="pt")["pixel_values"][0], pixel_values, atol=1e-5)


def test_bilinear_resize_is_close_to_pil(small):
    """The original resizes uint8 images with PIL's bilinear filter."""
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(128, 40, (48, 64, 3)).cumsum(axis=1) / np.arange(1, 65)[None, :, None], 0, 255)
    image = image.astype(np.uint8)
    outputs = small(image, return_tensors="pt")
    height, width = outputs["image_sizes"][0].tolist()
    assert (height, width) == (64, 85)
    ours = to_0_255(outputs["pixel_values"][0, :, :height, :width]).permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)).astype(np.float32)
    assert np.abs(ours - pil).max() <= 2.0 + 1e-3


# ----------------------------------------------------------------------------------------------------------
# Input formats
# ----------------------------------------------------------------------------------------------------------


def test_pil_numpy_and_torch_layouts_agree(small):
    image = random_image(64, 96, seed=4)
    reference = small(Image.fromarray(image), return_tensors="pt")["pixel_values"]
    for same in (
        image,
        np.moveaxis(image, -1, 0),  # CHW
        torch.from_numpy(image).permute(2, 0, 1),  # torch CHW
        image.astype(np.float32) / 255,  # floats in [0, 1]
        torch.from_numpy(image).permute(2, 0, 1).double() / 255,
    ):
        assert torch.allclose(small(same, return_tensors="pt")["pixel_values"], reference, atol=1e-4)


def test_rgba_alpha_is_dropped(small):
    rgb = random_image(64, 96, seed=5)
    alpha = np.random.default_rng(6).integers(0, 256, (64, 96, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    reference = small(rgb, return_tensors="pt")["pixel_values"]
    assert torch.equal(small(Image.fromarray(rgba), return_tensors="pt")["pixel_values"], reference)
    assert torch.equal(small(rgba, return_tensors="pt")["pixel_values"], reference)


def test_grayscale_is_replicated(small):
    gray = random_image(64, 96, seed=7)[..., 0]
    reference = small(np.repeat(gray[..., None], 3, axis=-1), return_tensors="pt")["pixel_values"]
    for same in (Image.fromarray(gray), gray, gray[..., None], torch.from_numpy(gray)[None]):
        assert torch.equal(small(same, return_tensors="pt")["pixel_values"], reference)


def test_sixteen_bit_images_are_scaled_to_0_255(small):
    gray = random_image(64, 96, seed=8)[..., 0]
    reference = small(gray, return_tensors="pt")["pixel_values"]
    sixteen = gray.astype(np.uint16) * 257  # 255 -> 65535
    pil_sixteen = Image.fromarray(sixteen)
    assert pil_sixteen.mode == "I;16"
    for same in (pil_sixteen, sixteen, torch.from_numpy(sixteen)):
        assert torch.allclose(small(same, return_tensors="pt")["pixel_values"], reference, atol=1e-4)


def test_exif_orientation_is_applied(small):
    image = random_image(64, 96, seed=9)
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", exif=exif.tobytes())
    buffer.seek(0)
    outputs = small(Image.open(buffer), return_tensors="pt")
    upright = np.ascontiguousarray(np.rot90(image, k=-1))
    assert outputs["image_sizes"].tolist() == [[96, 64]]
    assert torch.equal(outputs["pixel_values"], small(upright, return_tensors="pt")["pixel_values"])


def test_return_tensors_numpy(small):
    outputs = small(random_image(64, 96), return_tensors="np")
    assert isinstance(outputs["pixel_values"], np.ndarray) and outputs["pixel_values"].dtype == np.float32
    assert isinstance(outputs["image_sizes"], np.ndarray)


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.zeros((0, 10, 3), dtype=np.uint8), {}, "zero size"),
        (Image.new("RGB", (0, 5)), {}, "zero size"),
        (np.zeros((10, 10, 5), dtype=np.uint8), {}, "no channel dimension"),
        (np.zeros((10, 10, 5), dtype=np.uint8), {"input_data_format": "channels_last"}, "5 channels"),
        (np.full((10, 10, 3), 2.0, dtype=np.float32), {}, r"must lie in \[0, 1\]"),
        (np.full((10, 10, 3), np.nan, dtype=np.float32), {}, "NaN"),
        (np.zeros((10, 10, 3), dtype=np.int64), {}, "unsupported dtype"),
        (np.zeros((2, 2, 10, 10, 3), dtype=np.uint8), {}, "expected"),
    ],
)
def test_invalid_images_raise(small, image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        small(image, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Segmentation targets
# ----------------------------------------------------------------------------------------------------------


def labelled_map():
    """64x96 map: 0 (background) left, 1 top right, 3 bottom right, a 255 (ignore) square in the middle."""
    label_map = np.zeros((64, 96), dtype=np.uint8)
    label_map[:32, 48:] = 1
    label_map[32:, 48:] = 3
    label_map[24:40, 40:56] = 255
    return label_map


def test_mask_and_class_labels_with_reduce_labels_and_padding(small):
    label_map = labelled_map()
    other_map = np.full((64, 99), 2, dtype=np.uint8)
    outputs = small(
        [random_image(64, 96), random_image(64, 99)],
        segmentation_maps=[label_map, other_map],
        do_reduce_labels=True,
        return_tensors="pt",
    )
    masks, classes = outputs["mask_labels"][0], outputs["class_labels"][0]
    assert classes.dtype == torch.long and classes.tolist() == [0, 2]  # 1 -> 0, 3 -> 2; 0 and 255 ignored
    assert masks.dtype == torch.float32 and tuple(masks.shape) == (2, 64, 128)
    assert torch.equal(masks[0, :, :96], torch.from_numpy(label_map == 1).float())
    assert torch.equal(masks[1, :, :96], torch.from_numpy(label_map == 3).float())
    assert (masks[:, :, 96:] == 0).all()  # padding belongs to no class
    assert outputs["class_labels"][1].tolist() == [1]
    assert tuple(outputs["mask_labels"][1].shape) == (1, 64, 128)


def test_class_labels_without_reduction_and_custom_ignore_index(small):
    label_map = labelled_map()
    plain = small(random_image(64, 96), segmentation_maps=label_map, return_tensors="pt")
    assert plain["class_labels"][0].tolist() == [0, 1, 3]
    custom = small(random_image(64, 96), segmentation_maps=label_map, ignore_index=0, return_tensors="pt")
    assert custom["class_labels"][0].tolist() == [1, 3, 255]


def test_sixteen_bit_maps_ignore_65535(small):
    label_map = np.zeros((64, 96), dtype=np.uint16)
    label_map[:, 50:] = 500
    label_map[:10] = 65535
    label_map[-5:] = 255  # an ordinary class in a 16-bit map
    for same in (label_map, Image.fromarray(label_map), torch.from_numpy(label_map)):
        outputs = small(random_image(64, 96), segmentation_maps=same, return_tensors="pt")
        assert outputs["class_labels"][0].tolist() == [0, 255, 500]


def test_maps_are_resized_with_nearest_like_pil(small):
    label_map = np.random.default_rng(10).integers(0, 20, (30, 45)).astype(np.uint8)
    outputs = small(random_image(30, 45), segmentation_maps=Image.fromarray(label_map), return_tensors="pt")
    height, width = outputs["image_sizes"][0].tolist()
    masks, classes = outputs["mask_labels"][0], outputs["class_labels"][0]
    rebuilt = (masks * classes.view(-1, 1, 1)).sum(0)[:height, :width].long().numpy()
    expected = np.asarray(Image.fromarray(label_map).resize((width, height), Image.NEAREST))
    assert (height, width) == (64, 96) and np.array_equal(rebuilt, expected)


def test_map_size_mismatch_names_both_sizes(small):
    with pytest.raises(ValueError, match=r"\(20, 31\).*\(20, 30\)"):
        small(random_image(20, 30), segmentation_maps=np.zeros((20, 31), dtype=np.uint8))


def test_out_of_vocabulary_ids_are_named(small):
    label_map = np.zeros((64, 96), dtype=np.uint8)
    label_map[:, 10:20], label_map[:, 20:30], label_map[:, 30:40] = 3, 7, 9
    label_map[:, 40:] = 255
    with pytest.raises(ValueError, match=r"\[7, 9\]"):
        small(random_image(64, 96), segmentation_maps=label_map, num_labels=5)
    outputs = small(random_image(64, 96), segmentation_maps=label_map, num_labels=10, return_tensors="pt")
    assert outputs["class_labels"][0].tolist() == [0, 3, 7, 9]


@pytest.mark.parametrize(
    "maps, message",
    [
        ([np.zeros((64, 96, 3), dtype=np.uint8)], "one channel"),
        ([Image.new("RGB", (96, 64))], "mode 'RGB'"),
        ([np.zeros((64, 96), dtype=np.float32)], "integer"),
        ([np.full((64, 96), -1, dtype=np.int64)], "negative"),
        ([np.zeros((64, 96), dtype=np.uint8)] * 2, "1 images but 2 segmentation maps"),
    ],
)
def test_invalid_segmentation_maps_raise(small, maps, message):
    with pytest.raises(ValueError, match=message):
        small([random_image(64, 96)], segmentation_maps=maps)


def test_save_and_load(tmp_path, small):
    processor = ITAImageProcessor(size=SMALL_SIZE, size_divisor=16, ignore_index=0, do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    reloaded = ITAImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    assert reloaded.size_divisor == 16 and reloaded.ignore_index == 0 and reloaded.do_reduce_labels
    image = random_image(50, 70)
    reloaded_values = reloaded(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(reloaded_values, processor(image, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shortest_edeg": 64}, r"'shortest_edeg' \(did you mean size=\{'shortest_edge': 64\}\?\)"),
        ({"do_rezise": False}, r"'do_rezise' \(did you mean 'do_resize'\?\)"),
        ({"sizes": SMALL_SIZE}, r"'sizes' \(did you mean 'size'\?\)"),
        ({"shortest_edge": 64}, r"write size=\{'shortest_edge': 64\} instead of shortest_edge=64"),
        (
            {"height": 64, "width": 96},
            r"size=\{'height': 64, 'width': 96\} instead of height=64, width=96",
        ),
    ],
)
def test_unknown_and_flat_size_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(TypeError, match=message):
        ITAImageProcessor(**kwargs)


def test_transformers_bookkeeping_and_post_processing_settings_are_accepted():
    processor = ITAImageProcessor(
        image_processor_type="ITAImageProcessor",
        processor_class="ITAProcessor",
        auto_map={"AutoImageProcessor": "image_processing_ita.ITAImageProcessor"},
        post_process_chunk_elements=1000,
    )
    assert processor.post_process_chunk_elements == 1000
    assert processor.to_dict()["auto_map"] == {"AutoImageProcessor": "image_processing_ita.ITAImageProcessor"}
    assert ITAImageProcessor(**processor.to_dict()).to_dict() == processor.to_dict()


def test_loading_drops_a_saved_key_it_does_not_know_with_a_warning(tmp_path, caplog):
    processor = ITAImageProcessor(size=SMALL_SIZE, size_divisor=16)
    processor.save_pretrained(tmp_path)
    path = tmp_path / "preprocessor_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "legacy_option": 3, "_processor_class": "ITAProcessor"}))
    with caplog.at_level(logging.WARNING, logger="image_processing_ita"):
        loaded = ITAImageProcessor.from_pretrained(tmp_path)
        from_json = ITAImageProcessor.from_json_file(path)
    warnings = [record.getMessage() for record in caplog.records if "legacy_option" in record.getMessage()]
    assert len(warnings) == 2 and "_processor_class" not in warnings[0]
    assert "legacy_option" not in loaded.to_dict() and not hasattr(loaded, "legacy_option")
    assert loaded.size_divisor == 16 and from_json.size_divisor == 16
    assert dict(loaded.size) == dict(processor.size)


def test_loading_refuses_flat_size_kwargs_and_takes_real_ones(tmp_path):
    ITAImageProcessor(size=SMALL_SIZE).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"size=\{'shortest_edge': 32\}"):
        ITAImageProcessor.from_pretrained(tmp_path, shortest_edge=32)
    assert ITAImageProcessor.from_pretrained(tmp_path, size={"shortest_edge": 32}).size.shortest_edge == 32


# ----------------------------------------------------------------------------------------------------------
# Semantic post-processing
# ----------------------------------------------------------------------------------------------------------


def reference_semantic_map(class_logits, mask_logits, image_size, target_size, divisor=32, masks_first=False, stride=4):
    """The original computation for one image run alone: upsample its own padded frame x4, sigmoid, class
    sum, crop, resize, argmax. `mask_logits` [Q, h, w] may be larger than the frame (a batch's)."""
    height, width = image_size
    frame = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)
    logits = mask_logits[None, :, : frame[0] // stride, : frame[1] // stride]
    masks = F.interpolate(logits, size=frame, mode="bilinear", align_corners=False)[0, :, :height, :width]
    probs = class_logits.softmax(-1)[:, :-1]
    if masks_first:
        masks = F.interpolate(masks[None], size=target_size, mode="bilinear", align_corners=False)[0]
        scores = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())
    else:
        scores = torch.einsum("qc,qhw->chw", probs, masks.sigmoid())
        scores = F.interpolate(scores[None], size=target_size, mode="bilinear", align_corners=False)[0]
    best, labels = scores.max(0)
    return labels, best


def constructed_outputs():
    """One 64x96 image (own frame 64x96, mask grid 16x24): query 0 covers the left half and says class 2,
    query 1 the top right (class 0), query 2 the bottom right (class 1); query 3 covers everything but is
    almost surely void."""
    mask_logits = torch.full((1, 4, 16, 24), -10.0)
    mask_logits[0, 0, :, :12] = 10.0
    mask_logits[0, 1, :8, 12:] = 10.0
    mask_logits[0, 2, 8:, 12:] = 10.0
    mask_logits[0, 3] = 10.0
    probs = torch.tensor(
        [
            [0.04, 0.03, 0.90, 0.03],
            [0.90, 0.04, 0.03, 0.03],
            [0.03, 0.90, 0.04, 0.03],
            [0.01, 0.01, 0.01, 0.97],  # void: would win everywhere if the void column were kept
        ]
    )
    return {
        "class_queries_logits": probs.log()[None],  # log-probabilities, as the model's ensemble returns
        "masks_queries_logits": mask_logits,
        "image_sizes": torch.tensor([[64, 96]]),
    }


def test_post_process_constructed_case():
    processor = ITAImageProcessor()
    outputs = constructed_outputs()
    label_map = processor.post_process_semantic_segmentation(outputs)[0]
    assert label_map.dtype == torch.long and tuple(label_map.shape) == (64, 96)
    assert (label_map[:, :44] == 2).all()
    assert (label_map[:28, 52:] == 0).all()
    assert (label_map[36:, 52:] == 1).all()
    expected, _ = reference_semantic_map(
        outputs["class_queries_logits"][0], outputs["masks_queries_logits"][0], (64, 96), (64, 96)
    )
    assert torch.equal(label_map, expected)

    # Resized to the original image size, with scores.
    result = processor.post_process_semantic_segmentation(outputs, target_sizes=[(32, 48)], return_winning_scores=True)[
        0
    ]
    label_map, scores = result.segmentation, result.winning_scores
    assert tuple(label_map.shape) == (32, 48) == tuple(scores.shape)
    assert (label_map[:, :22] == 2).all() and (label_map[:14, 26:] == 0).all() and (label_map[18:, 26:] == 1).all()
    # Deep inside a region: sigmoid(10) * 0.90 from its query plus sigmoid(10) * 0.01 from the void query.
    assert torch.allclose(scores[5, 5], torch.tensor(0.91 * torch.sigmoid(torch.tensor(10.0)).item()), atol=1e-4)


@pytest.mark.parametrize(
    "target_sizes",
    [
        [(37, 53), (80, 150)],  # down, and up by non-integer factors
        [(173, 301), (256, 512)],  # photo-like: larger than the images, labels decided along the boundaries
        [(50, 70), (64, 128)],  # the images' own sizes
    ],
)
@pytest.mark.parametrize("masks_first", [False, True])
def test_post_process_matches_the_original_formula(masks_first, target_sizes):
    generator = torch.Generator().manual_seed(0)
    # Two images padded to the larger frame (64x128 -> grid 16x32); the first one ends at 50x70.
    outputs = {
        "class_queries_logits": torch.randn(2, 6, 5, generator=generator),
        "masks_queries_logits": torch.randn(2, 6, 16, 32, generator=generator) * 3,
        "image_sizes": torch.tensor([[50, 70], [64, 128]]),
    }
    processor = ITAImageProcessor()
    results = processor.post_process_semantic_segmentation(
        outputs, target_sizes=target_sizes, return_winning_scores=True, sem_seg_postprocess_before_inference=masks_first
    )
    # A tiny block size: bands of one output row, each reading its own few frame and grid rows; same answer.
    processor.post_process_chunk_elements = 3000
    chunked = processor.post_process_semantic_segmentation(
        outputs, target_sizes=target_sizes, return_winning_scores=True, sem_seg_postprocess_before_inference=masks_first
    )
    for index in range(2):
        labels, scores = reference_semantic_map(
            outputs["class_queries_logits"][index],
            outputs["masks_queries_logits"][index],
            tuple(outputs["image_sizes"][index].tolist()),
            target_sizes[index],
            masks_first=masks_first,
        )
        for result in (results[index], chunked[index]):
            assert torch.equal(result.segmentation, labels)
            assert torch.allclose(result.winning_scores, scores, atol=1e-5)


def test_small_image_batched_with_a_large_one_gives_the_same_map():
    """transformers issue 39382: a padded batch must not change an image's map. The small image (64x96, a
    multiple of 32, so its last rows and columns interpolate against the next grid cell) gets the same
    logits on its own frame; the batch's extra grid cells hold large junk values."""
    generator = torch.Generator().manual_seed(1)
    num_queries, num_classes = 5, 4
    small_class = torch.randn(1, num_queries, num_classes + 1, generator=generator)
    small_masks = torch.randn(1, num_queries, 16, 24, generator=generator) * 4
    large_class = torch.randn(1, num_queries, num_classes + 1, generator=generator)
    large_masks = torch.randn(1, num_queries, 40, 56, generator=generator) * 4

    batch_masks = torch.full((2, num_queries, 40, 56), 500.0)  # the small image's padding: junk
    batch_masks[0, :, :16, :24] = small_masks[0]
    batch_masks[1] = large_masks[0]
    batched = {
        "class_queries_logits": torch.cat([small_class, large_class]),
        "masks_queries_logits": batch_masks,
        "image_sizes": torch.tensor([[64, 96], [160, 224]]),
    }
    alone = {
        "class_queries_logits": small_class,
        "masks_queries_logits": small_masks,
        "image_sizes": torch.tensor([[64, 96]]),
    }
    large_alone = {
        "class_queries_logits": large_class,
        "masks_queries_logits": large_masks,
        "image_sizes": torch.tensor([[160, 224]]),
    }

    processor = ITAImageProcessor()
    for target_sizes in (None, [(48, 72)]):
        batch_targets = None if target_sizes is None else target_sizes + [(100, 140)]
        batch_results = processor.post_process_semantic_segmentation(batched, batch_targets, return_winning_scores=True)
        single = processor.post_process_semantic_segmentation(alone, target_sizes, return_winning_scores=True)[0]
        large_single = processor.post_process_semantic_segmentation(
            large_alone, None if target_sizes is None else [(100, 140)], return_winning_scores=True
        )[0]
        assert torch.equal(batch_results[0].segmentation, single.segmentation)
        assert torch.equal(batch_results[0].winning_scores, single.winning_scores)
        assert torch.equal(batch_results[1].segmentation, large_single.segmentation)

    # The test has teeth: upsampling the whole batch frame lets the junk into the small image's last rows.
    naive = F.interpolate(batch_masks[:1], size=(160, 224), mode="bilinear", align_corners=False)[0, :, :64, :96]
    naive_scores = torch.einsum("qc,qhw->chw", small_class[0].softmax(-1)[:, :-1], naive.sigmoid())
    assert not torch.equal(naive_scores.max(0).indices, single.segmentation)


def test_tied_classes_resolve_to_the_first_as_argmax_does():
    outputs = constructed_outputs()
    # Classes 0 and 2 get exactly the same probabilities from every query.
    probs = torch.tensor([[0.45, 0.05, 0.45, 0.05]] * 4)
    outputs["class_queries_logits"] = probs.log()[None]
    processor = ITAImageProcessor()
    processor.post_process_chunk_elements = 64 * 96  # one class per chunk: the tie spans two chunks
    assert (processor.post_process_semantic_segmentation(outputs)[0] == 0).all()


def test_post_process_default_size_and_errors():
    processor = ITAImageProcessor()
    outputs = constructed_outputs()
    assert tuple(processor.post_process_semantic_segmentation(outputs)[0].shape) == (64, 96)
    with pytest.raises(ValueError, match="image_sizes"):
        processor.post_process_semantic_segmentation({k: v for k, v in outputs.items() if k != "image_sizes"})
    with pytest.raises(ValueError, match="2 target_sizes for a batch of 1"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="mask grid"):
        processor.post_process_semantic_segmentation({**outputs, "image_sizes": torch.tensor([[100, 96]])})


def test_segmentation_scores_follow_transformers():
    """`return_segmentation_scores` returns transformers' `SemanticSegmentationPostProcessorOutput` with every
    class's score at the target size; without it, plain label maps, as transformers' processors do."""
    outputs = constructed_outputs()
    processor = ITAImageProcessor()
    label_maps = processor.post_process_semantic_segmentation(outputs, target_sizes=[(40, 70)])
    assert isinstance(label_maps, list) and isinstance(label_maps[0], torch.Tensor)
    result = processor.post_process_semantic_segmentation(outputs, [(40, 70)], True)[0]
    assert isinstance(result, SemanticSegmentationPostProcessorOutput)
    labels, scores = reference_semantic_map(
        outputs["class_queries_logits"][0], outputs["masks_queries_logits"][0], (64, 96), (40, 70)
    )
    assert result.segmentation_scores.shape == (4 - 1, 40, 70)
    assert torch.equal(result.segmentation, label_maps[0]) and torch.equal(result.segmentation, labels)
    torch.testing.assert_close(result.segmentation_scores.max(0).values, scores, atol=1e-5, rtol=1e-5)
    assert "winning_scores" not in result
    both = processor.post_process_semantic_segmentation(
        outputs, [(40, 70)], return_segmentation_scores=True, return_winning_scores=True
    )[0]
    assert torch.equal(both.winning_scores, result.segmentation_scores.max(0).values)
    winning = processor.post_process_semantic_segmentation(outputs, [(40, 70)], return_winning_scores=True)[0]
    assert winning.segmentation_scores is None
    torch.testing.assert_close(winning.winning_scores, scores, atol=1e-5, rtol=1e-5)


def test_return_scores_is_deprecated_but_keeps_its_format():
    outputs = constructed_outputs()
    processor = ITAImageProcessor()
    with pytest.warns(FutureWarning, match="return_winning_scores"):
        result = processor.post_process_semantic_segmentation(outputs, target_sizes=[(32, 48)], return_scores=True)[0]
    assert isinstance(result, dict) and set(result) == {"segmentation", "scores"}
    current = processor.post_process_semantic_segmentation(outputs, [(32, 48)], return_winning_scores=True)[0]
    assert torch.equal(result["segmentation"], current.segmentation)
    assert torch.equal(result["scores"], current.winning_scores)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="cannot be combined"):
        processor.post_process_semantic_segmentation(outputs, return_scores=True, return_winning_scores=True)


def test_mask_stride_is_the_processor_attribute():
    """A model whose mask grid has stride 8: the processor told so reads it; with the default stride 4 the grid
    is too small for the image's frame and the error says so."""
    outputs = constructed_outputs()
    coarse = dict(outputs, masks_queries_logits=outputs["masks_queries_logits"][:, :, ::2, ::2])  # 8x12 grid
    processor = ITAImageProcessor()
    with pytest.raises(ValueError, match="mask grid"):
        processor.post_process_semantic_segmentation(coarse)
    processor.mask_stride = 8
    label_map = processor.post_process_semantic_segmentation(coarse)[0]
    expected, _ = reference_semantic_map(
        coarse["class_queries_logits"][0], coarse["masks_queries_logits"][0], (64, 96), (64, 96), stride=8
    )
    assert torch.equal(label_map, expected) and (label_map == 2).any()


@pytest.mark.parametrize("shape", [(10, 40000), (40000, 10), (1, 5000)])
def test_an_extreme_aspect_ratio_keeps_one_pixel_on_its_short_side(shape):
    """detectron2's rule rounds the short side of a 40000 x 10 image to 0 pixels; it keeps 1 (the model pads it)."""
    processor = ITAImageProcessor()  # 800 / 1333
    height, width = shape
    assert min(processor.resized_size(height, width, processor.size)) == 1
    image = np.zeros((height, width, 3), dtype=np.uint8)
    outputs = processor(image, return_tensors="pt")
    resized = outputs["image_sizes"][0].tolist()
    assert min(resized) == 1 and max(resized) == 1333
    assert tuple(outputs["pixel_values"].shape[-2:]) == processor.padded_frame(height, width)


def test_clip_view_of_a_long_strip_resamples_only_its_crop():
    """A 1333 x 3 strip's CLIP view equals the full resize and crop of the original (PIL), up to one 8-bit level,
    without the 142,000-pixel-long intermediate."""
    import image_processing_ita

    image = torch.randint(0, 256, (3, 3, 1333), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    view = image_processing_ita.clip_view(image, 320)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    new_width = int(320 * 1333 / 3)
    full = np.array(pil.resize((new_width, 320), Image.Resampling.BICUBIC))
    left = int(round((new_width - 320) / 2.0))
    expected = torch.from_numpy(full[:, left : left + 320]).permute(2, 0, 1).float() / 255
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    got = view * std + mean
    assert view.shape == (3, 320, 320)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-5


def test_images_padded_beyond_their_own_frame_warn_once(caplog):
    """Images of different padded frames in one call: the model's results differ from their single runs, which
    is said once per process (the pipeline and the commands batch by frame and never see it)."""
    from transformers.utils import logging as transformers_logging

    import image_processing_ita

    transformers_logging.warning_once.cache_clear()
    processor = ITAImageProcessor(size=SMALL_SIZE)
    wide, tall = np.zeros((64, 96, 3), np.uint8), np.zeros((96, 64, 3), np.uint8)

    def warnings_of(*args, **kwargs):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="image_processing_ita"):
            processor(*args, **kwargs)
        return [record.getMessage() for record in caplog.records]

    assert warnings_of([wide, wide.copy()]) == []  # one frame: as alone
    labels = [np.zeros((64, 96), np.uint8), np.zeros((96, 64), np.uint8)]
    assert warnings_of([wide, tall], segmentation_maps=labels) == []  # training/evaluation targets: on purpose
    said = warnings_of([wide, tall])
    assert said == [image_processing_ita.MIXED_FRAMES_WARNING]
    assert "call the processor and the model per image" in said[0] and "pipeline" in said[0]
    assert warnings_of([tall, wide]) == []  # once
