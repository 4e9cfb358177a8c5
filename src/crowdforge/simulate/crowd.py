"""A simulated crowd labelling items, with the truth about every contributor.

Each non-copying contributor ``j`` has a confusion matrix ``C_j`` (rows: true class, columns:
given label) and labels item ``i`` with ``y_ij ~ Categorical(C_j[t_i])`` - the generative model
of Dawid & Skene (1979), so truth-inference methods can be checked against known parameters:

- ``expert``: diagonal ~0.95; ``ordinary``: diagonal drawn from ``ordinary_accuracy`` (60-90%);
  ``careless``: diagonal ~0.5; errors are spread uniformly over the other classes;
- ``spammer``: every row uniform (accuracy 1/K);
- ``adversary``: maps the true class to a wrong one through a fixed derangement (cyclic shift),
  with a little noise;
- ``biased``: with probability ``bias_strength`` answers its favourite class, else behaves like
  a 75%-accurate ordinary contributor.

Copiers break the independence assumption on purpose: a small group copies one leader's labels
(with ``copy_noise`` random flips) on most of the items the leader labelled.

Activity is very uneven (log-normal weights): a few contributors label a large share of items.
Everything is vectorised numpy; 100k labels take well under a second.
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from crowdforge import io

KINDS: tuple[str, ...] = ("expert", "ordinary", "careless", "spammer", "adversary", "biased")
LABEL_COLUMNS = ["contributor_id", "item_id", "text", "label", "submitted_at"]
TRUTH_COLUMNS = [
    "contributor_id", "kind", "design_accuracy", "accuracy", "n_labels", "activity",
    "favourite_class", "leader", "confusion",
]
BASE_TIME = np.datetime64("2026-01-05T08:00:00", "s")


@dataclass(frozen=True)
class CrowdMix:
    """Which kinds of contributor make up the crowd.

    ``fractions`` are shares of the non-copying contributors (normalised; every kind with a
    positive share gets at least one contributor when there is room). ``copiers`` is a count:
    that many extra contributors copy one ordinary/expert leader.
    Example for a benchmark: ``CrowdMix({"spammer": .2, "adversary": .1, "ordinary": .7}, copiers=0)``.
    """

    fractions: Mapping[str, float] = field(
        default_factory=lambda: {
            "expert": 0.10, "ordinary": 0.55, "careless": 0.08,
            "spammer": 0.10, "adversary": 0.07, "biased": 0.10,
        }
    )
    copiers: int = 3
    ordinary_accuracy: tuple[float, float] = (0.6, 0.9)
    expert_accuracy: float = 0.95
    careless_accuracy: float = 0.5
    adversary_strength: float = 0.9
    bias_strength: float = 0.5
    copy_noise: float = 0.1
    copy_share: float = 0.8
    activity_sigma: float = 1.5

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fractions) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown contributor kind(s) {unknown}; known: {list(KINDS)}")
        if any(v < 0 for v in self.fractions.values()) or sum(self.fractions.values()) <= 0:
            raise ValueError(f"fractions must be >= 0 and not all zero: {dict(self.fractions)}")
        if self.copiers < 0:
            raise ValueError("copiers must be >= 0")


class CrowdSimulation(NamedTuple):
    """``labels``: one row per (contributor, item) label; ``contributors``: the truth table."""

    labels: pd.DataFrame
    contributors: pd.DataFrame


def allocate_counts(fractions: Mapping[str, float], n: int) -> dict[str, int]:
    """Split ``n`` over kinds by largest remainder; every positive share gets >= 1 when n allows."""
    kinds = [k for k in KINDS if fractions.get(k, 0) > 0]
    w = np.array([fractions[k] for k in kinds], dtype=float)
    w = w / w.sum()
    raw = w * n
    counts = np.floor(raw).astype(int)
    if n >= len(kinds):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:  # minimums overshot: take from the largest
        counts[int(np.argmax(counts - raw))] -= 1
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    for i in order[:rest]:
        counts[i] += 1
    return {k: int(c) for k, c in zip(kinds, counts)}


def _confusion(kind: str, k: int, rng: np.random.Generator, mix: CrowdMix) -> tuple[np.ndarray, float, int]:
    """Confusion matrix for one contributor, its designed accuracy and favourite class (or -1)."""
    eye = np.eye(k)
    off = (1 - eye) / max(k - 1, 1)
    fav = -1
    if kind in ("expert", "ordinary", "careless"):
        if kind == "expert":
            acc = float(np.clip(mix.expert_accuracy + rng.normal(0, 0.01), 0, 1))
        elif kind == "ordinary":
            acc = float(rng.uniform(*mix.ordinary_accuracy))
        else:
            acc = float(np.clip(mix.careless_accuracy + rng.normal(0, 0.03), 0, 1))
        conf = acc * eye + (1 - acc) * off
    elif kind == "spammer":
        conf = np.full((k, k), 1.0 / k)
    elif kind == "adversary":
        perm = np.roll(eye, 1, axis=1)  # class c -> c+1 (mod K): a derangement
        conf = mix.adversary_strength * perm + (1 - mix.adversary_strength) / k
    elif kind == "biased":
        fav = int(rng.integers(k))
        base = 0.75 * eye + 0.25 * off
        conf = (1 - mix.bias_strength) * base + mix.bias_strength * np.eye(k)[fav][None, :]
    else:  # pragma: no cover
        raise ValueError(kind)
    acc = float(np.mean(np.diag(conf)))
    return conf, acc, fav


def _choose_contributors(
    n_items: int, ks: np.ndarray, weights: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For item i pick ks[i] distinct contributors with probability ~ weights (Gumbel top-k)."""
    n_c = len(weights)
    kmax = int(ks.max()) if n_items else 0
    logw = np.log(weights)
    items_out: list[np.ndarray] = []
    contrib_out: list[np.ndarray] = []
    chunk = max(1, 4_000_000 // max(n_c, 1))
    for start in range(0, n_items, chunk):
        stop = min(n_items, start + chunk)
        keys = logw[None, :] + rng.gumbel(size=(stop - start, n_c))
        if kmax < n_c:
            top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
        else:
            top = np.tile(np.arange(n_c), (stop - start, 1))
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        mask = np.arange(top.shape[1])[None, :] < ks[start:stop, None]
        rows = np.broadcast_to(np.arange(start, stop)[:, None], top.shape)
        items_out.append(rows[mask])
        contrib_out.append(top[mask])
    if not items_out:
        return np.empty(0, int), np.empty(0, int)
    return np.concatenate(items_out), np.concatenate(contrib_out)


def _sample_rows(cum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Vectorised categorical draw: one label index per row of cumulative probabilities."""
    u = rng.random(cum.shape[0])
    return np.minimum((u[:, None] > cum).sum(axis=1), cum.shape[1] - 1)


def simulate_crowd(
    items: pd.DataFrame,
    classes: Sequence[str],
    n_contributors: int,
    seed: int,
    labels_per_item: int | tuple[int, int] = (1, 5),
    mix: CrowdMix | None = None,
    id_prefix: str = "c",
) -> CrowdSimulation:
    """Label ``items`` (columns ``item_id,text,label``; label = true class name) with a crowd.

    ``n_contributors`` counts everyone, copiers included. ``labels_per_item`` is a fixed number
    or an inclusive ``(low, high)`` range drawn uniformly per item (copiers only add labels to
    items below ``high``). Returns :class:`CrowdSimulation` ``(labels, contributors)``; labels
    are sorted by contributor then time, ``submitted_at`` is ISO-8601 UTC.
    """
    mix = mix or CrowdMix()
    classes = [str(c) for c in classes]
    k = len(classes)
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {classes}")
    missing = {"item_id", "text", "label"} - set(items.columns)
    if missing:
        raise ValueError(f"items lack column(s) {sorted(missing)}")
    cls_index = {c: i for i, c in enumerate(classes)}
    bad = sorted(set(items["label"].astype(str)) - set(cls_index))
    if bad:
        raise ValueError(f"item labels {bad[:5]} are not in classes {classes}")
    lo, hi = (labels_per_item, labels_per_item) if isinstance(labels_per_item, int) else labels_per_item
    n_copiers = min(mix.copiers, max(0, n_contributors - 2)) if n_contributors >= 4 else 0
    n_base = n_contributors - n_copiers
    if n_base < 1 or not 1 <= lo <= hi:
        raise ValueError("need >= 1 contributor and 1 <= low <= high labels per item; "
                         f"got {n_contributors}, {labels_per_item}")
    hi_eff = min(hi, n_base)
    lo = min(lo, hi_eff)

    rng = np.random.default_rng(seed)
    counts = allocate_counts(mix.fractions, n_base)
    kinds = np.array([kd for kd, c in counts.items() for _ in range(c)] + ["copier"] * n_copiers, dtype=object)
    kinds = rng.permutation(kinds)  # ids must not reveal the kind
    width = max(2, len(str(n_contributors)))
    ids = [f"{id_prefix}{i + 1:0{width}d}" for i in range(n_contributors)]
    activity = rng.lognormal(0.0, mix.activity_sigma, size=n_contributors)

    conf = np.zeros((n_contributors, k, k))
    design = np.zeros(n_contributors)
    fav = np.full(n_contributors, -1)
    for j in range(n_contributors):
        if kinds[j] == "copier":
            continue
        conf[j], design[j], fav[j] = _confusion(str(kinds[j]), k, rng, mix)

    base_idx = np.flatnonzero(kinds != "copier")
    copier_idx = np.flatnonzero(kinds == "copier")
    truth = items["label"].astype(str).map(cls_index).to_numpy(dtype=int)
    n_items = len(items)
    ks = rng.integers(lo, hi_eff + 1, size=n_items)
    it, cj = _choose_contributors(n_items, ks, activity[base_idx], rng)
    cj = base_idx[cj]
    cum = np.cumsum(conf[cj, truth[it]], axis=1)
    given = _sample_rows(cum, rng)

    leader = -1
    if len(copier_idx):
        eligible = [j for j in base_idx if kinds[j] in ("ordinary", "expert")] or list(base_idx)
        # a moderately active contributor leads: visible in the data without dominating it
        n_by = np.array([np.sum(cj == j) for j in eligible])
        busy = [j for j, n in zip(eligible, n_by) if n >= np.quantile(n_by, 0.75)]
        leader = int(busy[int(rng.integers(len(busy)))])
        per_item = np.bincount(it, minlength=n_items)
        lead_rows = np.flatnonzero(cj == leader)
        extra_it, extra_cj, extra_y = [], [], []
        for c in copier_idx:
            room = per_item[it[lead_rows]] < hi
            take = lead_rows[room & (rng.random(len(lead_rows)) < mix.copy_share)]
            y = given[take].copy()
            flip = rng.random(len(take)) < mix.copy_noise
            y[flip] = rng.integers(k, size=int(flip.sum()))
            per_item[it[take]] += 1
            extra_it.append(it[take]); extra_cj.append(np.full(len(take), c)); extra_y.append(y)
        it = np.concatenate([it, *extra_it]); cj = np.concatenate([cj, *extra_cj])
        given = np.concatenate([given, *extra_y])
        for c in copier_idx:
            conf[c] = (1 - mix.copy_noise) * conf[leader] + mix.copy_noise / k
            design[c] = float(np.mean(np.diag(conf[c])))

    # timestamps: each contributor works from its own start, at its own pace
    start = rng.integers(0, 14 * 86400, size=n_contributors)
    pace = rng.integers(20, 600, size=n_contributors)
    order = np.lexsort((rng.random(len(it)), cj))
    it, cj, given = it[order], cj[order], given[order]
    pos = np.arange(len(cj)) - np.searchsorted(cj, cj, side="left")
    secs = start[cj] + pos * pace[cj] + rng.integers(0, 60, size=len(cj))
    stamps = np.datetime_as_string(BASE_TIME + secs.astype("timedelta64[s]"), unit="s")

    item_ids = items["item_id"].astype(str).to_numpy()
    texts = items["text"].astype(str).to_numpy()
    labels = pd.DataFrame({
        "contributor_id": np.array(ids, dtype=object)[cj],
        "item_id": item_ids[it],
        "text": texts[it],
        "label": np.array(classes, dtype=object)[given],
        "submitted_at": np.char.add(stamps.astype(str), "Z").astype(object),
    })
    correct = given == truth[it]
    n_lab = np.bincount(cj, minlength=n_contributors)
    n_ok = np.bincount(cj, weights=correct, minlength=n_contributors)
    contributors = pd.DataFrame({
        "contributor_id": ids,
        "kind": kinds.astype(str),
        "design_accuracy": np.round(design, 4),
        "accuracy": np.round(np.divide(n_ok, n_lab, out=np.full(n_contributors, np.nan), where=n_lab > 0), 4),
        "n_labels": n_lab,
        "activity": np.round(activity, 4),
        "favourite_class": [classes[f] if f >= 0 else "" for f in fav],
        "leader": [ids[leader] if kinds[j] == "copier" else "" for j in range(n_contributors)],
        "confusion": [",".join(f"{x:.4f}" for x in conf[j].ravel()) for j in range(n_contributors)],
    })
    return CrowdSimulation(labels.reset_index(drop=True), contributors[TRUTH_COLUMNS])


# --------------------------------------------------------------------------- real text files


def read_gold_file(path: str | Path) -> pd.DataFrame:
    """A gold-labelled text file as ``text,label`` (labels as strings).

    CSV / TSV / Parquet with ``text`` and ``label`` columns, or the SST format (one
    ``<label> <text>`` per line, e.g. ``stsa.binary.train``) for any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            label, _, text = line.strip().partition(" ")
            if not text:
                raise ValueError(f"{path}:{n}: expected '<label> <text>', got {line[:80]!r}")
            rows.append((text.strip(), label))
        df = pd.DataFrame(rows, columns=["text", "label"])
    missing = {"text", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    df = df[["text", "label"]].astype(str)
    df = df[df["text"].str.strip() != ""].reset_index(drop=True)
    return df


def frame_to_csv(df: pd.DataFrame) -> bytes:
    """Deterministic CSV bytes (``\\n`` line ends, minimal quoting) for contributor/gold files."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(df.columns))
    w.writerows(df.astype(object).where(df.notna(), "").itertuples(index=False, name=None))
    return buf.getvalue().encode("utf-8")


def simulate_crowd_from_file(
    gold_file: str | Path,
    out_dir: str | Path,
    n_contributors: int = 30,
    seed: int = 0,
    labels_per_item: int | tuple[int, int] = (1, 5),
    mix: CrowdMix | None = None,
    max_items: int | None = None,
    gold_check_fraction: float = 0.05,
    gold_test_fraction: float = 0.2,
    truth_dir: str | Path | None = None,
    spammer_share: float | None = None,
    adversary_share: float | None = None,
) -> dict:
    """Simulate a crowd on real gold-labelled text and write a ``data/raw``-shaped tree.

    Writes ``out_dir/contributions/<cid>.csv``, ``out_dir/gold.csv`` (``check`` items are also
    crowd-labelled, ``test`` items never are) and, in ``truth_dir`` (default ``out_dir/truth``;
    pass a folder outside ``data/raw`` when ``out_dir`` is one), ``contributors.csv`` (the
    truth table) and ``items.csv`` (true label of every crowd item). Classes are the file's
    sorted label set. ``spammer_share`` / ``adversary_share`` (instead of ``mix``) build the
    benchmark crowd "that many spammers and adversaries, the rest ordinary (60-90%), no copiers".
    Returns a summary dict.
    """
    if spammer_share is not None or adversary_share is not None:
        if mix is not None:
            raise ValueError("give either mix or spammer_share/adversary_share, not both")
        s, a = spammer_share or 0.0, adversary_share or 0.0
        if s < 0 or a < 0 or s + a > 1:
            raise ValueError(f"spammer_share + adversary_share must be within [0, 1], got {s} + {a}")
        mix = CrowdMix({"spammer": s, "adversary": a, "ordinary": 1.0 - s - a}, copiers=0)
    gold = read_gold_file(gold_file)
    rng = np.random.default_rng(seed)
    if max_items is not None and len(gold) > max_items:
        gold = gold.iloc[np.sort(rng.choice(len(gold), max_items, replace=False))].reset_index(drop=True)
    gold = gold.drop_duplicates("text").reset_index(drop=True)
    classes = sorted(gold["label"].unique())
    gold.insert(0, "item_id", [f"i{n:06d}" for n in range(len(gold))])
    order = rng.permutation(len(gold))
    n_test = round(gold_test_fraction * len(gold))
    n_check = round(gold_check_fraction * len(gold))
    test = gold.iloc[np.sort(order[:n_test])]
    crowd_items = gold.iloc[np.sort(order[n_test:])]
    check = gold.iloc[np.sort(order[n_test:n_test + n_check])]
    sim = simulate_crowd(crowd_items, classes, n_contributors, seed, labels_per_item, mix)

    out_dir = Path(out_dir)
    truth_dir = Path(truth_dir) if truth_dir is not None else out_dir / "truth"
    for cid, rows in sim.labels.groupby("contributor_id", sort=True):
        io.write_bytes(out_dir / "contributions" / f"{cid}.csv", frame_to_csv(rows[LABEL_COLUMNS]))
    gold_out = pd.concat([check.assign(split="check"), test.assign(split="test")])
    io.write_bytes(out_dir / "gold.csv", frame_to_csv(gold_out[["item_id", "text", "label", "split"]]))
    io.write_bytes(truth_dir / "contributors.csv", frame_to_csv(sim.contributors))
    io.write_bytes(truth_dir / "items.csv", frame_to_csv(crowd_items[["item_id", "text", "label"]]))
    return {
        "classes": classes,
        "n_items": len(crowd_items),
        "n_labels": len(sim.labels),
        "n_contributors": n_contributors,
        "n_gold_check": len(check),
        "n_gold_test": len(test),
        "kinds": sim.contributors["kind"].value_counts().sort_index().to_dict(),
        "out_dir": str(out_dir),
        "truth_dir": str(truth_dir),
    }
