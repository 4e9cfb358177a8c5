"""Ingest agent: collect every contributor's submissions as received, with provenance.

Nothing is dropped and nothing is judged here (that is validate's job): every record of every
file under ``data/raw/contributions/`` becomes exactly one row of ``submissions.parquet``. A row
that cannot be parsed (wrong field count, bad quoting, NUL byte) keeps its original text in
``raw`` and says why in ``parse_error``; a file that cannot be read at all (binary, bad encoding,
unsupported type) becomes one row naming the file. Provenance on every row: ``source_file``
(relative to the project root), ``source_line`` (1-based physical line where the record starts,
header = line 1; row number for Parquet; 0 for a whole-file row), ``row_hash`` (sha256 of the
record's original text without its line end) and ``raw`` (that text as a JSON string; a JSON
object for Parquet rows and unreadable files).

The contributor is the ``contributor_id`` column when present and non-empty, else the name of the
first folder under ``contributions/`` (``<cid>/...``) or the file name without suffix
(``<cid>.csv``). Ids are only ever data: no path is built from them.

Re-submitted identical rows are kept (``rows_in`` counts everything received); validate
quarantines them as ``duplicate``. The report counts them as ``repeated_rows``.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.reports import write_report

FIELDS = ["contributor_id", "item_id", "text", "label", "submitted_at"]
REQUIRED_HEADER = ("item_id", "text", "label")
SUBMISSION_COLUMNS = FIELDS + ["source_file", "source_line", "row_hash", "raw", "parse_error"]
GOLD_COLUMNS = ["item_id", "text", "label", "split"]
GOLD_SPLITS = ("check", "test")
DELIMITED = {".csv": ",", ".tsv": "\t"}
JSON_LINES = (".jsonl", ".ndjson")
MAX_RECORD_LINES = 200  # a quoted field may span lines, but an unclosed quote must not eat the file
_LINE = re.compile(r"[^\n]*\n|[^\n]+$")


def sha256(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def contributor_from_path(rel: Path) -> str:
    """``<cid>/anything`` -> ``cid``; ``<cid>.csv`` -> ``cid`` (``rel`` is under contributions/)."""
    parts = rel.parts
    return parts[0] if len(parts) > 1 else rel.name.rsplit(".", 1)[0]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _row(cid: str, fields: dict[str, Any] | None, source: str, line: int, original: str,
         raw: str | None = None, error: str | None = None) -> dict[str, Any]:
    """One submissions row; empty strings become null, the contributor falls back to the path."""
    out: dict[str, Any] = {f: None for f in FIELDS}
    if fields is not None and error is None and any("\x00" in str(fields.get(f) or "") for f in FIELDS):
        error = "NUL byte in row"  # also for JSON Lines / Parquet input
    if fields is not None and error is None:
        for f in FIELDS:
            v = fields.get(f)
            out[f] = None if _blank(v) else str(v)
    if out["contributor_id"] is None:
        out["contributor_id"] = cid
    out.update(source_file=source, source_line=line, row_hash=sha256(original),
               raw=raw if raw is not None else json.dumps(original, ensure_ascii=False), parse_error=error)
    return out


def split_records(text: str, accept: Callable[[str], bool] = lambda r: True) -> Iterator[tuple[int, str, str | None]]:
    """Yield ``(first line number, record text without line end, error or None)`` per record.

    A record is one physical line, or several when a quoted field holds a newline (detected by
    quote parity, and kept only if ``accept(record)``). An unclosed quote is reported on its own
    line, so the rows after it are still read - ``csv.reader`` would swallow the rest of the file.
    """
    lines = _LINE.findall(text)
    i = 0
    while i < len(lines):
        acc, j = lines[i], i
        while acc.count('"') % 2 and j + 1 < len(lines) and j - i < MAX_RECORD_LINES:
            j += 1
            acc += lines[j]
        record = acc.rstrip("\r\n")
        if acc.count('"') % 2 or (j > i and not accept(record)):
            yield i + 1, lines[i].rstrip("\r\n"), "unterminated quote"
            i += 1
            continue
        yield i + 1, record, None
        i = j + 1


def _parse_fields(record: str, delimiter: str) -> list[str]:
    rows = list(csv.reader(_io.StringIO(record, newline=""), delimiter=delimiter, strict=True))
    if len(rows) != 1:
        raise csv.Error(f"record parses into {len(rows)} rows")
    return rows[0]


def parse_delimited(text: str, source: str, cid: str, delimiter: str) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV file; every non-blank record after the header yields exactly one row."""
    header: list[str] = []

    def accept(record: str) -> bool:  # a multi-line record must parse into the header's shape
        try:
            return not header or len(_parse_fields(record, delimiter)) == len(header)
        except csv.Error:
            return False

    out: list[dict[str, Any]] = []
    header_line: int | None = None
    bad_header = ""
    for line, record, err in split_records(text, accept):
        if not record.strip():
            continue
        if header_line is None:
            header_line = line
            try:
                header = [h.strip().lower() for h in _parse_fields(record, delimiter)] if err is None else []
            except csv.Error:
                header = []
            missing = [c for c in REQUIRED_HEADER if c not in header]
            if "\x00" in record:
                bad_header = "binary content (NUL byte in header)"
            elif missing:
                bad_header = f"header lacks column(s) {missing}"
            elif len(set(header)) != len(header):
                bad_header = "duplicate column names in header"
            else:
                continue
            header = []
        if header_line is not None and not header:  # unusable header: keep every line as an error
            out.append(_row(cid, None, source, line, record, error=f"unusable header (line {header_line}): {bad_header}"))
            continue
        if err is None and "\x00" in record:
            err = "NUL byte in row"
        values: list[str] = []
        if err is None:
            try:
                values = _parse_fields(record, delimiter)
                if len(values) != len(header):
                    err = f"expected {len(header)} fields, got {len(values)}"
            except csv.Error as exc:
                err = f"bad quoting: {exc}"
        if err is not None:
            out.append(_row(cid, None, source, line, record, error=err))
        else:
            out.append(_row(cid, dict(zip(header, values)), source, line, record))
    return out


def parse_json_lines(text: str, source: str, cid: str) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(text.split("\n"), start=1):
        record = line.rstrip("\r")
        if not record.strip():
            continue
        try:
            obj = json.loads(record)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")  # noqa: TRY004
            out.append(_row(cid, obj, source, n, record, raw=record))
        except ValueError as exc:
            out.append(_row(cid, None, source, n, record, raw=json.dumps(record, ensure_ascii=False),
                            error=f"bad JSON: {exc}"))
    return out


def parse_parquet(data: bytes, source: str, cid: str) -> list[dict[str, Any]]:
    df = pd.read_parquet(_io.BytesIO(data))
    out = []
    for n, rec in enumerate(df.astype(object).where(df.notna(), None).to_dict("records"), start=1):
        raw = json.dumps(rec, ensure_ascii=False, sort_keys=True, default=str)
        out.append(_row(cid, rec, source, n, raw, raw=raw))
    return out


def _unreadable(cid: str, source: str, data: bytes, reason: str) -> dict[str, Any]:
    raw = json.dumps({"file": source, "size": len(data), "sha256": sha256(data)})
    row = _row(cid, None, source, 0, "", raw=raw, error=f"unreadable file {source}: {reason}")
    row["row_hash"] = sha256(data)
    return row


def read_contribution_file(path: Path, source: str, cid: str) -> list[dict[str, Any]]:
    """All rows of one contribution file; never raises for bad content."""
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [_unreadable(cid, source, b"", f"cannot open ({exc.strerror or exc})")]
    if suffix == ".parquet":
        try:
            return parse_parquet(data, source, cid)
        except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
            return [_unreadable(cid, source, data, f"not a Parquet file ({type(exc).__name__})")]
    if suffix not in DELIMITED and suffix not in JSON_LINES:
        return [_unreadable(cid, source, data, f"unsupported file type {suffix or '(none)'!r}")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [_unreadable(cid, source, data, f"not UTF-8 text (byte {exc.start})")]
    if data.count(b"\x00") > max(8, len(data) // 100):
        return [_unreadable(cid, source, data, "binary content")]
    if suffix in JSON_LINES:
        return parse_json_lines(text, source, cid)
    return parse_delimited(text, source, cid, DELIMITED[suffix])


def _walk(base: Path) -> Iterator[tuple[Path, Path, str | None]]:
    """``(path, path relative to base, skip reason)``, sorted; symlinks are never followed."""
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if (Path(dirpath) / d).is_symlink()):
            p = Path(dirpath) / name
            rel = p.relative_to(base)
            if any(part.startswith(".") for part in rel.parts):
                yield p, rel, "hidden"
            elif p.is_symlink():
                yield p, rel, "symlink"
            else:
                yield p, rel, None


def collect_contributions(contrib_dir: Path, root: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every contribution file under ``contrib_dir`` as one submissions frame plus file stats."""
    rows: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    if contrib_dir.is_dir():
        for path, rel, skip in _walk(contrib_dir):
            source = path.relative_to(root).as_posix() if path.is_relative_to(root) else rel.as_posix()
            cid = contributor_from_path(rel)
            if skip == "hidden":
                skipped.append({"file": source, "reason": "hidden file"})
                continue
            if skip == "symlink":
                file_rows = [_unreadable(cid, source, b"", "symbolic link (not followed)")]
            else:
                file_rows = read_contribution_file(path, source, cid)
            rows.extend(file_rows)
            files.append({
                "file": source, "rows": len(file_rows),
                "parse_errors": sum(r["parse_error"] is not None for r in file_rows),
            })
    df = pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)
    return normalise_submissions(df), {"files": files, "skipped": skipped}


def normalise_submissions(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and types: strings (nullable) and an int64 ``source_line``."""
    out = df.reindex(columns=SUBMISSION_COLUMNS).copy()
    for c in SUBMISSION_COLUMNS:
        if c == "source_line":
            out[c] = out[c].astype("int64")
        else:
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out.reset_index(drop=True)


def read_unlabeled(unlabeled_dir: Path, root: Path) -> tuple[pd.DataFrame, int]:
    """Non-blank lines of ``unlabeled/*.txt`` (sorted); undecodable bytes are replaced and counted."""
    rows: list[tuple[str, str, int]] = []
    replaced = 0
    for path in sorted(unlabeled_dir.glob("*.txt")) if unlabeled_dir.is_dir() else []:
        if path.is_symlink():
            continue
        data = path.read_bytes()
        text = data.decode("utf-8", errors="replace")
        replaced += text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
        source = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        for n, line in enumerate(text.split("\n"), start=1):
            line = line.rstrip("\r").replace("\x00", "")
            if line.strip():
                rows.append((line, source, n))
    df = pd.DataFrame(rows, columns=["text", "source_file", "source_line"])
    df["source_line"] = df["source_line"].astype("int64")
    return df, replaced


def read_gold(path: Path, classes: Iterable[str]) -> pd.DataFrame:
    """Expert labels; broken gold stops the pipeline (everything downstream trusts it)."""
    candidates = [path, path.with_suffix(".parquet"), path.with_suffix(".tsv")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"gold labels not found: expected {path} (or {path.with_suffix('.parquet').name})")
    if found.suffix == ".parquet":
        gold = pd.read_parquet(found).astype(str)
    else:
        gold = pd.read_csv(found, sep="\t" if found.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    missing = [c for c in GOLD_COLUMNS if c not in gold.columns]
    if missing:
        raise ValueError(f"{found}: gold lacks column(s) {missing}; expected {GOLD_COLUMNS}")
    gold = gold[GOLD_COLUMNS].copy()
    classes = list(classes)
    problems = []
    if (gold["item_id"].str.strip() == "").any():
        problems.append("empty item_id")
    if gold["item_id"].duplicated().any():
        problems.append(f"duplicate item_id(s) {gold.loc[gold['item_id'].duplicated(), 'item_id'].head(5).tolist()}")
    bad_label = sorted(set(gold["label"]) - set(classes))
    if bad_label:
        problems.append(f"label(s) {bad_label[:5]} not in classes {classes}")
    bad_split = sorted(set(gold["split"]) - set(GOLD_SPLITS))
    if bad_split:
        problems.append(f"split(s) {bad_split[:5]} not in {list(GOLD_SPLITS)}")
    if problems:
        raise ValueError(f"{found}: invalid gold: " + "; ".join(problems))
    return gold.reset_index(drop=True)


def ingest_report(subs: pd.DataFrame, stats: dict[str, Any], unlabeled: pd.DataFrame,
                  replaced: int, gold: pd.DataFrame) -> dict[str, Any]:
    errors = subs[subs["parse_error"].notna()]
    repeated = int(subs.duplicated(["contributor_id", "row_hash"]).sum())
    return {
        "files_read": len(stats["files"]),
        "files": stats["files"],
        "skipped": stats["skipped"],
        "rows_in": len(subs),
        "rows_by_contributor": {str(k): int(v) for k, v in subs.groupby("contributor_id").size().items()},
        "n_contributors": int(subs["contributor_id"].nunique()),
        "parse_errors": len(errors),
        "parse_error_rows": [
            {"file": f, "line": int(ln), "error": e}
            for f, ln, e in errors[["source_file", "source_line", "parse_error"]].head(100).itertuples(index=False)
        ],
        "unreadable_files": sorted(set(errors.loc[errors["source_line"] == 0, "source_file"])),
        "repeated_rows": repeated,
        "n_unlabeled": len(unlabeled),
        "unlabeled_replaced_chars": replaced,
        "n_gold": len(gold),
        "gold_by_split": {str(k): int(v) for k, v in gold.groupby("split").size().items()},
    }


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Read ``data/raw`` into ``submissions``, ``unlabeled`` and ``gold`` parquet files."""
    gold = read_gold(paths.gold_raw, params.data.classes)
    subs, stats = collect_contributions(paths.contributions, paths.root)
    unlabeled, replaced = read_unlabeled(paths.unlabeled_raw, paths.root)
    io.write_parquet(paths.submissions, subs)
    io.write_parquet(paths.unlabeled, unlabeled)
    io.write_parquet(paths.gold, gold)
    metrics = ingest_report(subs, stats, unlabeled, replaced, gold)
    summary = (
        f"# ingest\n\nRead {metrics['files_read']} contribution file(s) from "
        f"{metrics['n_contributors']} contributor(s): {metrics['rows_in']} row(s), "
        f"{metrics['parse_errors']} with a parse error"
        + (f" ({len(metrics['unreadable_files'])} unreadable file(s))" if metrics["unreadable_files"] else "")
        + f", {metrics['repeated_rows']} repeated row(s).\n"
        f"Unlabeled corpus: {metrics['n_unlabeled']} line(s). Gold: {metrics['n_gold']} item(s) "
        f"{metrics['gold_by_split']}.\n"
    )
    return write_report(paths, "ingest", metrics, summary)
