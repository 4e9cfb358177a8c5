"""Vectorised generator of large synthetic crowds with known truth (for the aggregation benchmark).

A crowd of ``n_labels`` labels over ``n_items`` items and ``n_workers`` workers, ``n_classes``
classes with a skewed class prior. Worker activity is very uneven: each worker's share of the
labels is drawn from a Pareto (Zipf-like) law, so a few workers label a large share of the items
and most label a handful. Worker kinds:

* ``good``: a confusion matrix with accuracy ~ Beta(8, 3) on the diagonal and errors that favour
  the neighbouring class (ordinal-style), so one-coin models are not exactly right;
* ``spammer``: answers uniformly at random;
* ``biased``: answers one fixed class 85% of the time, whatever the item;
* ``adversary``: answers a fixed permutation of the truth (class k -> k+1 mod K) 70% of the time.

Every step is vectorised; labels are drawn in chunks so memory stays near the size of the output
(10 million labels: three int32 columns, about 120 MB). Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("good", "spammer", "biased", "adversary")


@dataclass(frozen=True)
class SyntheticCrowd:
    labels: pd.DataFrame  # task, worker, label (int32)
    truth: pd.Series  # task -> true class
    worker_kind: pd.Series  # worker -> kind


def worker_confusions(rng: np.random.Generator, n_workers: int, n_classes: int,
                      shares: tuple[float, float, float] = (0.15, 0.05, 0.05)) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrices ``[w, true, observed]`` and kind codes (index into ``KINDS``)."""
    K = n_classes
    kind = rng.choice(len(KINDS), size=n_workers, p=[1 - sum(shares), *shares])
    acc = rng.beta(8.0, 3.0, size=n_workers)
    # good: errors to neighbours weighted 3x more than to far classes
    dist = np.abs(np.arange(K)[:, None] - np.arange(K)[None, :])
    err = np.where(dist == 1, 3.0, 1.0) * (dist > 0)
    err = err / err.sum(axis=1, keepdims=True)
    conf = (1 - acc)[:, None, None] * err[None] + acc[:, None, None] * np.eye(K)[None]
    spam = np.full((K, K), 1.0 / K)
    fav = rng.integers(0, K, size=n_workers)
    biased = np.full((n_workers, K, K), 0.15 / (K - 1))
    biased[np.arange(n_workers), :, fav] = 0.85
    perm = np.roll(np.eye(K), 1, axis=1)
    adversary = 0.7 * perm + 0.3 * spam
    conf = np.where((kind == 1)[:, None, None], spam[None], conf)
    conf = np.where((kind == 2)[:, None, None], biased, conf)
    conf = np.where((kind == 3)[:, None, None], adversary[None], conf)
    return conf, kind


def make_crowd(n_labels: int, n_classes: int = 4, labels_per_item: float = 5.0,
               labels_per_worker: float = 500.0, seed: int = 0, chunk: int = 2_000_000,
               n_workers: int | None = None, worker_seed: int | None = None) -> SyntheticCrowd:
    """Generate a crowd of ``n_labels`` labels (see the module docstring for its make-up).

    ``worker_seed`` fixes the worker population (confusions, kinds, activity) apart from the items,
    so two rounds can share the same workers on different items (the track-record simulation).
    """
    K = n_classes
    n_items = max(1, int(n_labels / labels_per_item))
    n_workers = n_workers or max(2, int(n_labels / labels_per_worker))
    wrng = np.random.default_rng(seed if worker_seed is None else worker_seed + 10_000_019)
    conf, kind = worker_confusions(wrng, n_workers, K)
    activity = wrng.pareto(1.2, size=n_workers) + 0.05  # heavy tail: very uneven activity
    activity /= activity.sum()
    prior = wrng.dirichlet(np.full(K, 4.0))
    rng = np.random.default_rng(seed)
    truth = rng.choice(K, size=n_items, p=prior).astype(np.int32)
    cdf = np.cumsum(conf, axis=2)
    cdf[:, :, -1] = 1.0
    tasks = np.empty(n_labels, np.int32)
    workers = np.empty(n_labels, np.int32)
    labels = np.empty(n_labels, np.int32)
    for start in range(0, n_labels, chunk):
        stop = min(n_labels, start + chunk)
        m = stop - start
        t = rng.integers(0, n_items, size=m, dtype=np.int32)
        w = rng.choice(n_workers, size=m, p=activity).astype(np.int32)
        u = rng.random(m)
        c = cdf[w, truth[t]]  # m x K
        labels[start:stop] = (u[:, None] > c).sum(axis=1)
        tasks[start:stop] = t
        workers[start:stop] = w
    df = pd.DataFrame({"task": tasks, "worker": workers, "label": labels})
    return SyntheticCrowd(df, pd.Series(truth, name="truth").rename_axis("task"),
                          pd.Series(np.asarray(KINDS)[kind], name="kind").rename_axis("worker"))


if __name__ == "__main__":  # quick look: python bench/synthetic_crowd.py 100000
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t0 = time.perf_counter()
    crowd = make_crowd(n)
    print(f"{n} labels in {time.perf_counter() - t0:.2f}s; kinds {crowd.worker_kind.value_counts().to_dict()}")
    print(crowd.labels.groupby("worker").size().describe())
