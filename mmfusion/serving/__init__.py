"""Serving a trained model.

    bundle.py         the model as a folder of safe files (no pickle), verified on load; `Predictor` scores rows (torch)
    pyfunc.py         the MLflow pyfunc flavour over a bundle ("model from code")
    onnx_session.py   onnxruntime sessions: OnnxScorer (one graph), PackedScorer (chunk encoder + head, real chunks only)
    onnx_scorer.py    scoring with onnxruntime alone: OnnxPredictor, download_onnx (no torch)
    streaming.py      predict_file: a table file scored piece by piece into a CSV, memory flat (both predictors)
    logged_models.py  logged_model_id: the models a run logged (MLflow 3 LoggedModels)
"""
