"""Evaluation on labelled X-ray folders: listing them (`datasets`) and scoring the
scores against the labels (`metrics`). Used by training and `pneumoscan evaluate`;
never part of the Lambda artifact, which holds only the `pneumoscan` package.
"""
