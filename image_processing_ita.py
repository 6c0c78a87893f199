"""Image processor of ITA and FC-CLIP.

Preprocessing reproduces the test-time input of the original (detectron2) code: shortest side resized to
800 with the longest side capped at 1333 (`ResizeShortestEdge`), bilinear, pixel values on the 0..255
scale normalised with OpenAI CLIP's mean/std expressed on that scale, zero padding at the bottom/right to a
multiple of 32. `image_sizes` records each image's size inside the padded batch; the model and
`post_process_semantic_segmentation` use it to ignore the padding.

Segmentation maps become Mask2Former-style targets: per image, one binary mask per class present
(`mask_labels`) and the class ids (`class_labels`).
"""

import math
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as tvF
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    load_image,
    pil_torch_interpolation_mapping,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from postprocessing_ita import (
    binary_mask_to_coco_rle,
    instance_segments,
    panoptic_segments,
    query_mask_logits,
    semantic_map,
    semantic_scores,
)

__all__ = [
    "ITAImageProcessor",
    "ITAImageProcessorKwargs",
    "ITA_PIXEL_MEAN",
    "ITA_PIXEL_STD",
    "clip_view",
    "open_image",
    "padded_size",
    "resize_nearest",
    "semantic_targets",
]

# FC-CLIP's MODEL.PIXEL_MEAN / PIXEL_STD: OpenAI CLIP's normalisation constants times 255, applied to 0..255 RGB.
ITA_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
ITA_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)

# open_clip's eval transform normalises its 0..1 views with OpenAI CLIP's constants (the ones above / 255).
CLIP_VIEW_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_VIEW_STD = (0.26862954, 0.26130258, 0.27577711)

_SIXTEEN_BIT_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def open_image(image, where="image"):
    """A path or PIL image -> a fully decoded PIL image, turned upright by its EXIF orientation (as detectron2's
    `read_image`). Raises `ValueError` naming what is wrong: empty, truncated or not an image, zero size."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            return load_image(path)  # a URL
        if os.path.getsize(path) == 0:
            raise ValueError(f"{where} {path}: empty file (0 bytes)")
        try:
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated file fails here, not halfway through the model
                image = ImageOps.exif_transpose(opened)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise ValueError(f"{where} {path}: cannot read image: {error}") from error
    elif isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where} has zero size ({image.width}x{image.height} pixels)")
    return image


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `divisor`: the frame an image is padded to."""
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def resize_nearest(label_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer map `[..., H, W]` sampling pixel centres (PIL's NEAREST, torch's
    `nearest-exact`), exact for any ids."""
    height, width = label_map.shape[-2:]
    new_height, new_width = size
    if (height, width) == (new_height, new_width):
        return label_map
    rows = ((torch.arange(new_height, dtype=torch.float64) + 0.5) * (height / new_height)).long().clamp_(max=height - 1)
    cols = ((torch.arange(new_width, dtype=torch.float64) + 0.5) * (width / new_width)).long().clamp_(max=width - 1)
    return label_map[..., rows[:, None], cols[None, :]]


def semantic_targets(
    label_map: torch.Tensor,
    padded: tuple[int, int],
    num_labels: int | None,
    ignore_index: int = 255,
    reduce_labels: bool = False,
    where: str = "label map",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask per class present in a label map `[h, w]`: `(masks [N, *padded] bool, classes [N] long)`.

    Masks are zero beyond `h, w`. With `reduce_labels`, 0 ("other"/background) becomes `ignore_index` and the
    other ids move down by one. Ids outside `[0, num_labels)` other than `ignore_index` raise a `ValueError`.
    """
    if reduce_labels:
        ignored = (label_map == 0) | (label_map == ignore_index)
        label_map = torch.where(ignored, torch.full_like(label_map, ignore_index), label_map - 1)
    classes = torch.unique(label_map)
    classes = classes[classes != ignore_index]
    if num_labels is not None:
        unknown = classes[(classes < 0) | (classes >= num_labels)]
        if unknown.numel():
            raise ValueError(
                f"{where} has class ids {unknown.tolist()} outside the vocabulary of {num_labels} classes "
                f"(ids 0..{num_labels - 1}, ignore index {ignore_index}"
                + (", after reduce_labels)" if reduce_labels else ")")
            )
    height, width = label_map.shape
    masks = torch.zeros((len(classes), *padded), dtype=torch.bool)
    masks[:, :height, :width] = label_map[None] == classes[:, None, None]
    return masks, classes


def clip_view(image: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's eval view `[3, size, size]` of one `[3, H, W]` image on the 0..255 scale, made with PIL on its
    8-bit values as the original ITA makes it: shortest side resized to `size` (bicubic; the long side by
    torchvision's `Resize(int)` rule), centre crop, then `x / 255` normalised with OpenAI CLIP's constants.

    PIL resamples in two fixed-point passes with 8-bit rounding in between, which a tensor resize does not
    reproduce; non-8-bit input is rounded to 8 bits first, as the original reads images.
    """
    if image.dtype != torch.uint8:
        image = image.float().round().clamp(0, 255).to(torch.uint8)
    pil_image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    width, height = pil_image.size
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new_width, new_height = (new_long, size) if height <= width else (size, new_long)
    pil_image = pil_image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    pil_image = pil_image.crop((left, top, left + size, top + size))
    view = torch.from_numpy(np.array(pil_image)).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(CLIP_VIEW_MEAN, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(CLIP_VIEW_STD, dtype=torch.float32).view(-1, 1, 1)
    return (view - mean) / std


class ITAImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to 32):
        Images are padded (bottom/right, with zeros) so that the padded height and width are multiples of it.
    ignore_index (`int`, *optional*):
        Label of pixels that carry no class in segmentation maps (and of the padding). By default 65535 for
        16-bit maps (`uint16` arrays, PIL `I;16`) and 255 for all others.
    do_reduce_labels (`bool`, *optional*, defaults to `False`):
        Map label 0 to `ignore_index` and shift the other labels down by one (ADE20K, Pascal Context-59 and
        VOC-20 encode "other"/background as 0).
    num_labels (`int`, *optional*):
        Number of classes; segmentation-map labels (after reduction) outside `[0, num_labels)` that are not
        the ignore index raise a `ValueError`. [`ITAProcessor`] sets it to the vocabulary's length.
    dominant_category_image_size (`int`, *optional*, defaults to 320):
        Side of the view CLIP ranks the vocabulary on in ITA's dominant-category unearthing, returned as
        `dominant_category_pixel_values`; `None` for FC-CLIP, which has no such step.
    """

    size_divisor: int
    ignore_index: int | None
    do_reduce_labels: bool
    num_labels: int | None
    dominant_category_image_size: int | None


class ITAImageProcessor(TorchvisionBackend):
    r"""
    Image processor of [`ITAForOpenVocabSegmentation`] (ITA and FC-CLIP).

    Accepts PIL images, NumPy arrays and torch tensors, channels last or first (pass `input_data_format`
    when a shape is ambiguous), one image or a list:

    - 8-bit images (`uint8`, PIL `RGB`/`L`/`P`/`RGBA`/...) are used as they are; 16-bit ones (`uint16`, PIL
      `I;16`, PIL `I` with values up to 65535) are scaled to 0..255 (x * 255 / 65535); floating-point ones
      must lie in [0, 1] and are scaled by 255.
    - Grayscale is replicated to three channels. An alpha channel is dropped, not composited: this is what
      the original pipeline does (detectron2 reads images with PIL's `convert("RGB")`).
    - PIL images are turned upright following their EXIF orientation first, as detectron2's `read_image` does.

    Resizing follows detectron2's `ResizeShortestEdge` (scale = shortest_edge / short side, lowered to
    longest_edge / long side if the long side would exceed it; each side rounded half up), with torchvision's
    antialiased bilinear resize. On `uint8` input it differs from PIL's bilinear resize of the original by at
    most 2 grey levels.

    Returns `pixel_values` `[B, 3, H, W]` float32, `pixel_mask` `[B, H, W]` long (1 on real pixels) and
    `image_sizes` `[B, 2]` long (each image's resized size, before padding); with `segmentation_maps`, also
    `mask_labels` (list of float `[N_i, H, W]`) and `class_labels` (list of long `[N_i]`).

    With `dominant_category_image_size` (ITA), also `dominant_category_pixel_values` `[B, 3, S, S]`: the view
    of each resized image that CLIP ranks the vocabulary on, made as the original ITA makes it: open_clip's
    eval transform on the 8-bit image with PIL (shortest side to S, bicubic; centre crop S x S; OpenAI CLIP
    normalisation). The original applies open_clip's *training* transform there (a random crop of 90-100% of
    the image), so its ranking changes from call to call; this deterministic view is its eval counterpart.
    """

    valid_kwargs = ITAImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask", "image_sizes"]

    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 800, "longest_edge": 1333}
    default_to_square = False
    do_resize = True
    # Pixel values stay on the 0..255 scale of the original normalisation constants; set `do_rescale=True`,
    # `rescale_factor=1/255` and 0..1 constants for the same result in the usual transformers convention.
    do_rescale = False
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = ITA_PIXEL_MEAN
    image_std = ITA_PIXEL_STD
    do_pad = True
    size_divisor = 32
    ignore_index = None
    do_reduce_labels = False
    num_labels = None
    dominant_category_image_size = 320

    # Post-processing works in bands of rows whose intermediates (the masks on the band's rows, the class scores)
    # hold at most about this many float32 values, whatever the batch, image or vocabulary size: blocks that stay
    # in the CPU's caches (the block size is measured in benchmarks/README.md).
    post_process_chunk_elements = 2**22
    # Stride of the mask logits' grid over the padded input: the pixel decoder's mask features are at stride 4.
    # The model's outputs do not carry the padded input size (a batch may be padded beyond its images' frames,
    # e.g. to a fixed crop size), so the stride cannot be read from them reliably.
    mask_stride = 4

    def __init__(self, **kwargs: Unpack[ITAImageProcessorKwargs]):
        super().__init__(**kwargs)

    @classmethod
    def for_model_config(cls, config, **kwargs) -> "ITAImageProcessor":
        """The processor that fits a model of `config` (an `ITAConfig`): its dominant-category view size, or none
        for FC-CLIP; `kwargs` set the other options."""
        size = config.dominant_category_image_size if config.num_dominant_categories else None
        return cls(**{"dominant_category_image_size": size, **kwargs})

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[ITAImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images (`ImageInput`):
            One image or a list of images (PIL, NumPy or torch; see the class docstring), or paths/URLs.
        segmentation_maps (`ImageInput`, *optional*):
            One label map per image, each `(H, W)` with integer class ids at the image's own size (PIL `L`, `P`,
            `I;16` or `I`, or an integer array/tensor; a 3-D array is a batch `(B, H, W)`). They are resized
            with nearest-neighbour sampling to the images' resized sizes and padded with `ignore_index`.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _validate_preprocess_kwargs(
        self, size=None, size_divisor=None, ignore_index=None, num_labels=None, dominant_category_image_size=None, **kwargs
    ):
        super()._validate_preprocess_kwargs(size=size, **kwargs)
        if dominant_category_image_size is not None and (
            not isinstance(dominant_category_image_size, int) or dominant_category_image_size < 1
        ):
            raise ValueError(
                f"dominant_category_image_size must be a positive integer or None, got {dominant_category_image_size!r}"
            )
        if size is not None and not (size.shortest_edge or (size.height and size.width)):
            raise ValueError(
                f"size must be {{'shortest_edge': int, 'longest_edge': int}}, {{'shortest_edge': int}} or "
                f"{{'height': int, 'width': int}}, got {dict(size)}"
            )
        if not isinstance(size_divisor, int) or size_divisor < 1:
            raise ValueError(f"size_divisor must be a positive integer, got {size_divisor!r}")
        if ignore_index is not None and ignore_index < 0:
            raise ValueError(f"ignore_index must be >= 0, got {ignore_index}")
        if num_labels is not None and num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")

    # ------------------------------------------------------------------------------------------------
    # Input conversion
    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def _flatten_inputs(inputs, map_like, top_level=True):
        """One input or a (nested) list of inputs -> flat list. At the top level a 4-D array is a batch of
        images and a 3-D one a batch of segmentation maps."""
        if isinstance(inputs, (list, tuple)):
            flat = []
            for item in inputs:
                flat.extend(ITAImageProcessor._flatten_inputs(item, map_like, top_level=False))
            return flat
        batch_ndim = 3 if map_like else 4
        if top_level and isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == batch_ndim:
            return list(inputs)
        return [inputs]


    @staticmethod
    def _pil_to_array(image, index):
        """An upright PIL image (`open_image`) -> NumPy array, `uint16` for 16-bit modes, `uint8` RGB for 8-bit
        ones."""
        if image.mode in _SIXTEEN_BIT_PIL_MODES:
            return np.asarray(image).astype(np.uint16)
        if image.mode == "I":
            array = np.asarray(image)
            if array.min() < 0 or array.max() > 65535:
                raise ValueError(
                    f"Image {index} is a 32-bit integer PIL image (mode 'I') with values in "
                    f"[{array.min()}, {array.max()}]; only 16-bit values (0..65535) are supported"
                )
            return array.astype(np.uint16)
        if image.mode == "F":
            return np.asarray(image)
        # Drops alpha and expands L, P, 1, CMYK, ... to RGB, like detectron2's reader.
        return np.asarray(image.convert("RGB"))

    def process_image(
        self,
        image: ImageInput,
        input_data_format: ChannelDimension | str | None = None,
        device: torch.device | str | None = None,
        index: int = 0,
        **kwargs,
    ) -> torch.Tensor:
        """One input image -> `[3, H, W]`: `uint8` for 8-bit input, float32 on the 0..255 scale otherwise."""
        if isinstance(image, (str, os.PathLike, Image.Image)):
            # Opened here, not by transformers' load_image, which would convert 16-bit files to 8-bit RGB.
            image = open_image(image, where=f"Image {index}")
        if isinstance(image, Image.Image):
            tensor = torch.from_numpy(np.array(self._pil_to_array(image, index)))
            input_data_format, prefer_last = ChannelDimension.LAST, True
        elif isinstance(image, np.ndarray):
            if image.dtype.byteorder == ">":
                image = image.astype(image.dtype.newbyteorder("="))
            tensor, prefer_last = torch.from_numpy(np.array(image)), True
        elif isinstance(image, torch.Tensor):
            tensor, prefer_last = image.detach().cpu(), False
        else:
            raise TypeError(
                f"Image {index} is a {type(image).__name__}; expected a PIL image, a NumPy array, a torch tensor or "
                "a path/URL"
            )
        tensor = self._to_channels_first(tensor, input_data_format, prefer_last, index)
        if tensor.shape[-2] == 0 or tensor.shape[-1] == 0:
            raise ValueError(f"Image {index} has zero size (shape {tuple(tensor.shape)})")

        if tensor.dtype == torch.uint16:
            tensor = tensor.to(torch.float32) * (255.0 / 65535.0)
        elif tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
            if not torch.isfinite(tensor).all():
                raise ValueError(f"Image {index} contains NaN or infinite values")
            low, high = tensor.min().item(), tensor.max().item()
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"Image {index} is floating point with values in [{low:g}, {high:g}]; floating-point images "
                    "must lie in [0, 1] (pass uint8 for 0..255 values)"
                )
            tensor = tensor * 255.0
        elif tensor.dtype != torch.uint8:
            raise ValueError(
                f"Image {index} has unsupported dtype {tensor.dtype}; use uint8 (0..255), uint16 (0..65535) or "
                "floating point in [0, 1]"
            )

        channels = tensor.shape[0]
        if channels in (1, 2):  # grayscale, grayscale + alpha
            tensor = tensor[:1].expand(3, -1, -1)
        elif channels == 4:  # RGBA: alpha dropped
            tensor = tensor[:3]
        tensor = tensor.contiguous()
        return tensor.to(device) if device is not None else tensor

    @staticmethod
    def _to_channels_first(tensor, input_data_format, prefer_last, index):
        if tensor.ndim == 2:
            return tensor.unsqueeze(0)
        if tensor.ndim != 3:
            raise ValueError(
                f"Image {index} has shape {tuple(tensor.shape)}; expected (H, W), (H, W, C) or (C, H, W)"
            )
        if input_data_format is None:
            first, last = tensor.shape[0] in (1, 2, 3, 4), tensor.shape[-1] in (1, 2, 3, 4)
            if first and last:
                input_data_format = ChannelDimension.LAST if prefer_last else ChannelDimension.FIRST
            elif first or last:
                input_data_format = ChannelDimension.FIRST if first else ChannelDimension.LAST
            else:
                raise ValueError(
                    f"Image {index} has shape {tuple(tensor.shape)}: no channel dimension of size 1, 2, 3 or 4 "
                    "(grayscale, grayscale + alpha, RGB, RGBA) in first or last position"
                )
        input_data_format = ChannelDimension(input_data_format)
        if input_data_format == ChannelDimension.LAST:
            tensor = tensor.permute(2, 0, 1)
        if tensor.shape[0] not in (1, 2, 3, 4):
            raise ValueError(
                f"Image {index} has {tensor.shape[0]} channels (shape {tuple(tensor.shape)}); expected 1, 2, 3 or 4"
            )
        return tensor

    def _segmentation_map_to_tensor(self, segmentation_map, index):
        """One label map -> (`[H, W]` long tensor, default ignore index for its bit depth)."""
        if isinstance(segmentation_map, (str, os.PathLike, Image.Image)):
            segmentation_map = open_image(segmentation_map, where=f"Segmentation map {index}")
        if isinstance(segmentation_map, Image.Image):
            if segmentation_map.mode not in ("L", "P", "I", "1") + _SIXTEEN_BIT_PIL_MODES:
                raise ValueError(
                    f"Segmentation map {index} is a PIL image of mode {segmentation_map.mode!r}; label maps must "
                    "have one channel of class ids (modes L, P, I;16 or I)"
                )
            sixteen_bit = segmentation_map.mode in _SIXTEEN_BIT_PIL_MODES
            array = np.asarray(segmentation_map)
            if sixteen_bit:
                array = array.astype(np.uint16)
        elif isinstance(segmentation_map, (np.ndarray, torch.Tensor)):
            array = segmentation_map
            if isinstance(array, torch.Tensor):
                array = array.detach().cpu()
                sixteen_bit = array.dtype == torch.uint16
                if array.is_floating_point() or array.is_complex():
                    raise ValueError(f"Segmentation map {index} has dtype {array.dtype}; label maps hold integer ids")
                array = array.to(torch.int64).numpy()
            else:
                sixteen_bit = array.dtype == np.uint16
                if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
                    raise ValueError(f"Segmentation map {index} has dtype {array.dtype}; label maps hold integer ids")
        else:
            raise TypeError(
                f"Segmentation map {index} is a {type(segmentation_map).__name__}; expected a PIL image, a NumPy "
                "array or a torch tensor"
            )
        if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
            array = array.squeeze(0) if array.shape[0] == 1 else array.squeeze(-1)
        if array.ndim != 2:
            raise ValueError(
                f"Segmentation map {index} has shape {tuple(array.shape)}; expected (H, W) class ids (one channel)"
            )
        if array.size == 0:
            raise ValueError(f"Segmentation map {index} has zero size (shape {tuple(array.shape)})")
        if array.min() < 0:
            raise ValueError(f"Segmentation map {index} has negative labels (min {array.min()})")
        tensor = torch.from_numpy(np.ascontiguousarray(array).astype(np.int64))
        return tensor, (65535 if sixteen_bit else 255)

    # ------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def resized_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
        """Output (height, width) of detectron2's `ResizeShortestEdge` for `size` (a `SizeDict`)."""
        if size.shortest_edge:
            short_side = size.shortest_edge
            scale = short_side / min(height, width)
            if height < width:
                new_height, new_width = short_side, scale * width
            else:
                new_height, new_width = scale * height, short_side
            if size.longest_edge and max(new_height, new_width) > size.longest_edge:
                scale = size.longest_edge / max(new_height, new_width)
                new_height, new_width = new_height * scale, new_width * scale
            return int(new_height + 0.5), int(new_width + 0.5)
        return size.height, size.width

    def _preprocess_image_like_inputs(
        self,
        images,
        segmentation_maps=None,
        input_data_format=None,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        images = self._flatten_inputs(images, map_like=False)
        if not images:
            raise ValueError("No images were given")
        images = [
            self.process_image(image, input_data_format=input_data_format, device=device, index=index)
            for index, image in enumerate(images)
        ]
        maps = None
        if segmentation_maps is not None:
            maps = self._flatten_inputs(segmentation_maps, map_like=True)
            if len(maps) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(maps)} segmentation maps")
            maps = [self._segmentation_map_to_tensor(item, index) for index, item in enumerate(maps)]
            for index, ((label_map, _), image) in enumerate(zip(maps, images)):
                if tuple(label_map.shape) != tuple(image.shape[-2:]):
                    raise ValueError(
                        f"Segmentation map {index} has size {tuple(label_map.shape)} (height, width) but its image "
                        f"has size {tuple(image.shape[-2:])}"
                    )
        return self._preprocess(images, maps, **kwargs)

    def _preprocess(
        self,
        images,
        segmentation_maps=None,
        do_resize=True,
        size=None,
        resample=None,
        do_rescale=False,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=None,
        image_std=None,
        do_pad=True,
        pad_size=None,
        size_divisor=32,
        ignore_index=None,
        do_reduce_labels=False,
        num_labels=None,
        dominant_category_image_size=None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        if resample is None:
            interpolation = tvF.InterpolationMode.BILINEAR
        elif isinstance(resample, tvF.InterpolationMode):
            interpolation = resample
        else:
            interpolation = pil_torch_interpolation_mapping[PILImageResampling(resample)]

        processed, image_sizes, views = [], [], []
        for image in images:
            height, width = image.shape[-2:]
            new_size = self.resized_size(height, width, size) if do_resize else (height, width)
            if new_size != (height, width):
                image = tvF.resize(image, list(new_size), interpolation=interpolation, antialias=True)
            if dominant_category_image_size is not None:
                views.append(clip_view(image, dominant_category_image_size))
            image = image.to(torch.float32)
            if do_rescale:
                image = image * rescale_factor
            if do_normalize:
                mean = torch.tensor(image_mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)
                std = torch.tensor(image_std, dtype=torch.float32, device=image.device).view(-1, 1, 1)
                image = (image - mean) / std
            processed.append(image)
            image_sizes.append(new_size)

        max_height = max(h for h, _ in image_sizes)
        max_width = max(w for _, w in image_sizes)
        if do_pad:
            padded_height, padded_width = padded_size(max_height, max_width, size_divisor)
            if pad_size is not None:
                if pad_size.height < padded_height or pad_size.width < padded_width:
                    raise ValueError(
                        f"pad_size {pad_size.height}x{pad_size.width} is smaller than the padded batch "
                        f"{padded_height}x{padded_width}"
                    )
                padded_height, padded_width = pad_size.height, pad_size.width
        else:
            if len(set(image_sizes)) > 1:
                raise ValueError(f"With do_pad=False all resized images must share one size, got {image_sizes}")
            padded_height, padded_width = max_height, max_width

        batch = len(processed)
        device = processed[0].device
        pixel_values = torch.zeros(batch, 3, padded_height, padded_width, dtype=torch.float32, device=device)
        pixel_mask = torch.zeros(batch, padded_height, padded_width, dtype=torch.long, device=device)
        for index, (image, (height, width)) in enumerate(zip(processed, image_sizes)):
            pixel_values[index, :, :height, :width] = image
            pixel_mask[index, :height, :width] = 1

        data = {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_sizes": torch.tensor(image_sizes, dtype=torch.long, device=device),
        }
        if views:
            data["dominant_category_pixel_values"] = torch.stack(views).to(device)
        encoded = BatchFeature(data=data, tensor_type=return_tensors)

        if segmentation_maps is not None:
            mask_labels, class_labels = [], []
            for index, ((label_map, default_ignore), (height, width)) in enumerate(
                zip(segmentation_maps, image_sizes)
            ):
                masks, classes = self._segmentation_targets(
                    label_map,
                    (height, width),
                    (padded_height, padded_width),
                    default_ignore if ignore_index is None else ignore_index,
                    do_reduce_labels,
                    num_labels,
                    index,
                )
                mask_labels.append(masks.to(device))
                class_labels.append(classes.to(device))
            if return_tensors == "np":
                mask_labels = [masks.cpu().numpy() for masks in mask_labels]
                class_labels = [classes.cpu().numpy() for classes in class_labels]
            # Lists, not stacked: images have different numbers of classes.
            encoded["mask_labels"] = mask_labels
            encoded["class_labels"] = class_labels
        return encoded

    @staticmethod
    def _segmentation_targets(label_map, size, padded, ignore_index, do_reduce_labels, num_labels, index):
        masks, classes = semantic_targets(
            resize_nearest(label_map, size), padded, num_labels, ignore_index, do_reduce_labels,
            where=f"Segmentation map {index}",
        )
        return masks.to(torch.float32), classes

    # ------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------

    def _checked_outputs(self, outputs, target_sizes):
        """The class scores, mask logits, image sizes and target sizes of a post-processing call, checked: errors name
        the field that is missing or misshapen."""
        class_scores = _class_scores_field(outputs)
        mask_logits = _output_field(outputs, "masks_queries_logits")
        image_sizes = _output_field(outputs, "image_sizes")
        if class_scores is None or mask_logits is None:
            raise ValueError(
                "outputs must have `ensemble_log_probs` (or `class_queries_logits`) and `masks_queries_logits`"
            )
        if image_sizes is None:
            raise ValueError(
                "outputs must have `image_sizes` (each image's size inside the padded batch) to crop the padding"
            )
        if class_scores.ndim != 3 or class_scores.shape[-1] < 2:
            raise ValueError(
                f"the class scores have shape {tuple(class_scores.shape)}; expected [B, Q, K + 1] with K >= 1 classes "
                "and void last"
            )
        batch, num_queries = class_scores.shape[:2]
        if mask_logits.ndim != 4 or tuple(mask_logits.shape[:2]) != (batch, num_queries):
            raise ValueError(
                f"masks_queries_logits has shape {tuple(mask_logits.shape)}; expected [{batch}, {num_queries}, h, w]"
            )
        image_sizes = [tuple(int(v) for v in size) for size in torch.as_tensor(image_sizes).view(-1, 2).tolist()]
        if len(image_sizes) != batch:
            raise ValueError(f"Got {len(image_sizes)} image_sizes for a batch of {batch}")
        if target_sizes is None:
            target_sizes = image_sizes
        else:
            if isinstance(target_sizes, torch.Tensor):
                target_sizes = target_sizes.tolist()
            target_sizes = [tuple(int(v) for v in size) for size in target_sizes]
            if len(target_sizes) != batch:
                raise ValueError(f"Got {len(target_sizes)} target_sizes for a batch of {batch}")
        if self.size_divisor % self.mask_stride:
            raise ValueError(
                f"size_divisor={self.size_divisor} must be a multiple of the mask stride {self.mask_stride} to locate "
                "each image's own frame on the mask grid"
            )
        return class_scores, mask_logits, image_sizes, target_sizes

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
        *,
        return_winning_scores: bool = False,
        sem_seg_postprocess_before_inference: bool = False,
        return_scores: bool | None = None,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput] | list[dict]:
        """Semantic label maps from the model's outputs, as FC-CLIP's `semantic_inference` computes them.

        Per image: mask logits are upsampled bilinearly (align_corners=False) from the stride-4 grid to the
        padded input, passed through a sigmoid and combined with the class probabilities (softmax over the
        K + 1 columns, void dropped): `score[c] = sum_q p[q, c] * mask[q]`; the padding is cropped
        (`image_sizes`), the scores are resized bilinearly to the target size and the label is the arg-max (the
        first of tied classes).

        Each image is computed in its own padded frame (its size rounded up to `size_divisor`), the frame it has
        when run alone, as the original evaluates, and never reads the mask logits beyond it: upsampling the whole
        batch frame would let the padding's logits leak into the last rows/columns of a smaller image. Images are
        processed one at a time, in bands of rows of about `post_process_chunk_elements` values per intermediate,
        so memory does not grow with the batch, the vocabulary or the target size beyond the returned maps. In the
        default order the label map costs in proportion to the label boundaries, not to target pixels x classes
        (a photo's own size costs little more than the model's): where the four source pixels of a target pixel
        agree on their class, so does their bilinear mix (`postprocessing_ita.semantic_map`). Labels and scores
        equal the formula's up to float rounding.

        Args:
            outputs ([`ITAOpenVocabSegmentationOutput`] or mapping):
                With `ensemble_log_probs` `[B, Q, K + 1]` (inference: the geometric ensemble's log-probabilities;
                without them, e.g. after a training-mode forward, the softmax of `class_queries_logits`),
                `masks_queries_logits` `[B, Q, h, w]` on the stride-4 grid of the padded
                input, and `image_sizes` `[B, 2]` (each image's resized size before padding).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Output (height, width) per image, usually the original image sizes. Defaults to `image_sizes`.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`):
                Return [`SemanticSegmentationPostProcessorOutput`]s whose `segmentation_scores` hold every class's
                score `[K, H, W]` at the target size, as transformers' segmentation processors do. That is
                K x H x W float32 values per image, e.g. 7.2 GB for 150 classes at a 3000x4000 photo's size; the
                label map alone needs none of it.
            return_winning_scores (`bool`, *optional*, defaults to `False`):
                Return [`SemanticSegmentationPostProcessorOutput`]s with `winning_scores` `[H, W]`, the score of the
                chosen class at each pixel (and `segmentation_scores` None unless asked for): bounded memory.
            sem_seg_postprocess_before_inference (`bool`, *optional*, defaults to `False`):
                Crop and resize the mask logits to the target size before the sigmoid and the class sum,
                instead of resizing the class scores. FC-CLIP's configs do this when panoptic or instance
                inference is on too (its COCO and A-150 evaluations); its other semantic benchmarks use the
                default order. Its cost grows with target pixels x classes: the sigmoid comes after the resize.
            return_scores (`bool`, *optional*):
                Deprecated, removed in the next release: use `return_winning_scores`. Returns dicts with
                `segmentation` and `scores` (the winning score).

        Returns:
            `list[torch.LongTensor]` of `[H, W]` label maps; with `return_segmentation_scores` or
            `return_winning_scores`, a list of [`SemanticSegmentationPostProcessorOutput`] with `segmentation`
            (`[H, W]` long), `segmentation_scores` (`[K, H, W]` float32 or None) and, when asked for,
            `winning_scores` (`[H, W]` float32).
        """
        if return_scores is not None:
            warnings.warn(
                "`return_scores` is deprecated and will be removed in the next release: use "
                "`return_winning_scores=True` (the winning score) or `return_segmentation_scores=True` (every "
                "class's score), which return SemanticSegmentationPostProcessorOutput",
                FutureWarning,
                stacklevel=2,
            )
            if return_scores and (return_segmentation_scores or return_winning_scores):
                raise ValueError("`return_scores` cannot be combined with the options that replace it")
        class_logits, mask_logits, image_sizes, target_sizes = self._checked_outputs(outputs, target_sizes)
        batch = len(image_sizes)

        results = []
        for index in range(batch):
            arguments = self._semantic_inputs(
                class_logits[index], mask_logits[index], image_sizes[index], target_sizes[index], index
            )
            masks_first = sem_seg_postprocess_before_inference
            chunk = self.post_process_chunk_elements
            scores = None
            if return_segmentation_scores:
                scores = semantic_scores(*arguments, masks_first=masks_first, chunk_elements=chunk)  # [K, H, W]
                winning, labels = scores.max(dim=0)  # the first of tied classes, as argmax
            else:
                labels, winning = semantic_map(
                    *arguments, masks_first=masks_first, winning_scores=bool(return_scores or return_winning_scores),
                    chunk_elements=chunk,
                )
            if return_scores:
                results.append({"segmentation": labels, "scores": winning})
            elif return_segmentation_scores or return_winning_scores:
                data = {"segmentation": labels, "segmentation_scores": scores}
                if return_winning_scores:
                    data["winning_scores"] = winning
                results.append(SemanticSegmentationPostProcessorOutput(data=data))
            else:
                results.append(labels)
        return results

    def _semantic_inputs(self, class_logits, mask_logits, image_size, target_size, index):
        """One image's arguments of the semantic kernels: class probabilities `[Q, K]`, the mask grid of its own
        padded frame `[Q, h, w]`, its size, the frame's size and the target size."""
        height, width = image_size
        if min(height, width, *target_size) < 1:
            raise ValueError(f"Image {index}: image size {image_size} and target size {target_size} must be positive")
        frame_height, frame_width = padded_size(height, width, self.size_divisor)
        grid_height, grid_width = frame_height // self.mask_stride, frame_width // self.mask_stride
        if grid_height > mask_logits.shape[-2] or grid_width > mask_logits.shape[-1]:
            raise ValueError(
                f"Image {index} of size {image_size} needs a {grid_height}x{grid_width} mask grid (stride "
                f"{self.mask_stride} of its {frame_height}x{frame_width} padded frame) but masks_queries_logits is "
                f"{mask_logits.shape[-2]}x{mask_logits.shape[-1]}"
            )
        class_probs = class_logits.float().softmax(dim=-1)[:, :-1]  # [Q, K]
        grid = mask_logits[:, :grid_height, :grid_width]
        return class_probs, grid, image_size, (frame_height, frame_width), target_size

    # ------------------------------------------------------------------------------------------------
    # Panoptic and instance post-processing (FC-CLIP's `panoptic_inference` / `instance_inference`)
    # ------------------------------------------------------------------------------------------------

    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float = 0.8,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes=None,
    ):
        """Panoptic segmentation from the model's outputs, as FC-CLIP's `panoptic_inference` computes it.

        Per image, with the ensemble's class probabilities (softmax of `class_queries_logits`, void last) and the
        mask probabilities at the target size (upsampled to the image's own padded frame, cropped and resized
        bilinearly, as FC-CLIP's `sem_seg_postprocess`):

        1. a query is kept when its most probable class is not void and that probability exceeds `threshold`;
        2. each pixel goes to the kept query with the highest class probability x mask probability (the first
           one on ties), and stays unassigned (0) unless that query's mask probability there is at least
           `mask_threshold`;
        3. a query whose won pixels number less than `overlap_mask_area_threshold` of the pixels of its own mask
           (`>= mask_threshold`) is dropped, as is one left with no pixel;
        4. queries of a class in `label_ids_to_fuse` (stuff) merge into one segment per class; every other query
           is a segment of its own (a thing instance).

        Batched images give the same results as alone: each is read on its own padded frame only.

        Args:
            outputs ([`ITAOpenVocabSegmentationOutput`] or mapping):
                With `class_queries_logits` `[B, Q, K + 1]` (at inference, the geometric ensemble's
                log-probabilities), `masks_queries_logits` `[B, Q, h, w]` on the stride-4 grid of the padded input
                and `image_sizes` `[B, 2]`.
            threshold (`float`, *optional*, defaults to 0.8):
                FC-CLIP's `OBJECT_MASK_THRESHOLD`. (transformers' Mask2Former defaults to 0.5.)
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Mask probability from which a mask covers a pixel.
            overlap_mask_area_threshold (`float`, *optional*, defaults to 0.8):
                FC-CLIP's `OVERLAP_THRESHOLD`; a query with exactly this fraction is kept.
            label_ids_to_fuse (`set[int]`, *optional*):
                The stuff classes (vocabulary indices). By default none: every class is a thing.
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Output (height, width) per image, usually the original sizes. Defaults to `image_sizes`.

        Returns:
            `list[dict]`, one per image:
            - **segmentation** (`torch.IntTensor` `[H, W]`) -- the segment id of each pixel, 0 where no segment
              (also when nothing is found; transformers' Mask2Former returns -1 there).
            - **segments_info** (`list[dict]`) -- one entry per segment, in id order: **id** (`int`, from 1),
              **label_id** (`int`, index into the vocabulary), **was_fused** (`bool`, the class is in
              `label_ids_to_fuse`, so all its queries form this one segment) and **score** (`float`, the class
              probability of its query; for a fused segment the highest among its queries).
        """

        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if not 0.0 <= overlap_mask_area_threshold <= 1.0:
            raise ValueError(f"overlap_mask_area_threshold must lie in [0, 1], got {overlap_mask_area_threshold}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must lie in (0, 1), got {mask_threshold}")
        images = self._query_outputs(outputs, target_sizes)
        stuff_ids = self._class_id_set(label_ids_to_fuse, images[0][0].shape[-1] - 1, "label_ids_to_fuse")
        results = []
        for log_probs, mask_chunks_for, target_size in images:
            segmentation, segments_info = panoptic_segments(
                log_probs, mask_chunks_for, target_size, threshold, mask_threshold, overlap_mask_area_threshold,
                stuff_ids,
            )
            results.append({"segmentation": segmentation, "segments_info": segments_info})
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.0,
        mask_threshold: float = 0.5,
        target_sizes=None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        top_k: int = 100,
        label_ids_to_fuse: set[int] | None = None,
    ):
        """Instance segmentation from the model's outputs, as FC-CLIP's `instance_inference` computes it.

        Per image: the `top_k` highest class probabilities over all (query, class) pairs (softmax of
        `class_queries_logits`, void dropped) are the candidate instances; each takes its query's mask at the
        target size (mask probability above `mask_threshold`, the mask logits resized as in
        `post_process_panoptic_segmentation`) and scores class probability x the mean mask probability inside
        that mask. With `label_ids_to_fuse` (stuff classes), candidates of those classes are dropped after the
        top-k, as FC-CLIP does when it also runs panoptic inference. Instances overlap: one query may give
        several (one per class), and different queries' masks may cross.

        Args:
            outputs ([`ITAOpenVocabSegmentationOutput`] or mapping):
                As for `post_process_panoptic_segmentation`.
            threshold (`float`, *optional*, defaults to 0.0):
                Instances scoring below it are dropped. FC-CLIP keeps all `top_k` (for mask AP); transformers'
                Mask2Former defaults to 0.5, a better choice for looking at the result.
            mask_threshold (`float`, *optional*, defaults to 0.5):
                Mask probability above which a mask covers a pixel (0.5: FC-CLIP's `logits > 0`).
            target_sizes (`list[tuple[int, int]]` or `torch.Tensor`, *optional*):
                Output (height, width) per image. Defaults to `image_sizes`.
            return_coco_annotation (`bool`, *optional*, defaults to `False`):
                Return each instance's mask as COCO's uncompressed run-length encoding instead of a map.
            return_binary_maps (`bool`, *optional*, defaults to `False`):
                Return the instances' masks as one `[N, H, W]` boolean tensor instead of a map.
            top_k (`int`, *optional*, defaults to 100):
                FC-CLIP's `TEST.DETECTIONS_PER_IMAGE` (all pairs when there are fewer).
            label_ids_to_fuse (`set[int]`, *optional*):
                Stuff classes, which give no instances. By default none.

        Returns:
            `list[dict]`, one per image:
            - **segmentation** -- by default a `torch.LongTensor` `[H, W]` with, at each pixel, the id of the
              highest-scoring instance covering it, -1 where none (overlaps are lost: use one of the options
              below to keep them); with `return_binary_maps` a `torch.BoolTensor` `[N, H, W]` (`N` may be 0);
              with `return_coco_annotation` a list of `N` dicts `{"size": [H, W], "counts": [...]}`.
            - **segments_info** (`list[dict]`) -- one entry per instance, highest score first: **id** (`int`, its
              index: its value in the map, its row in the binary maps), **label_id** (`int`), **was_fused**
              (`False`) and **score** (`float`).
        """

        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps cannot both be True")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must lie in (0, 1), got {mask_threshold}")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        images = self._query_outputs(outputs, target_sizes)
        stuff_ids = self._class_id_set(label_ids_to_fuse, images[0][0].shape[-1] - 1, "label_ids_to_fuse")
        results = []
        for log_probs, mask_chunks_for, target_size in images:
            masks, segments_info = instance_segments(
                log_probs, mask_chunks_for, target_size, top_k, threshold, mask_threshold, stuff_ids
            )
            if return_binary_maps:
                segmentation = masks
            elif return_coco_annotation:
                segmentation = [binary_mask_to_coco_rle(mask) for mask in masks]
            else:
                segmentation = torch.full(target_size, -1, dtype=torch.long, device=masks.device)
                for index in reversed(range(len(masks))):  # the highest score is painted last, on top
                    segmentation[masks[index]] = index
            results.append({"segmentation": segmentation, "segments_info": segments_info})
        return results

    def _query_outputs(self, outputs, target_sizes):
        """Checked per-image inputs of the panoptic and instance rules: a list of `(log_probs [Q, K+1],
        mask_chunks_for, target_size)`, where `mask_chunks_for(queries)` yields the queries' mask logits at the
        target size a few at a time (`postprocessing_ita.query_mask_logits`)."""

        log_probs, mask_logits, image_sizes, target_sizes = self._checked_outputs(outputs, target_sizes)
        batch = len(image_sizes)
        images = []
        for index in range(batch):
            image_size, target_size = image_sizes[index], target_sizes[index]
            if min(*image_size, *target_size) < 1:
                raise ValueError(
                    f"Image {index}: image size {image_size} and target size {target_size} must be positive"
                )
            frame = padded_size(*image_size, self.size_divisor)
            grid = (frame[0] // self.mask_stride, frame[1] // self.mask_stride)
            if grid[0] > mask_logits.shape[-2] or grid[1] > mask_logits.shape[-1]:
                raise ValueError(
                    f"Image {index} of size {image_size} needs a {grid[0]}x{grid[1]} mask grid (stride {self.mask_stride} "
                    f"of its {frame[0]}x{frame[1]} padded frame) but masks_queries_logits is "
                    f"{mask_logits.shape[-2]}x{mask_logits.shape[-1]}"
                )

            def mask_chunks_for(queries, masks=mask_logits[index], image_size=image_size, target_size=target_size):
                return query_mask_logits(
                    masks, queries, image_size, target_size, self.size_divisor, self.mask_stride,
                    self.post_process_chunk_elements,
                )

            images.append((log_probs[index], mask_chunks_for, target_size))
        return images

    @staticmethod
    def _class_id_set(class_ids, num_classes, name):
        """`class_ids` (an iterable of vocabulary indices, or None) as a set of ints, checked."""
        if class_ids is None:
            return set()
        ids = {int(class_id) for class_id in class_ids}
        outside = sorted(class_id for class_id in ids if not 0 <= class_id < num_classes)
        if outside:
            raise ValueError(f"{name} has class ids {outside} outside the vocabulary of {num_classes} classes")
        return ids


def _class_scores_field(outputs):
    """What the class probabilities come from: the geometric ensemble's log-probabilities (inference), else the
    decoder's class logits (a training-mode forward); softmax turns either into probabilities."""
    scores = _output_field(outputs, "ensemble_log_probs")
    return _output_field(outputs, "class_queries_logits") if scores is None else scores


def _output_field(outputs, name):
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)
