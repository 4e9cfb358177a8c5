"""Score a registered model on the frozen gold test split (crowdforge.metrics: one definition)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from crowdforge.metrics import evaluate


def score_labels(labels: Sequence[str], test: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1 and the majority-class baseline of predicted ``labels``."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[str(v)] for v in test["label"].astype(str)])
    pred = np.array([index.get(str(v), -1) for v in labels])
    return {**evaluate(y, pred, len(classes)), "n": len(test)}


def score(model_uri: str, test: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """Load the model from the registry, predict the test texts and score the labels."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    pred = model.predict(pd.DataFrame({"text": test["text"].astype(str)}))
    return score_labels(np.asarray(pred["label"]).astype(str), test, classes)
