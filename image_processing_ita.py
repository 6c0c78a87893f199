"""Image processor for ITA (filled in by the inference issue)."""
