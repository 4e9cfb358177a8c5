"""Reputation agent: infer each item's soft label and how far to trust each contributor.

Reads ``accepted.parquet`` (crowd labels), ``gold.parquet`` (expert labels: ``check`` items are
hidden checks inside the crowd's work, ``test`` items are the frozen test split),
``reports/validate.json`` (quarantined rows per contributor) and the reputation ledger. Writes
``data/processed/labels.parquet``, the updated ledger and ``reports/reputation.json``.

How trust is built (all of it enters one fit of ``reputation.method``, by default ``auto``: the
Dawid-Skene family stacked by held-out label likelihood, :class:`crowdforge.truth.StackedDawidSkene`;
the report's ``model`` says which members carry the output and why):

* **The frozen test split is never seen**: accepted rows whose item is a gold ``test`` item -- by
  ``item_id`` *or* by identical (whitespace/case-normalised) text, since a contributor may submit
  the same sentence under a new id -- are dropped before anything else.
* **Gold checks** are known answers: their posteriors are clamped (``gold_weight``), so they anchor
  every confusion matrix. The reported ``gold_check_accuracy`` comes from a second fit *without*
  the clamp (same priors): clamped items would be trivially right. ``confidence_check`` (with at
  least 20 gold items) hides a fifth of the gold at a time and scores the output's confidence on
  it (:func:`crowdforge.truth.calibration.gold_check`): whether the confidence handed to finetune
  can be taken at face value depends on how often this crowd errs together.
* **Track record (ledger)**: one row per (contributor, data version), where the data version is a
  content hash of the (contributor, item, label) triples this run used. The prior of this run is
  the sum of the expected confusion counts stored for each contributor under *other* data
  versions, times ``ledger_prior_weight`` and capped at ``ledger_prior_cap`` pseudo-labels, so
  history informs a sparse round but a long history cannot outvote what a contributor does now.
  Contributors never seen start from the population prior (the estimator's smoothing and
  shrinkage toward the crowd's pooled error pattern). After fitting, this data version's rows are
  replaced, never appended twice; with the prior built only from other versions, a re-run on the
  same data gives identical outputs. (If a new data version re-uses old labels, those labels count
  once as data and once, capped, as history: the cap bounds the double count.)
* **Validation failures** lower trust: each row of a contributor that validation quarantined adds
  ``validation_penalty`` pseudo-labels of *error* to their confusion prior (spread over the
  off-diagonal cells in proportion to the class prior; at most ``ledger_prior_cap``). A
  contributor who sends malformed rows is more likely careless with labels too, but a
  quarantined row says nothing about *which* mistakes they make, hence the even spread. The
  pseudo-errors lower the accuracy estimate and, through the confusion matrix, their vote weight.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import Params, ReputationParams
from crowdforge.gold import text_keys
from crowdforge.paths import Paths
from crowdforge.reports import write_report
from crowdforge.truth import MajorityVote, make_estimator
from crowdforge.truth.aggregate import model_note, model_report
from crowdforge.truth.calibration import GOLD_CHECK_MIN_ITEMS, gold_check

LEDGER_COLUMNS = [
    "contributor_id", "run_id", "data_version", "labels", "gold_checks", "gold_passed",
    "validation_failures", "reliability", "reliability_sd", "confusion",
]


# ---------------------------------------------------------------------------- pure functions
def exclude_test_items(accepted: pd.DataFrame, gold: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop rows whose item is a gold ``test`` item, by item_id or by identical normalised text."""
    test = gold[gold["split"] == "test"]
    if test.empty:
        return accepted, 0
    by_id = accepted["item_id"].isin(set(test["item_id"]))
    by_text = text_keys(accepted["text"]).isin(set(text_keys(test["text"])))
    drop = by_id | by_text
    return accepted[~drop].reset_index(drop=True), int(drop.sum())


def data_version(crowd: pd.DataFrame) -> str:
    """Content hash of the (contributor, item, label) triples, independent of row order."""
    keys = (crowd["contributor_id"].astype(str) + "\x1f" + crowd["item_id"].astype(str) + "\x1f"
            + crowd["label"].astype(str)).sort_values()
    h = hashlib.sha256()
    for chunk in np.array_split(keys.to_numpy(), max(1, len(keys) // 100_000)):
        h.update("\x1e".join(chunk).encode("utf-8"))
    return h.hexdigest()


def _errors_frame(blocks: dict[str, np.ndarray], classes: Sequence[str]) -> pd.DataFrame:
    """{worker: [true, observed] array} -> frame in DawidSkene's errors_ layout."""
    workers = sorted(blocks)
    rows = pd.MultiIndex.from_product([workers, list(classes)], names=["worker", "label"])
    if not workers:
        return pd.DataFrame(columns=list(classes), index=rows, dtype=float)
    values = np.concatenate([blocks[w].T for w in workers])
    return pd.DataFrame(values, index=rows, columns=list(classes))


def ledger_prior(ledger: pd.DataFrame | None, current_version: str, classes: Sequence[str],
                 weight: float, cap: float) -> dict[str, np.ndarray]:
    """Per-contributor confusion pseudo-counts [true, observed] from other data versions' rows."""
    out: dict[str, np.ndarray] = {}
    if ledger is None or ledger.empty or weight <= 0:
        return out
    K = len(classes)
    past = ledger[ledger["data_version"] != current_version]
    for cid, conf in zip(past["contributor_id"], past["confusion"]):
        stored = json.loads(conf)
        idx = [stored["classes"].index(c) if c in stored["classes"] else -1 for c in classes]
        counts = np.asarray(stored["counts"], float)
        m = np.zeros((K, K))
        for a, ia in enumerate(idx):
            for b, ib in enumerate(idx):
                if ia >= 0 and ib >= 0:
                    m[a, b] = counts[ia, ib]
        out[cid] = out.get(cid, np.zeros((K, K))) + m
    for cid, m in out.items():
        m = m * weight
        total = m.sum()
        out[cid] = m * (cap / total) if total > cap > 0 else m
    return out


NOT_JUNK = ("resubmitted",)  # quarantine reasons that say nothing about a contributor's care


def validation_failures(by_contributor: dict[str, Any]) -> dict[str, int]:
    """Quarantined rows per contributor from ``validate.json``, minus re-sent identical files."""
    out: dict[str, int] = {}
    for cid, rec in by_contributor.items():
        rec = rec or {}
        excused = sum(int((rec.get("reasons") or {}).get(r, 0) or 0) for r in NOT_JUNK)
        out[str(cid)] = max(0, int(rec.get("rows_quarantined", 0) or 0) - excused)
    return out


def validation_prior(failures: dict[str, int], class_prior: np.ndarray, penalty: float,
                     cap: float) -> dict[str, np.ndarray]:
    """Pseudo-errors [true, observed] for contributors with quarantined rows (see module doc)."""
    K = len(class_prior)
    spread = (np.asarray(class_prior, float)[:, None] / (K - 1)) * (1.0 - np.eye(K))
    out = {}
    for cid, n in failures.items():
        mass = min(penalty * float(n), cap) if cap > 0 else penalty * float(n)
        if mass > 0:
            out[cid] = mass * spread
    return out


def combine_priors(*priors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for p in priors:
        for cid, m in p.items():
            out[cid] = out.get(cid, 0.0) + m
    return out


def expected_confusion(crowd: pd.DataFrame, probas: pd.DataFrame) -> dict[str, np.ndarray]:
    """counts[w][true, observed] = sum over w's labels of the item's posterior (data only)."""
    classes = list(probas.columns)
    P = probas.reindex(crowd["item_id"]).to_numpy()
    obs = pd.Categorical(crowd["label"], categories=classes).codes
    K = len(classes)
    onehot = np.eye(K)[obs]  # n x K observed
    joint = P[:, :, None] * onehot[:, None, :]  # n x K_true x K_obs
    workers, inv = np.unique(crowd["contributor_id"].to_numpy(), return_inverse=True)
    flat = np.zeros((len(workers), K * K))
    np.add.at(flat, inv, joint.reshape(len(crowd), K * K))
    return {w: flat[i].reshape(K, K) for i, w in enumerate(workers)}


def explain_worker(conf: np.ndarray, classes: Sequence[str], class_prior: np.ndarray) -> str:
    """A short human reason for a contributor's reliability, read off their confusion counts."""
    K = len(classes)
    P = (conf + 1.0 / K) / (conf + 1.0 / K).sum(axis=1, keepdims=True)  # rows: true class
    diffs = [0.5 * np.abs(P[a] - P[b]).sum() for a in range(K) for b in range(a + 1, K)]
    answer_share = conf.sum(axis=0) / max(conf.sum(), 1e-12)
    if np.mean(diffs) < 0.25:
        top = int(np.argmax(answer_share))
        if answer_share[top] > 0.6:
            return f"biased: labels nearly everything {classes[top]} ({answer_share[top]:.0%}) regardless of the item"
        return "spammer-like: near-uniform answers that ignore the item"
    off = P * (1.0 - np.eye(K))
    k, l = np.unravel_index(np.argmax(off), off.shape)
    if off[k, l] > 0.5 and off[k, l] > P[k, k]:
        return f"adversary-like: systematically labels {classes[k]} as {classes[l]} ({off[k, l]:.0%})"
    excess = answer_share - np.asarray(class_prior)
    top = int(np.argmax(excess))
    if excess[top] > 0.2:
        return f"biased toward {classes[top]} ({answer_share[top]:.0%} of answers vs {class_prior[top]:.0%} expected)"
    acc = np.trace(conf) / max(conf.sum(), 1e-12)
    if acc >= 0.8:
        return f"reliable: ~{acc:.0%} agreement with the inferred labels"
    worst = f"; most often {classes[k]} -> {classes[l]}" if off[k, l] > 0.15 else ""
    return f"noisy: ~{acc:.0%} agreement with the inferred labels{worst}"


def item_table(crowd: pd.DataFrame, probas: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """labels.parquet rows: most common text per item, arg-max label, confidence, soft label."""
    counts = crowd.groupby(["item_id", "text"], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values(["item_id", "n", "text"], ascending=[True, False, True], kind="mergesort")
    text = counts.drop_duplicates("item_id").set_index("item_id")["text"]
    n_labels = crowd.groupby("item_id", sort=True).size()
    P = probas.reindex(columns=list(classes)).sort_index()
    out = pd.DataFrame({
        "item_id": P.index.astype(str),
        "text": text.reindex(P.index).to_numpy(),
        "label": np.asarray(classes, dtype=object)[P.to_numpy().argmax(axis=1)],
        "confidence": P.to_numpy().max(axis=1),
        "n_labels": n_labels.reindex(P.index).to_numpy().astype("int64"),
    })
    for c in classes:
        out[f"prob_{c}"] = P[c].to_numpy()
    return out


def fit_crowd(crowd: pd.DataFrame, classes: Sequence[str], rp: ReputationParams,
              gold: pd.Series | None, prior: dict[str, np.ndarray]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run the configured estimator; returns task posteriors and what was fitted (``model_report``)."""
    data = crowd.rename(columns={"item_id": "task", "contributor_id": "worker"})[["task", "worker", "label"]]
    est = make_estimator(rp.method, classes, n_iter=rp.max_iter, tol=rp.tol, smoothing=rp.smoothing,
                         shrinkage=rp.shrinkage, gold_weight=rp.gold_weight)
    est.fit(data, gold=gold, worker_prior=_errors_frame(prior, classes) if prior else None)
    info = model_report(est, rp.method)
    info["n_iter"] = int(getattr(est, "n_iter_", 0))
    return est.probas_, info


def worker_table(crowd: pd.DataFrame, probas: pd.DataFrame, prior: dict[str, np.ndarray],
                 check: pd.Series, failures: dict[str, int], classes: Sequence[str],
                 class_prior: np.ndarray) -> pd.DataFrame:
    """One row per contributor: reliability (Beta posterior of expected accuracy), gold record, why."""
    data_counts = expected_confusion(crowd, probas)
    on_gold = crowd[crowd["item_id"].isin(check.index)]
    passed = (on_gold["label"].to_numpy() == check.reindex(on_gold["item_id"]).to_numpy())
    g_checks = on_gold.groupby("contributor_id").size()
    g_passed = pd.Series(passed, index=on_gold["contributor_id"].to_numpy()).groupby(level=0).sum()
    rows = []
    for cid, conf in sorted(data_counts.items()):
        total = conf + prior.get(cid, 0.0)
        correct, n = float(np.trace(total)), float(total.sum())
        a, b = 1.0 + correct, 1.0 + n - correct
        rows.append({
            "contributor_id": str(cid),
            "labels": round(conf.sum()),
            "gold_checks": int(g_checks.get(cid, 0)),
            "gold_passed": int(g_passed.get(cid, 0)),
            "validation_failures": int(failures.get(cid, 0)),
            "reliability": a / (a + b),
            "reliability_sd": float(np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))),
            "confusion": json.dumps({"classes": list(classes), "counts": np.round(conf, 6).tolist()}),
            "why": explain_worker(conf, classes, class_prior),
        })
    return pd.DataFrame(rows)


def update_ledger(ledger: pd.DataFrame | None, workers: pd.DataFrame, version: str, run_id: str) -> pd.DataFrame:
    """Replace this data version's rows (idempotent), keep every other version's rows."""
    new = workers.assign(run_id=run_id, data_version=version)[LEDGER_COLUMNS]
    if ledger is not None and not ledger.empty:
        new = pd.concat([ledger[ledger["data_version"] != version][LEDGER_COLUMNS], new], ignore_index=True)
    return new.sort_values(["data_version", "contributor_id"], kind="mergesort").reset_index(drop=True)


def _trusted_entry(r: pd.Series) -> dict[str, Any]:
    why = r["why"] + (f"; {r['validation_failures']} row(s) quarantined" if r["validation_failures"] else "")
    return {
        "contributor_id": r["contributor_id"], "reliability": round(float(r["reliability"]), 4),
        "sd": round(float(r["reliability_sd"]), 4), "labels": int(r["labels"]),
        "gold_passed": int(r["gold_passed"]), "gold_checks": int(r["gold_checks"]),
        "gold": f"{int(r['gold_passed'])}/{int(r['gold_checks'])}",
        "validation_failures": int(r["validation_failures"]), "why": why,
    }


# ---------------------------------------------------------------------------- wiring
def _read_inputs(paths: Paths) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int], pd.DataFrame | None]:
    if not paths.accepted.exists():
        raise FileNotFoundError(f"{paths.accepted}: run the validate agent first")
    accepted = pd.read_parquet(paths.accepted)
    gold = pd.read_parquet(paths.gold) if paths.gold.exists() else pd.DataFrame(
        columns=["item_id", "text", "label", "split"])
    vpath = paths.report("validate")
    failures = validation_failures(io.read_json(vpath).get("by_contributor") or {}) if vpath.exists() else {}
    ledger = pd.read_parquet(paths.ledger) if paths.ledger.exists() else None
    return accepted, gold, failures, ledger


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Infer soft labels and contributor reliability; update the ledger; write the report."""
    rp = params.reputation
    classes = list(params.data.classes)
    accepted, gold, failures, ledger = _read_inputs(paths)
    missing = {"contributor_id", "item_id", "text", "label"} - set(accepted.columns)
    if missing:
        raise ValueError(f"{paths.accepted}: missing column(s) {sorted(missing)}")
    crowd, n_test_rows = exclude_test_items(accepted, gold)
    crowd = crowd[["contributor_id", "item_id", "text", "label"]].astype(str)
    if crowd.empty:
        raise ValueError("no crowd labels left after removing gold test items: nothing to infer")
    unknown = sorted(set(crowd["label"]) - set(classes))
    if unknown:
        raise ValueError(f"accepted labels {unknown[:5]} are not among data.classes {classes}")
    check = gold[gold["split"] == "check"].drop_duplicates("item_id").set_index("item_id")["label"].astype(str)
    check = check[check.isin(classes)]
    check_in_crowd = check[check.index.isin(set(crowd["item_id"]))]

    version = data_version(crowd)
    run_id = os.environ.get("CROWDFORGE_RUN_ID", f"rep-{version[:12]}")
    base = MajorityVote(classes=classes).fit(
        crowd.rename(columns={"item_id": "task", "contributor_id": "worker"}))
    class_prior = base.probas_.mean(axis=0).reindex(classes).to_numpy()
    history = ledger_prior(ledger, version, classes, rp.ledger_prior_weight, rp.ledger_prior_cap)
    prior = combine_priors(history, validation_prior(failures, class_prior, rp.validation_penalty,
                                                     rp.ledger_prior_cap))

    # honest gold accuracy: a fit that does not see the gold answers
    unclamped, _ = fit_crowd(crowd, classes, rp, None, prior)
    gold_acc = mv_gold_acc = None
    if len(check_in_crowd):
        mv_pred = base.labels_.reindex(check_in_crowd.index).to_numpy()
        mv_gold_acc = float((mv_pred == check_in_crowd.to_numpy()).mean())
        pred = unclamped.reindex(check_in_crowd.index).idxmax(axis=1)
        gold_acc = float((pred.to_numpy() == check_in_crowd.to_numpy()).mean())
    probas, info = fit_crowd(crowd, classes, rp, check_in_crowd, prior)
    confidence_check = None
    if len(check_in_crowd) >= GOLD_CHECK_MIN_ITEMS:
        confidence_check = gold_check(lambda g: fit_crowd(crowd, classes, rp, g, prior)[0], check_in_crowd,
                                      classes)

    labels = item_table(crowd, probas, classes)
    workers = worker_table(crowd, probas, prior, check_in_crowd, failures, classes, class_prior)
    new_ledger = update_ledger(ledger, workers, version, run_id)
    io.write_parquet(paths.labels, labels)
    io.write_parquet(paths.ledger, new_ledger)

    mv_labels = base.labels_.reindex(labels["item_id"]).to_numpy()
    ranked = workers.sort_values(["reliability", "contributor_id"], ascending=[False, True], kind="mergesort")
    most = [_trusted_entry(r) for _, r in ranked.head(5).iterrows()]
    least = [_trusted_entry(r) for _, r in ranked.iloc[::-1].head(5).iterrows()]
    metrics: dict[str, Any] = {
        "method": rp.method,
        "n_items": len(labels),
        "n_labels": len(crowd),
        "n_contributors": int(crowd["contributor_id"].nunique()),
        "n_test_rows_excluded": n_test_rows,
        "gold_check_items": len(check_in_crowd),
        "gold_check_accuracy": gold_acc,
        "majority_vote_gold_check_accuracy": mv_gold_acc,
        "majority_vote_agreement": float((labels["label"].to_numpy() == mv_labels).mean()),
        "mean_confidence": float(labels["confidence"].mean()),
        "confidence_check": confidence_check,
        "label_counts": {c: int((labels["label"] == c).sum()) for c in classes},
        "data_version": version,
        "run_id": run_id,
        "contributors_with_history": len(history),
        "contributors_with_validation_failures": int(sum(1 for v in failures.values() if v > 0)),
        "ledger_rows": len(new_ledger),
        "n_iter": int(info["n_iter"]),
        "model": info,
        "most_trusted": most,
        "least_trusted": least,
    }
    return write_report(paths, "reputation", metrics, _summary(metrics))


def _confidence_line(check: dict[str, Any] | None) -> str:
    if check is None:
        return (f"Confidence not checked: fewer than {GOLD_CHECK_MIN_ITEMS} gold check items (it runs high "
                "where contributors err together).")
    return (f"Confidence checked on the gold check items, each of {check['folds']} folds hidden in turn: "
            f"accuracy {check['accuracy']:.3f}, mean confidence {check['mean_confidence']:.3f}, "
            f"ECE {check['ece']:.3f} (a perfectly calibrated output would show {check['ece_floor']:.3f} "
            "on this many items).")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _summary(m: dict[str, Any]) -> str:
    ga = "n/a (no gold check items labelled)" if m["gold_check_accuracy"] is None else f"{m['gold_check_accuracy']:.3f}"
    lines = [
        "# Reputation",
        "",
        (f"{m['method']} over {m['n_labels']} labels from {m['n_contributors']} contributors on "
         f"{m['n_items']} items ({m['n_test_rows_excluded']} rows on gold test items excluded)."),
        (f"Accuracy on {m['gold_check_items']} gold check items, inferred without seeing their "
         f"answers: {ga}. Agreement with majority vote: {m['majority_vote_agreement']:.3f}; "
         f"mean confidence {m['mean_confidence']:.3f}."),
        _confidence_line(m["confidence_check"]),
        _sentence(model_note(m["model"])),
        (f"History used for {m['contributors_with_history']} contributors; "
         f"{m['contributors_with_validation_failures']} had rows quarantined."),
        "",
        "| | contributor | reliability | sd | labels | gold | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for tag, group in (("most", m["most_trusted"]), ("least", m["least_trusted"])):
        for e in group:
            lines.append(f"| {tag} | {e['contributor_id']} | {e['reliability']:.3f} | {e['sd']:.3f} | "
                         f"{e['labels']} | {e['gold']} | {e['why']} |")
    return "\n".join(lines)
