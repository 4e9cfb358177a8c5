"""Property: whatever contributors send, rows in = accepted + quarantined and no valid row is lost.

Hypothesis builds a contributions folder: valid rows (known to pass every check) scattered among
malformed ones (junk lines, wrong field counts, unterminated quotes, NUL bytes, bad labels,
personal data, formulas), plus whole files that cannot be read (random bytes, undecodable text).
Ingest and validate then run for real (GX included); every valid row must come out accepted with
its fields intact, every malformed row quarantined, and the counts must add up.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdforge.agents import ingest, validate
from crowdforge.config import Params
from crowdforge.paths import Paths

CLASSES = list(Params().data.classes)
HEADER = "contributor_id,item_id,text,label,submitted_at\n"
WORDS = ["soup", "room", "bus", "late", "great", "cold", "fine", "staff", "view", "noisy"]
JUNK = st.text(st.characters(blacklist_characters='"\n\r\x00', blacklist_categories=("Cs",)), max_size=40)


def _line(fields: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()


@st.composite
def malformed_line(draw, cid: str, n: int) -> str:
    """One line that validation must quarantine (never one that could join a valid row)."""
    kind = draw(st.sampled_from(["junk", "extra", "quote", "nul", "label", "pii", "empty", "slash"]))
    text = f"text of bad row {n} " + draw(st.sampled_from(WORDS))
    if kind == "junk":
        return draw(JUNK.filter(lambda s: s.count(",") != 4)) + "\n"
    if kind == "extra":
        return _line([cid, f"bad{n}", text, "neutral", "t", "x"])
    if kind == "quote":
        return f'{cid},bad{n},"{text},neutral,t\n'
    if kind == "nul":
        return _line([cid, f"bad{n}", text + "\x00", "neutral", "t"])
    if kind == "label":
        return _line([cid, f"bad{n}", text, draw(st.sampled_from(["great", "", "=1+1", "POSITIVE"])), "t"])
    if kind == "pii":
        pii = draw(st.sampled_from(["x@example.org", "+1 (555) 123-4567", "4111-1111-1111-1111"]))
        return _line([cid, f"bad{n}", f"{text} {pii}", "neutral", "t"])
    if kind == "empty":
        return _line([cid, f"bad{n}", draw(st.sampled_from(["", "  ", "ab"])), "neutral", "t"])
    return _line([cid, f"../bad{n}", text, "neutral", "t"])


@st.composite
def submissions(draw):
    """``({relative path: bytes}, valid rows as dicts, number of malformed rows)``."""
    files: dict[str, bytes] = {}
    valid: list[dict[str, str]] = []
    n_bad = 0
    for c in range(draw(st.integers(1, 4))):
        cid = f"c{c}"
        lines: list[str] = []
        items = draw(st.lists(st.integers(0, 30), unique=True, max_size=12))
        for item in items:
            row = {"contributor_id": cid, "item_id": f"it{item}",
                   "text": f"item {item} " + " ".join(WORDS[(item + k) % len(WORDS)] for k in range(3)),
                   "label": draw(st.sampled_from(CLASSES)), "submitted_at": "2026-01-05T08:00:00Z"}
            valid.append(row)
            lines.append(_line(list(row.values())))
        for n in range(draw(st.integers(0, 6))):
            pos = draw(st.integers(0, len(lines)))
            lines.insert(pos, draw(malformed_line(cid, n)))
            n_bad += 1
        crlf = draw(st.booleans())
        body = (HEADER + "".join(lines))
        data = body.replace("\n", "\r\n").encode() if crlf else body.encode()
        if draw(st.booleans()):
            data = b"\xef\xbb\xbf" + data
        files[f"{cid}.csv"] = data
    for k in range(draw(st.integers(0, 2))):
        files[f"junk{k}.csv"] = draw(st.binary(min_size=1, max_size=200)
                                     .filter(lambda b: b"\n" not in b or b"\xff" in b))
        n_bad += 1  # at most one row (a single line, or the whole file) - counted by the checks below
    return files, valid, n_bad


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(submissions())
def test_nothing_is_lost(case) -> None:
    files, valid, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(Path(tmp))
        paths.contributions.mkdir(parents=True)
        for name, data in files.items():
            (paths.contributions / name).write_bytes(data)
        paths.gold_raw.write_text("item_id,text,label,split\ng1,good .,positive,test\n")
        report_in = ingest.run(Params(), paths)
        report = validate.run(Params(), paths)
        accepted = pd.read_parquet(paths.accepted)
        quarantined = pd.read_parquet(paths.quarantine / "quarantined.parquet")
    assert report["rows_in"] == report_in["rows_in"] == report["rows_accepted"] + report["rows_quarantined"]
    assert (len(accepted), len(quarantined)) == (report["rows_accepted"], report["rows_quarantined"])
    assert (quarantined["reasons"] != "").all()
    # every valid row is accepted, exactly once, with its fields as sent
    got = accepted[["contributor_id", "item_id", "text", "label", "submitted_at"]].to_dict("records")
    assert sorted(map(str, got)) == sorted(map(str, valid))
    # and each contribution file's valid rows kept their own line numbers
    for f, g in accepted.groupby("source_file"):
        assert g["source_line"].is_unique
