"""The `zero-shot-image-segmentation` pipeline task: segment an image into classes named at call time.

Importing `modeling_ita` registers the task with transformers' `PIPELINE_REGISTRY`, so that

```python
>>> import modeling_ita
>>> from transformers import pipeline
>>> segmenter = pipeline("zero-shot-image-segmentation", model="path/or/hub-id")
>>> result = segmenter("cat.jpg", candidate_labels=["cat", "sofa,couch", "wall"])
>>> [(segment["label"], round(segment["pixel_share"], 2)) for segment in result["segments"]]
[('sofa,couch', 0.48), ('cat', 0.31), ('wall', 0.21)]
```
"""

import inspect
import os
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils import logging

from image_processing_ita import ITAImageProcessor, is_url_or_base64, open_image
from processing_ita import ITAClassNames, ITAProcessor, parse_vocabulary

from .loading import load_segmentation_model
from .modeling import ITAForOpenVocabSegmentation

logger = logging.get_logger(__name__)

__all__ = ["DEFAULT_THRESHOLDS", "ZeroShotImageSegmentationPipeline", "ZERO_SHOT_IMAGE_SEGMENTATION_TASK", "SUBTASKS"]

ZERO_SHOT_IMAGE_SEGMENTATION_TASK = "zero-shot-image-segmentation"

SUBTASKS = ("semantic", "panoptic", "instance")

# The pipeline's default instance score threshold: transformers' Mask2Former default, which keeps a picture of the
# result readable. The processor's own default, 0, keeps FC-CLIP's 100 top-scoring candidates (for mask AP).
INSTANCE_THRESHOLD = 0.5

# The score threshold each subtask with segments applies when none is given: panoptic's is the image processor's
# (FC-CLIP's), instance's the pipeline's. Semantic segmentation gives every pixel a class: no threshold.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "panoptic": inspect.signature(ITAImageProcessor.post_process_panoptic_segmentation).parameters["threshold"].default,
    "instance": INSTANCE_THRESHOLD,
}


def _check_candidate_labels(candidate_labels: object) -> ITAClassNames:
    """The pipeline's door: `candidate_labels` parsed once (`parse_vocabulary`, shared synonyms refused), or
    returned as they are when already parsed; the messages name the argument."""
    if candidate_labels is None:
        raise ValueError(
            "candidate_labels is required: the classes to segment, one string per class with synonyms separated "
            "by commas, e.g. candidate_labels=['cat', 'sofa,couch', 'wall']"
        )
    if isinstance(candidate_labels, str):
        raise ValueError(
            f"candidate_labels must be a list of classes, got the single string {candidate_labels!r}; commas "
            "separate synonyms of one class, so write candidate_labels=['cat', 'sofa,couch'] for two classes"
        )
    if isinstance(candidate_labels, Sized) and len(candidate_labels) == 0:
        raise ValueError("candidate_labels is empty: give at least one class, e.g. ['cat', 'sofa,couch', 'wall']")
    return parse_vocabulary(candidate_labels)  # no empty class or synonym, no duplicate class, no shared synonym


def _original_size(image: Image.Image | np.ndarray | torch.Tensor) -> tuple[int, int]:
    """(height, width) of an image as the image processor will read it (upright PIL, or an array/tensor with
    the channel axis first or last, preferring last for NumPy and first for torch, as the processor does)."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(int(side) for side in image.shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        channels_last = shape[-1] in (1, 2, 3, 4)
        channels_first = shape[0] in (1, 2, 3, 4)
        if channels_last and (not channels_first or isinstance(image, np.ndarray)):
            return shape[0], shape[1]
        if channels_first:
            return shape[1], shape[2]
    raise ValueError(f"Cannot read an image of shape {shape}: expected (H, W), (H, W, C) or (C, H, W)")


# The files a processor or image processor is saved in (`ITAProcessor.save_pretrained`, `ITAImageProcessor`'s).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _model_folder(model: Any) -> Path | None:
    """The local folder a model object was loaded from: an `ITAOnnxModel`'s `folder`, or the `from_pretrained`
    folder a PyTorch model's config records; None for a model built in memory or loaded from the Hub."""
    folder = getattr(model, "folder", None)
    if folder is None:
        folder = getattr(getattr(model, "config", None), "_name_or_path", None)
    return Path(folder) if folder and os.path.isdir(folder) else None


def _saved_image_processor(model: Any) -> ITAImageProcessor | None:
    """The image processor saved in the local folder of a model object (`pipeline()` loads one only for a model
    given by name, never for a model object); None without a folder or a processor saved in it."""
    folder = _model_folder(model)
    if folder is None or not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        return None
    return ITAImageProcessor.from_pretrained(folder)


def _warn_default_image_processor(model: Any, image_processor: ITAImageProcessor) -> None:
    """Say, once per model source, that the pipeline falls back to the default preprocessing and how to give the
    right one: a silent 800/1333 resize of a model trained or evaluated at another size gives worse maps."""
    folder = _model_folder(model)
    where = f" in {folder}" if folder is not None else " (a model object without a saved processor)"
    size = {key: value for key, value in dict(image_processor.size).items() if value is not None}
    logger.warning_once(
        f"No processor or image processor is saved with the model{where}: the pipeline falls back to the default "
        f"ITAImageProcessor (size={size}, the original's test-time input). If the model was trained or evaluated "
        "with other preprocessing, give it: pipeline(..., image_processor=ITAImageProcessor(size={...})), or save "
        "the processor with the model (ITAProcessor(image_processor=...).save_pretrained(model_folder))."
    )


class ZeroShotImageSegmentationPipeline(Pipeline):
    r"""
    Open-vocabulary semantic segmentation with [`ITAForOpenVocabSegmentation`] (ITA or FC-CLIP): every pixel
    of the image gets one of the `candidate_labels`, classes named at call time.

    Loading: `pipeline("zero-shot-image-segmentation", model=...)` loads the model with `load_segmentation_model`
    (as `AutoModel` does, but a checkpoint with missing or unexpected weights is refused, naming them) and the
    image processor with `AutoImageProcessor` from the same folder or Hub repository (`processor_config.json`,
    as `ITAProcessor.save_pretrained` writes it, or `preprocessor_config.json`); given a model object, from the local
    folder it was loaded from. Pass `image_processor=` (or `processor=`) to use another; a model without one falls
    back, with a warning, to the default [`ITAImageProcessor`] (the original's test-time input: shortest side 800,
    longest at most 1333).

    Batching (`batch_size=N`): each image's result equals its result alone. Images are padded only to their
    own frame (their resized size rounded up to the processor's `size_divisor`), as when run alone: the model
    sees the padding (its convolutions, group norms and attention read it), so padding a small image up to a
    larger one's frame would change its prediction. A batch therefore runs one forward pass per distinct frame
    size and vocabulary among its images.

    Example:

    ```python
    >>> import modeling_ita
    >>> from transformers import pipeline
    >>> segmenter = pipeline("zero-shot-image-segmentation", model="path/to/ita-checkpoint")
    >>> result = segmenter("living_room.jpg", candidate_labels=["cat", "sofa,couch", "wall"])
    >>> result["segments"][0]["label"], result["label_map"].shape
    ('sofa,couch', (480, 640))
    ```
    """

    _load_processor = False  # type: ignore[assignment]
    _load_image_processor = None  # optional: ITAImageProcessor's defaults when the checkpoint has none
    _load_feature_extractor = False  # type: ignore[assignment]
    _load_tokenizer = False  # type: ignore[assignment]  # the model tokenizes its vocabulary itself (open_clip's tokenizer)

    image_processor: ITAImageProcessor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.image_processor is None:
            self.image_processor = _saved_image_processor(self.model)
        if self.image_processor is None:
            self.image_processor = ITAImageProcessor.for_model_config(self.model.config)
            _warn_default_image_processor(self.model, self.image_processor)
        self.check_model_type({"ita": ("ITAForOpenVocabSegmentation", "ITAOnnxModel")})

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Save the model's folder (weights, config and the model folder's source files, which carry this pipeline
        as `custom_pipelines`) and the processor: not transformers' copy of this module alone, whose imports are
        the package's and would not load without it."""
        if os.path.isfile(save_directory):
            raise ValueError(f"{os.fspath(save_directory)} is a file: give a folder to save the pipeline into")
        os.makedirs(save_directory, exist_ok=True)
        self.model.save_pretrained(save_directory, **kwargs)
        processor = getattr(self, "processor", None)
        if not isinstance(processor, ITAProcessor):
            processor = ITAProcessor(image_processor=self.image_processor)
        processor.save_pretrained(save_directory, **kwargs)

    def __call__(  # type: ignore[override]
        self,
        image: Any,
        candidate_labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """
        Segment one image or several.

        Args:
            image (`str`, `PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `dict`, or a list of them):
                An image: a local path or an http(s) URL, a PIL image (its EXIF orientation is applied), or an
                array/tensor as [`ITAImageProcessor`] accepts it (`uint8`, `uint16`, or float in [0, 1]; channels
                last or first). A dict `{"image": ..., "candidate_labels": [...]}` gives an image its own
                classes. A list of images returns a list of results; a generator or a dataset returns an
                iterator.
            candidate_labels (`list[str]` or `list[list[str]]`):
                The classes, one string per class, synonyms separated by commas (`["cat", "sofa,couch"]`), or an
                [`ITAClassNames`] (`parse_vocabulary`'s). With a list of images, one list for all of them or one
                list per image. Each vocabulary is parsed once, here, and passed on parsed to the processor and the
                model.
            batch_size (`int`, *optional*):
                Images per forward pass (see the class docstring: results do not depend on it).
            timeout (`float`, *optional*):
                Seconds to wait for an image URL; no limit by default.
            subtask (`str`, *optional*, defaults to `"semantic"`):
                `"semantic"` (a class per pixel), `"panoptic"` (segments: one per thing instance, one per stuff
                class) or `"instance"` (possibly overlapping instances with scores), as transformers'
                `image-segmentation` pipeline names them. Panoptic and instance results follow FC-CLIP's rules
                (see [`ITAImageProcessor.post_process_panoptic_segmentation`] and
                [`ITAImageProcessor.post_process_instance_segmentation`]).
            stuff_labels (`list[str]`, *optional*):
                Panoptic and instance: the candidate labels that are stuff (`"wall"`, `"sky"`): their queries merge
                into one segment per class, and they give no instances. By default every class is a thing.
            threshold (`float`, *optional*):
                Panoptic: the class probability a query must exceed (default 0.8). Instance: the score an instance
                must reach (default 0.5 here; 0 keeps all of FC-CLIP's 100 top-scoring candidates).
            mask_threshold (`float`, *optional*):
                Panoptic and instance: the mask probability from which a mask covers a pixel (default 0.5).
            overlap_mask_area_threshold (`float`, *optional*):
                Panoptic: the share of its mask a query must keep (default 0.8).

        Returns:
            With `subtask="panoptic"` or `"instance"`, a dict per image with **segments**, one per segment
            (panoptic, in id order) or instance (highest score first): **id**, **label**, **class_id**, **score**,
            **was_fused** (a stuff segment merging its class's queries), **pixel_share** and **mask** (as below;
            instance masks may overlap); panoptic results also have **segment_map** (`np.ndarray` `[H, W]`
            int32, each pixel's segment id, 0 where none).

            With `subtask="semantic"` (the default), a dict per image:

            - **segments** (`list[dict]`) -- one entry per class present, largest first:
                - **label** (`str`) -- the class string as given in `candidate_labels`.
                - **class_id** (`int`) -- its position in `candidate_labels` (its value in `label_map`).
                - **pixel_share** (`float`) -- the fraction of the image's pixels given this class; the shares of
                  all segments sum to 1.
                - **score** (`float`) -- the mean, over the segment's pixels, of the class's semantic score at the
                  pixel: FC-CLIP's `sum_q p_q(class) * sigmoid(mask_q(pixel))` over the queries `q` (class
                  probabilities of the ensemble times mask probabilities), the value the label map maximises. It
                  ranks confidence but is not a calibrated probability; where masks of several queries overlap
                  it can exceed 1.
                - **mask** (`PIL.Image.Image`) -- mode "L", the image's size, 255 on the segment and 0 elsewhere.
            - **label_map** (`np.ndarray`) -- `[H, W]` int64 at the original (upright) image size, each pixel's
              class id into `candidate_labels`.
        """
        if "images" in kwargs:
            image = kwargs.pop("images")
        if isinstance(image, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
            inputs = {"image": image, "candidate_labels": _check_candidate_labels(candidate_labels)}
            return super().__call__(inputs, **kwargs)  # type: ignore[no-untyped-call]
        if isinstance(image, (list, tuple)):
            if len(image) == 0:
                return []
            if not all(isinstance(item, dict) for item in image):
                per_image = self._labels_per_image(candidate_labels, len(image))
                image = [{"image": item, "candidate_labels": labels} for item, labels in zip(image, per_image)]
                return super().__call__(image, **kwargs)  # type: ignore[no-untyped-call]
            image = list(image)
        # Dicts `{"image": ..., "candidate_labels": ...}`, a generator or a dataset: labels given here are the
        # default of the images that come without their own.
        if candidate_labels is not None:
            kwargs["candidate_labels"] = _check_candidate_labels(candidate_labels)
        return super().__call__(image, **kwargs)  # type: ignore[no-untyped-call]

    @staticmethod
    def _labels_per_image(candidate_labels: Any, num_images: int) -> list[ITAClassNames]:
        """One shared vocabulary, or one per image (a list of lists) -> a parsed vocabulary per image."""
        per_image = (
            isinstance(candidate_labels, (list, tuple))
            and len(candidate_labels) > 0
            and all(isinstance(labels, (list, tuple, ITAClassNames)) for labels in candidate_labels)
        )
        if not per_image:
            return [_check_candidate_labels(candidate_labels)] * num_images
        if len(candidate_labels) != num_images:
            raise ValueError(
                f"Got {num_images} images but {len(candidate_labels)} lists of candidate_labels; give one list for "
                "all images or one per image"
            )
        return [_check_candidate_labels(labels) for labels in candidate_labels]

    def _sanitize_parameters(  # type: ignore[override]
        self,
        candidate_labels: ITAClassNames | None = None,
        timeout: float | None = None,
        subtask: str | None = None,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
        stuff_labels: Iterable[str] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess_params: dict[str, Any] = {}
        if candidate_labels is not None:
            preprocess_params["candidate_labels"] = candidate_labels
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        postprocess_params: dict[str, Any] = {}
        if subtask is not None:
            if subtask not in SUBTASKS:
                raise ValueError(f"subtask must be one of {', '.join(map(repr, SUBTASKS))}, got {subtask!r}")
            postprocess_params["subtask"] = subtask
        for name, value in (
            ("threshold", threshold),
            ("mask_threshold", mask_threshold),
            ("overlap_mask_area_threshold", overlap_mask_area_threshold),
        ):
            if value is not None:
                postprocess_params[name] = value
        if stuff_labels is not None:
            if isinstance(stuff_labels, str):
                raise ValueError(
                    f"stuff_labels must be a list of candidate labels, got the single string {stuff_labels!r}"
                )
            postprocess_params["stuff_labels"] = list(stuff_labels)
        return preprocess_params, {}, postprocess_params

    # ------------------------------------------------------------------------------------------------ stages
    def _load(self, image: Any, timeout: float | None = None) -> Image.Image | np.ndarray | torch.Tensor:
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        if isinstance(image, str):
            if os.path.isfile(image) or not is_url_or_base64(image):
                # Not transformers' load_image: it would convert 16-bit files to 8-bit RGB, and call a missing file
                # an incorrect image source.
                return open_image(image, where="Image file")
            return load_image(image, timeout=timeout)
        if isinstance(image, Image.Image):
            return open_image(image)
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return image
        raise TypeError(
            f"Cannot segment a {type(image).__name__}: give a path, a URL, a PIL image, a NumPy array or a tensor"
        )

    def preprocess(  # type: ignore[override]
        self, inputs: Any, candidate_labels: ITAClassNames | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        if not isinstance(inputs, dict):
            inputs = {"image": inputs}
        vocabulary = _check_candidate_labels(inputs.get("candidate_labels", candidate_labels))
        image = self._load(inputs["image"], timeout=timeout)
        height, width = _original_size(image)
        if height == 0 or width == 0:
            raise ValueError(f"The image has zero size ({height}x{width} pixels)")
        # The processor takes the parsed vocabulary as it is and hands it on, parsed, as `class_names`.
        encoded = ITAProcessor(image_processor=self.image_processor)(images=image, text=vocabulary, return_tensors="pt")
        views = {}
        if "dominant_category_pixel_values" in encoded:  # ITA's CLIP view of the image, [1, 3, S, S]
            views["dominant_category_pixel_values"] = encoded["dominant_category_pixel_values"].to(self.dtype)
        return {
            **views,
            "pixel_values": encoded["pixel_values"].to(self.dtype),  # [1, 3, H_frame, W_frame]
            "image_sizes": encoded["image_sizes"],  # [1, 2] resized size inside the frame
            "target_size": torch.tensor([[height, width]], dtype=torch.long),
            "candidate_labels": encoded["class_names"],
        }

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack preprocessed images, zero-padded to the largest (the padding is cropped away again in
        `_forward`); the vocabularies stay one list per image."""
        height = max(item["pixel_values"].shape[-2] for item in items)
        width = max(item["pixel_values"].shape[-1] for item in items)
        first = items[0]["pixel_values"]
        pixel_values = first.new_zeros((len(items), first.shape[1], height, width))
        for index, item in enumerate(items):
            pixel_values[index, :, : item["pixel_values"].shape[-2], : item["pixel_values"].shape[-1]] = item[
                "pixel_values"
            ][0]
        views = {}
        if "dominant_category_pixel_values" in items[0]:
            views["dominant_category_pixel_values"] = torch.cat(
                [item["dominant_category_pixel_values"] for item in items]
            )
        return {
            **views,
            "pixel_values": pixel_values,
            "image_sizes": torch.cat([item["image_sizes"] for item in items]),
            "target_size": torch.cat([item["target_size"] for item in items]),
            "candidate_labels": [item["candidate_labels"] for item in items],
        }

    def get_iterator(
        self,
        inputs: Any,
        num_workers: int,
        batch_size: int,
        preprocess_params: dict[str, Any],
        forward_params: dict[str, Any],
        postprocess_params: dict[str, Any],
    ) -> PipelineIterator:
        # As Pipeline.get_iterator, with our collate function: the default one concatenates `pixel_values`,
        # which fails for images of different sizes.
        dataset: PipelineDataset | PipelineIterator
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)  # type: ignore[no-untyped-call]
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)  # type: ignore[no-untyped-call]
            num_workers = min(num_workers, 1)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=self._collate)
        model_iterator = PipelineIterator(  # type: ignore[no-untyped-call]
            loader, self.forward, forward_params, loader_batch_size=batch_size
        )
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)  # type: ignore[no-untyped-call]

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        pixel_values = model_inputs["pixel_values"]
        image_sizes = model_inputs["image_sizes"]
        vocabularies = model_inputs["candidate_labels"]
        if isinstance(vocabularies, ITAClassNames):  # one image, not collated
            vocabularies = [vocabularies]
        batch = pixel_values.shape[0]
        padded_height, padded_width = pixel_values.shape[-2:]

        # One forward pass per (frame size, vocabulary): an image never sees padding beyond its own frame.
        groups: dict[tuple[tuple[int, int], ITAClassNames], list[int]] = {}
        for index, ((height, width), vocabulary) in enumerate(zip(image_sizes.tolist(), vocabularies)):
            frame_height, frame_width = self.image_processor.padded_frame(height, width, resized=True)
            frame = (min(padded_height, frame_height), min(padded_width, frame_width))
            groups.setdefault((frame, vocabulary), []).append(index)

        num_columns = max(len(vocabulary) for vocabulary in vocabularies) + 1
        class_logits: torch.Tensor | None = None
        mask_logits: torch.Tensor | None = None
        for ((frame_height, frame_width), vocabulary), indices in groups.items():
            views = model_inputs.get("dominant_category_pixel_values")
            outputs = self.model(
                pixel_values=pixel_values[indices, :, :frame_height, :frame_width],
                image_sizes=image_sizes[indices],
                class_names=vocabulary,  # parsed: the model's encoder reads it as it is
                dominant_category_pixel_values=None if views is None else views[indices],
            )
            logits, masks = outputs.ensemble_log_probs, outputs.masks_queries_logits  # [g, Q, K+1], [g, Q, h, w]
            if class_logits is None or mask_logits is None:
                num_queries, stride = logits.shape[1], frame_height // masks.shape[-2]
                class_logits = logits.new_zeros((batch, num_queries, num_columns))
                mask_logits = masks.new_zeros((batch, num_queries, padded_height // stride, padded_width // stride))
            # Vocabularies of different lengths share one tensor: the classes first, void in the last column.
            class_logits[indices, :, : len(vocabulary)] = logits[..., :-1]
            class_logits[indices, :, -1] = logits[..., -1]
            # Post-processing reads each image's own frame only: the zeros around it are never used.
            mask_logits[indices, :, : masks.shape[-2], : masks.shape[-1]] = masks
        return {
            "ensemble_log_probs": class_logits,
            "masks_queries_logits": mask_logits,
            "image_sizes": image_sizes,
            "target_size": model_inputs["target_size"],
            "candidate_labels": model_inputs["candidate_labels"],
        }

    def postprocess(  # type: ignore[override]
        self,
        model_outputs: dict[str, Any],
        subtask: str = "semantic",
        stuff_labels: list[str] | None = None,
        **thresholds: Any,
    ) -> dict[str, Any]:
        if subtask != "semantic":
            return self._postprocess_segments(model_outputs, subtask, stuff_labels, thresholds)
        if stuff_labels is not None or thresholds:
            given = sorted(["stuff_labels"] * (stuff_labels is not None) + list(thresholds))
            raise ValueError(
                f"{', '.join(given)} apply to subtask='panoptic' or 'instance', not to semantic segmentation"
            )
        vocabulary = _image_vocabulary(model_outputs)
        num_classes = len(vocabulary)
        class_logits = model_outputs["ensemble_log_probs"]
        class_logits = torch.cat([class_logits[..., :num_classes], class_logits[..., -1:]], dim=-1)
        outputs = {
            "ensemble_log_probs": class_logits,
            "masks_queries_logits": model_outputs["masks_queries_logits"],
            "image_sizes": model_outputs["image_sizes"],
        }
        target_size = [tuple(model_outputs["target_size"][0].tolist())]
        result = self.image_processor.post_process_semantic_segmentation(
            outputs, target_sizes=target_size, return_winning_scores=True
        )[0]
        assert isinstance(result, SemanticSegmentationPostProcessorOutput)  # what return_winning_scores returns
        label_map = result.segmentation.cpu().numpy()
        scores = result.winning_scores.cpu().numpy()

        counts = np.bincount(label_map.ravel(), minlength=num_classes)
        present = sorted(np.flatnonzero(counts).tolist(), key=lambda class_id: (-counts[class_id], class_id))
        segments = []
        for class_id in present:
            mask = label_map == class_id
            segments.append(
                {
                    "label": vocabulary[class_id],
                    "class_id": class_id,
                    "score": float(scores[mask].mean()),
                    "pixel_share": float(counts[class_id] / label_map.size),
                    "mask": Image.fromarray(mask.astype(np.uint8) * 255),
                }
            )
        return {"segments": segments, "label_map": label_map}

    # ------------------------------------------------------------------------------- panoptic and instance
    def _postprocess_segments(
        self,
        model_outputs: dict[str, Any],
        subtask: str,
        stuff_labels: list[str] | None,
        thresholds: dict[str, Any],
    ) -> dict[str, Any]:
        """Panoptic or instance results of one image (see `__call__`)."""
        vocabulary = _image_vocabulary(model_outputs)
        num_classes = len(vocabulary)
        stuff_ids = set()
        for label in stuff_labels or ():
            if label not in vocabulary:
                raise ValueError(f"stuff label {label!r} is not one of the candidate labels {list(vocabulary)}")
            stuff_ids.add(vocabulary.index(label))
        class_logits = model_outputs["ensemble_log_probs"]
        outputs = {
            "ensemble_log_probs": torch.cat([class_logits[..., :num_classes], class_logits[..., -1:]], dim=-1),
            "masks_queries_logits": model_outputs["masks_queries_logits"],
            "image_sizes": model_outputs["image_sizes"],
        }
        target_sizes = [tuple(model_outputs["target_size"][0].tolist())]
        if subtask == "panoptic":
            result = self.image_processor.post_process_panoptic_segmentation(
                outputs, label_ids_to_fuse=stuff_ids, target_sizes=target_sizes, **thresholds
            )[0]
            segment_map = result["segmentation"].cpu().numpy()
            masks = [segment_map == info["id"] for info in result["segments_info"]]
        else:
            if "overlap_mask_area_threshold" in thresholds:
                raise ValueError("overlap_mask_area_threshold applies to subtask='panoptic' only")
            thresholds.setdefault("threshold", INSTANCE_THRESHOLD)
            result = self.image_processor.post_process_instance_segmentation(
                outputs,
                label_ids_to_fuse=stuff_ids,
                target_sizes=target_sizes,
                return_binary_maps=True,
                **thresholds,
            )[0]
            masks = list(result["segmentation"].cpu().numpy())
        segments = []
        for info, mask in zip(result["segments_info"], masks):
            segments.append(
                {
                    "id": info["id"],
                    "label": vocabulary[info["label_id"]],
                    "class_id": info["label_id"],
                    "score": info["score"],
                    "was_fused": info["was_fused"],
                    "pixel_share": float(mask.mean()),
                    "mask": Image.fromarray(mask.astype(np.uint8) * 255),
                }
            )
        output = {"segments": segments}
        if subtask == "panoptic":
            output["segment_map"] = segment_map
        return output


class ITAStrictModelLoader:
    """What `pipeline("zero-shot-image-segmentation", model="name")` loads the name with: `load_segmentation_model`,
    which refuses a checkpoint with missing, unexpected or mismatched weights (`AutoModel` would fill them with
    random values and segment anyway)."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **kwargs: Any) -> ITAForOpenVocabSegmentation:
        return load_segmentation_model(name_or_path, **kwargs)


def _image_vocabulary(model_outputs: dict[str, Any]) -> Sequence[str]:
    """The vocabulary of one image's outputs: without batching they keep the batch's list of vocabularies; batched
    outputs are already split per image by the pipeline."""
    vocabulary: Sequence[Any] = model_outputs["candidate_labels"]
    return vocabulary if not vocabulary or isinstance(vocabulary[0], str) else vocabulary[0]


def _register() -> None:
    registered = PIPELINE_REGISTRY.supported_tasks.get(ZERO_SHOT_IMAGE_SEGMENTATION_TASK)
    if registered is not None and registered["impl"] is ZeroShotImageSegmentationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        ZERO_SHOT_IMAGE_SEGMENTATION_TASK,
        pipeline_class=ZeroShotImageSegmentationPipeline,
        pt_model=ITAStrictModelLoader,
        type="multimodal",
    )


_register()
