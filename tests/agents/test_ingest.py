"""Ingest keeps every row it receives, with provenance, whatever the files look like."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from crowdforge.agents import ingest
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.reports import read_report
from crowdforge.simulate.demo import simulation_dir, write_demo_data

HEADER = "contributor_id,item_id,text,label,submitted_at\n"
TS = "2026-01-05T08:00:00Z"


def write_hostile(root: Path) -> Paths:
    """A contributions folder with every kind of trouble; returns its Paths."""
    paths = Paths(root)
    c = paths.contributions
    (c / "bob").mkdir(parents=True)
    (c / "erin").mkdir()
    (c / "alice.csv").write_text(
        HEADER
        + f"alice,i1,the soup was great .,positive,{TS}\n"                      # 2 ok
        + f"alice,i2,,negative,{TS}\n"                                           # 3 empty text
        + f"alice,i3,the soup was bad .,awful,{TS}\n"                            # 4 bad label
        + f"alice,,the soup was bad .,negative,{TS}\n"                           # 5 missing item id
        + f"alice,../etc/passwd,the soup was bad .,negative,{TS}\n"              # 6 slash in item id
        + f"alice,i4,the soup was bad .,negative,{TS},extra\n"                   # 7 too many fields
        + f'alice,i5,"the soup was bad .,negative,{TS}\n'                        # 8 unterminated quote
        + f"alice,i6,the so\x00up was bad .,negative,{TS}\n"                     # 9 NUL byte
        + f'alice,i7,"=HYPERLINK(""http://x.example"",""hi"")",neutral,{TS}\n'   # 10 formula: valid
        + f"alice,i1,the soup was great .,positive,{TS}\n"                       # 11 duplicate row
        + f'alice,i8,"a text\nover two lines",neutral,{TS}\n'                    # 12-13 multi-line ok
        + f"alice,i9,ok,neutral,{TS}\n"                                          # 14 too short
        + "\n"                                                                   # 15 blank: not a row
        + f"alice,i10,the last row is fine .,neutral,{TS}\n",                    # 16 ok
        encoding="utf-8",
    )
    (c / "bob" / "batch1.tsv").write_text(
        "item_id\ttext\tlabel\n" + "i1\tthe room was noisy .\tnegative\n" + "i2\tthe room was fine .\tneutral\n",
        encoding="utf-8")
    (c / "carol.jsonl").write_text(
        json.dumps({"item_id": "i1", "text": "great phone .", "label": "positive"}) + "\n" + "{not json\n",
        encoding="utf-8")
    (c / "garbage.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" * 20)
    (c / "latin.csv").write_bytes(("item_id,text,label\ni1,caf\u00e9 was nice,positive\n").encode("latin-1"))
    (c / "notes.txt").write_text("hello\n")
    (c / ".DS_Store").write_bytes(b"\x00\x01")
    (c / "mallory.csv").symlink_to(root / "outside.csv")  # never followed out of the folder
    (root / "outside.csv").write_text("item_id,text,label\ns1,secret text,positive\n")
    erin = "item_id,text,label\ni1,the bus was late again .,negative\n"
    (c / "erin" / "batch1.csv").write_text(erin)
    (c / "erin" / "batch1 (copy).csv").write_text(erin)
    paths.raw.mkdir(parents=True, exist_ok=True)
    (paths.raw / "gold.csv").write_text("item_id,text,label,split\ng1,good .,positive,test\ng2,i1 text,neutral,check\n")
    paths.unlabeled_raw.mkdir()
    (paths.unlabeled_raw / "a.txt").write_text("one line\n\nanother line\n")
    return paths


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Paths, dict, pd.DataFrame]:
    paths = write_hostile(tmp_path)
    report = ingest.run(Params(), paths)
    return paths, report, pd.read_parquet(paths.submissions)


def test_every_row_kept_with_provenance(hostile) -> None:
    _, report, subs = hostile
    assert list(subs.columns) == ingest.SUBMISSION_COLUMNS
    alice = subs[subs["source_file"] == "data/raw/contributions/alice.csv"].set_index("source_line")
    assert list(alice.index) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16]
    errors = alice["parse_error"].dropna().to_dict()
    assert errors == {7: "expected 5 fields, got 6", 8: "unterminated quote", 9: "NUL byte in row"}
    assert alice.loc[12, "text"] == "a text\nover two lines"
    assert alice.loc[10, "text"] == '=HYPERLINK("http://x.example","hi")'
    assert pd.isna(alice.loc[3, "text"]) and pd.isna(alice.loc[5, "item_id"])
    assert json.loads(alice.loc[8, "raw"]) == f'alice,i5,"the soup was bad .,negative,{TS}'
    assert alice.loc[2, "row_hash"] == alice.loc[11, "row_hash"]
    assert (subs["contributor_id"].notna()).all()
    # contributor from the folder / file name when there is no column
    assert set(subs.loc[subs["source_file"].str.contains("/bob/"), "contributor_id"]) == {"bob"}
    assert set(subs.loc[subs["source_file"].str.endswith("carol.jsonl"), "contributor_id"]) == {"carol"}
    carol = subs[subs["source_file"].str.endswith("carol.jsonl")]
    assert carol["parse_error"].isna().tolist() == [True, False]
    # an identical file under another name: both kept, counted as repeated
    assert (subs["contributor_id"] == "erin").sum() == 2 and report["repeated_rows"] >= 2
    assert report["rows_in"] == len(subs)
    assert report["skipped"] == [{"file": "data/raw/contributions/.DS_Store", "reason": "hidden file"}]


def test_unreadable_files_become_one_row(hostile) -> None:
    _, report, subs = hostile
    whole = subs[subs["source_line"] == 0].set_index("source_file")
    assert set(whole.index) == {f"data/raw/contributions/{n}" for n in ("garbage.csv", "latin.csv", "notes.txt", "mallory.csv")}
    assert "not UTF-8" in whole.loc["data/raw/contributions/latin.csv", "parse_error"]
    assert "unsupported file type" in whole.loc["data/raw/contributions/notes.txt", "parse_error"]
    assert "symbolic link" in whole.loc["data/raw/contributions/mallory.csv", "parse_error"]
    assert not subs["raw"].str.contains("secret").any()
    assert all("data/raw/contributions/" in e for e in whole["parse_error"])
    assert sorted(report["unreadable_files"]) == sorted(whole.index)


def test_unlabeled_gold_and_report(hostile) -> None:
    paths, report, _ = hostile
    unl = pd.read_parquet(paths.unlabeled)
    assert unl.to_dict("list") == {"text": ["one line", "another line"],
                                   "source_file": ["data/raw/unlabeled/a.txt"] * 2, "source_line": [1, 3]}
    gold = pd.read_parquet(paths.gold)
    assert list(gold.columns) == ["item_id", "text", "label", "split"] and len(gold) == 2
    saved = read_report(paths, "ingest")
    assert saved["rows_in"] == report["rows_in"] and saved["files_read"] == 9
    assert saved["rows_by_contributor"]["alice"] == 13


def test_gold_missing_or_broken(tmp_path: Path) -> None:
    paths = write_hostile(tmp_path)
    paths.gold_raw.unlink()
    with pytest.raises(FileNotFoundError, match="gold.csv"):
        ingest.run(Params(), paths)
    paths.gold_raw.write_text("item_id,text,label,split\ng1,x,great,test\n")
    with pytest.raises(ValueError, match="not in classes"):
        ingest.run(Params(), paths)


def test_demo_data_every_row_and_line(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    summary = write_demo_data(paths, Params())
    report = ingest.run(Params(), paths)
    subs = pd.read_parquet(paths.submissions)
    assert report["rows_in"] == summary["n_rows"] == len(subs)
    assert report["n_contributors"] == summary["n_contributors"]
    assert report["n_unlabeled"] == Params().demo.n_unlabeled
    # source_line points at the physical line the row came from
    for source, g in subs[subs["parse_error"].isna()].groupby("source_file"):
        lines = (paths.root / source).read_text(encoding="utf-8").split("\n")
        for line, raw in zip(g["source_line"], g["raw"]):
            assert lines[line - 1] == json.loads(raw)
    mal = pd.read_csv(simulation_dir(paths) / "malformed.csv", dtype=str, keep_default_na=False)
    parse_rows = mal[mal["expected_reason"] == "parse_error"]
    got = subs[subs["parse_error"].notna()][["source_file", "source_line"]].astype(str)
    assert sorted(map(tuple, got.to_numpy())) == sorted(map(tuple, parse_rows[["source_file", "source_line"]].to_numpy()))
