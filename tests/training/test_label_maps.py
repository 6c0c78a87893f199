"""Label-map decoding shared by training and the data check (ita_segmentation/label_maps.py)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ita_segmentation.label_maps import decode_label_map, decode_panoptic_segment_ids, label_map_array


def test_every_source_of_a_label_map_decodes_to_the_same_ids(tmp_path):
    ids = np.array([[0, 1, 2], [300, 4, 65535]], dtype=np.uint16)
    path = tmp_path / "label.png"
    Image.fromarray(ids).save(path)
    buffer = io.BytesIO(path.read_bytes())
    for source in (path, str(path), buffer, Image.open(path), ids, ids[None], ids[..., None]):
        np.testing.assert_array_equal(label_map_array(source), ids)
    assert label_map_array(Image.fromarray(ids.astype(np.uint8))).dtype == np.uint8  # the stored dtype is kept
    decoded = decode_label_map(path)
    assert decoded.dtype == torch.int64 and decoded.tolist() == ids.astype(np.int64).tolist()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Image.new("RGB", (3, 2)), "row 7 is a RGB image.*segments column"),
        (Image.new("LA", (3, 2)), "row 7 is a LA image"),
        (np.zeros((2, 3, 2), dtype=np.uint8), r"row 7 has shape \(2, 3, 2\)"),
        (np.zeros((2, 3), dtype=np.float32), "row 7 has dtype float32"),
    ],
)
def test_what_is_not_a_label_map_is_named(value, message):
    with pytest.raises(ValueError, match=message):
        label_map_array(value, where="row 7")


def test_panoptic_segment_ids_from_rgb():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    rgb[1, 1] = (255, 0, 0)
    ids = decode_panoptic_segment_ids(Image.fromarray(rgb))
    assert ids.tolist() == [[1 + 256 * 2 + 256 * 256 * 3, 0], [0, 255]]
    with pytest.raises(ValueError, match="panoptic map has shape"):
        decode_panoptic_segment_ids(np.zeros((2, 2, 2), dtype=np.uint8))
