"""File-level aggregation behind ``crowdforge aggregate``: read labels, check them, fit, write.

Every problem with the input becomes an :class:`AggregateError` whose message names the file,
the row (1-based, counting the header as row 1 for CSV) and the reason; the CLI prints it as
``error: ...`` and exits with code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crowdforge.truth import METHODS, make_estimator
from crowdforge.truth.calibration import GOLD_CHECK_MIN_ITEMS, gold_check


class AggregateError(ValueError):
    """Bad input for aggregation (a message for a person, not a stack trace)."""




@dataclass
class AggregateResult:
    items: pd.DataFrame  # item, label, confidence, n_labels, prob_<class>...
    workers: pd.DataFrame  # worker, n_labels, reliability, reliability_sd, note
    notes: list[str] = field(default_factory=list)
    gold_check: dict[str, float] | None = None  # see gold_check()
    model: dict[str, Any] = field(default_factory=dict)  # see model_report()


def _read_table(path: Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise AggregateError(f"{path}: no such {what} file")
    if path.is_dir():
        raise AggregateError(f"{path}: is a folder, expected a CSV or Parquet {what} file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        try:  # Arrow's reader: several times faster on large files
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], engine="pyarrow")
        except Exception:  # noqa: BLE001 -- re-read with pandas' own reader for its row-numbered error message
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise AggregateError(f"{path}: the file is empty (expected a header and {what} rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise AggregateError(f"{path}: cannot read as "
                             f"{'Parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'CSV'}: {exc}") from None


def _row_no(path: Path, pos: np.ndarray) -> list[int]:
    """Human row numbers: CSV line (header = 1), Parquet 1-based row index."""
    offset = 1 if Path(path).suffix.lower() in (".parquet", ".pq") else 2
    return [int(p) + offset for p in pos[:5]]


def _clean(col: pd.Series) -> pd.Series:
    """Values as stripped strings (ids and labels compare as text: '1' and 1 are the same)."""
    s = col.astype("string").str.strip()
    return s.mask(s == "")


def read_labels(path: Path, item_col: str = "item", worker_col: str = "worker", label_col: str = "label",
                classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and check a label file; returns a ``task, worker, label`` frame of strings."""
    raw = _read_table(path, "labels")
    cols = {"item": item_col, "worker": worker_col, "label": label_col}
    missing = [f"{c!r} (--{k}-col)" for k, c in cols.items() if c not in raw.columns]
    if missing:
        raise AggregateError(f"{path}: missing column(s) {', '.join(missing)}; found {list(raw.columns)[:10]}")
    if raw.empty:
        raise AggregateError(f"{path}: the file has a header but no label rows")
    df = pd.DataFrame({"task": _clean(raw[item_col]), "worker": _clean(raw[worker_col]),
                       "label": _clean(raw[label_col])})
    for name, col in (("item", "task"), ("worker", "worker"), ("label", "label")):
        bad = np.flatnonzero(df[col].isna().to_numpy())
        if len(bad):
            raise AggregateError(f"{path}: {len(bad)} row(s) with an empty {name} (column {cols[name]!r}), "
                                 f"first at row(s) {_row_no(path, bad)}")
    if classes is not None:
        cls = [str(c).strip() for c in classes]
        if len(set(cls)) < 2:
            raise AggregateError(f"--classes needs at least 2 distinct classes, got {cls}")
        bad = np.flatnonzero(~df["label"].isin(cls).to_numpy())
        if len(bad):
            shown = sorted(set(df["label"].iloc[bad[:50]]))[:5]
            raise AggregateError(f"{path}: {len(bad)} label(s) outside the classes {cls}: {shown}, "
                                 f"first at row(s) {_row_no(path, bad)}")
    return df.astype(object)


def read_gold(path: Path, item_col: str = "item", label_col: str = "label") -> pd.Series:
    """Known answers ``item -> label`` from a CSV/Parquet file with columns ``item_col, label_col``.

    The gold file has its own column names (``item,label`` by default; ``--gold-item-col`` /
    ``--gold-label-col`` in the CLI): the labels file's ``--item-col``/``--label-col`` do not apply
    to it, so a gold file is never read through another file's column names.
    """
    raw = _read_table(path, "gold")
    missing = [c for c in (item_col, label_col) if c not in raw.columns]
    if missing:
        raise AggregateError(f"{path}: missing gold column(s) {missing}; found {list(raw.columns)[:10]} "
                             "(name the gold file's columns with --gold-item-col / --gold-label-col)")
    g = pd.DataFrame({"item": _clean(raw[item_col]), "label": _clean(raw[label_col])})
    bad = np.flatnonzero(g.isna().any(axis=1).to_numpy())
    if len(bad):
        raise AggregateError(f"{path}: {len(bad)} gold row(s) with an empty item or label, first at row(s) "
                             f"{_row_no(path, bad)}")
    conflict = g.drop_duplicates()["item"].duplicated()
    if conflict.any():
        items = list(g.drop_duplicates()["item"][conflict].head(5))
        raise AggregateError(f"{path}: gold gives different labels for the same item(s) {items}")
    return g.drop_duplicates("item").set_index("item")["label"]


def _natural_order(values: Sequence[str]) -> list[str]:
    """Classes sorted numerically when they all look like numbers, else as text."""
    vals = list(values)
    try:
        return sorted(vals, key=float)
    except ValueError:
        return sorted(vals)


def aggregate(labels: pd.DataFrame, method: str = "auto", gold: pd.Series | None = None,
              classes: Sequence[str] | None = None, seed: int = 0,
              source: str = "labels") -> AggregateResult:
    """Fit ``method`` on a checked label table; per-item and per-worker tables plus notes."""
    if method not in METHODS:
        raise AggregateError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    notes: list[str] = []
    seen = set(pd.unique(labels["label"]))
    if classes is None and gold is not None and len(gold) and set(gold) - seen:
        only_gold = sorted(set(gold) - seen)
        notes.append(f"class(es) {only_gold} appear only in the gold: no worker ever gives them, so only gold "
                     "items get them")
        seen |= set(only_gold)
    cls = [str(c) for c in classes] if classes is not None else _natural_order(list(seen))
    if len(cls) < 2:
        # one class seen and none declared: nothing to infer, but a clear answer is possible
        notes.append(f"every label in {source} is {cls[0]!r}: every item gets it with confidence 1 "
                     "(give --classes to declare the other classes)")
        cls = cls + ["__other__"]
    if gold is not None and len(gold):
        bad = sorted(set(gold) - set(cls))
        if bad:
            raise AggregateError(f"gold label(s) {bad[:5]} are not among the classes {cls}")
        unused = ~gold.index.isin(set(labels["task"]))
        if unused.any():
            notes.append(f"{int(unused.sum())} gold item(s) have no crowd label and were ignored "
                         f"(e.g. {list(gold.index[unused][:3])})")
            gold = gold[~unused]
    counts = labels.groupby("task", sort=True).size()
    if (counts == 1).any():
        notes.append(f"{int((counts == 1).sum())} item(s) have a single label: their answer rests on one "
                     "worker's reliability (lower confidence)")
    dup = int(labels.duplicated(["task", "worker"]).sum())
    if dup:
        notes.append(f"{dup} repeated (item, worker) label(s) kept: each counts as a separate vote")

    est = make_estimator(method, cls, random_state=seed)
    probas = est.fit(labels, gold=gold).probas_
    rel, sd, n = est.worker_accuracy_, est.worker_accuracy_sd_, est.worker_n_labels_
    model = model_report(est, method)
    model["n_repeated_pairs"] = dup
    notes.append(model_note(model))
    probas = probas.reindex(columns=cls)
    if "__other__" in probas.columns and probas["__other__"].max() < 0.5:
        probas = probas.drop(columns="__other__")
        probas = probas.div(probas.sum(axis=1), axis=0)
    P = probas.to_numpy()
    items = pd.DataFrame({
        "item": probas.index.astype(str),
        "label": np.asarray(probas.columns, dtype=object)[P.argmax(axis=1)],
        "confidence": P.max(axis=1),
        "n_labels": counts.reindex(probas.index).to_numpy().astype("int64"),
    })
    for c in probas.columns:
        items[f"prob_{c}"] = probas[c].to_numpy()

    per_worker = labels.groupby("worker", sort=True)["label"]
    constant = per_worker.nunique() == 1
    n_w = per_worker.size()
    note = pd.Series("", index=n_w.index, dtype=object)
    const_many = constant & (n_w >= 5)
    note[const_many] = "gives the same label to every item"
    note[n_w < 5] = note[n_w < 5].where(note[n_w < 5] != "", "few labels: reliability mostly prior")
    if const_many.any():
        notes.append(f"{int(const_many.sum())} worker(s) give the same label to every item "
                     f"(e.g. {list(const_many[const_many].index[:3])}): their votes carry little weight")
    workers = pd.DataFrame({
        "worker": rel.index.astype(str),
        "n_labels": n.reindex(rel.index).to_numpy().astype("int64"),
        "reliability": rel.to_numpy(float),
        "reliability_sd": np.asarray(sd, float),
        "note": note.reindex(rel.index).to_numpy(),
    })
    if gold is not None and len(gold):
        on = labels[labels["task"].isin(gold.index)]
        ok = (on["label"].to_numpy() == gold.reindex(on["task"]).to_numpy())
        gc = pd.Series(ok, index=on["worker"].to_numpy()).groupby(level=0).agg(["size", "sum"])
        workers["gold_checks"] = gc["size"].reindex(workers["worker"]).fillna(0).astype("int64").to_numpy()
        workers["gold_passed"] = gc["sum"].reindex(workers["worker"]).fillna(0).astype("int64").to_numpy()
    check = None
    if gold is not None and len(gold) >= GOLD_CHECK_MIN_ITEMS:
        check = gold_check(lambda g: make_estimator(method, cls, random_state=seed).fit(labels, gold=g).probas_,
                           gold, cls, seed)
        notes.append(gold_check_note(check))
    elif method != "majority_vote":  # majority vote claims no calibration
        notes.append("no gold: the confidence comes from the labels alone and runs high where workers err "
                     f"together; give --gold (at least {GOLD_CHECK_MIN_ITEMS} items) to calibrate it and check it")
    return AggregateResult(items, workers, notes, check, model)


def model_report(est: Any, method: str) -> dict[str, Any]:
    """What was fitted and, for ``auto``, the evidence that chose it (JSON-ready)."""
    out: dict[str, Any] = {"method": method, "estimator": type(est).__name__}
    evidence = getattr(est, "evidence_", None)
    if evidence is not None:
        out["chosen"] = est.chosen_
        out["evidence"] = [{"model": str(name), **{k: round(float(v), 6) for k, v in row.items()}}
                           for name, row in evidence.iterrows()]
        out["selection_labels"] = int(est.n_selection_labels_)
        out["evidence_is"] = ("mean log predictive density per held-out label (folds of labels hidden in turn); "
                              "weight = stacking weight of the member in the output")
    return out


def model_note(model: dict[str, Any]) -> str:
    """One line for a person: the chosen model and its weight among the members."""
    if "evidence" not in model:
        return f"model: {model['method']} ({model['estimator']})"
    stacked = sorted((e for e in model["evidence"] if e["stacking_weight"] >= 0.01),
                     key=lambda e: -e["stacking_weight"])
    weights = ", ".join(f"{e['model']} {e['stacking_weight']:.2f}" for e in stacked)
    mixed = [e["model"] for e in model["evidence"] if 0 < e["weight"] < 1]
    best = max(model["evidence"], key=lambda e: e["heldout_loglik"])
    return (f"model {model['chosen']}" + (f" (a mixture of {', '.join(mixed)})" if mixed else "")
            + f", chosen by stacking the members' held-out label likelihoods on {model['selection_labels']} labels "
            f"(weights {weights}; best alone {best['model']}, {best['heldout_loglik']:.4f} nats per label)")


def gold_check_note(check: dict[str, float]) -> str:
    """One line for a person: the cross-fitted check and what it means."""
    gap = check["mean_confidence"] - check["accuracy"]
    verdict = ("over-confident: read the confidence as an upper bound" if gap > 0.05 else
               "under-confident" if gap < -0.05 else "the confidence matches the accuracy on average")
    return (f"confidence checked on {check['n']} gold items, hidden {check['folds']} folds in turn: accuracy "
            f"{check['accuracy']:.3f}, mean confidence {check['mean_confidence']:.3f}, ECE {check['ece']:.3f}, "
            f"{check['ece_floor']:.3f} if perfectly calibrated ({verdict})")


def write_table(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from crowdforge import io
    from crowdforge.safety import neutralise_formulas

    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        io.write_parquet(path, df)
        return
    sink = pa.BufferOutputStream()  # Arrow's writer (10x pandas' to_csv), then one atomic write
    pacsv.write_csv(pa.Table.from_pandas(neutralise_formulas(df), preserve_index=False), sink,
                    pacsv.WriteOptions(quoting_style="needed"))
    io.write_bytes(path, sink.getvalue().to_pybytes())
