"""The registered model, logged as "model from code" (MLflow 3: no pickled Python objects).

Input: a DataFrame with a ``text`` column (or a list of strings). Output: ``label``,
``confidence`` and one ``prob_<class>`` column per class, from the calibrated, weighted ensemble
stored in the ``ensemble`` artifact. ``CROWDFORGE_PRECISION=bf16`` (or ``int8``) in the serving
process's environment trades a little agreement for speed (``crowdforge.modeling.inference.PRECISIONS``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CrowdforgeEnsemble(PythonModel):
    def load_context(self, context: Any) -> None:
        import os

        from crowdforge.modeling.inference import PRECISION_ENV, load_ensemble

        self.ensemble = load_ensemble(context.artifacts["ensemble"], os.environ.get(PRECISION_ENV) or "fp32")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """``pd.DataFrame`` is a hint MLflow accepts without inferring a schema from it: the schema is
        the signature logged with the model (a ``text`` column in; label, confidence, probabilities out)."""
        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                raise ValueError(f"input needs a `text` column, got {list(model_input.columns)}")
            texts = model_input["text"]
        else:
            texts = pd.Series(list(model_input))
        return self.ensemble.predict(texts.fillna("").astype(str).tolist())


mlflow.models.set_model(CrowdforgeEnsemble())
