"""`ITAProcessor`: the image processor plus the open vocabulary, in one callable.

The vocabulary is parsed once, at the first door it comes through (`parse_vocabulary`), into an `ITAClassNames`
that the pipeline hands to the processor and the processor hands to the model: no later step parses it again.
"""

import difflib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, overload

from transformers.image_processing_base import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

from image_processing_ita import TARGET_NAMES, ITAImageProcessor, ITAImageProcessorKwargs

__all__ = ["ITAClassNames", "ITAProcessor", "ITAProcessorKwargs", "parse_vocabulary", "shared_synonyms"]

# What a call may carry besides the modality dictionaries: transformers' processor-level switches.
_MODALITIES = ("images_kwargs", "text_kwargs", "audio_kwargs", "videos_kwargs", "common_kwargs")

# A synonym that names two classes: (synonym, position of the first class, position of the other class).
SharedSynonym = tuple[str, int, int]


@dataclass(frozen=True, eq=False)
class ITAClassNames(Sequence[str]):
    """A parsed vocabulary: the class strings as given and each class's synonyms, made once by `parse_vocabulary`.

    It is a sequence of the class strings (`len`, indexing, iteration; equal to a list or tuple of the same
    strings), so code that passes `class_names` as a list keeps working, while the synonyms travel with it.

    Attributes:
        names: the K class strings as given (`"sofa, couch"`), less any byte-order mark (U+FEFF).
        synonyms: per class, its synonyms with surrounding spaces stripped (`("sofa", "couch")`).
        shared_synonyms: `(synonym, first_class, other_class)` for each synonym that names more than one class,
            compared as CLIP reads them (case and repeated spaces ignored).
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    shared_synonyms: tuple[SharedSynonym, ...] = ()

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self.names[index]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ITAClassNames):
            return self.names == other.names
        if isinstance(other, (list, tuple)):
            return list(self.names) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.names)  # as the tuple of names it equals

    def __repr__(self) -> str:
        return f"ITAClassNames({list(self.names)!r})"


def _synonym_key(synonym: str) -> str:
    # CLIP's tokenizer lower-cases and collapses white space: "Sofa" and "sofa " are one text to it.
    return " ".join(synonym.lower().split())


def shared_synonyms(parsed: ITAClassNames | Iterable[Sequence[str]]) -> list[SharedSynonym]:
    """Synonyms that name more than one class of a parsed vocabulary (an `ITAClassNames`, or one list of synonyms
    per class), compared as CLIP reads them (case and repeated spaces ignored): a list of
    `(synonym, first_class, other_class)`."""
    if isinstance(parsed, ITAClassNames):
        return list(parsed.shared_synonyms)
    owner: dict[str, int] = {}
    shared = []
    for index, synonyms in enumerate(parsed):
        for synonym in synonyms:
            first = owner.setdefault(_synonym_key(synonym), index)
            if first != index:
                shared.append((synonym, first, index))
    return shared


# U+FEFF: a byte-order mark, which a text file saved "with BOM" starts with; a reader that decodes it as plain UTF-8
# keeps it in the first class's name, where CLIP would read it. It never belongs to a class name.
_BYTE_ORDER_MARK = "\ufeff"


def _split_classes(class_names: object) -> ITAClassNames:
    """The parsing rule: validate a vocabulary and split each class into its synonyms (see `parse_vocabulary`)."""
    if isinstance(class_names, str):
        raise ValueError(
            "The vocabulary must be a list of class names, got a single string "
            f"{class_names!r}; write synonyms of one class as one comma-separated entry, e.g. ['sofa,couch']"
        )
    names = list(cast(Iterable[Any], class_names)) if class_names is not None else []
    if not names:
        raise ValueError("The vocabulary is empty: give at least one class name")
    parsed: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"Class {index} of the vocabulary is {type(name).__name__}, not a string: {name!r}")
        name = names[index] = name.replace(_BYTE_ORDER_MARK, "")  # a text file's BOM, kept by a reader: not a name
        synonyms = tuple(synonym.strip() for synonym in name.split(","))
        if not name.strip():
            raise ValueError(f"Class {index} of the vocabulary is an empty string")
        if any(not synonym for synonym in synonyms):
            raise ValueError(f"Class {index} of the vocabulary, {name!r}, has an empty synonym")
        key = ",".join(synonyms)
        if key in seen:
            raise ValueError(f"Duplicate class name {name!r} at positions {seen[key]} and {index} of the vocabulary")
        seen[key] = index
        parsed.append(synonyms)
    return ITAClassNames(tuple(names), tuple(parsed), tuple(shared_synonyms(parsed)))


def parse_vocabulary(class_names: object, allow_shared_synonyms: bool = False) -> ITAClassNames:
    """Validate a vocabulary and split each class into its synonyms, once: an `ITAClassNames`.

    An `ITAClassNames` (already parsed) is returned as it is, so each door of the way from the pipeline to the
    model may call this without parsing again. Raises `ValueError` for an empty vocabulary, a class or synonym
    that is empty, a non-string entry, duplicate class names, or (unless `allow_shared_synonyms`) a synonym given
    to two classes (`"sofa,couch"` and `"couch,sofa"`): the classes would tie on it. The user's doors (the
    processor, the pipeline, the apps) refuse shared synonyms; the model accepts them, because FC-CLIP's own
    A-847 and PC-459 class lists have some and the published protocol uses them as they are. A byte-order mark
    (U+FEFF, which a class file saved "with BOM" starts with) is removed from every name.
    """
    vocabulary = class_names if isinstance(class_names, ITAClassNames) else _split_classes(class_names)
    if not allow_shared_synonyms and vocabulary.shared_synonyms:
        synonym, first, other = vocabulary.shared_synonyms[0]
        raise ValueError(
            f"Synonym {synonym!r} names two classes: {vocabulary.names[first]!r} (position {first}) and "
            f"{vocabulary.names[other]!r} (position {other}) of the vocabulary; give each synonym to one class"
        )
    return vocabulary


class _NoTokenizer:
    """What `ITAProcessor.tokenizer` holds: the processor tokenizes nothing (the model's text tower tokenizes the
    vocabulary with open_clip's tokenizer), yet transformers reads a processor's tokenizer in two places: the
    Trainer copies its special tokens into the model's config before training (`trainer_utils.align_special_tokens`,
    which expects every `ProcessorMixin` to have one), and a pipeline given the processor saves it. Here there is no
    special token to copy and nothing to save."""

    bos_token_id = None
    eos_token_id = None
    pad_token_id = None

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> tuple[str, ...]:
        return ()

    def __repr__(self) -> str:
        return "ITAProcessor has no tokenizer (the model tokenizes the vocabulary)"


class ITAProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of [`ITAProcessor`]: the image processor's (`images_kwargs`, or flat as before); the
    vocabulary is not tokenized here (the model encodes it), so `text_kwargs` may only hold `return_tensors`."""

    images_kwargs: ITAImageProcessorKwargs  # type: ignore[misc]  # a narrower ImagesKwargs, as transformers' models write it


class ITAProcessor(ProcessorMixin):
    r"""
    Prepares images and an open vocabulary for [`ITAForOpenVocabSegmentation`].

    Args:
        image_processor ([`ITAImageProcessor`], *optional*):
            The image processor; a default [`ITAImageProcessor`] when omitted.

    Example:

    ```python
    >>> processor = ITAProcessor()
    >>> inputs = processor(images=image, text=["wall,walls", "sofa,couch", "cat"], return_tensors="pt")
    >>> outputs = model(**inputs)
    >>> label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
    ```
    """

    image_processor: ITAImageProcessor
    # Not a part of the processor (`ProcessorMixin` reads its parts from `__init__`): saved and loaded with nothing.
    tokenizer = _NoTokenizer()

    def __init__(self, image_processor: ITAImageProcessor | None = None, **kwargs: Any) -> None:
        if image_processor is None:
            image_processor = ITAImageProcessor()
        super().__init__(image_processor, **kwargs)  # type: ignore[no-untyped-call]

    valid_processor_kwargs = ITAProcessorKwargs  # type: ignore[assignment]
    # Outputs that are no tensors: the vocabulary (a sequence of strings) and the per-image training targets.
    skip_tensor_conversion = [*ProcessorMixin.skip_tensor_conversion, "class_names", *TARGET_NAMES]

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        """transformers' `save_pretrained`; where the folder holds the model's exported source files (the model's
        `save_pretrained` writes them, as in the Trainer's checkpoints), `processor_config.json` names them in its
        `auto_map`, so that `AutoProcessor` loads it with `trust_remote_code=True` without this package."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        path = folder / "processor_config.json"
        if path.is_file() and all(
            (folder / f"{name}.py").is_file() for name in ("processing_ita", "image_processing_ita")
        ):
            data = json.loads(path.read_text(encoding="utf-8"))
            data["auto_map"] = {"AutoProcessor": "processing_ita.ITAProcessor"}
            data["image_processor"]["auto_map"] = {"AutoImageProcessor": "image_processing_ita.ITAImageProcessor"}
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return saved

    def __call__(
        self,
        images: Any = None,
        text: Sequence[str] | None = None,
        segmentation_maps: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        r"""
        Args:
            images (`ImageInput`, *optional*):
                One image or a list of images; see [`ITAImageProcessor`].
            text (`list[str]` or [`ITAClassNames`], *optional*):
                The vocabulary: one string per class, synonyms separated by commas (`["sofa,couch", "cat"]`).
                It is parsed once (`parse_vocabulary`: no empty vocabulary, class or synonym, no duplicate class,
                no synonym of two classes) and returned as `class_names`, an [`ITAClassNames`] (a sequence of the
                class strings) that the model's forward reads without parsing it again.
            segmentation_maps (`ImageInput`, *optional*):
                Label maps, one per image; with `text`, ids must index the vocabulary (`num_labels` defaults
                to its length).
            kwargs:
                The image processor's options (`return_tensors`, `size`, `do_reduce_labels`, ...), flat or in
                `images_kwargs`, merged the transformers way: the image processor's saved settings, then
                `common_kwargs`, then the call's values. An unknown name raises a `TypeError`.

        Returns:
            [`BatchFeature`] with the image processor's outputs (`pixel_values`, `pixel_mask`, `image_sizes`,
            and `mask_labels`/`class_labels` with segmentation maps) and `class_names` when `text` is given.
        """
        if images is None and text is None:
            raise ValueError("Give images, a vocabulary (text) or both")
        image_kwargs = self._merged_image_kwargs(dict(kwargs))
        class_names = None if text is None else parse_vocabulary(text)
        if images is not None:
            if class_names is not None and segmentation_maps is not None:
                image_kwargs.setdefault("num_labels", len(class_names))
            encoded = self.image_processor.preprocess(images, segmentation_maps=segmentation_maps, **image_kwargs)
        elif segmentation_maps is not None:
            raise ValueError("segmentation_maps were given without their images")
        else:
            encoded = BatchFeature()
        data = dict(encoded) if class_names is None else {**encoded, "class_names": class_names}
        return BatchFeature(
            data, tensor_type=image_kwargs.get("return_tensors"), skip_tensor_conversion=self.skip_tensor_conversion
        )

    def _merged_image_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The image processor's keyword arguments of one call, after refusing any name nobody reads."""
        image_keys = set(self.image_processor.valid_kwargs.__annotations__) | set(
            ITAImageProcessorKwargs.__annotations__
        )
        unknown = [key for key in kwargs if key not in image_keys and key not in _MODALITIES]
        text_kwargs = {key: value for key, value in kwargs.get("text_kwargs", {}).items() if key != "return_tensors"}
        if unknown or text_kwargs:
            names = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(image_keys), n=1)
                names.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            names += [f"text_kwargs[{key!r}] (the vocabulary is not tokenized by the processor)" for key in text_kwargs]
            raise TypeError(f"ITAProcessor got keyword arguments it cannot use: {', '.join(names)}")
        merged = self._merge_kwargs(ITAProcessorKwargs, **kwargs)  # type: ignore[arg-type]
        return dict(merged["images_kwargs"])

    def post_process_semantic_segmentation(self, *args: Any, **kwargs: Any) -> list[Any]:
        """See [`ITAImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(*args, **kwargs)

    def post_process_panoptic_segmentation(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """See [`ITAImageProcessor.post_process_panoptic_segmentation`]."""
        return self.image_processor.post_process_panoptic_segmentation(*args, **kwargs)

    def post_process_instance_segmentation(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """See [`ITAImageProcessor.post_process_instance_segmentation`]."""
        return self.image_processor.post_process_instance_segmentation(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        """Every input of the model a call with images and a vocabulary makes: the image processor's (with ITA's
        CLIP view when it makes one) and `class_names`."""
        return list(self.image_processor.model_input_names) + ["class_names"]
