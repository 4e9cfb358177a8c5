"""Ingest agent: collect every contributor's submissions as received, with provenance.

Nothing is dropped and nothing is judged here (that is validate's job): every record of every
file under ``data/raw/contributions/`` becomes exactly one row of ``submissions.parquet``. A row
that cannot be parsed (wrong field count, bad quoting, NUL byte, oversized record, bad JSON) keeps
its original text in ``raw`` and says why in ``parse_error``; a file that cannot be read at all
(binary, undecodable, unsupported type, symlink, FIFO, corrupt Parquet) becomes one row naming the
file (``source_line`` 0), and the run goes on.

Formats and encodings: see :mod:`crowdforge.ingestion.readers` (CSV, TSV, JSON Lines, Parquet;
BOM, ``<file>.encoding`` sidecar, ``ingest.default_encoding``).

Provenance on every row: ``source_file`` (relative to the project root), ``source_line`` (1-based
physical line where the record starts, header = line 1; row number for Parquet; 0 for a whole-file
row), ``row_hash`` (sha256 of the record's original text without its line end; of the bytes for a
whole-file row), ``raw`` (that text as a JSON string; a JSON object for JSON Lines and Parquet
rows), ``file_sha256`` (the whole file's content hash).

Re-submissions: a file whose bytes equal an earlier file's (walk order: sorted paths) is still
read - ``rows_in`` counts every row received - but its rows carry ``resubmission_of`` (the first
copy's ``source_file``) and validate quarantines them as ``resubmitted``; so a file sent twice adds
nothing. Rows repeated inside different files are validate's ``duplicate``.

The contributor is the ``contributor_id`` column when present and non-empty, else the name of the
first folder under ``contributions/`` (``<cid>/...``) or the file name without suffix
(``<cid>.csv``). Ids and file names are only ever data: no path is built from them.

Memory: files are streamed (:mod:`~crowdforge.ingestion.readers`) and rows are written to the
Parquet file every ``ingest.chunk_rows`` rows, so memory is bounded by the chunk, not the data.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from crowdforge import io
from crowdforge.config import IngestParams, Params
from crowdforge.ingestion import readers
from crowdforge.ingestion.readers import FIELDS, PAIR_FIELDS, RawRow, Unreadable, sha256
from crowdforge.paths import Paths
from crowdforge.reports import write_report
from crowdforge.safety import open_regular_file

FIELDS_LIST = list(FIELDS)
SUBMISSION_COLUMNS = FIELDS_LIST + ["source_file", "source_line", "row_hash", "raw", "parse_error",
                                    "file_sha256", "resubmission_of"]
GOLD_COLUMNS = ["item_id", "text", "label", "split"]
GOLD_SPLITS = ("check", "test")
MAX_SIDECAR_BYTES = 64
MAX_REPORTED_ERRORS = 100


def submissions_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c == "source_line" else pa.string()) for c in SUBMISSION_COLUMNS])


def contributor_from_path(rel: Path) -> str:
    """``<cid>/anything`` -> ``cid``; ``<cid>.csv`` -> ``cid`` (``rel`` is under contributions/)."""
    parts = rel.parts
    return parts[0] if len(parts) > 1 else rel.name.rsplit(".", 1)[0]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def to_row(cid: str, r: RawRow, source: str, file_hash: str | None, resub: str | None) -> dict[str, Any]:
    """One submissions row; empty strings become null, the contributor falls back to the path."""
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    error = r.error
    if r.fields is not None and error is None:
        values = {f: None if _blank(r.fields.get(f)) else str(r.fields.get(f)) for f in FIELDS}
        if any(v is not None and "\x00" in v for v in values.values()):
            error = "NUL byte in row"  # also for JSON Lines / Parquet input
        else:
            out = values
    if out["contributor_id"] is None:
        out["contributor_id"] = cid
    out.update(source_file=source, source_line=r.line, row_hash=r.full_hash or sha256(r.original),
               raw=r.raw, parse_error=error, file_sha256=file_hash, resubmission_of=resub)
    return out


def unreadable_row(cid: str, source: str, reason: str, file_hash: str | None, size: int | None) -> dict[str, Any]:
    """The one row that stands for a file that cannot be read at all."""
    import json

    raw = json.dumps({"file": source, "size": size, "sha256": file_hash})
    row = to_row(cid, RawRow(0, None, "", raw, f"unreadable file: {reason}"), source, file_hash, None)
    row["row_hash"] = file_hash or sha256(raw)
    return row


@dataclass
class FileResult:
    """What reading one file gave: its rows (streamed) and, after exhaustion, its stats."""

    source: str
    rows: int = 0
    parse_errors: int = 0
    encoding: str | None = None
    resubmission_of: str | None = None
    unreadable: str | None = None


def _read_sidecar(path: Path) -> str:
    with open_regular_file(path) as fh:
        data = fh.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        raise Unreadable(f"encoding sidecar {path.name!r} is longer than {MAX_SIDECAR_BYTES} bytes")
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise Unreadable(f"encoding sidecar {path.name!r} is not ASCII") from None


def read_contribution_file(path: Path, source: str, cid: str, sidecar: Path | None, cfg: IngestParams,
                           seen: dict[str, str], result: FileResult) -> Iterator[dict[str, Any]]:
    """Stream the rows of one contribution file; never raises for bad content.

    ``seen`` maps file content hashes to the first file that had them (updated here).
    """
    suffix = path.suffix.lower()
    file_hash: str | None = None
    size: int | None = None
    try:
        with open_regular_file(path) as fh:
            if suffix not in readers.SUPPORTED:
                file_hash, size = _hash_stream(fh)
                raise Unreadable(f"unsupported file type {suffix or '(none)'!r}")
            try:
                declared = _read_sidecar(sidecar) if sidecar is not None else None
                scan = readers.scan_file(fh, suffix, declared, cfg.default_encoding)
            except Unreadable:
                fh.seek(0)
                file_hash, size = _hash_stream(fh)
                raise
            file_hash, size = scan.sha256, scan.size
            result.encoding = scan.encoding.codec if scan.encoding else None
            result.resubmission_of = seen.get(file_hash)
            seen.setdefault(file_hash, source)
            if suffix in readers.PARQUET:
                rows: Iterable[RawRow] = readers.read_parquet(path, cfg.chunk_rows)
            else:
                lines = readers.iter_lines(fh, scan.encoding, cfg.max_record_chars)
                rows = (readers.read_json_lines(lines, cfg.max_record_chars) if suffix in readers.JSON_LINES
                        else readers.read_delimited(lines, readers.DELIMITED[suffix], cfg.max_record_chars))
            for r in rows:
                row = to_row(cid, r, source, file_hash, result.resubmission_of)
                result.rows += 1
                result.parse_errors += row["parse_error"] is not None
                yield row
    except (Unreadable, OSError) as exc:
        if result.rows:  # cannot happen for text files (scanned first); Parquet yields its own error row
            raise
        reason = str(exc) if isinstance(exc, Unreadable) else f"cannot open ({exc.strerror or exc})"
        result.unreadable = reason
        result.rows, result.parse_errors = 1, 1
        yield unreadable_row(cid, source, reason, file_hash, size)


def _hash_stream(fh) -> tuple[str, int]:
    import hashlib

    h, n = hashlib.sha256(), 0
    for chunk in iter(lambda: fh.read(readers.SCAN_CHUNK), b""):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


@dataclass(frozen=True)
class Entry:
    path: Path
    rel: Path
    kind: str  # data | hidden | symlink | special | sidecar | orphan_sidecar
    sidecar: Path | None = None


def walk_contributions(base: Path) -> Iterator[Entry]:
    """Every entry under ``base``, sorted, classified; symlinks are never followed.

    ``<file>.encoding`` next to ``<file>`` is that file's sidecar, not a data file.
    """
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        names = set(filenames)
        for name in sorted(filenames) + sorted(d for d in dirnames if (here / d).is_symlink()):
            p = here / name
            rel = p.relative_to(base)
            if any(part.startswith(".") for part in rel.parts):
                yield Entry(p, rel, "hidden")
                continue
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                yield Entry(p, rel, "symlink")
            elif not stat.S_ISREG(mode):
                yield Entry(p, rel, "special")
            elif name.endswith(readers.SIDECAR_SUFFIX) and name != readers.SIDECAR_SUFFIX:
                yield Entry(p, rel, "sidecar" if name[: -len(readers.SIDECAR_SUFFIX)] in names else "orphan_sidecar")
            else:
                side = p.with_name(name + readers.SIDECAR_SUFFIX)
                yield Entry(p, rel, "data", side if name + readers.SIDECAR_SUFFIX in names else None)


@dataclass
class IngestStats:
    """Counters kept while rows stream past (bounded: per file and per contributor, not per row)."""

    files: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    sidecars: list[str] = field(default_factory=list)
    rows_in: int = 0
    by_contributor: dict[str, int] = field(default_factory=dict)
    parse_errors: int = 0
    parse_error_rows: list[dict[str, Any]] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)
    resubmitted_files: list[dict[str, str]] = field(default_factory=list)
    resubmitted_rows: int = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows_in += 1
        cid = str(row["contributor_id"])
        self.by_contributor[cid] = self.by_contributor.get(cid, 0) + 1
        if row["parse_error"] is not None:
            self.parse_errors += 1
            if len(self.parse_error_rows) < MAX_REPORTED_ERRORS:
                self.parse_error_rows.append({"file": row["source_file"], "line": int(row["source_line"]),
                                              "error": row["parse_error"]})
        if row["resubmission_of"] is not None:
            self.resubmitted_rows += 1


def iter_submissions(contrib_dir: Path, root: Path, cfg: IngestParams, stats: IngestStats) -> Iterator[dict[str, Any]]:
    """Every row of every contribution file under ``contrib_dir``, in sorted path order."""
    if not contrib_dir.is_dir():
        return
    seen: dict[str, str] = {}
    for e in walk_contributions(contrib_dir):
        source = e.path.relative_to(root).as_posix() if e.path.is_relative_to(root) else e.rel.as_posix()
        cid = contributor_from_path(e.rel)
        if e.kind == "hidden":
            stats.skipped.append({"file": source, "reason": "hidden file"})
            continue
        if e.kind == "sidecar":
            stats.sidecars.append(source)
            continue
        result = FileResult(source)
        if e.kind == "data":
            rows = read_contribution_file(e.path, source, cid, e.sidecar, cfg, seen, result)
        else:
            reason = {"symlink": "symbolic link (not followed)", "special": "not a regular file",
                      "orphan_sidecar": "encoding sidecar without its data file"}[e.kind]
            result.unreadable = reason
            result.rows = result.parse_errors = 1
            rows = iter([unreadable_row(cid, source, reason, None, None)])
        for row in rows:
            stats.add(row)
            yield row
        if result.unreadable:
            stats.unreadable_files.append(source)
        if result.resubmission_of:
            stats.resubmitted_files.append({"file": source, "same_as": result.resubmission_of})
        stats.files.append({"file": source, "rows": result.rows, "parse_errors": result.parse_errors,
                            "encoding": result.encoding})


def chunked(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_submissions(path: Path, rows: Iterable[dict[str, Any]], chunk_rows: int) -> int:
    """Stream ``rows`` into a Parquet file (atomically), one row group per chunk; returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = submissions_schema()
    n = 0
    with io.atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for chunk in chunked(rows, max(1, chunk_rows)):
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            n += len(chunk)
        if n == 0:
            writer.write_table(schema.empty_table())
    return n


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
    if "text" not in gold.columns and all(c in gold.columns for c in PAIR_FIELDS):  # a pair task's two fields
        gold["text"] = [readers.join_pair_fields(dict(zip(PAIR_FIELDS, ab)))["text"] or ""
                        for ab in zip(*(gold[c] for c in PAIR_FIELDS))]
    missing = [c for c in GOLD_COLUMNS if c not in gold.columns]
    if missing:
        raise ValueError(f"{found}: gold lacks column(s) {missing}; expected {GOLD_COLUMNS}")
    gold = gold[GOLD_COLUMNS].copy()
    classes = list(classes)
    problems = []
    if (gold["item_id"].str.strip() == "").any():
        problems.append("empty item_id")
    empty_text = gold["text"].str.strip() == ""
    if empty_text.any():
        problems.append(f"empty text for item_id(s) {gold.loc[empty_text, 'item_id'].head(5).tolist()}")
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


def ingest_report(stats: IngestStats, unlabeled: pd.DataFrame, replaced: int, gold: pd.DataFrame) -> dict[str, Any]:
    return {
        "files_read": len(stats.files),
        "files": stats.files,
        "skipped": stats.skipped,
        "encoding_sidecars": stats.sidecars,
        "rows_in": stats.rows_in,
        "rows_by_contributor": dict(sorted(stats.by_contributor.items())),
        "n_contributors": len(stats.by_contributor),
        "parse_errors": stats.parse_errors,
        "parse_error_rows": stats.parse_error_rows,
        "unreadable_files": sorted(stats.unreadable_files),
        "resubmitted_files": stats.resubmitted_files,
        "resubmitted_rows": stats.resubmitted_rows,
        "n_unlabeled": len(unlabeled),
        "unlabeled_replaced_chars": replaced,
        "n_gold": len(gold),
        "gold_by_split": {str(k): int(v) for k, v in gold.groupby("split").size().items()},
    }


def md_code(text: str, limit: int = 80) -> str:
    """Contributed text (a file name) shown in markdown as inert code: no links, no HTML."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit]).replace("`", "'")
    return f"`{clean}`"


def summary_md(m: dict[str, Any]) -> str:
    lines = [
        "# ingest", "",
        (f"Read **{m['files_read']}** contribution file(s) from **{m['n_contributors']}** contributor(s): "
         f"**{m['rows_in']}** row(s), {m['parse_errors']} with a parse error, "
         f"{m['resubmitted_rows']} in {len(m['resubmitted_files'])} re-submitted file(s)."),
    ]
    if m["unreadable_files"]:
        lines += ["", "Unreadable files (each quarantined whole by validate):"]
        lines += [f"- {md_code(f)}" for f in m["unreadable_files"][:20]]
    if m["skipped"]:
        lines += ["", f"Skipped {len(m['skipped'])} hidden file(s)."]
    lines += ["", f"Unlabeled corpus: {m['n_unlabeled']} line(s). Gold: {m['n_gold']} item(s) {m['gold_by_split']}."]
    return "\n".join(lines) + "\n"


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Stream ``data/raw/contributions`` into ``submissions.parquet``; read unlabeled text and gold."""
    gold = read_gold(paths.gold_raw, params.data.classes)
    stats = IngestStats()
    write_submissions(paths.submissions, iter_submissions(paths.contributions, paths.root, params.ingest, stats),
                      params.ingest.chunk_rows)
    unlabeled, replaced = read_unlabeled(paths.unlabeled_raw, paths.root)
    io.write_parquet(paths.unlabeled, unlabeled)
    io.write_parquet(paths.gold, gold)
    metrics = ingest_report(stats, unlabeled, replaced, gold)
    return write_report(paths, "ingest", metrics, summary_md(metrics))
