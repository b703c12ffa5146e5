"""Experiment tracking: MLflow runs of train.py and eval.py, the model registry of export.py
and predict.py (`models:/<name>@<alias>`). mlflow is imported only inside the functions that
need it (the `tracking` extra)."""
