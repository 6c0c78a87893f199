"""`ITAProcessor`: the image processor plus the open vocabulary, in one callable."""

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from image_processing_ita import ITAImageProcessor

__all__ = ["ITAProcessor"]


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

    def __call__(self, images=None, text=None, segmentation_maps=None, **kwargs) -> BatchFeature:
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
                Passed to the image processor (`return_tensors`, `size`, `do_reduce_labels`, ...).

        Returns:
            [`BatchFeature`] with the image processor's outputs (`pixel_values`, `pixel_mask`, `image_sizes`,
            and `mask_labels`/`class_labels` with segmentation maps) and `class_names` when `text` is given.
        """
        if images is None and text is None:
            raise ValueError("Give images, a vocabulary (text) or both")
        class_names = None
        if text is not None:
            # Imported here: `modeling_ita` imports this module when it registers the Auto classes.
            from modeling_ita.vocabulary import parse_vocabulary

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
