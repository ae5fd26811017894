"""The shell around the science: the only package that imports ray and mlflow."""
