"""ITA: open-vocabulary semantic segmentation for Hugging Face transformers."""
