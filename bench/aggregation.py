"""Truth inference benchmark: crowdforge's estimators side by side with crowd-kit 1.4.2, in one run.

    python bench/aggregation.py            # everything; writes the "Truth inference" section of BENCHMARKS.md
    python bench/aggregation.py --quick    # shared crowds + 1M only, no BENCHMARKS.md update

Parts:
1. every crowd under ../shared/datasets/truth_inference/: accuracy, ECE and wall time for each
   method (crowd-kit GLAD in a subprocess with a time limit, it is slow on the larger crowds);
2. synthetic crowds of 1M and 10M labels (bench/synthetic_crowd.py): each method in its own
   subprocess, reporting accuracy, wall time of the fit and the process's peak RSS (ru_maxrss,
   which includes generating the crowd); crowd-kit GLAD is skipped there (hours);
3. gold checks: 5% of items gold vs none, on the shared crowds (accuracy on the non-gold items);
   how far recalibration can take the confidence (one fixed map for all crowds; 5-20% gold);
4. track record: a two-round simulation (round 1 rich, round 2 with 1-2 labels per item, same
   workers): round 2 with the ledger prior from round 1 vs fresh.
The shared crowds are read at run time, never copied; when ../shared is absent their parts are
skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
SHARED = PROJECT.parent / "shared" / "datasets" / "truth_inference"
sys.path.insert(0, str(HERE))

OURS = {"cf auto": "auto", "cf dawid_skene": "dawid_skene", "cf one_coin": "one_coin", "cf mace": "mace",
        "cf majority_vote": "majority_vote"}
# variants of the default's one design choice that was compared on these crowds (the output is the
# member with the largest stacking weight, or the weighted mixture of the members); the figure
# reported for each crowd uses the variant that wins on the *other* crowds (leave-one-crowd-out)
VARIANTS = {"cf auto": {}, "cf auto (mixture)": {"output": "mixture"},
            "cf auto (raw stacking)": {"stack_tempered": False}}
CK = ("MajorityVote", "Wawa", "DawidSkene", "OneCoinDawidSkene", "GLAD", "MACE")
ALL = [*OURS, *(v for v in VARIANTS if v not in OURS), *(f"ck {m}" for m in CK)]


# ---------------------------------------------------------------------------- one fit
def make_estimator(name: str):
    warnings.filterwarnings("ignore")
    if name.startswith("cf "):
        from crowdforge.truth import make_estimator

        if name in VARIANTS:
            return make_estimator("auto", **VARIANTS[name])
        return make_estimator(OURS[name])
    import crowdkit.aggregation as ck

    m = name[3:]
    if m == "DawidSkene":
        return ck.DawidSkene(n_iter=100)
    if m == "OneCoinDawidSkene":
        return ck.OneCoinDawidSkene(n_iter=100)
    if m == "MACE":
        return ck.MACE(n_iter=50, random_state=0)
    return getattr(ck, m)()


def fit_eval(name: str, labels: pd.DataFrame, truth: pd.Series, gold: pd.Series | None = None) -> dict:
    from crowdforge.truth.calibration import expected_calibration_error

    est = make_estimator(name)
    t0 = time.perf_counter()
    P = pred = None
    if name.startswith("cf "):
        est.fit(labels, gold=gold)
        P = est.probas_
    elif hasattr(est, "fit_predict_proba"):
        P = est.fit_predict_proba(labels)
    else:
        pred = est.fit_predict(labels)
    wall = time.perf_counter() - t0
    if P is not None:
        P = P.reindex(truth.index)
        P = P.reindex(columns=sorted(P.columns))
        filled = P.fillna(1.0 / P.shape[1]).to_numpy()
        pred = pd.Series(np.asarray(P.columns)[filled.argmax(axis=1)], index=P.index)
        y = pd.Index(P.columns).get_indexer(truth.to_numpy())
        ece = expected_calibration_error(filled, y)
        conf = float(filled.max(axis=1).mean())
    else:
        pred, ece, conf = pred.reindex(truth.index), float("nan"), float("nan")
    acc = float((pred.to_numpy() == truth.to_numpy()).mean())
    return {"acc": acc, "ece": ece, "conf": conf, "wall": wall}


def load_shared(name: str) -> tuple[pd.DataFrame, pd.Series]:
    lab = pd.read_csv(SHARED / name / "label.csv").rename(columns={"item": "task"})
    truth = pd.read_csv(SHARED / name / "truth.csv").set_index("item")["truth"]
    truth = truth[truth.index.isin(set(lab["task"]))]
    return lab, truth


def synthetic(n: int) -> tuple[pd.DataFrame, pd.Series]:
    from synthetic_crowd import make_crowd

    c = make_crowd(n, seed=1)
    truth = c.truth[c.truth.index.isin(np.unique(c.labels["task"].to_numpy()))]
    return c.labels, truth


def child_main(args: list[str]) -> None:
    """``--child METHOD DATASET``: one fit in this process; prints a JSON line."""
    name, data = args
    lab, truth = synthetic(int(data[4:])) if data.startswith("syn:") else load_shared(data)
    res = fit_eval(name, lab, truth)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(res))


def in_subprocess(name: str, data: str, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        p = subprocess.run([sys.executable, __file__, "--child", name, data], capture_output=True, text=True,
                           timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"> {timeout:.0f} s (stopped)"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr.strip().splitlines() or ["?"])[-1]
    return {"error": ("out of memory" if p.returncode in (-9, 137) else f"failed: {tail[:80]}")}


# ---------------------------------------------------------------------------- parts
def shared_crowds() -> list[str]:
    return sorted(p.name for p in SHARED.iterdir() if (p / "label.csv").exists())


def part_shared(glad_timeout: float) -> pd.DataFrame:
    rows = []
    for crowd in shared_crowds():
        lab, truth = load_shared(crowd)
        for name in ALL:
            r = in_subprocess(name, crowd, glad_timeout) if name == "ck GLAD" else fit_eval(name, lab, truth)
            rows.append({"crowd": crowd, "method": name, **r})
            print(f"  {crowd:14s} {name:22s} {r}", flush=True)
    return pd.DataFrame(rows)


def part_synthetic(sizes: list[int], timeout: float) -> pd.DataFrame:
    rows = []
    for n in sizes:
        for name in [m for m in ALL if m not in VARIANTS or m == "cf auto"]:
            if name == "ck GLAD":
                r = {"error": "skipped (hours at this size)"}
            else:
                r = in_subprocess(name, f"syn:{n}", timeout)
            rows.append({"n_labels": n, "method": name, **r})
            print(f"  {n:>9d} {name:22s} {r}", flush=True)
    return pd.DataFrame(rows)


def failure_mode_crowd(kind: str, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic crowds of the two kinds where a fixed equal-weight hedge failed (issue 12).

    ``class_dependent``: binary, 5,000 items, 300 workers, 4-5 labels per item; every worker is
    reliable on the common class (right 85-99%) and poor on the rare one (30-70%), so one-coin
    models, which assume errors independent of the truth, go wrong. ``dense``: 108 items, 39
    workers who all label every item, 4 ordinal classes; errors go to the neighbouring grade with
    worker-specific bias, so a full confusion matrix per worker is well determined.
    """
    rng = np.random.default_rng(seed)
    rows = []
    if kind == "class_dependent":
        n, W = 5000, 300
        truth = rng.choice(2, n, p=[0.7, 0.3])
        right = np.c_[rng.uniform(0.85, 0.99, W), rng.uniform(0.3, 0.7, W)]
        for t in range(n):
            for w in rng.choice(W, size=int(rng.integers(4, 6)), replace=False):
                rows.append((t, w, int(truth[t] if rng.random() < right[w, truth[t]] else 1 - truth[t])))
    else:
        n, W, K = 108, 39, 4
        truth = rng.integers(0, K, n)
        acc = rng.uniform(0.35, 0.9, W)
        up = rng.uniform(0.1, 0.9, W)  # share of a worker's errors that go one grade up
        for t in range(n):
            k = truth[t]
            for w in range(W):
                if rng.random() < acc[w]:
                    lab = k
                else:
                    lab = min(k + 1, K - 1) if rng.random() < up[w] else max(k - 1, 0)
                    lab = lab if lab != k else (k + 1 if k < K - 1 else k - 1)
                rows.append((t, w, int(lab)))
    return pd.DataFrame(rows, columns=["task", "worker", "label"]), pd.Series(truth)


FAILURE_METHODS = ("cf auto", "cf auto (mixture)", "cf dawid_skene", "cf one_coin", "cf majority_vote", "ck DawidSkene",
                   "ck OneCoinDawidSkene", "ck MACE", "ck MajorityVote")


def part_failure_modes(seeds: int = 3) -> pd.DataFrame:
    rows = []
    for kind in ("class_dependent", "dense"):
        for seed in range(seeds):
            lab, truth = failure_mode_crowd(kind, seed)
            for name in FAILURE_METHODS:
                rows.append({"kind": kind, "seed": seed, "method": name, **fit_eval(name, lab, truth)})
            print(f"  failure mode {kind} seed {seed} done", flush=True)
    return pd.DataFrame(rows)


def loco(acc: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each crowd's accuracy under the default's variant that has the best mean on the *other* crowds."""
    names = [v for v in VARIANTS if v in acc.columns]
    pick = pd.Series({c: acc.drop(index=c)[names].mean().idxmax() for c in acc.index})
    return pd.Series({c: acc.loc[c, v] for c, v in pick.items()}), pick


def part_gold(fraction: float = 0.05, seed: int = 0) -> pd.DataFrame:
    from crowdforge.truth import StackedDawidSkene
    from crowdforge.truth.calibration import expected_calibration_error

    rows = []
    for crowd in shared_crowds():
        lab, truth = load_shared(crowd)
        rng = np.random.default_rng(seed)
        gold = truth.iloc[np.sort(rng.choice(len(truth), max(1, round(fraction * len(truth))), replace=False))]
        rest = truth.drop(gold.index)
        out = {"crowd": crowd, "gold_items": len(gold)}
        for tag, g in (("none", None), ("gold", gold)):
            est = StackedDawidSkene().fit(lab, gold=g)
            P = est.probas_.reindex(rest.index)
            y = pd.Index(P.columns).get_indexer(rest.to_numpy())
            out[f"acc_{tag}"] = float((P.to_numpy().argmax(axis=1) == y).mean())
            out[f"ece_{tag}"] = expected_calibration_error(P.to_numpy(), y)
        rows.append(out)
        print(f"  gold {out}", flush=True)
    return pd.DataFrame(rows)


def part_confidence() -> pd.DataFrame:
    """Where the default's confidence goes wrong, per shared crowd (the truth only measures here).

    ``agree_wrong``: share of the errors on items with >= 3 labels where >= 75% of the labels agree
    on the (wrong) answer the model gives -- errors the crowd makes together. ``trusted_wrong``:
    the same among the labels of trusted workers only (estimated accuracy >= 0.6), so spammers
    do not dilute the agreement. A label-only calibration cannot see such errors: a held-out
    label is predicted *well* by the others there.
    """
    from crowdforge.truth import StackedDawidSkene

    rows = []
    for crowd in shared_crowds():
        lab, truth = load_shared(crowd)
        est = StackedDawidSkene().fit(lab)
        P = est.probas_.reindex(truth.index)
        conf = P.to_numpy().max(axis=1)
        pred = pd.Series(np.asarray(P.columns)[P.to_numpy().argmax(axis=1)], index=truth.index)
        err = pred.to_numpy() != truth.to_numpy()

        # called below in the same iteration, so the loop variables it reads are this crowd's (B023)
        def agreeing_on_wrong(labels: pd.DataFrame) -> np.ndarray:
            share = (labels["label"].to_numpy() == pred.reindex(labels["task"]).to_numpy())  # noqa: B023
            by_task = pd.DataFrame({"task": labels["task"].to_numpy(), "same": share}).groupby("task")["same"]
            ok = (by_task.mean() >= 0.75) & (by_task.size() >= 3)
            return err & ok.reindex(truth.index, fill_value=False).to_numpy()  # noqa: B023

        trusted = lab[lab["worker"].map(est.worker_accuracy_).to_numpy() >= 0.6]
        hi = conf >= 0.95
        rows.append({"crowd": crowd, "truth_items": len(truth), "items": lab["task"].nunique(),
                     "acc": 1 - err.mean(), "conf": conf.mean(), "share_hi": hi.mean(),
                     "acc_hi": 1 - err[hi].mean() if hi.any() else float("nan"),
                     "agree_wrong": agreeing_on_wrong(lab).sum() / max(1, err.sum()),
                     "trusted_wrong": agreeing_on_wrong(trusted).sum() / max(1, err.sum())})
        print(f"  confidence {rows[-1]}", flush=True)
    return pd.DataFrame(rows)


def part_calibration_limits(seeds: int = 3) -> dict[str, pd.DataFrame]:
    r"""How far recalibration can take the default's confidence (the truth only measures here).

    ``global``: one fixed map -- temperature ``s`` on the log-posterior and a floor ``e`` mixed in
    uniformly, :math:`(1-e)\,\mathrm{softmax}(\log q/s) + e/K` -- applied to every crowd; the count
    of crowds it brings to ECE <= 0.05. Choosing the map on the truth is an oracle no label-only
    method has, so its best count bounds what any crowd-independent recalibration can reach.
    ``gold``: ECE on the non-gold items with 5%, 10% and 20% of the items gold (the default then fits
    its temperature on the gold when there are >= 30 gold items); worst of ``seeds`` draws.
    """
    from crowdforge.truth import StackedDawidSkene
    from crowdforge.truth.calibration import expected_calibration_error, tempered

    grid = [(s, e) for s in (1.0, 1.5, 2.0, 3.0) for e in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1)]
    glob, gold = {}, []
    for crowd in shared_crowds():
        lab, truth = load_shared(crowd)
        P = StackedDawidSkene().fit(lab).probas_.reindex(truth.index)
        logq = np.log(np.maximum(P.to_numpy(), 1e-300))
        y = pd.Index(P.columns).get_indexer(truth.to_numpy())
        K = logq.shape[1]
        glob[crowd] = {f"s={s:g}, e={e:g}": expected_calibration_error(
            (1 - e) * tempered(logq, np.zeros(K), s) + e / K, y) for s, e in grid}
        for frac in (0.05, 0.10, 0.20):
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                g = truth.iloc[np.sort(rng.choice(len(truth), max(1, round(frac * len(truth))), replace=False))]
                rest = truth.drop(g.index)
                Q = StackedDawidSkene().fit(lab, gold=g).probas_.reindex(rest.index)
                yr = pd.Index(Q.columns).get_indexer(rest.to_numpy())
                gold.append({"crowd": crowd, "frac": frac, "seed": seed, "gold_items": len(g),
                             "ece": expected_calibration_error(Q.to_numpy(), yr)})
        print(f"  calibration limits {crowd}", flush=True)
    return {"global": pd.DataFrame(glob), "gold": pd.DataFrame(gold)}


def part_track_record(n_seeds: int = 3) -> pd.DataFrame:
    """Round 1: 50k labels (5 per item); round 2: same 100 workers, 1.5 labels per item on new items."""
    from synthetic_crowd import make_crowd

    from crowdforge.agents.reputation import _errors_frame, ledger_prior
    from crowdforge.truth import StackedDawidSkene

    rows = []
    for seed in range(n_seeds):
        r1 = make_crowd(50_000, labels_per_item=5, n_workers=100, seed=100 + seed, worker_seed=seed)
        r2 = make_crowd(6_000, labels_per_item=1.5, n_workers=100, seed=200 + seed, worker_seed=seed)
        classes = list(range(4))
        fit1 = StackedDawidSkene(classes=classes).fit(r1.labels)
        # the ledger as the reputation agent stores it: per-worker expected confusion counts (JSON)
        counts = fit1.counts_
        ledger = pd.DataFrame({
            "contributor_id": list(fit1.worker_n_labels_.index),
            "data_version": "round1",
            "confusion": [json.dumps({"classes": classes, "counts": counts.xs(w, level=0).to_numpy().T.tolist()})
                          for w in fit1.worker_n_labels_.index],
        })
        prior = ledger_prior(ledger, "round2", classes, weight=1.0, cap=50.0)
        wp = _errors_frame(prior, classes)
        truth = r2.truth[r2.truth.index.isin(set(r2.labels["task"]))]
        fresh = StackedDawidSkene(classes=classes).fit(r2.labels)
        hist = StackedDawidSkene(classes=classes).fit(r2.labels, worker_prior=wp)
        acc = lambda e: float((e.labels_.reindex(truth.index) == truth).mean())  # noqa: B023 (this iteration's)
        from crowdforge.truth import MajorityVote

        rows.append({"seed": seed, "round2_labels": len(r2.labels), "round2_items": len(truth),
                     "mv": acc(MajorityVote(classes=classes).fit(r2.labels)), "fresh": acc(fresh),
                     "ledger": acc(hist)})
        print(f"  track record {rows[-1]}", flush=True)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- report
def fmt(v, spec=".3f", empty="–"):
    return empty if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def goals(shared: pd.DataFrame | None, syn: pd.DataFrame | None, gold: pd.DataFrame | None,
          track: pd.DataFrame | None, limits: dict[str, pd.DataFrame] | None = None) -> list[str]:
    """The issue's goals, each checked against this run's numbers."""
    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    out = []
    if shared is not None:
        acc = shared.pivot(index="crowd", columns="method", values="acc")
        ours, pick = loco(acc)
        out.append(f"- The default's one compared design choice ({' vs '.join(VARIANTS)}) is chosen "
                   "leave-one-crowd-out: "
                   + ", ".join(f"{v} for {(pick == v).sum()} crowds" for v in VARIANTS) + "; the figures below use it.")
        beats = [("cf dawid_skene", ours.mean(), acc["cf dawid_skene"].mean(), len(ours))]
        for m in CK:
            have = acc[f"ck {m}"].dropna().index  # a crowd-kit method that did not finish is left out
            beats.append((m, ours[have].mean(), acc.loc[have, f"ck {m}"].mean(), len(have)))
        ok = all(o > c for _, o, c, _ in beats)
        worst = min(beats, key=lambda b: b[1] - b[2])
        out.append(f"- Mean accuracy above every crowd-kit method's mean and our dawid_skene: {mark(ok)} "
                   f"(cf auto {ours.mean():.4f} over "
                   f"{len(ours)} crowds; closest: {worst[0]} {worst[2]:.4f} vs cf auto {worst[1]:.4f} on the "
                   f"{worst[3]} crowds it finished).")
        gap = 100 * (ours - acc[[f"ck {m}" for m in CK]].max(axis=1))
        out.append(f"- Never more than 1.0 pt below the best crowd-kit method: {mark(gap.min() >= -1.0)} (worst "
                   f"{gap.min():+.1f} pt on {gap.idxmin()}).")
    if syn is not None and "wall" in syn:
        for n, grp in syn.groupby("n_labels", sort=True):
            w = grp.set_index("method")["wall"]
            if pd.notna(w.get("cf auto")) and pd.notna(w.get("ck DawidSkene")):
                r = w["ck DawidSkene"] / w["cf auto"]
                out.append(f"- At least 3x faster than crowd-kit DawidSkene at {n:,} labels: "
                           f"{mark(r >= 3) if n == 1_000_000 else f'(goal set at 1M) {r:.1f}x'}"
                           + (f" ({r:.1f}x: {w['cf auto']:.2f} s vs {w['ck DawidSkene']:.2f} s)"
                              if n == 1_000_000 else ""))
        big = syn[(syn["n_labels"] >= 10_000_000) & (syn["method"] == "cf auto")]
        if len(big) and "peak_rss_mb" in big and pd.notna(big["peak_rss_mb"].iloc[0]):
            mb = float(big["peak_rss_mb"].iloc[0])
            out.append(f"- 10M labels aggregated within 4 GB: {mark(mb <= 4096)} (cf auto peak RSS {mb:,.0f} MB, "
                       "crowd generation included).")
        elif len(big):
            out.append(f"- 10M labels aggregated within 4 GB: **not met** ({big['error'].iloc[0]}).")
    if track is not None:
        out.append(f"- Track record pays: {mark(track['ledger'].mean() > track['fresh'].mean())} (round 2: "
                   f"{track['ledger'].mean():.3f} with the ledger vs {track['fresh'].mean():.3f} fresh).")
    if gold is not None:
        out.append(f"- Gold checks pay: {mark(gold['acc_gold'].mean() > gold['acc_none'].mean())} (mean accuracy on "
                   f"the non-gold items {gold['acc_gold'].mean():.4f} with 5% gold vs {gold['acc_none'].mean():.4f}; "
                   f"per crowd: higher or equal on {(gold['acc_gold'] >= gold['acc_none']).sum()} of {len(gold)}).")
    if shared is not None:
        ece = shared.pivot(index="crowd", columns="method", values="ece")["cf auto"]
        bad = ece[ece > 0.05]
        out.append(f"- ECE at most 0.05 on the shared crowds: {mark(bad.empty)} without gold (met on "
                   f"{len(ece) - len(bad)} of {len(ece)}; above: "
                   + (", ".join(f"{c} {v:.3f}" for c, v in bad.items()) or "none") + ")"
                   + (f"; with 5% gold (temperature fitted on the gold when >= 30 gold items): met on "
                      f"{(gold['ece_gold'] <= 0.05).sum()} of {len(gold)}" if gold is not None else "") + ".")
        if limits is not None and not bad.empty:
            ok = (limits["global"] <= 0.05).sum(axis=1)
            worst = limits["gold"].groupby(["frac", "crowd"])["ece"].max().unstack("frac")
            out.append(f"  Why it stays open: no crowd-independent recalibration reaches it -- the best single "
                       f"temperature-and-floor map, chosen on the truth (an oracle), meets it on {ok.max()} of "
                       f"{limits['global'].shape[1]} crowds; and even with 20% of the items gold, "
                       + ", ".join(f"{c} ({v:.3f})" for c, v in worst[0.20][worst[0.20] > 0.05].items())
                       + " stay above 0.05 (worst of 3 draws): there the confidence ranks the right and wrong "
                       "answers badly (see *Why the confidence is off*), which no monotone recalibration mends.")
    out.append("- Bad input gives a clear answer or error, never a stack trace: checked by "
               "`tests/truth/test_aggregate_cli.py` (not by this benchmark).")
    return out


def render(shared: pd.DataFrame | None, syn: pd.DataFrame | None, gold: pd.DataFrame | None,
           track: pd.DataFrame | None, header: str, confidence: pd.DataFrame | None = None,
           limits: dict[str, pd.DataFrame] | None = None, failures: pd.DataFrame | None = None) -> str:
    out = [header, "", "**Goals** (issue 12), checked against the numbers below:", "",
           *goals(shared, syn, gold, track, limits), ""]
    if shared is None:
        out += [f"Shared crowds skipped: {SHARED} is absent.", ""]
    else:
        acc = shared.pivot(index="crowd", columns="method", values="acc")[ALL]
        ece = shared.pivot(index="crowd", columns="method", values="ece")[ALL]
        wall = shared.pivot(index="crowd", columns="method", values="wall")[ALL]
        ck_cols = [c for c in ALL if c.startswith("ck ")]
        best_ck = acc[ck_cols].max(axis=1)
        ours_loco, _ = loco(acc)
        out += [("**Accuracy on the shared crowds** (`cf` = crowdforge, `ck` = crowd-kit 1.4.2; "
                 "`cf auto` is the default; `LOCO`: the default's variant chosen without that crowd; last column: "
                 "`LOCO` minus the best crowd-kit method on that crowd)"), "",
                "| crowd | " + " | ".join(ALL) + " | LOCO | LOCO − best ck |", "|---" * (len(ALL) + 3) + "|"]
        for crowd in acc.index:
            cells = [fmt(acc.loc[crowd, m]) for m in ALL]
            out.append(f"| {crowd} | " + " | ".join(cells) + f" | {fmt(ours_loco[crowd])} | "
                       f"{100 * (ours_loco[crowd] - best_ck[crowd]):+.1f} pt |")
        means = acc.mean(axis=0, skipna=False)
        out.append("| **mean** | " + " | ".join(fmt(means[m]) for m in ALL) + f" | {fmt(ours_loco.mean(), '.4f')} | |")
        out += ["", ("**Expected calibration error** of the output confidence (15 bins; crowd-kit GLAD `–` = "
                 "did not finish in the time limit)"), "",
                "| crowd | " + " | ".join(ALL) + " |", "|---" * (len(ALL) + 1) + "|"]
        for crowd in ece.index:
            out.append(f"| {crowd} | " + " | ".join(fmt(ece.loc[crowd, m]) for m in ALL) + " |")
        out.append("| **mean** | " + " | ".join(fmt(ece[m].mean(skipna=False)) for m in ALL) + " |")
        if confidence is not None:
            out += ["", ("**Why the confidence is off** (`cf auto`, no gold). `mean conf.` above accuracy = "
                     "over-confident. `errors the crowd makes together`: share of the errors on items with >= 3 "
                     "labels where >= 75% of the labels agree on the wrong answer (all workers / only the workers "
                     "the model trusts, estimated accuracy >= 0.6); the label-only temperature "
                     "(held-out label likelihood) cannot see those, since there a held-out label is predicted "
                     "well by the others. `truth items`: items with a true label / all items."), "",
                    ("| crowd | truth items | accuracy | mean conf. | items at conf. >= .95 | accuracy there | "
                     "errors the crowd makes together (all / trusted) |"), "|---|---|---|---|---|---|---|"]
            for _, r in confidence.iterrows():
                out.append(f"| {r['crowd']} | {int(r['truth_items'])} / {int(r['items'])} | {r['acc']:.3f} | "
                           f"{r['conf']:.3f} | {r['share_hi']:.0%} | {fmt(r['acc_hi'])} | {r['agree_wrong']:.0%} / "
                           f"{r['trusted_wrong']:.0%} |")
        if limits is not None:
            glob = limits["global"]
            ok = (glob <= 0.05).sum(axis=1).sort_values(ascending=False, kind="stable")
            top = list(ok.index[:4])
            out += ["", ("**How far recalibration goes** (`cf auto`). Left: ECE after one fixed map "
                     "(temperature `s` on the log-posterior, floor `e` mixed in uniformly) applied to every crowd; "
                     "the four maps meeting 0.05 on the most crowds, chosen on the truth -- an oracle a label-only "
                     "method does not have. Right: ECE on the non-gold items with 5/10/20% of the items gold, "
                     "worst of 3 random draws."), "",
                    "| crowd | " + " | ".join(top) + " | 5% gold | 10% gold | 20% gold |",
                    "|---" * (len(top) + 4) + "|"]
            worst = limits["gold"].groupby(["crowd", "frac"])["ece"].max().unstack("frac")
            for crowd in glob.columns:
                out.append(f"| {crowd} | " + " | ".join(fmt(glob.loc[m, crowd]) for m in top) + " | "
                           + " | ".join(fmt(worst.loc[crowd, f]) for f in (0.05, 0.10, 0.20)) + " |")
            out.append("| **crowds <= 0.05** | " + " | ".join(str(ok[m]) for m in top) + " | "
                       + " | ".join(str(int((worst[f] <= 0.05).sum())) for f in (0.05, 0.10, 0.20)) + " |")
        out += ["", "**Wall time (s)** of each fit on the shared crowds", "",
                "| crowd | " + " | ".join(ALL) + " |", "|---" * (len(ALL) + 1) + "|"]
        for crowd in wall.index:
            out.append(f"| {crowd} | " + " | ".join(fmt(wall.loc[crowd, m], ".2f") for m in ALL) + " |")
        out.append("")
    if syn is not None:
        out += [("**Synthetic crowds** (bench/synthetic_crowd.py: 4 classes, 5 labels/item, 500 labels/worker on "
                 "average with Pareto activity, 15% spammers, 5% biased, 5% adversaries). Each fit in its own "
                 "subprocess; peak RSS is the process's ru_maxrss, including generating the crowd."), "",
                "| labels | method | accuracy | fit wall (s) | time vs ck DawidSkene | peak RSS (MB) |",
                "|---|---|---|---|---|---|"]
        for n, grp in syn.groupby("n_labels", sort=True):
            ref = grp.loc[grp["method"] == "ck DawidSkene", "wall"]
            ref = float(ref.iloc[0]) if len(ref) and not pd.isna(ref.iloc[0]) else None
            for _, r in grp.iterrows():
                if isinstance(r.get("error"), str):
                    out.append(f"| {n:,} | {r['method']} | {r['error']} | | | |")
                    continue
                ratio = ("reference" if r["method"] == "ck DawidSkene"
                         else f"{ref / r['wall']:.1f}x faster" if ref and r["wall"] <= ref
                         else (f"{r['wall'] / ref:.1f}x slower" if ref else "–"))
                out.append(f"| {n:,} | {r['method']} | {r['acc']:.4f} | {r['wall']:.2f} | {ratio} | "
                           f"{r['peak_rss_mb']:.0f} |")
        out.append("")
    if failures is not None:
        out += [("**The failure modes, synthetic** (`failure_mode_crowd`: class-dependent errors on a sparse binary "
                 "crowd; a dense crowd where 39 workers label all 108 items), mean accuracy over 3 seeds"), "",
                "| crowd kind | " + " | ".join(FAILURE_METHODS) + " |", "|---" * (len(FAILURE_METHODS) + 1) + "|"]
        fm = failures.groupby(["kind", "method"])["acc"].mean().unstack("method")
        for kind in fm.index:
            out.append(f"| {kind} | " + " | ".join(fmt(fm.loc[kind, m]) for m in FAILURE_METHODS) + " |")
        out.append("")
    if gold is not None:
        out += [("**Gold checks pay**: `cf auto` with 5% of the items' true labels given as gold vs none; "
                 "accuracy and ECE on the other 95%."), "",
                "| crowd | gold items | accuracy, no gold | accuracy, 5% gold | ECE, no gold | ECE, 5% gold |",
                "|---|---|---|---|---|---|"]
        for _, r in gold.iterrows():
            out.append(f"| {r['crowd']} | {int(r['gold_items'])} | {r['acc_none']:.3f} | {r['acc_gold']:.3f} | "
                       f"{r['ece_none']:.3f} | {r['ece_gold']:.3f} |")
        out.append(f"| **mean** | | {gold['acc_none'].mean():.4f} | {gold['acc_gold'].mean():.4f} | "
                   f"{gold['ece_none'].mean():.3f} | {gold['ece_gold'].mean():.3f} |")
        out.append("")
    if track is not None:
        out += [("**Track record pays**: two rounds with the same 100 synthetic workers. Round 1: 50,000 labels "
                 "(5 per item) fitted by `cf auto`; its per-worker expected confusion counts go through the "
                 "reputation ledger's prior (`ledger_prior`, cap 50 pseudo-labels). Round 2: new items with "
                 "1-2 labels each (1.5 on average), fitted fresh vs with the ledger prior."), "",
                "| seed | round-2 labels | round-2 items | majority vote | fresh | with ledger |",
                "|---|---|---|---|---|---|"]
        for _, r in track.iterrows():
            out.append(f"| {int(r['seed'])} | {int(r['round2_labels'])} | {int(r['round2_items'])} | {r['mv']:.3f} | "
                       f"{r['fresh']:.3f} | {r['ledger']:.3f} |")
        out.append(f"| **mean** | | | {track['mv'].mean():.3f} | {track['fresh'].mean():.3f} | "
                   f"{track['ledger'].mean():.3f} |")
        out.append("")
    return "\n".join(out)


def write_section(text: str, path: Path = PROJECT / "BENCHMARKS.md", title: str = "## Truth inference") -> None:
    """Replace the body of the section whose heading starts with ``title`` (appended when absent)."""
    doc = path.read_text()
    pat = re.compile(rf"({re.escape(title)}[^\n]*\n)(.*?)(?=\n## |\Z)", re.DOTALL)
    if not pat.search(doc):
        doc = doc.rstrip() + f"\n\n{title}\n\n"
    doc = pat.sub(lambda m: m.group(1) + text.rstrip() + "\n", doc, count=1)
    path.write_text(doc)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shared crowds + 1M only; do not touch BENCHMARKS.md")
    ap.add_argument("--sizes", default="1000000,10000000", help="synthetic crowd sizes (labels)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per synthetic fit")
    ap.add_argument("--glad-timeout", type=float, default=120, help="seconds per crowd-kit GLAD fit on a shared crowd")
    ap.add_argument("--no-write", action="store_true", help="print only")
    a = ap.parse_args()
    sizes = [1_000_000] if a.quick else [int(s) for s in a.sizes.split(",") if s]
    load0 = os.getloadavg()
    t0 = time.time()
    have_shared = SHARED.is_dir()
    if not have_shared:
        print(f"skipping the shared crowds: {SHARED} is absent")
    shared = part_shared(a.glad_timeout) if have_shared else None
    gold = part_gold() if have_shared else None
    confidence = part_confidence() if have_shared else None
    limits = part_calibration_limits() if have_shared else None
    track = part_track_record()
    failures = part_failure_modes()
    syn = part_synthetic(sizes, a.timeout)
    load1 = os.getloadavg()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import crowdkit

    header = (f"Command: `make bench-aggregation` (`python bench/aggregation.py`), {time.strftime('%Y-%m-%d %H:%M')}, "
              f"{(time.time() - t0) / 60:.0f} min. Machine: {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python "
              f"{sys.version.split()[0]}, numpy {np.__version__}, crowd-kit {crowdkit.__version__}; "
              f"the CPU is shared with other engineers: `uptime` load average {load0[0]:.2f} / {load0[1]:.2f} / "
              f"{load0[2]:.2f} at the start and {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at the end, so "
              "wall times are noisy (compare ratios within one size, not absolute seconds).")
    text = render(shared, syn, gold, track, header, confidence, limits, failures)
    print(text)
    if not (a.quick or a.no_write):
        write_section(text)
        print("wrote the Truth inference section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
