"""MLflow "model from code" definition of a registered kaizen classifier.

MLflow executes this file to rebuild the model, so nothing is unpickled when a registered
version is loaded; the weights are the safetensors in the `classifier` artifact.
`mlflow.models.set_model` at the bottom is the side effect MLflow requires of such a file.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class KaizenClassifier(PythonModel):
    def load_context(self, context):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = context.artifacts["classifier"]
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import torch

        texts = [str(t) for t in model_input["text"].tolist()]
        encoded = self.tokenizer(texts, truncation=True, max_length=512, padding=True, return_tensors="pt")
        with torch.inference_mode():
            proba = torch.softmax(self.model(**encoded).logits.float(), dim=-1)
        score, index = proba.max(dim=-1)
        names = self.model.config.id2label
        return pd.DataFrame({"label": [names[int(i)] for i in index], "score": score.numpy().astype(float)})


mlflow.models.set_model(KaizenClassifier())
