"""The precisions a model may be run in, by torch's names: what `--dtype` of the commands offers.

Standard library only, so that the command lines list them before torch is imported; `torch_dtype` imports torch.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "torch_dtype"]

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> "torch.dtype":
    """The torch dtype called `name`, one of `DTYPES`; a `ValueError` naming them for another name."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    import torch

    dtype: torch.dtype = getattr(torch, name)
    return dtype
