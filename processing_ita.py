"""`ITAProcessor`: the image processor plus the open vocabulary, in one callable."""

import difflib

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from image_processing_ita import ITAImageProcessor, ITAImageProcessorKwargs

__all__ = ["ITAProcessor", "ITAProcessorKwargs", "parse_vocabulary", "shared_synonyms"]

# What a call may carry besides the modality dictionaries: transformers' processor-level switches.
_MODALITIES = ("images_kwargs", "text_kwargs", "audio_kwargs", "videos_kwargs", "common_kwargs")


def _synonym_key(synonym):
    # CLIP's tokenizer lower-cases and collapses white space: "Sofa" and "sofa " are one text to it.
    return " ".join(synonym.lower().split())


def shared_synonyms(parsed):
    """Synonyms that name more than one class of a parsed vocabulary (`parse_vocabulary`'s output), compared as
    CLIP reads them (case and repeated spaces ignored): a list of `(synonym, first_class, other_class)`."""
    owner, shared = {}, []
    for index, synonyms in enumerate(parsed):
        for synonym in synonyms:
            first = owner.setdefault(_synonym_key(synonym), index)
            if first != index:
                shared.append((synonym, first, index))
    return shared


def parse_vocabulary(class_names, allow_shared_synonyms=False):
    """Validate a vocabulary and split each class into its synonyms.

    Returns a list (one entry per class) of lists of synonyms. Raises `ValueError` for an empty vocabulary,
    a class or synonym that is empty, a non-string entry, duplicate class names, or (unless
    `allow_shared_synonyms`) a synonym given to two classes (`"sofa,couch"` and `"couch,sofa"`): the classes
    would tie on it. The model itself accepts shared synonyms, because FC-CLIP's own A-847 and PC-459 class
    lists have some and the published protocol uses them as they are.
    """
    if isinstance(class_names, str):
        raise ValueError(
            "The vocabulary must be a list of class names, got a single string "
            f"{class_names!r}; write synonyms of one class as one comma-separated entry, e.g. ['sofa,couch']"
        )
    class_names = list(class_names) if class_names is not None else []
    if not class_names:
        raise ValueError("The vocabulary is empty: give at least one class name")
    parsed, seen = [], {}
    for index, name in enumerate(class_names):
        if not isinstance(name, str):
            raise ValueError(f"Class {index} of the vocabulary is {type(name).__name__}, not a string: {name!r}")
        synonyms = [synonym.strip() for synonym in name.split(",")]
        if not name.strip():
            raise ValueError(f"Class {index} of the vocabulary is an empty string")
        if any(not synonym for synonym in synonyms):
            raise ValueError(f"Class {index} of the vocabulary, {name!r}, has an empty synonym")
        key = ",".join(synonyms)
        if key in seen:
            raise ValueError(f"Duplicate class name {name!r} at positions {seen[key]} and {index} of the vocabulary")
        seen[key] = index
        parsed.append(synonyms)
    if not allow_shared_synonyms:
        for synonym, first, other in shared_synonyms(parsed):
            raise ValueError(
                f"Synonym {synonym!r} names two classes: {class_names[first]!r} (position {first}) and "
                f"{class_names[other]!r} (position {other}) of the vocabulary; give each synonym to one class"
            )
    return parsed


class ITAProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of [`ITAProcessor`]: the image processor's (`images_kwargs`, or flat as before); the
    vocabulary is not tokenized here (the model encodes it), so `text_kwargs` may only hold `return_tensors`."""

    images_kwargs: ITAImageProcessorKwargs


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

    def __init__(self, image_processor=None, **kwargs):
        if image_processor is None:
            image_processor = ITAImageProcessor()
        super().__init__(image_processor, **kwargs)

    valid_processor_kwargs = ITAProcessorKwargs

    def __call__(
        self, images=None, text=None, segmentation_maps=None, **kwargs: Unpack[ITAProcessorKwargs]
    ) -> BatchFeature:
        r"""
        Args:
            images (`ImageInput`, *optional*):
                One image or a list of images; see [`ITAImageProcessor`].
            text (`list[str]`, *optional*):
                The vocabulary: one string per class, synonyms separated by commas (`["sofa,couch", "cat"]`).
                It is validated (no empty vocabulary, class or synonym, no duplicate class) and returned as
                `class_names`, a plain list the model's forward accepts.
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
        kwargs = self._merged_image_kwargs(kwargs)
        class_names = None
        if text is not None:
            parse_vocabulary(text)
            class_names = list(text)
        if images is not None:
            if class_names is not None and segmentation_maps is not None:
                kwargs.setdefault("num_labels", len(class_names))
            encoded = self.image_processor(images, segmentation_maps=segmentation_maps, **kwargs)
        elif segmentation_maps is not None:
            raise ValueError("segmentation_maps were given without their images")
        else:
            encoded = BatchFeature()
        if class_names is not None:
            # Set after the tensor conversion: the vocabulary stays a list of strings.
            encoded["class_names"] = class_names
        return encoded

    def _merged_image_kwargs(self, kwargs):
        """The image processor's keyword arguments of one call, after refusing any name nobody reads."""
        image_keys = set(self.image_processor.valid_kwargs.__annotations__) | set(ITAImageProcessorKwargs.__annotations__)
        unknown = [key for key in kwargs if key not in image_keys and key not in _MODALITIES]
        text_kwargs = {key: value for key, value in kwargs.get("text_kwargs", {}).items() if key != "return_tensors"}
        if unknown or text_kwargs:
            names = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(image_keys), n=1)
                names.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            names += [f"text_kwargs[{key!r}] (the vocabulary is not tokenized by the processor)" for key in text_kwargs]
            raise TypeError(f"ITAProcessor got keyword arguments it cannot use: {', '.join(names)}")
        merged = self._merge_kwargs(ITAProcessorKwargs, **kwargs)
        return merged["images_kwargs"]

    def post_process_semantic_segmentation(self, *args, **kwargs):
        """See [`ITAImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(*args, **kwargs)

    def post_process_panoptic_segmentation(self, *args, **kwargs):
        """See [`ITAImageProcessor.post_process_panoptic_segmentation`]."""
        return self.image_processor.post_process_panoptic_segmentation(*args, **kwargs)

    def post_process_instance_segmentation(self, *args, **kwargs):
        """See [`ITAImageProcessor.post_process_instance_segmentation`]."""
        return self.image_processor.post_process_instance_segmentation(*args, **kwargs)

    @property
    def model_input_names(self):
        return list(self.image_processor.model_input_names) + ["class_names"]
