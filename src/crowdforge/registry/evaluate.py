"""Score a registered model on the frozen gold test split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def score(model_uri: str, test: pd.DataFrame) -> dict[str, Any]:
    """Accuracy and macro F1 of the model's labels against the gold labels."""
    import mlflow
    from sklearn.metrics import accuracy_score, f1_score

    model = mlflow.pyfunc.load_model(model_uri)
    pred = model.predict(pd.DataFrame({"text": test["text"].astype(str)}))
    y, p = test["label"].astype(str).to_numpy(), np.asarray(pred["label"]).astype(str)
    return {"accuracy": float(accuracy_score(y, p)), "macro_f1": float(f1_score(y, p, average="macro")),
            "n": len(test)}
