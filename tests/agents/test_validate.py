"""Validate: a real GX suite; every row accepted or quarantined with the right reason."""

from __future__ import annotations

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
    assert list(quarantined.columns) == list(subs.columns) + ["reasons"]
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


def test_hostile_folder(tmp_path: Path) -> None:
    paths = _load_hostile_writer()(tmp_path)
    ingest.run(Params(), paths)
    report = validate.run(Params(), paths)
    q = pd.read_parquet(paths.quarantine / "quarantined.parquet")
    alice = q[q["source_file"].str.endswith("alice.csv")].set_index("source_line")["reasons"].map(_codes)
    assert alice.to_dict() == {
        3: {"missing_text"}, 4: {"label_not_in_classes"}, 5: {"missing_item_id"}, 6: {"bad_item_id"},
        7: {"parse_error"}, 8: {"parse_error"}, 9: {"parse_error"}, 11: {"duplicate"}, 14: {"text_length"},
    }
    whole = q[q["source_line"] == 0]
    assert len(whole) == 4 and (whole["reasons"].map(_codes) == {"parse_error"}).all()
    erin = q[q["contributor_id"] == "erin"]
    assert len(erin) == 1 and _codes(erin["reasons"].iloc[0]) == {"duplicate"}
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"]
    assert report["by_reason"]["parse_error"] == 8  # 3 rows + 4 files + 1 bad JSON line
    assert report["by_contributor"]["alice"] == {"rows_in": 13, "rows_accepted": 4, "rows_quarantined": 9}


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
