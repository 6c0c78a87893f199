"""Data loading, large-scale jitter, targets and batching (modeling_ita/data.py, modeling_ita/synthetic.py)."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from image_processing_ita import ITA_PIXEL_MEAN, ITA_PIXEL_STD, ITAImageProcessor, resize_nearest
from ita_segmentation.segmentation_data import load_segmentation_dataset, resolve_class_names
from ita_segmentation.synthetic import (
    SYNTHETIC_CLASS_NAMES,
    make_synthetic_dataset,
    write_coco_panoptic,
    write_imagefolder,
    write_label_map_folders,
)
from ita_segmentation.training.data import (
    IGNORE_LABEL,
    ITASegmentationCollator,
    ITASegmentationDataset,
    LargeScaleJitter,
    label_map_from_targets,
)

PALETTE = np.array([(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 255)], np.uint8)


@pytest.fixture(scope="module")
def scenes():
    return make_synthetic_dataset(6, image_size=48, seed=3, max_aspect=1.4, with_instances=True)


def processor(size=64):
    return ITAImageProcessor(size={"shortest_edge": size, "longest_edge": 2 * size})


def colour_coded_dataset(num_images=4, seed=0):
    """Images whose colour is a function of the label: blocks of 16x16 pixels, one class per block."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(num_images):
        height, width = 48 + 16 * index, 96
        blocks = rng.integers(0, len(PALETTE), size=(height // 16, width // 16))
        label_map = np.kron(blocks, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
        images.append(Image.fromarray(PALETTE[label_map]))
        labels.append(Image.fromarray(label_map))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def unnormalise(pixel_values):
    mean = torch.tensor(ITA_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(ITA_PIXEL_STD).view(3, 1, 1)
    return pixel_values * std + mean


# ------------------------------------------------------------------------------------------------ jitter


class ScriptedRandom:
    """A stand-in for numpy's Generator that returns chosen draws, to check the jitter's arithmetic."""

    def __init__(self, flip_draw, scale, crop_fraction):
        self.flip_draw, self.scale, self.crop_fraction = flip_draw, scale, crop_fraction

    def random(self):
        return self.flip_draw

    def uniform(self, low, high):
        value = self.scale if (low, high) != (0.0, 1.0) else self.crop_fraction
        assert low <= value <= high
        return value


def test_jitter_follows_resize_scale_and_fixed_size_crop():
    jitter = LargeScaleJitter(crop_size=64, min_scale=0.1, max_scale=2.0)
    target = torch.arange(40 * 80).view(40, 80)
    image = torch.stack([target % 256, target // 256 % 256, torch.zeros_like(target)]).to(torch.uint8)
    # flip (0.3 < 0.5); scale 1.5: the 96-pixel box fits 40x80 -> 48x96; crop 64 wide at round(32 * 0.5) = 16.
    out_image, out_target = jitter(image, target, ScriptedRandom(0.3, 1.5, 0.5))
    expected = resize_nearest(target.flip(-1), (48, 96))[:, 16:80]
    assert out_image.shape == (3, 48, 64) and out_image.dtype == torch.uint8
    assert torch.equal(out_target, expected)
    # no flip (0.7); scale 0.5: box 32 -> 16x32, smaller than the crop: nothing is cut.
    out_image, out_target = jitter(image, target, ScriptedRandom(0.7, 0.5, 0.9))
    assert out_image.shape == (3, 16, 32)
    assert torch.equal(out_target, resize_nearest(target, (16, 32)))


def test_jitter_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_scale"):
        LargeScaleJitter(crop_size=64, min_scale=2.0, max_scale=1.0)
    with pytest.raises(ValueError, match="crop_size"):
        LargeScaleJitter(crop_size=0)
    with pytest.raises(ValueError, match="crop_size 100 must be a multiple of .* size_divisor \\(32\\)"):
        ITASegmentationDataset(colour_coded_dataset(1), processor(), ["a"], jitter=LargeScaleJitter(crop_size=100))


def test_jittered_examples_have_crop_size_and_targets_aligned_with_the_image():
    rows = colour_coded_dataset()
    crop = 64
    dataset = ITASegmentationDataset(
        rows, processor(), [f"class {i}" for i in range(len(PALETTE))], jitter=LargeScaleJitter(crop, 0.5, 2.0), seed=1
    )
    flips_seen = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            height, width = item["image_sizes"].tolist()
            assert item["pixel_values"].shape == (3, crop, crop)
            assert 1 <= height <= crop and 1 <= width <= crop
            assert torch.equal(item["pixel_mask"][:height, :width], torch.ones(height, width, dtype=torch.long))
            assert item["pixel_mask"].sum() == height * width
            masks, classes = item["mask_labels"], item["class_labels"]
            assert masks.dtype == torch.bool and masks.shape == (len(classes), crop, crop)
            assert not masks[:, height:].any() and not masks[:, :, width:].any()
            assert masks.sum(0).max() <= 1  # one class per pixel
            # Wherever a pixel's 5x5 neighbourhood has one label, the image has that label's colour.
            label_map = label_map_from_targets(masks, classes, (height, width))
            padded = torch.nn.functional.pad(label_map[None, None].float(), (2, 2, 2, 2), value=-1.0)
            low = -torch.nn.functional.max_pool2d(-padded, 5, stride=1)[0, 0]
            high = torch.nn.functional.max_pool2d(padded, 5, stride=1)[0, 0]
            uniform = (low == high) & (label_map >= 0)
            assert uniform.sum() > 0.1 * height * width
            colours = unnormalise(item["pixel_values"])[:, :height, :width].permute(1, 2, 0)
            expected = torch.from_numpy(PALETTE.astype(np.float32))[label_map.clamp(min=0)]
            assert (colours - expected)[uniform].abs().max() < 3.0
            # Uncropped examples (scale <= 1 here) equal the source resized, mirrored or not.
            if height < crop and width < crop:
                source = torch.from_numpy(np.asarray(rows[index]["label"]).astype(np.int64))
                plain = torch.equal(label_map, resize_nearest(source, (height, width)))
                mirrored = torch.equal(label_map, resize_nearest(source.flip(-1), (height, width)))
                assert plain or mirrored
                flips_seen.add(mirrored and not plain)
    assert flips_seen == {True, False}


def test_same_seed_epoch_and_index_give_the_same_example_and_epochs_differ():
    rows = colour_coded_dataset(2)
    names = [f"class {i}" for i in range(len(PALETTE))]
    first = ITASegmentationDataset(rows, processor(), names, jitter=LargeScaleJitter(64, 0.3, 2.0), seed=5)
    second = ITASegmentationDataset(rows, processor(), names, jitter=LargeScaleJitter(64, 0.3, 2.0), seed=5)
    a, b = first[1], second[1]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["mask_labels"], b["mask_labels"])
    sizes = {tuple(first[1]["image_sizes"].tolist())}
    for epoch in range(1, 6):
        first.set_epoch(epoch)
        sizes.add(tuple(first[1]["image_sizes"].tolist()))
    assert len(sizes) > 1


# ------------------------------------------------------------------------------------------------ targets


def test_evaluation_examples_are_resized_by_the_processor_and_keep_every_label(scenes):
    dataset = ITASegmentationDataset(scenes, processor(64), list(SYNTHETIC_CLASS_NAMES), name="evaluation")
    item = dataset[0]
    source = np.asarray(scenes[0]["label"])
    height, width = item["image_sizes"].tolist()
    assert min(height, width) == 64 and item["pixel_values"].shape[-2] % 32 == 0
    label_map = label_map_from_targets(item["mask_labels"], item["class_labels"], (height, width))
    expected = resize_nearest(torch.from_numpy(source.astype(np.int64)), (height, width))
    assert torch.equal(label_map, expected)
    assert item["class_labels"].tolist() == scenes[0]["classes"]


def test_reduce_labels_and_ignore_index():
    label_map = np.array([[0, 1, 2], [255, 2, 0]], dtype=np.uint8)
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    rows = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image)], "label": [Image.fromarray(label_map)]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
    )
    proc = ITAImageProcessor(size={"shortest_edge": 2, "longest_edge": 3})
    item = ITASegmentationDataset(rows, proc, ["a", "b"], reduce_labels=True, name="evaluation")[0]
    assert item["class_labels"].tolist() == [0, 1]
    reference = label_map_from_targets(item["mask_labels"], item["class_labels"], (2, 3))
    assert reference.tolist() == [[IGNORE_LABEL, 0, 1], [IGNORE_LABEL, 1, IGNORE_LABEL]]


def test_collator_pads_images_and_keeps_targets_per_image(scenes):
    dataset = ITASegmentationDataset(scenes, processor(48), list(SYNTHETIC_CLASS_NAMES), name="evaluation")
    items = [dataset[i] for i in range(3)]
    batch = ITASegmentationCollator()(items)
    height = max(item["pixel_values"].shape[-2] for item in items)
    width = max(item["pixel_values"].shape[-1] for item in items)
    assert batch["pixel_values"].shape == (3, 3, height, width)
    assert batch["pixel_mask"].shape == (3, height, width)
    assert batch["image_sizes"].tolist() == [item["image_sizes"].tolist() for item in items]
    assert isinstance(batch["mask_labels"], list) and isinstance(batch["class_labels"], list)
    for item, masks, classes in zip(items, batch["mask_labels"], batch["class_labels"]):
        h, w = item["mask_labels"].shape[-2:]
        assert masks.shape == (len(classes), height, width)
        assert torch.equal(masks[:, :h, :w], item["mask_labels"]) and not masks[:, h:].any()
        assert torch.equal(classes, item["class_labels"])
    assert batch["class_names"] == list(SYNTHETIC_CLASS_NAMES)
    assert "dominant_category_ids" not in batch
    mixed = dict(items[1], class_names=["x", "y"])
    with pytest.raises(ValueError, match="vocabulary"):
        ITASegmentationCollator()([items[0], mixed])


# ------------------------------------------------------------------------------------------------ loaders


def _assert_rows_match(dataset, image_column, label_column, reference):
    assert len(dataset) == len(reference)
    for row, expected in zip(dataset, reference):
        assert np.array_equal(np.asarray(row[image_column].convert("RGB")), np.asarray(expected["image"]))
        assert np.array_equal(np.asarray(row[label_column]), np.asarray(expected["label"]))


def test_parquet_and_arrow_files_and_saved_datasets_load_with_their_class_names(tmp_path, scenes):
    rows = scenes.remove_columns("instances")
    rows.to_parquet(tmp_path / "scenes.parquet")
    rows.save_to_disk(tmp_path / "saved")
    arrow_file = next((tmp_path / "saved").glob("*.arrow"))
    for source in (tmp_path / "scenes.parquet", tmp_path / "saved", arrow_file):
        dataset = load_segmentation_dataset(str(source), split="train")
        _assert_rows_match(dataset, "image", "label", rows)
        assert resolve_class_names(dataset) == list(SYNTHETIC_CLASS_NAMES)
    assert len(load_segmentation_dataset(str(tmp_path / "saved"), max_samples=2)) == 2


def test_imagefolder_with_label_maps_and_a_vocabulary_file(tmp_path, scenes):
    write_imagefolder(scenes, tmp_path / "folder", split="train")
    dataset = load_segmentation_dataset(str(tmp_path / "folder"), split="train")
    assert {"image", "annotation"} <= set(dataset.column_names)
    by_name = {row["file_name"]: row for row in scenes}
    order = sorted(by_name)
    _assert_rows_match(dataset, "image", "annotation", [by_name[name] for name in order])
    vocabulary = tmp_path / "classes.txt"
    vocabulary.write_text("".join(f"{i}:{name}\n" for i, name in enumerate(SYNTHETIC_CLASS_NAMES)))
    names = resolve_class_names(dataset, vocabulary_file=str(vocabulary))
    assert names == list(SYNTHETIC_CLASS_NAMES)
    item = ITASegmentationDataset(dataset, processor(48), names, label_column="annotation", name="evaluation")[0]
    assert item["class_labels"].tolist() == by_name[order[0]]["classes"]
    with pytest.raises(ValueError, match="ClassLabel"):
        resolve_class_names(dataset)


def test_label_map_folders(tmp_path, scenes):
    write_label_map_folders(scenes, tmp_path, split="training")
    dataset = load_segmentation_dataset(str(tmp_path), split="training", layout="label_folders")
    _assert_rows_match(dataset, "image", "label", sorted(scenes, key=lambda row: row["file_name"]))
    with pytest.raises(FileNotFoundError, match="validation"):
        load_segmentation_dataset(str(tmp_path), split="validation", layout="label_folders")


def test_coco_panoptic_maps_category_ids_to_contiguous_classes_and_drops_crowd(tmp_path, scenes):
    crowd = 4  # "gray background" regions become crowd segments
    write_coco_panoptic(scenes, tmp_path, split="train2017", crowd_class=crowd)
    dataset = load_segmentation_dataset(
        str(tmp_path), split="train", layout="coco_panoptic", class_names=list(SYNTHETIC_CLASS_NAMES)
    )
    assert resolve_class_names(dataset) == list(SYNTHETIC_CLASS_NAMES)
    rows = ITASegmentationDataset(
        dataset, processor(48), list(SYNTHETIC_CLASS_NAMES), segments_column="segments_info", name="evaluation"
    )
    for index, scene in enumerate(scenes):
        item = rows[index]
        instances = np.asarray(scene["instances"])
        source = np.asarray(scene["label"]).astype(np.int64)
        # One target per non-crowd region (shapes are separate instances), of the region's class.
        regions = [r for r in np.unique(instances) if np.bincount(source[instances == r]).argmax() != crowd]
        assert len(item["class_labels"]) == len(regions)
        assert crowd not in item["class_labels"].tolist()
        height, width = item["image_sizes"].tolist()
        reference = label_map_from_targets(item["mask_labels"], item["class_labels"], (height, width))
        expected = resize_nearest(torch.from_numpy(np.where(source == crowd, IGNORE_LABEL, source)), (height, width))
        assert torch.equal(reference, expected)


def test_coco_panoptic_errors_name_the_problem(tmp_path, scenes):
    json_path = write_coco_panoptic(scenes, tmp_path, split="train2017")
    with pytest.raises(ValueError, match="5 categories but the vocabulary has 133"):
        load_segmentation_dataset(str(tmp_path), split="train2017", layout="coco_panoptic")
    info = json.loads(open(json_path).read())
    info["annotations"][0]["segments_info"][0]["category_id"] = 77
    open(json_path, "w").write(json.dumps(info))
    with pytest.raises(ValueError, match="category_id 77"):
        load_segmentation_dataset(str(tmp_path), "train2017", "coco_panoptic", class_names=list(SYNTHETIC_CLASS_NAMES))
    (tmp_path / "train2017" / info["images"][1]["file_name"]).unlink()
    info["annotations"][0]["segments_info"][0]["category_id"] = 1
    open(json_path, "w").write(json.dumps(info))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_segmentation_dataset(str(tmp_path), "train2017", "coco_panoptic", class_names=list(SYNTHETIC_CLASS_NAMES))


# ------------------------------------------------------------------------------------------------ bad data


def _rows(label_maps, image_sizes=None, **extra):
    image_sizes = image_sizes or [label.shape for label in label_maps]
    columns = {
        "image": [Image.fromarray(np.zeros((*size, 3), np.uint8)) for size in image_sizes],
        "label": [Image.fromarray(label.astype(np.uint8)) for label in label_maps],
    }
    features = {"image": datasets.Image(), "label": datasets.Image()}
    for name, values in extra.items():
        columns[name] = values
        features[name] = datasets.List(datasets.Value("string"))
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def test_missing_column_is_named():
    rows = _rows([np.zeros((8, 8))])
    with pytest.raises(KeyError, match="'mask'.*'image', 'label'"):
        ITASegmentationDataset(rows, processor(), ["a"], label_column="mask")


def test_label_map_of_the_wrong_size_is_reported_with_both_sizes():
    rows = _rows([np.zeros((8, 8)), np.zeros((8, 10))], image_sizes=[(8, 8), (8, 12)])
    dataset = ITASegmentationDataset(rows, processor(), ["a"], jitter=LargeScaleJitter(32))
    dataset[0]
    message = r"Row 1 of the training dataset: the label map 'label' has size \(8, 10\).*\(8, 12\)"
    with pytest.raises(ValueError, match=message):
        dataset[1]


def test_class_id_outside_the_vocabulary_is_reported():
    label_map = np.zeros((8, 8))
    label_map[:4] = 7
    dataset = ITASegmentationDataset(_rows([label_map]), processor(), ["a", "b"], jitter=LargeScaleJitter(32, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"Row 0.*class ids \[7\] outside the vocabulary of 2 classes"):
        dataset[0]


def test_rgb_label_map_without_segments_column_is_rejected():
    rows = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (8, 8))], "label": [Image.new("RGB", (8, 8))]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Image()}),
    )
    with pytest.raises(ValueError, match="RGB image.*segments column"):
        ITASegmentationDataset(rows, processor(), ["a"], name="evaluation")[0]


def test_dominant_category_column_becomes_candidate_indices():
    names = ["cat,kitty", "dog"]
    candidates = ["cat", "kitty", "dog", "other"]
    rows = _rows([np.zeros((8, 8))] * 3, dominant_categories=[["dog", "kitty", "other"], ["cat"], ["wolf"]])
    dataset = ITASegmentationDataset(
        rows,
        processor(),
        names,
        dominant_categories_column="dominant_categories",
        candidate_names=candidates,
        num_dominant_categories=2,
        name="evaluation",
    )
    assert dataset[0]["dominant_category_ids"].tolist() == [2, 1]  # cut to k = 2
    assert dataset[1]["dominant_category_ids"].tolist() == [0, 0]  # repeated to fill k
    with pytest.raises(ValueError, match="'wolf'.*not a candidate"):
        dataset[2]
    batch = ITASegmentationCollator()([dataset[0], dataset[1]])
    assert batch["dominant_category_ids"].tolist() == [[2, 1], [0, 0]]


def test_label_map_folders_are_found_without_naming_the_layout(tmp_path, scenes):
    # Read as an imagefolder, the label maps would become training images (twice the rows, no label column).
    write_label_map_folders(scenes, tmp_path, split="training")
    dataset = load_segmentation_dataset(str(tmp_path), split="training")
    assert dataset.column_names == ["image", "label", "file_name"] and len(dataset) == len(scenes)
    _assert_rows_match(dataset, "image", "label", sorted(scenes, key=lambda row: row["file_name"]))


def test_files_without_their_pair_are_all_named(tmp_path, scenes):
    images, labels = write_label_map_folders(scenes, tmp_path, split="training")
    names = sorted(path.name for path in labels.iterdir())
    (labels / names[0]).unlink()  # an image without a label map
    (images / names[1]).unlink()  # a label map without an image
    with pytest.raises(FileNotFoundError) as error:
        load_segmentation_dataset(str(tmp_path), split="training")
    message = str(error.value)
    assert f"{images / names[0]}: its label map {labels / names[0]} is missing" in message
    assert f"{labels / names[1]}: its image {images / names[1][:-4]}.* (" in message
    unpaired = []
    dataset = load_segmentation_dataset(str(tmp_path), split="training", unpaired=unpaired)
    assert len(dataset) == len(scenes) - 2 and sorted(path.name for path, _ in unpaired) == names[:2]
