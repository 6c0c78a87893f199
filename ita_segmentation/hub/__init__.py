"""Hub wing: converting original checkpoints, model folders with their remote code, model cards, pushing.

The names below are imported on first use (they import torch and the model folder), so that `ita-convert`
(`hub.cli`) parses its arguments before any of them is loaded.
"""

from typing import TYPE_CHECKING

from ita_segmentation.lazy_names import lazy_names

if TYPE_CHECKING:
    from .conversion import (
        CheckpointConversionError,
        ConversionResult,
        convert_checkpoint,
        load_category_bank,
        load_original_state_dict,
        save_category_bank,
    )
    from .folder import CATEGORY_BANK_FILE, CATEGORY_BANK_SNIPPET, HubPushError, push_folder_to_hub, save_processor
    from .remote_code import REMOTE_CODE_FILES, export_remote_code, flat_source

# Public name -> the module of this package that defines it.
_HOMES = {
    "CheckpointConversionError": "conversion",
    "ConversionResult": "conversion",
    "convert_checkpoint": "conversion",
    "load_category_bank": "conversion",
    "load_original_state_dict": "conversion",
    "save_category_bank": "conversion",
    "CATEGORY_BANK_FILE": "folder",
    "CATEGORY_BANK_SNIPPET": "folder",
    "HubPushError": "folder",
    "push_folder_to_hub": "folder",
    "save_processor": "folder",
    "REMOTE_CODE_FILES": "remote_code",
    "export_remote_code": "remote_code",
    "flat_source": "remote_code",
}

__all__ = [
    "CATEGORY_BANK_FILE",
    "CATEGORY_BANK_SNIPPET",
    "CheckpointConversionError",
    "ConversionResult",
    "HubPushError",
    "REMOTE_CODE_FILES",
    "convert_checkpoint",
    "export_remote_code",
    "flat_source",
    "load_category_bank",
    "load_original_state_dict",
    "push_folder_to_hub",
    "save_category_bank",
    "save_processor",
]

__getattr__, __dir__ = lazy_names(__name__, _HOMES)
