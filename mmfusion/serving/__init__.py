"""Serving a trained model: the safe-file bundle, the MLflow pyfunc flavour and the torch-free ONNX scorer."""
