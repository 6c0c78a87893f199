"""The model's source files for `trust_remote_code`: re-exported from the model folder's `modeling_ita.remote_code`.

The export lives in the model folder because the model's own `save_pretrained` uses it (the model folder never
imports this package); the hub wing names it here for its converter and its tests.
"""

from modeling_ita.remote_code import (
    CUSTOM_PIPELINES,
    REMOTE_CODE_ENTRY_POINTS,
    REMOTE_CODE_FILES,
    config_entries,
    describe_folder,
    describe_processor_config,
    export_remote_code,
    flat_source,
)

__all__ = [
    "CUSTOM_PIPELINES",
    "REMOTE_CODE_ENTRY_POINTS",
    "REMOTE_CODE_FILES",
    "config_entries",
    "describe_folder",
    "describe_processor_config",
    "export_remote_code",
    "flat_source",
]
