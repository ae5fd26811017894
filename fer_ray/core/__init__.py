"""The science: plain PyTorch / scikit-learn. Never imports ray or mlflow."""
