"""The demo data set: a ``data/raw`` tree that exercises every stage, reproducibly.

Written from ``params.demo`` alone (seeded by ``params.demo.seed``), byte-identical on every run:

- ``data/raw/contributions/<cid>.csv``, and for a few contributors the folder form
  ``<cid>/batch1.csv`` + ``batch2.csv`` (one of them without a ``contributor_id`` column, so the
  contributor comes from the folder name);
- ``data/raw/gold.csv``: ``check`` items (a subset of the ``n_items`` crowd items, also labelled
  by the crowd) and ``test`` items (never shown to the crowd);
- ``data/raw/unlabeled/corpus.txt``: the pretraining corpus;
- ``data/simulation/``: what nobody downstream may read as input - the contributor truth table
  (``contributors.csv``), every item's true label (``items.csv``) and the list of malformed rows
  injected on purpose with the reason validation should give (``malformed.csv``).

About ``new_item_fraction`` of the crowd items are "new": their text is first submitted by a
contributor (their id is ``<cid>.nNNN``), and other contributors may label them later.
"""

from __future__ import annotations

import csv
import io as _io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.simulate.crowd import LABEL_COLUMNS, CrowdMix, frame_to_csv, simulate_crowd
from crowdforge.simulate.text import generate_texts

# Malformed row kinds, in the order they are injected, and the reason code validate must give.
MALFORMED_KINDS: dict[str, str] = {
    "empty_text": "missing_text",
    "bad_label": "label_not_in_classes",
    "missing_item_id": "missing_item_id",
    "slash_item_id": "bad_item_id",
    "too_many_fields": "parse_error",
    "unterminated_quote": "parse_error",
    "nul_byte": "parse_error",
    "formula": "",  # valid text: must be accepted
    "duplicate_row": "duplicate",
    "short_text": "text_length",
}
N_FOLDER_CONTRIBUTORS = 3


def simulation_dir(paths: Paths) -> Path:
    """Where the simulation's ground truth goes: outside ``data/raw`` so ingest never reads it."""
    return paths.root / "data" / "simulation"


def _csv_line(fields: list[str]) -> str:
    buf = _io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


def _malformed_line(kind: str, cid: str, item_id: str, text: str, label: str, ts: str,
                    own_lines: list[str], bad_label: str) -> str:
    """One deliberately broken (or suspicious-but-valid) CSV line for contributor ``cid``."""
    if kind == "empty_text":
        return _csv_line([cid, item_id, "", label, ts])
    if kind == "bad_label":
        return _csv_line([cid, item_id, text, bad_label, ts])
    if kind == "missing_item_id":
        return _csv_line([cid, "", text, label, ts])
    if kind == "slash_item_id":
        return _csv_line([cid, f"../{item_id}/x", text, label, ts])
    if kind == "too_many_fields":
        return _csv_line([cid, item_id, text, label, ts, "extra"])
    if kind == "unterminated_quote":
        return f'{cid},{item_id},"{text},{label},{ts}\n'
    if kind == "nul_byte":
        return _csv_line([cid, item_id, text[:5] + "\x00" + text[5:], label, ts])
    if kind == "formula":
        return _csv_line([cid, item_id, '=HYPERLINK("http://example.com/x","click here")', label, ts])
    if kind == "duplicate_row":
        return own_lines[0]
    if kind == "short_text":
        return _csv_line([cid, item_id, "ok", label, ts])
    raise ValueError(kind)  # pragma: no cover


def build_demo(params: Params) -> dict[str, Any]:
    """Everything the demo writes, as ``{relative path: bytes}`` plus a summary (pure, no I/O)."""
    demo, classes = params.demo, list(params.data.classes)
    if demo.n_gold_check > demo.n_items * (1 - demo.new_item_fraction):
        raise ValueError("demo.n_gold_check must fit in the platform (non-new) crowd items")
    rng = np.random.default_rng(demo.seed)
    texts = generate_texts(demo.n_items + demo.n_gold_test + demo.n_unlabeled, demo.seed, classes)
    crowd = texts.iloc[: demo.n_items].reset_index(drop=True)
    test = texts.iloc[demo.n_items: demo.n_items + demo.n_gold_test].reset_index(drop=True)
    unlabeled = texts.iloc[demo.n_items + demo.n_gold_test:]["text"].tolist()
    width = max(5, len(str(demo.n_items + demo.n_gold_test)))
    crowd.insert(0, "item_id", [f"it{i + 1:0{width}d}" for i in range(len(crowd))])
    test.insert(0, "item_id", [f"it{demo.n_items + i + 1:0{width}d}" for i in range(len(test))])

    n_new = round(demo.new_item_fraction * demo.n_items)
    order = rng.permutation(demo.n_items)
    new_idx = np.sort(order[:n_new])
    check_idx = np.sort(order[n_new: n_new + demo.n_gold_check])

    sim = simulate_crowd(crowd, classes, demo.n_contributors, demo.seed + 1, (1, 5), CrowdMix())
    labels = sim.labels.copy()

    # new items: the contributor with the earliest label submitted the text; rename the item
    rename: dict[str, str] = {}
    new_ids = set(crowd["item_id"].iloc[new_idx])
    first = labels[labels["item_id"].isin(new_ids)].sort_values(["submitted_at", "contributor_id"])
    first = first.drop_duplicates("item_id").sort_values("item_id")
    counter: dict[str, int] = {}
    for item_id, cid in zip(first["item_id"], first["contributor_id"]):
        counter[cid] = counter.get(cid, 0) + 1
        rename[item_id] = f"{cid}.n{counter[cid]:03d}"
    labels["item_id"] = labels["item_id"].replace(rename)
    crowd["origin"] = np.where(crowd["item_id"].isin(rename), "contributor", "platform")
    crowd["item_id"] = crowd["item_id"].replace(rename)
    crowd["gold_split"] = ""
    crowd.loc[check_idx, "gold_split"] = "check"

    files: dict[str, bytes] = {}
    cids = sorted(labels["contributor_id"].unique())
    per_cid = {cid: g for cid, g in labels.groupby("contributor_id", sort=True)}
    busy = [c for c in cids if len(per_cid[c]) >= 6]
    folder_cids = sorted(rng.choice(busy, size=min(N_FOLDER_CONTRIBUTORS, len(busy)), replace=False).tolist())
    single_cids = [c for c in cids if c not in folder_cids]

    for n, cid in enumerate(folder_cids):
        rows = per_cid[cid]
        cols = LABEL_COLUMNS if n else LABEL_COLUMNS[1:]  # the first one relies on its folder name
        half = len(rows) // 2
        files[f"contributions/{cid}/batch1.csv"] = frame_to_csv(rows.iloc[:half][cols])
        files[f"contributions/{cid}/batch2.csv"] = frame_to_csv(rows.iloc[half:][cols])

    header = _csv_line(LABEL_COLUMNS)
    lines = {cid: [_csv_line([str(v) for v in r]) for r in per_cid[cid][LABEL_COLUMNS].itertuples(index=False)]
             for cid in single_cids}
    kinds = list(MALFORMED_KINDS)
    targets = rng.choice(single_cids, size=demo.malformed_rows, replace=True) if single_cids else []
    injected: list[dict[str, Any]] = []
    for m, cid in enumerate(targets):
        kind = kinds[m % len(kinds)]
        own = per_cid[cid]
        free = crowd.loc[~crowd["item_id"].isin(own["item_id"]) & ~crowd["item_id"].isin(
            [r["item_id"] for r in injected if r["contributor_id"] == cid])]
        pick = free.iloc[int(rng.integers(len(free)))]
        ts = own["submitted_at"].iloc[-1]
        line = _malformed_line(kind, cid, pick["item_id"], pick["text"], str(pick["label"]), ts,
                               lines[cid], bad_label="great")
        pos = int(rng.integers(1, len(lines[cid]) + 1))
        lines[cid].insert(pos, line)
        injected.append({"contributor_id": cid, "kind": kind, "item_id": pick["item_id"], "line": line})

    malformed_rows = []
    for cid in single_cids:
        body = lines[cid]
        files[f"contributions/{cid}.csv"] = (header + "".join(body)).encode("utf-8")
        for r in injected:
            if r["contributor_id"] == cid:
                # 1-based line in the file, header = line 1 (the duplicate's first copy comes first)
                idx = [i for i, ln in enumerate(body) if ln is r["line"]]
                malformed_rows.append({
                    "contributor_id": cid, "kind": r["kind"], "expected_reason": MALFORMED_KINDS[r["kind"]],
                    "source_file": f"data/raw/contributions/{cid}.csv", "source_line": idx[-1] + 2,
                })

    gold = pd.concat([
        crowd.loc[check_idx, ["item_id", "text", "label"]].assign(split="check"),
        test[["item_id", "text", "label"]].assign(split="test"),
    ])
    files["gold.csv"] = frame_to_csv(gold)
    files["unlabeled/corpus.txt"] = "".join(t + "\n" for t in unlabeled).encode("utf-8")

    truth = sim.contributors.copy()
    truth["file_form"] = np.where(truth["contributor_id"].isin(folder_cids), "folder", "file")
    items_truth = pd.concat([
        crowd[["item_id", "text", "label", "origin", "gold_split"]],
        test[["item_id", "text", "label"]].assign(origin="platform", gold_split="test"),
    ])
    malformed_df = pd.DataFrame(malformed_rows, columns=[
        "contributor_id", "kind", "expected_reason", "source_file", "source_line"])
    sim_files = {
        "contributors.csv": frame_to_csv(truth),
        "items.csv": frame_to_csv(items_truth),
        "malformed.csv": frame_to_csv(malformed_df.sort_values(["source_file", "source_line"])),
    }
    summary = {
        "n_contributors": len(cids),
        "n_files": sum(1 for k in files if k.startswith("contributions/")),
        "n_rows": int(len(labels) + len(injected)),
        "n_labels": len(labels),
        "n_items": demo.n_items,
        "n_new_items": len(rename),
        "n_gold_check": len(check_idx),
        "n_gold_test": len(test),
        "n_unlabeled": len(unlabeled),
        "n_malformed": len(injected),
        "folder_contributors": folder_cids,
        "kinds": truth["kind"].value_counts().sort_index().to_dict(),
    }
    return {"raw": files, "simulation": sim_files, "summary": summary}


def write_demo_data(paths: Paths, params: Params, force: bool = False) -> dict[str, Any]:
    """Write the demo ``data/raw`` tree and ``data/simulation`` truth; returns a summary.

    Refuses to replace a non-empty ``data/raw`` unless ``force``: real contributions must never
    be overwritten by a demo. Both folders are swapped in atomically.
    """
    raw = paths.raw
    if raw.exists() and any(raw.iterdir()) and not force:
        raise FileExistsError(f"{raw} is not empty; pass force=True to replace it with demo data")
    built = build_demo(params)
    for target, content in ((raw, built["raw"]), (simulation_dir(paths), built["simulation"])):
        with io.atomic_dir(target) as tmp:
            for rel, data in sorted(content.items()):
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
    shutil.rmtree(raw.with_name(f".{raw.name}.old"), ignore_errors=True)
    return {**built["summary"], "raw": str(raw), "simulation": str(simulation_dir(paths))}
