"""The tools around the ITA model: commands, training, evaluation, conversion, ONNX export and the web page.

The model itself (`modeling_ita`, `configuration_ita`, `image_processing_ita`, `processing_ita`) is a
transformers model folder that imports nothing from here; this package depends on it, one way. Importing
`ita_segmentation` alone imports nothing heavy, so a command can parse its arguments before torch is loaded.
"""
