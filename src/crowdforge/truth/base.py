"""Shared plumbing for the truth-inference estimators: input checks and the sparse label design.

Every estimator takes the long crowd-kit layout: one row per label with columns ``task``,
``worker``, ``label``. Internally the labels become one sparse matrix

    A[i, w * K + l] = number of times worker w gave label l to task i,

so that both halves of EM are single sparse matrix products (``A @ log_pi`` for the task
log-likelihoods, ``A.T @ T`` for the expected confusion counts) and nothing loops over labels.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

REQUIRED_COLUMNS = ("task", "worker", "label")


@dataclass(frozen=True)
class Encoded:
    """The label table encoded as integer codes plus the sparse design matrix ``A``."""

    tasks: pd.Index  # task names, sorted (row order of every per-task output)
    workers: pd.Index  # worker names, sorted
    classes: pd.Index  # class names in the order given (or sorted)
    task_idx: np.ndarray  # per label row
    worker_idx: np.ndarray
    label_idx: np.ndarray
    A: sp.csr_matrix  # n_tasks x (n_workers * n_classes), counts

    @cached_property
    def AT(self) -> sp.csr_matrix:
        """``A`` transposed, in CSR (the M-step's ``A.T @ T`` is then a fast row-major product)."""
        return self.A.T.tocsr()

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


class FitPredict:
    """``fit_predict`` and ``fit_predict_proba`` for every estimator (crowd-kit's names)."""

    def fit_predict(self, data: pd.DataFrame, gold: pd.Series | None = None,
                    worker_prior: pd.DataFrame | None = None) -> pd.Series:
        return self.fit(data, gold, worker_prior).labels_  # type: ignore[attr-defined]

    def fit_predict_proba(self, data: pd.DataFrame, gold: pd.Series | None = None,
                          worker_prior: pd.DataFrame | None = None) -> pd.DataFrame:
        return self.fit(data, gold, worker_prior).probas_  # type: ignore[attr-defined]


def resolve_classes(labels: pd.Series, classes: Sequence[Hashable] | None) -> pd.Index:
    """The class list: the one given (checked for unknown labels) or the sorted observed labels."""
    if classes is None:
        try:
            return pd.Index(sorted(pd.unique(labels)))
        except TypeError:  # mixed, unorderable label types
            return pd.Index(sorted(pd.unique(labels), key=str))
    cls = pd.Index(list(classes))
    if len(cls) < 2 or cls.has_duplicates:
        raise ValueError(f"classes must list at least 2 distinct labels, got {list(cls)}")
    unknown = pd.Index(pd.unique(labels)).difference(cls)
    if len(unknown):
        shown = list(unknown[:5])
        raise ValueError(
            f"{len(unknown)} label value(s) are not among the classes {list(cls)}: {shown}"
            + (" ..." if len(unknown) > 5 else "")
        )
    return cls


def check_data(data: pd.DataFrame) -> pd.DataFrame:
    """Validate the long label table; returns it with only the three columns."""
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame with columns {REQUIRED_COLUMNS}, got {type(data).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"label table is missing column(s) {missing}; needs {list(REQUIRED_COLUMNS)}")
    if data.empty:
        raise ValueError("label table is empty: there is nothing to aggregate")
    df = data[list(REQUIRED_COLUMNS)]
    nulls = df.isna().any(axis=1)
    if nulls.any():
        raise ValueError(f"label table has {int(nulls.sum())} row(s) with a missing task, worker or label")
    return df


def encode(data: pd.DataFrame, classes: Sequence[Hashable] | None = None) -> Encoded:
    """Check ``data`` and build integer codes and the sparse design matrix (deterministic order)."""
    df = check_data(data)
    cls = resolve_classes(df["label"], classes)
    task_idx, tasks = pd.factorize(df["task"], sort=True)
    worker_idx, workers = pd.factorize(df["worker"], sort=True)
    label_idx = cls.get_indexer(df["label"])
    K = len(cls)
    A = sp.csr_matrix(
        (np.ones(len(df)), (task_idx, worker_idx * K + label_idx)),
        shape=(len(tasks), len(workers) * K),
    )
    A.sum_duplicates()
    return Encoded(pd.Index(tasks, name="task"), pd.Index(workers, name="worker"), cls,
                   task_idx, worker_idx, label_idx, A)


def subset(enc: Encoded, keep: np.ndarray, compact_tasks: bool = False) -> Encoded:
    """The same crowd with only the label rows where ``keep`` is true (workers and classes keep their codes).

    ``compact_tasks`` drops tasks left without labels and renumbers the rest (a sample of items);
    otherwise every task keeps its row, with no labels where all of them were dropped (a fold).
    """
    t, w, lab = enc.task_idx[keep], enc.worker_idx[keep], enc.label_idx[keep]
    tasks = enc.tasks
    if compact_tasks:
        used = np.unique(t)
        t = np.searchsorted(used, t)
        tasks = enc.tasks[used]
    K = enc.n_classes
    A = sp.csr_matrix((np.ones(len(t)), (t, w * K + lab)), shape=(len(tasks), enc.n_workers * K))
    A.sum_duplicates()
    return Encoded(tasks, enc.workers, enc.classes, t, w, lab, A)


def row_max(x: np.ndarray) -> np.ndarray:
    """Row maxima of a (tasks x classes) array.

    Same values as ``x.max(axis=1)``, but one vectorised pass per class column: numpy's
    reduction over a short contiguous last axis is ~15x slower than this on 10^5-10^6 rows, and
    it dominated the E-step at 1M labels.
    """
    out = x[:, 0].copy()
    for k in range(1, x.shape[1]):
        np.maximum(out, x[:, k], out=out)
    return out


def row_sum(x: np.ndarray) -> np.ndarray:
    """Row sums of a (tasks x classes) array, class by class (see :func:`row_max`; fixed order)."""
    out = x[:, 0].copy()
    for k in range(1, x.shape[1]):
        out += x[:, k]
    return out


def col_sum(x: np.ndarray) -> np.ndarray:
    """Column sums of a (tasks x classes) array (``x.sum(axis=0)``, faster on tall arrays)."""
    return np.array([x[:, k].sum() for k in range(x.shape[1])], dtype=float)


def vote_counts(enc: Encoded, worker_weights: np.ndarray | None = None) -> np.ndarray:
    """Task x class (weighted) vote counts: ``A`` collapsed over workers."""
    K = enc.n_classes
    w = np.ones(enc.n_workers) if worker_weights is None else np.asarray(worker_weights, float)
    # collapse matrix C[(w, l), l] = weight_w
    rows = np.arange(enc.n_workers * K)
    C = sp.csr_matrix((np.repeat(w, K), (rows, np.tile(np.arange(K), enc.n_workers))),
                      shape=(enc.n_workers * K, K))
    return np.asarray((enc.A @ C).todense())


def most_probable(probas: pd.DataFrame) -> pd.Series:
    """Arg-max label per task; ties go to the first class in column order (deterministic)."""
    values = probas.to_numpy()
    return pd.Series(probas.columns[values.argmax(axis=1)], index=probas.index, name="agg_label")


def gold_matrix(gold: pd.Series | None, tasks: pd.Index, classes: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``tasks`` that have a known answer and their one-hot answers.

    Gold for tasks nobody labelled is ignored (it cannot anchor any worker); a gold label that is
    not a class is an error.
    """
    if gold is None or len(gold) == 0:
        return np.zeros(0, dtype=int), np.zeros((0, len(classes)))
    gold = pd.Series(gold).dropna()
    if gold.index.has_duplicates:
        dup = list(gold.index[gold.index.duplicated()][:5])
        raise ValueError(f"gold has duplicated task(s): {dup}")
    unknown = pd.Index(pd.unique(gold.to_numpy())).difference(classes)
    if len(unknown):
        raise ValueError(f"gold label(s) {list(unknown[:5])} are not among the classes {list(classes)}")
    pos = tasks.get_indexer(gold.index)
    keep = pos >= 0
    rows = pos[keep]
    onehot = np.zeros((len(rows), len(classes)))
    onehot[np.arange(len(rows)), classes.get_indexer(gold.to_numpy()[keep])] = 1.0
    return rows, onehot
