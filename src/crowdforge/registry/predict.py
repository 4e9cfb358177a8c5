"""Batch prediction from a registered model (default ``@champion``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crowdforge.config import Params
from crowdforge.ingestion.readers import PAIR_FIELDS, join_pair
from crowdforge.paths import Paths


class PredictError(RuntimeError):
    pass


def read_texts(file: Path) -> list[str]:
    """A ``.txt`` file (one text per line) or a CSV/Parquet/JSONL file with a ``text`` column."""
    if not file.exists():
        raise PredictError(f"{file}: no such file")
    suffix = file.suffix.lower()
    if suffix in (".txt", ""):
        return [line for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda f: pd.read_json(f, lines=True)}
    if suffix not in readers:
        raise PredictError(f"{file}: unsupported format {suffix!r} (use .txt, .csv, .parquet or .jsonl)")
    df = readers[suffix](file)
    if "text" not in df.columns and all(c in df.columns for c in PAIR_FIELDS):  # a pair task's two fields
        df["text"] = [join_pair(a, b) for a, b in zip(*(df[c].fillna("") for c in PAIR_FIELDS), strict=True)]
    if "text" not in df.columns:
        raise PredictError(f"{file}: needs a `text` column (or `text_a` and `text_b`), found {list(df.columns)}")
    return df["text"].fillna("").astype(str).tolist()


def read_labelled(file: Path) -> tuple[list[str], list[str]]:
    """Texts and their labels from a CSV/Parquet/JSONL file with ``text`` and ``label`` columns."""
    texts = read_texts(file)
    if file.suffix.lower() in (".txt", ""):
        raise PredictError(f"{file}: labelled texts need a table with `text` and `label` columns")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".jsonl": lambda f: pd.read_json(f, lines=True)}
    df = readers[file.suffix.lower()](file)
    if "label" not in df.columns:
        raise PredictError(f"{file}: needs a `label` column, found {list(df.columns)}")
    missing = df.index[df["label"].isna()].tolist()
    if missing:
        raise PredictError(f"{file}: row {missing[0] + 2} has no label ({len(missing)} rows without one)")
    return texts, df["label"].astype(str).tolist()


def predict_texts(params: Params, paths: Paths, texts: list[str], model_uri: str | None = None,
                  precision: str = "fp32") -> pd.DataFrame:
    """Predictions of the registered model; ``precision`` as :data:`~crowdforge.modeling.inference.PRECISIONS`."""
    import os

    import mlflow
    from mlflow.exceptions import MlflowException

    from crowdforge.modeling.inference import PRECISION_ENV, PRECISIONS
    from crowdforge.registry.tracking import champion_uri, connect

    if precision not in PRECISIONS:
        raise PredictError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    os.environ[PRECISION_ENV] = precision  # read by the model's load_context
    connect(params, paths)
    uri = model_uri or champion_uri(params)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise PredictError(f"cannot load {uri}: {exc.message}. "
                           "Run `make run` (or `crowdforge promote`) first.") from None
    pred = model.predict(pd.DataFrame({"text": texts}))
    return pd.concat([pd.DataFrame({"text": texts}), pred.reset_index(drop=True)], axis=1)
