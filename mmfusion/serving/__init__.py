"""Serving a trained model.

    bundle.py         the model as a folder of safe files (no pickle), verified on load; `Predictor` scores rows (torch)
    pyfunc.py         the MLflow pyfunc flavour over a bundle ("model from code")
    onnx_scorer.py    scoring with onnxruntime alone: OnnxScorer, OnnxPredictor, download_onnx (no torch)
    logged_models.py  logged_model_id: the models a run logged (MLflow 3 LoggedModels)
"""
