"""ITA: open-vocabulary semantic segmentation for Hugging Face transformers.

Importing this package registers ITA with the Auto classes: `AutoConfig`, `AutoModel`,
`AutoImageProcessor` and `AutoProcessor` (and the `zero-shot-image-segmentation` pipeline task).
"""

from transformers import AutoConfig, AutoModel

from configuration_ita import ITAConfig

from .modeling import (
    ITAForOpenVocabSegmentation,
    ITAOpenVocabSegmentationOutput,
    ITAPreTrainedModel,
    geometric_ensemble,
)
from .vocabulary import ITAVocabulary, ITAVocabularyEncoder, parse_vocabulary

AutoConfig.register(ITAConfig.model_type, ITAConfig, exist_ok=True)
AutoModel.register(ITAConfig, ITAForOpenVocabSegmentation, exist_ok=True)

__all__ = [
    "ITAConfig",
    "ITAForOpenVocabSegmentation",
    "ITAOpenVocabSegmentationOutput",
    "ITAPreTrainedModel",
    "ITAVocabulary",
    "ITAVocabularyEncoder",
    "geometric_ensemble",
    "parse_vocabulary",
]
