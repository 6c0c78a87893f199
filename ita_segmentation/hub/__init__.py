"""Hub wing: converting original checkpoints, model folders with their remote code, model cards, pushing."""

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
