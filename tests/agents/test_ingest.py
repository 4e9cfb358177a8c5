"""Ingest keeps every row it receives, with provenance, whatever the files look like."""

from __future__ import annotations

import hashlib
import json
import os
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
    # encodings: declared by a sidecar, by a BOM, or wrongly declared
    (c / "latin1.csv").write_bytes("item_id,text,label\nl1,caf\u00e9 au lait was nice,positive\n".encode("latin-1"))
    (c / "latin1.csv.encoding").write_text("latin-1\n")
    (c / "bom8.csv").write_bytes(b"\xef\xbb\xbf" + b"item_id,text,label\nb1,bom text is fine,neutral\n")
    (c / "wide.tsv").write_bytes("item_id\ttext\tlabel\r\nw1\tna\u00efve utf16 text\tpositive\r\n".encode("utf-16"))
    (c / "rot.csv").write_text("item_id,text,label\nr1,some text,positive\n")
    (c / "rot.csv.encoding").write_text("rot13")
    (c / "lonely.csv.encoding").write_text("utf-8")
    # Parquet, good and corrupt; a pickle is never opened as one
    pd.DataFrame({"item_id": ["p1", "p2"], "text": ["parquet row one .", None], "label": ["positive", "neutral"],
                  "contributor_id": ["dave", "dave"]}).to_parquet(c / "dave.parquet")
    (c / "broken.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 10)
    (c / "model.pkl").write_bytes(b"\x80\x04\x95cos\nsystem\n")
    # an oversized record, personal data, a file name with markdown in it, a FIFO
    (c / "frank.csv").write_text(HEADER + f"frank,f1,{'x' * 200_001},neutral,{TS}\n"
                                 + f"frank,f2,mail me at frank@example.com please,neutral,{TS}\n"
                                 + f"frank,f3,call +44 20 7946 0958 today,neutral,{TS}\n"
                                 + f"frank,f4,card 4111 1111 1111 1111 exp 12/29,neutral,{TS}\n"
                                 + f"frank,f5,order 1234 5678 9012 3456 is late,neutral,{TS}\n")
    (c / "x](javascript:alert(1)).csv").write_text("item_id,text,label\nj1,a fine row .,neutral\n")
    (c / "gina.csv").write_text("item_id,text,label\ng1,=cmd|' /C calc'!A0,@SUM(A1)\n")
    os.mkfifo(c / "pipe.csv")
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
    # an identical file under another name: both read (rows_in counts them), the later one marked
    erin = subs[subs["contributor_id"] == "erin"].set_index("source_file")["resubmission_of"]
    first, second = "data/raw/contributions/erin/batch1 (copy).csv", "data/raw/contributions/erin/batch1.csv"
    assert erin.isna().to_dict() == {first: True, second: False} and erin[second] == first
    assert report["resubmitted_files"] == [{"file": second, "same_as": first}] and report["resubmitted_rows"] == 1
    assert report["rows_in"] == len(subs) == sum(report["rows_by_contributor"].values())
    assert report["skipped"] == [{"file": "data/raw/contributions/.DS_Store", "reason": "hidden file"}]
    assert subs["file_sha256"].str.fullmatch("[0-9a-f]{64}").sum() >= len(subs) - 3  # symlink, FIFO, orphan sidecar


def test_encodings_parquet_and_oversized_records(hostile) -> None:
    _, report, subs = hostile
    by_file = subs.set_index("source_file")
    c = "data/raw/contributions/"
    assert by_file.loc[c + "latin1.csv", "text"] == "caf\u00e9 au lait was nice"  # declared by its sidecar
    assert by_file.loc[c + "bom8.csv", "item_id"] == "b1"  # the BOM is not part of the first column name
    assert by_file.loc[c + "wide.tsv", "text"] == "na\u00efve utf16 text"
    enc = {f["file"]: f["encoding"] for f in report["files"]}
    assert (enc[c + "latin1.csv"], enc[c + "wide.tsv"]) == ("iso8859-1", "utf-16-le")
    assert report["encoding_sidecars"] == [c + "latin1.csv.encoding", c + "rot.csv.encoding"]
    dave = subs[subs["source_file"] == c + "dave.parquet"]
    assert dave["item_id"].tolist() == ["p1", "p2"] and dave["source_line"].tolist() == [1, 2]
    assert json.loads(dave["raw"].iloc[0])["text"] == "parquet row one ." and pd.isna(dave["text"].iloc[1])
    frank = subs[subs["source_file"] == c + "frank.csv"].set_index("source_line")
    assert frank.loc[2, "parse_error"].startswith("oversized record")
    assert len(json.loads(frank.loc[2, "raw"])) == 100_000  # kept up to the limit; the hash covers it all
    full = f"frank,f1,{'x' * 200_001},neutral,{TS}"
    assert frank.loc[2, "row_hash"] == hashlib.sha256(full.encode()).hexdigest()
    assert pd.isna(frank.loc[3, "parse_error"]) and frank.loc[3, "item_id"] == "f2"


def test_unreadable_files_become_one_row(hostile) -> None:
    _, report, subs = hostile
    whole = subs[subs["source_line"] == 0].set_index("source_file")["parse_error"].rename(lambda f: f.split("/")[-1])
    assert dict(whole.map(lambda e: e.split(": ", 1)[1].split(" (")[0])) == {
        "broken.parquet": "not a Parquet file", "garbage.csv": "not utf-8 text",
        "latin.csv": "not utf-8 text", "lonely.csv.encoding": "encoding sidecar without its data file",
        "mallory.csv": "symbolic link", "model.pkl": "unsupported file type '.pkl'",
        "notes.txt": "unsupported file type '.txt'", "pipe.csv": "not a regular file",
        "rot.csv": "'rot13' is not a text encoding",
    }
    assert "latin-1" not in whole["latin.csv"] and ".encoding' sidecar" in whole["latin.csv"]  # says how to fix it
    assert not subs["raw"].str.contains("secret").any()
    assert sorted(report["unreadable_files"]) == sorted(f"data/raw/contributions/{n}" for n in whole.index)
    assert "javascript" not in report["summary_md"].replace("`data/raw/contributions/x](javascript", "")


def test_unlabeled_gold_and_report(hostile) -> None:
    paths, report, _ = hostile
    unl = pd.read_parquet(paths.unlabeled)
    assert unl.to_dict("list") == {"text": ["one line", "another line"],
                                   "source_file": ["data/raw/unlabeled/a.txt"] * 2, "source_line": [1, 3]}
    gold = pd.read_parquet(paths.gold)
    assert list(gold.columns) == ["item_id", "text", "label", "split"] and len(gold) == 2
    saved = read_report(paths, "ingest")
    assert saved["rows_in"] == report["rows_in"] and saved["files_read"] == 21
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
    assert (sorted(map(tuple, got.to_numpy()))
            == sorted(map(tuple, parse_rows[["source_file", "source_line"]].to_numpy())))


def test_pair_task_given_as_two_text_fields(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.contributions.mkdir(parents=True)
    (paths.contributions / "ann.csv").write_text(
        "item_id,text_a,text_b,label\np1,sony tv kdl-40,Sony KDL40,positive\np2,acme 12,,negative\n")
    paths.gold_raw.parent.mkdir(parents=True, exist_ok=True)
    paths.gold_raw.write_text("item_id,text_a,text_b,label,split\ng1,a 1,b 1,positive,test\n")
    report = ingest.run(Params(), paths)
    rows = pd.read_parquet(paths.submissions).set_index("item_id")
    assert rows.loc["p1", "text"] == "sony tv kdl-40 [SEP] Sony KDL40"
    assert pd.isna(rows.loc["p2", "text"])  # one side missing: kept, without a text, for validate to quarantine
    assert json.loads(rows.loc["p2", "raw"])  # the raw record keeps both fields as sent
    assert pd.read_parquet(paths.gold)["text"].tolist() == ["a 1 [SEP] b 1"]
    assert report["rows_in"] == 2
    paths.gold_raw.write_text("item_id,text_a,text_b,label,split\ng1,a 1,,positive,test\n")
    with pytest.raises(ValueError, match=r"empty text for item_id\(s\) \['g1'\]"):
        ingest.run(Params(), paths)
