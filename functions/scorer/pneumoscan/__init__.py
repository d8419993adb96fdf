"""The scorer: everything in this package runs in the Lambda and is bundled into its zip.

The CLI, training and the benchmarks import it to score exactly as the Lambda does
(`pneumoscan.scoring`). It must import without TensorFlow. Evaluation-only code
(labelled folders, metrics) lives in `pneumoscan_eval`.
"""
