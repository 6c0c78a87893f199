"""`ita-export`'s default check tolerances, light to import (standard library only) so that its `--help` shows
them before torch is imported; `export.Tolerances` explains them and reads them from here."""

__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL"]

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 5e-3
