"""Core of pneumoscan shared by the Lambda, the CLI and training evaluation.

Everything here must import without TensorFlow: it is bundled into the Lambda zip.
"""
