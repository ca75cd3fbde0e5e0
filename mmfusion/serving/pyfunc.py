"""MLflow "model from code": the pyfunc flavour of a trained model, loaded without unpickling anything.

`mlflow.pyfunc.load_model(uri).predict(rows)` -> predictions, class probabilities and modality weights.
"""

import mlflow
import pandas as pd


class MMFusionModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from mmfusion.serving.bundle import Predictor

        self.predictor = Predictor(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict(model_input)


mlflow.models.set_model(MMFusionModel())
