"""The model and processor a training run starts from: a trained or converted checkpoint, or a new model."""

import copy
import logging
from collections.abc import Sequence

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from modeling_ita.clip_backbone import load_open_clip_weights
from modeling_ita.loading import check_model_location, load_segmentation_model
from modeling_ita.modeling import ITAForOpenVocabSegmentation
from processing_ita import ITAProcessor

from ..errors import ITAUsageError
from .arguments import ITADataArguments, ITAModelArguments

__all__ = ["load_model", "load_processor", "planned_config"]

logger = logging.getLogger(__name__)


def planned_config(model_args: ITAModelArguments) -> ITAConfig:
    """The config of the model `model_args` name, read without loading any weights: `model_name_or_path`'s, the
    `config_path` file, or the defaults of `variant`. Conflicting arguments raise `ITAUsageError`."""
    if model_args.model_name_or_path:
        if model_args.config_path or model_args.clip_checkpoint or model_args.variant:
            raise ITAUsageError("Give model_name_or_path alone, or a new model's config_path/variant/clip_checkpoint")
        check_model_location(model_args.model_name_or_path)
        return ITAConfig.from_pretrained(model_args.model_name_or_path)
    if model_args.config_path:
        if model_args.variant:
            raise ITAUsageError("Give config_path or variant, not both (the config decides the variant)")
        return ITAConfig.from_json_file(model_args.config_path)
    return ITAConfig.fcclip() if model_args.variant == "fcclip" else ITAConfig()


def load_model(
    model_args: ITAModelArguments, class_names: Sequence[str] | None = None, config: ITAConfig | None = None
) -> ITAForOpenVocabSegmentation:
    """The model to train: `model_name_or_path` (fine-tuning), or a new one from `config_path`/`variant` with the
    CLIP weights of `clip_checkpoint`. `class_names` become the config's training vocabulary. `config` is the
    model's config when already read (`planned_config`)."""
    config = copy.deepcopy(config) if config is not None else planned_config(model_args)
    if class_names:
        config.train_vocabulary = list(class_names)
    if model_args.model_name_or_path:
        # Strict: a checkpoint that lacks weights would fine-tune from random ones without a word.
        return load_segmentation_model(model_args.model_name_or_path, config=config)
    model = ITAForOpenVocabSegmentation(config)
    if model_args.clip_checkpoint:
        load_open_clip_weights(model.backbone, model_args.clip_checkpoint)
    else:
        logger.warning("No clip_checkpoint: the frozen CLIP keeps its random initialisation")
    return model


def load_processor(
    model_args: ITAModelArguments, data_args: ITADataArguments | None = None, config: ITAConfig | None = None
) -> ITAProcessor:
    """The processor saved with the model (or `processor_name_or_path`), else the default `ITAProcessor` for the
    model `config`; the data arguments' `eval_shortest_edge`/`eval_longest_edge` override its resize."""
    source = model_args.processor_name_or_path or model_args.model_name_or_path
    processor = None
    if source:
        try:
            processor = ITAProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            logger.warning("No processor in %s (%s); using a default ITAProcessor", source, error)
    if processor is None:
        image_processor = ITAImageProcessor() if config is None else ITAImageProcessor.for_model_config(config)
        processor = ITAProcessor(image_processor=image_processor)
    if data_args is not None and (data_args.eval_shortest_edge or data_args.eval_longest_edge):
        size = dict(processor.image_processor.size)
        size = {key: value for key, value in size.items() if value is not None}
        if data_args.eval_shortest_edge:
            size["shortest_edge"] = data_args.eval_shortest_edge
        if data_args.eval_longest_edge:
            size["longest_edge"] = data_args.eval_longest_edge
        settings = processor.image_processor.to_dict()
        settings.pop("image_processor_type", None)
        processor = ITAProcessor(image_processor=ITAImageProcessor(**{**settings, "size": size}))
    return processor
