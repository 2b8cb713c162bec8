"""MLflow "model from code" definition of a registered kaizen classifier.

MLflow executes this file to rebuild the model, so nothing is unpickled when a registered
version is loaded; the weights are the safetensors in the `classifier` artifact (the name of
the first family's model, kept so every version registered since loads the same way).
Predictions go through the family's `predict_frame`, the same function as `kaizen predict`
and the service; a causal LM takes its generation settings as MLflow params.
`mlflow.models.set_model` at the bottom is the side effect MLflow requires of such a file.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_MAX_LENGTH = 128  # versions registered before max_length travelled with the model
# Written by MLflow beside MLmodel when a model is fetched as models:/NAME/VERSION.
REGISTERED_META = "registered_model_meta"


def _who(model_root: Path) -> str:
    """The version being loaded, for error messages ("v3"), or the directory when not known."""
    import yaml

    meta = model_root / REGISTERED_META
    try:
        version = (yaml.safe_load(meta.read_text()) or {}).get("model_version") if meta.is_file() else None
    except (OSError, yaml.YAMLError):
        version = None
    return f"v{version}" if version else f"the model at {model_root}"


class KaizenClassifier(PythonModel):
    def load_context(self, context):
        from tasks.families import DEFAULT_TASK, family_of
        from tasks.registry import refuse_pickles, verify_weights

        config = context.model_config or {}
        classifier = Path(context.artifacts["classifier"])
        # The model directory MLflow fetched: MLmodel, this file, artifacts/classifier.
        root = classifier.parents[1]
        who = _who(root)
        # Verified here, not only in the registry client, so a server loading the model is protected too.
        refuse_pickles(root, who)
        verify_weights(classifier, str(config.get("weights_sha256", "")), who)
        # Versions registered before the task travelled with the model are classifiers.
        self.family = family_of(str(config.get("task", DEFAULT_TASK)))
        self.model, self.tokenizer = self.family.load_saved(classifier)
        self.max_length = int(config.get("max_length", DEFAULT_MAX_LENGTH))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = [str(t) for t in model_input["text"].tolist()]
        return self.family.predict_frame(self.model, self.tokenizer, texts, self.max_length, **(params or {}))


mlflow.models.set_model(KaizenClassifier())
