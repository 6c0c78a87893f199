"""ITA: open-vocabulary semantic segmentation for Hugging Face transformers.

Importing this package registers ITA with the Auto classes: `AutoConfig`, `AutoModel`,
`AutoModelForUniversalSegmentation` (Mask2Former's task class), `AutoImageProcessor` and `AutoProcessor` (and the
`zero-shot-image-segmentation` pipeline task).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForUniversalSegmentation,
    AutoProcessor,
)

from configuration_ita import ITAConfig
from image_processing_ita import ITAImageProcessor
from processing_ita import ITAClassNames, ITAProcessor, parse_vocabulary

from .classifiers import geometric_ensemble
from .modeling import ITAForOpenVocabSegmentation, ITAOpenVocabSegmentationOutput, ITAPreTrainedModel
from .pipeline import ZeroShotImageSegmentationPipeline  # registers the "zero-shot-image-segmentation" task
from .vocabulary import ITAVocabulary, ITAVocabularyEncoder

AutoConfig.register(ITAConfig.model_type, ITAConfig, exist_ok=True)
AutoModel.register(ITAConfig, ITAForOpenVocabSegmentation, exist_ok=True)
AutoModelForUniversalSegmentation.register(ITAConfig, ITAForOpenVocabSegmentation, exist_ok=True)
AutoImageProcessor.register(ITAConfig, image_processor_classes={"torchvision": ITAImageProcessor}, exist_ok=True)
AutoProcessor.register(ITAConfig, ITAProcessor, exist_ok=True)  # type: ignore[no-untyped-call]

__all__ = [
    "ITAClassNames",
    "ITAConfig",
    "ITAForOpenVocabSegmentation",
    "ITAImageProcessor",
    "ITAProcessor",
    "ITAOpenVocabSegmentationOutput",
    "ITAPreTrainedModel",
    "ITAVocabulary",
    "ITAVocabularyEncoder",
    "geometric_ensemble",
    "parse_vocabulary",
    "ZeroShotImageSegmentationPipeline",
]
