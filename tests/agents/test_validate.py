"""Validate: a real GX suite; every row accepted or quarantined with the right reason."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from crowdforge.agents import ingest, validate
from crowdforge.config import Params, parse_params
from crowdforge.paths import Paths
from crowdforge.simulate.demo import simulation_dir, write_demo_data


def _load_hostile_writer():
    """Reuse the hostile folder of test_ingest (test modules are not a package)."""
    spec = importlib.util.spec_from_file_location("_hostile", Path(__file__).with_name("test_ingest.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_hostile", mod)
    spec.loader.exec_module(mod)
    return mod.write_hostile


def _codes(reasons: str) -> set[str]:
    return {c.split(":", 1)[0] for c in reasons.split(";")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Paths, dict]:
    paths = Paths(tmp_path_factory.mktemp("demo"))
    write_demo_data(paths, Params())
    ingest.run(Params(), paths)
    return paths, validate.run(Params(), paths)


def test_demo_invariant_reasons_and_docs(demo) -> None:
    paths, report = demo
    accepted = pd.read_parquet(paths.accepted)
    quarantined = pd.read_parquet(paths.quarantine / "quarantined.parquet")
    subs = pd.read_parquet(paths.submissions)
    assert report["rows_in"] == len(subs) == report["rows_accepted"] + report["rows_quarantined"]
    assert (len(accepted), len(quarantined)) == (report["rows_accepted"], report["rows_quarantined"])
    assert list(accepted.columns) == list(subs.columns)
    assert list(quarantined.columns) == list(subs.columns) + ["reasons", "quarantined_copy"]
    assert set(accepted["label"]) <= set(Params().data.classes)
    assert (accepted["text"].str.strip().str.len() >= 3).all()
    assert not accepted.duplicated(["contributor_id", "item_id"]).any()
    # each injected malformed row gets the reason the simulation expects
    mal = pd.read_csv(simulation_dir(paths) / "malformed.csv", dtype=str, keep_default_na=False)
    q = quarantined.assign(source_line=quarantined["source_line"].astype(str)).set_index(["source_file", "source_line"])
    for row in mal.itertuples(index=False):
        key = (row.source_file, row.source_line)
        if row.expected_reason:
            assert row.expected_reason in _codes(q.loc[key, "reasons"]), (row, q.loc[key, "reasons"])
        else:
            assert key not in q.index  # the formula-looking text is valid
    assert len(quarantined) == (mal["expected_reason"] != "").sum()
    by_c = report["by_contributor"]
    assert sum(v["rows_in"] for v in by_c.values()) == report["rows_in"]
    assert all(v["rows_in"] == v["rows_accepted"] + v["rows_quarantined"] for v in by_c.values())
    assert report["data_docs"] == "reports/data_docs/index.html"
    assert (paths.root / report["data_docs"]).is_file()
    assert (paths.report("validate")).is_file()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Paths, dict, pd.DataFrame]:
    paths = _load_hostile_writer()(tmp_path_factory.mktemp("hostile"))
    ingest.run(Params(), paths)
    report = validate.run(Params(), paths)
    return paths, report, pd.read_parquet(paths.quarantine / "quarantined.parquet")


def test_hostile_folder(hostile) -> None:
    paths, report, q = hostile
    c = "data/raw/contributions/"
    by_line = q.assign(f=q["source_file"].str.removeprefix(c)).set_index(["f", "source_line"])["reasons"].map(_codes)
    assert by_line.to_dict() == {
        ("alice.csv", 3): {"missing_text"}, ("alice.csv", 4): {"label_not_in_classes"},
        ("alice.csv", 5): {"missing_item_id"}, ("alice.csv", 6): {"bad_item_id"},
        ("alice.csv", 7): {"parse_error"}, ("alice.csv", 8): {"parse_error"}, ("alice.csv", 9): {"parse_error"},
        ("alice.csv", 11): {"duplicate"}, ("alice.csv", 14): {"text_length"},
        ("carol.jsonl", 2): {"parse_error"}, ("dave.parquet", 2): {"missing_text"},
        ("frank.csv", 2): {"parse_error"}, ("frank.csv", 3): {"pii_email"}, ("frank.csv", 4): {"pii_phone"},
        ("frank.csv", 5): {"pii_card"}, ("x](javascript:alert(1)).csv", 2): {"bad_contributor_id"},
        ("erin/batch1.csv", 2): {"resubmitted"}, ("gina.csv", 2): {"label_not_in_classes"},
        **{(f, 0): {"parse_error"} for f in ("broken.parquet", "garbage.csv", "latin.csv", "lonely.csv.encoding",
                                             "mallory.csv", "model.pkl", "notes.txt", "pipe.csv", "rot.csv")},
    }
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"] == 40
    assert report["by_reason"]["parse_error"] == 14  # 3 CSV rows + 1 JSON line + 1 oversized + 9 files
    assert report["by_contributor"]["alice"] == {"rows_in": 13, "rows_accepted": 4, "rows_quarantined": 9,
                                                 "failure_rate": 0.6923, "reasons": {
                                                     "bad_item_id": 1, "duplicate": 1, "label_not_in_classes": 1,
                                                     "missing_item_id": 1, "missing_text": 1, "parse_error": 3,
                                                     "text_length": 1}}
    # the original row exactly as received, with the parser's reason
    row = q.set_index(["source_file", "source_line"]).loc[(c + "alice.csv", 8)]
    assert row["raw"] == '"alice,i5,\\"the soup was bad .,negative,2026-01-05T08:00:00Z"'
    assert row["reasons"] == "parse_error:unterminated quote"
    # the order-1234 text is not a card (Luhn fails) and is accepted; so are the encoded files
    accepted = pd.read_parquet(paths.accepted)
    assert {"f5", "l1", "b1", "w1", "p1", "i8"} <= set(accepted["item_id"])


def test_whole_files_are_copied_into_quarantine_by_hash(hostile) -> None:
    paths, _, q = hostile
    whole = q[q["source_line"] == 0].set_index("source_file")
    copied = whole["quarantined_copy"].dropna()
    assert {p.split("/")[-1] for p in copied.index} == {"broken.parquet", "garbage.csv", "latin.csv", "model.pkl",
                                                         "notes.txt", "rot.csv"}  # not the link, FIFO, orphan
    for source, copy in copied.items():
        assert copy == f"data/quarantine/files/{whole.loc[source, 'file_sha256']}"
        assert (paths.root / copy).read_bytes() == (paths.root / source).read_bytes()


def test_copies_of_files_no_longer_submitted_are_pruned(tmp_path: Path) -> None:
    paths = _load_hostile_writer()(tmp_path)
    ingest.run(Params(), paths)
    validate.run(Params(), paths)
    copies = paths.quarantine / "files"
    garbage = paths.contributions / "garbage.csv"
    gone = hashlib.sha256(garbage.read_bytes()).hexdigest()
    assert (copies / gone).is_file()
    (copies / "README.txt").write_text("reviewer's note")  # not a hash name: never touched
    garbage.unlink()
    ingest.run(Params(), paths)
    validate.run(Params(), paths)
    q = pd.read_parquet(paths.quarantine / "quarantined.parquet")
    referenced = {c.split("/")[-1] for c in q["quarantined_copy"].dropna()}
    assert {f.name for f in copies.iterdir()} == referenced | {"README.txt"}
    assert gone not in referenced and len(referenced) == 5


def test_review_csv_is_neutralised_and_docs_hold_no_personal_data(hostile) -> None:
    paths, _, q = hostile
    review = pd.read_csv(paths.quarantine / "quarantined.csv", dtype=str, keep_default_na=False)
    assert len(review) == len(q)
    starts = review.apply(lambda col: col.str[:1]).stack()
    assert not starts.isin(["=", "+", "-", "@"]).any()
    gina = review[review["contributor_id"] == "gina"].iloc[0]
    assert gina["text"] == "'=cmd|' /C calc'!A0" and gina["label"] == "'@SUM(A1)"
    assert q.loc[q["contributor_id"] == "gina", "text"].iloc[0] == "=cmd|' /C calc'!A0"  # parquet: as received
    html = "".join(p.read_text(errors="replace") for p in (paths.root / "reports/data_docs").rglob("*.html"))
    assert "validations" in html or "Validation" in html
    for secret in ("frank@example.com", "7946 0958", "4111 1111", "../etc/passwd", "javascript"):
        assert secret not in html
    assert "frank@example.com" not in paths.report("validate").read_text()
    assert "javascript:" not in (paths.reports / "validate.md").read_text()  # ids shown inert in the artifact


def test_mask_policy_accepts_masked_rows_and_keeps_no_copy(tmp_path: Path) -> None:
    paths = _load_hostile_writer()(tmp_path)
    ingest.run(Params(), paths)
    report = validate.run(parse_params({"validate": {"pii_policy": "mask"}}), paths)
    accepted = pd.read_parquet(paths.accepted).set_index("item_id")
    assert accepted.loc["f2", "text"] == "mail me at [EMAIL] please"
    assert accepted.loc["f3", "text"] == "call [PHONE] today"
    assert accepted.loc["f4", "text"] == "card [CARD] exp 12/29"
    assert "frank@example.com" not in accepted.loc["f2", "raw"] and "[EMAIL]" in accepted.loc["f2", "raw"]
    assert report["rows_masked"] == 3 and not any(k.startswith("pii_") for k in report["by_reason"])
    log = pd.read_parquet(paths.quarantine / "masked.parquet")
    assert log["pii_kinds"].tolist() == ["email", "phone", "card"] and "text" not in log.columns
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"]


def test_an_evasion_that_cannot_be_masked_is_quarantined_under_mask() -> None:
    frame = validate.pii_columns(pd.Series(["write to bob\u200b@example.com", "fine text", None]), "mask")
    assert frame["pii_email"].tolist() == [True, False, False]
    assert frame["masked_text"].isna().all()


def test_duplicates_ignore_invalid_rows_and_find_text_reused_under_another_id() -> None:
    frame = pd.DataFrame({
        "contributor_id": ["a", "a", "a", "b", "c"],
        "item_id": ["i1", "i1", "i1", "i2", "i1"],
        "text": ["Same  Text", "same text", "same text", "same TEXT", "same text"],
        "masked_text": [None] * 5,
    })
    ok = [False, True, True, True, True]  # the first row failed suite 1: the second one counts as first
    dups = validate.duplicate_frame(frame, pd.Series(ok).to_numpy())
    assert dups["pair_occurrence"].tolist() == [0, 0, 1, 0, 0]
    assert [None if pd.isna(v) else v for v in dups["text_duplicate_of"]] == [None, None, None, "i1", None]


def test_thresholds_come_from_params(tmp_path: Path) -> None:
    paths = _load_hostile_writer()(tmp_path)
    ingest.run(Params(), paths)
    strict = parse_params({"validate": {"min_text_chars": 1, "item_id_pattern": "^[a-z][0-9]+$"}})
    validate.run(strict, paths)
    q = pd.read_parquet(paths.quarantine / "quarantined.parquet")
    alice = q[q["source_file"].str.endswith("alice.csv")].set_index("source_line")["reasons"].map(_codes)
    assert 14 not in alice.index  # "ok" is long enough now
    assert alice[6] == {"bad_item_id"}


def test_assign_reasons_masks_consequences_of_parse_errors() -> None:
    frame = pd.DataFrame({"parse_error": ["boom", None], "label": [None, "x"]})
    failures = [
        {"reason": "parse_error", "detail_column": "parse_error", "unexpected_index_list": [0]},
        {"reason": "missing_label", "detail_column": None, "unexpected_index_list": [0]},
        {"reason": "label_not_in_classes", "detail_column": "label", "unexpected_index_list": [1]},
    ]
    assert validate.assign_reasons(frame, failures).tolist() == ["parse_error:boom", "label_not_in_classes:'x'"]
