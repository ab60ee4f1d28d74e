"""The MLflow pyfunc model of a finlora output directory, logged as code (no pickle).

`mlflow.pyfunc.load_model(uri).predict(texts)` takes a list of texts, a pandas Series, or a
DataFrame (column `text`, else its first column) and returns one label per text.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from finlora.predictor import Predictor


def as_texts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return model_input[column].fillna("").astype(str).tolist()
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        return [str(t) for t in model_input]
    raise TypeError(f"expected texts (list, Series or DataFrame), got {type(model_input).__name__}")


class FinloraClassifier(PythonModel):
    def load_context(self, context) -> None:
        self.predictor = Predictor.load(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None) -> list[str]:
        texts = as_texts(model_input)
        return [self.predictor.labels[i] for i in self.predictor.predict_ids(texts)]


set_model(FinloraClassifier())
