"""Streaming readers for contribution files: CSV, TSV, JSON Lines and Parquet.

Why streaming: a contributor may send a file larger than memory. Every reader here yields one
row at a time from an open file, never holding more than one record (bounded by
``max_record_chars``) or one Parquet record batch, so ingest's memory does not grow with file size.

Why every reader yields *something* for every record: rows in must equal rows accepted plus rows
quarantined, so a record that cannot be parsed is still a row - with its original text in ``raw``
and the reason in ``parse_error`` - and a file that cannot be read at all is one row naming it.
Nothing from a file is ever executed or unpickled: CSV/JSON are parsed as text, Parquet through
pyarrow's columnar reader (pandas metadata and pickled extension types are not honoured).

Encodings (in order of precedence):

1. a byte-order mark: UTF-8, UTF-16 LE/BE or UTF-32 LE/BE;
2. a sidecar file ``<file>.encoding`` next to the data file, holding a codec name (``latin-1``,
   ``cp1252``, ``shift_jis``...) - how a contributor declares a legacy encoding;
3. ``ingest.default_encoding`` from ``params.yaml`` (``utf-8``).

A file that does not decode with its encoding is unreadable as a whole (with the byte offset),
never decoded with replacement characters: a silently altered text is worse than a quarantined one.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io as _io
import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from crowdforge.modeling.tokens import PAIR_SEPARATOR

FIELDS = ("contributor_id", "item_id", "text", "label", "submitted_at")
REQUIRED_HEADER = ("item_id", "text", "label")
#: A pair task may give its two texts as two fields instead of one ``text``; they are joined as
#: ``"<text_a> [SEP] <text_b>"``, the pair convention of ``crowdforge.modeling.tokens``.
PAIR_FIELDS = ("text_a", "text_b")


def missing_columns(names: Any) -> list[str]:
    """Required columns absent from ``names``; ``text_a`` and ``text_b`` together stand in for ``text``."""
    names = set(names)
    has_pair = all(f in names for f in PAIR_FIELDS)
    return [c if c != "text" else "text (or text_a and text_b)"
            for c in REQUIRED_HEADER if c not in names and not (c == "text" and has_pair)]


def join_pair(a: Any, b: Any) -> str:
    """The one text of a pair: ``"<a> [SEP] <b>"`` (sides stripped)."""
    return f"{str(a).strip()} {PAIR_SEPARATOR} {str(b).strip()}"


def join_pair_fields(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text`` from ``text_a`` and ``text_b`` when ``text`` itself is absent or empty (a copy)."""
    if fields is None or fields.get("text") not in (None, "") or not all(f in fields for f in PAIR_FIELDS):
        return fields
    a, b = (fields.get(f) for f in PAIR_FIELDS)
    blank = [f for f, v in zip(PAIR_FIELDS, (a, b)) if v is None or str(v).strip() == ""]
    return {**fields, "text": None if blank else join_pair(a, b)}
DELIMITED = {".csv": ",", ".tsv": "\t"}
JSON_LINES = (".jsonl", ".ndjson")
PARQUET = (".parquet",)
SUPPORTED = (*DELIMITED, *JSON_LINES, *PARQUET)
SIDECAR_SUFFIX = ".encoding"
MAX_RECORD_LINES = 200  # a quoted field may span lines, but an unclosed quote must not eat the file
SCAN_CHUNK = 1 << 20
BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class Unreadable(Exception):
    """The file as a whole cannot be read; the message is the parser's reason."""


def sha256(data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Encoding:
    codec: str
    bom: int  # bytes to skip
    how: str  # "bom" | "sidecar" | "default"


def resolve_codec(name: str) -> str:
    """A codec name checked to be a text encoding (``rot13``, ``zlib``, ``base64`` are refused)."""
    name = name.strip()
    if not name or len(name) > 40:
        raise Unreadable(f"bad encoding name {name[:40]!r}")
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise Unreadable(f"unknown encoding {name!r}") from None
    if not getattr(info, "_is_text_encoding", True):
        raise Unreadable(f"{name!r} is not a text encoding")
    return info.name


def detect_encoding(head: bytes, sidecar: str | None, default: str) -> Encoding:
    """BOM, else the sidecar's codec, else the default (see module doc)."""
    for bom, codec in BOMS:
        if head.startswith(bom):
            return Encoding(codec, len(bom), "bom")
    if sidecar is not None:
        return Encoding(resolve_codec(sidecar), 0, "sidecar")
    return Encoding(resolve_codec(default), 0, "default")


@dataclass(frozen=True)
class FileScan:
    sha256: str
    size: int
    encoding: Encoding | None  # None for Parquet


def scan_file(fh: BinaryIO, suffix: str, sidecar: str | None, default_encoding: str) -> FileScan:
    """One pass over the bytes: content hash, and for text files a strict decode and a NUL check.

    Raises :class:`Unreadable` when the file does not decode or looks binary. The whole file is
    checked before any row is emitted, so a file is either parsed or quarantined whole.
    """
    h = hashlib.sha256()
    head = fh.read(SCAN_CHUNK)
    enc = None if suffix in PARQUET else detect_encoding(head, sidecar, default_encoding)
    decoder = codecs.getincrementaldecoder(enc.codec)("strict") if enc else None
    size, chars, nuls, chunk, first = 0, 0, 0, head, True
    error: str | None = None
    while chunk:
        h.update(chunk)
        if decoder is not None and error is None:
            try:
                text = decoder.decode(chunk[enc.bom:] if first else chunk)
                chars += len(text)
                nuls += text.count("\x00")
            except UnicodeDecodeError as exc:
                error = f"not {enc.codec} text (byte {size + exc.start + (0 if not first else enc.bom)})"
        size += len(chunk)
        first = False
        chunk = fh.read(SCAN_CHUNK)
    if decoder is not None and error is None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            error = f"not {enc.codec} text (truncated at the end)"
    if error is not None:
        hint = ("" if enc is None or enc.how != "default"
                else f"; declare the encoding in a '<file>{SIDECAR_SUFFIX}' sidecar")
        raise Unreadable(error + hint)
    if nuls > max(8, chars // 100):
        raise Unreadable(f"binary content ({nuls} NUL characters)")
    return FileScan(h.hexdigest(), size, enc)


# ----------------------------------------------------------------------------- lines and records
class Line(NamedTuple):
    number: int  # 1-based physical line
    text: str  # with its line end; cut at the limit when oversized
    full_hash: str | None  # sha256 of the whole line without its end, only when oversized


def iter_lines(fh: BinaryIO, enc: Encoding, max_chars: int) -> Iterator[Line]:
    """Physical lines (split on ``\\n`` only), each held in memory up to ``max_chars`` characters.

    A longer line is read on in pieces so its hash covers all of it, but only its first
    ``max_chars`` characters are kept.
    """
    fh.seek(enc.bom)
    text = _io.TextIOWrapper(fh, encoding=enc.codec, errors="strict", newline="\n")
    try:
        n = 0
        while True:
            line = text.readline(max_chars + 1)
            if not line:
                return
            n += 1
            if len(line) <= max_chars or line.endswith("\n") and len(line) == max_chars + 1:
                yield Line(n, line, None)
                continue
            h = hashlib.sha256()
            h.update(line.encode("utf-8", "surrogatepass"))
            piece = line
            while piece and not piece.endswith("\n"):
                piece = text.readline(SCAN_CHUNK)
                h.update(piece.rstrip("\r\n").encode("utf-8", "surrogatepass") if piece.endswith("\n") else
                         piece.encode("utf-8", "surrogatepass"))
            yield Line(n, line[:max_chars], h.hexdigest())
    finally:
        text.detach()


class Record(NamedTuple):
    line: int  # first physical line of the record
    text: str  # the record as received, without its final line end
    error: str | None
    full_hash: str | None = None  # set when ``text`` was cut (oversized)


def iter_records(lines: Iterator[Line], accept: Callable[[str], bool], max_chars: int) -> Iterator[Record]:
    """Records of a delimited file: one line, or several when a quoted field holds a newline.

    A multi-line record (odd number of quotes) is kept only if ``accept(record)``; otherwise its
    first line is reported as ``unterminated quote`` and reading resumes on the next line, so an
    unclosed quote cannot swallow the rest of the file (``csv.reader`` would).
    """
    buf: deque[Line] = deque()

    def fill(k: int) -> bool:
        while len(buf) < k:
            nxt = next(lines, None)
            if nxt is None:
                return False
            buf.append(nxt)
        return True

    while fill(1):
        first = buf[0]
        if first.full_hash is not None:
            buf.popleft()
            yield Record(first.number, first.text.rstrip("\r\n"),
                         f"oversized record (more than {max_chars} characters)", first.full_hash)
            continue
        acc, odd, j = first.text, first.text.count('"') % 2, 0
        while odd and j < MAX_RECORD_LINES and len(acc) <= max_chars and fill(j + 2) and buf[j + 1].full_hash is None:
            j += 1
            acc += buf[j].text
            odd ^= buf[j].text.count('"') % 2
        record = acc.rstrip("\r\n")
        if odd or (j > 0 and (len(acc) > max_chars or not accept(record))):
            buf.popleft()
            yield Record(first.number, first.text.rstrip("\r\n"), "unterminated quote")
            continue
        for _ in range(j + 1):
            buf.popleft()
        yield Record(first.number, record, None)


def parse_fields(record: str, delimiter: str) -> list[str]:
    rows = list(csv.reader([record], delimiter=delimiter, strict=True))
    if len(rows) != 1:
        raise csv.Error(f"record parses into {len(rows)} rows")
    return rows[0]


# ----------------------------------------------------------------------------- rows
class RawRow(NamedTuple):
    """One received record before normalisation (what every reader yields)."""

    line: int
    fields: dict[str, Any] | None  # None when the record could not be parsed
    original: str  # the record's text (hashed into row_hash)
    raw: str  # what quarantine keeps: the record as a JSON string (or JSON object)
    error: str | None
    full_hash: str | None = None


def _text_row(line: int, record: str, fields: dict[str, Any] | None, error: str | None,
              full_hash: str | None = None) -> RawRow:
    return RawRow(line, fields, record, json.dumps(record, ensure_ascii=False), error, full_hash)


def read_delimited(lines: Iterator[Line], delimiter: str, max_chars: int) -> Iterator[RawRow]:
    """Rows of a CSV/TSV file; every non-blank record after the header yields exactly one row."""
    header: list[str] = []
    header_line: int | None = None
    bad_header = ""

    def accept(record: str) -> bool:  # a multi-line record must parse into the header's shape
        try:
            return not header or len(parse_fields(record, delimiter)) == len(header)
        except csv.Error:
            return False

    for rec in iter_records(lines, accept, max_chars):
        line, record, err = rec.line, rec.text, rec.error
        if not record.strip():
            continue
        if header_line is None:
            header_line = line
            try:
                header = [h.strip().lower() for h in parse_fields(record, delimiter)] if err is None else []
            except csv.Error:
                header = []
            missing = missing_columns(header)
            if err is not None:
                bad_header = err
            elif "\x00" in record:
                bad_header = "binary content (NUL byte in header)"
            elif missing:
                bad_header = f"header lacks column(s) {missing}"
            elif len(set(header)) != len(header):
                bad_header = "duplicate column names in header"
            else:
                continue
            header = []
        if not header:  # unusable header: keep every record as an error
            yield _text_row(line, record, None, f"unusable header (line {header_line}): {bad_header}", rec.full_hash)
            continue
        if err is None and "\x00" in record:
            err = "NUL byte in row"
        fields: dict[str, Any] | None = None
        if err is None:
            try:
                values = parse_fields(record, delimiter)
                if len(values) != len(header):
                    err = f"expected {len(header)} fields, got {len(values)}"
                else:
                    fields = join_pair_fields(dict(zip(header, values)))
            except csv.Error as exc:
                err = f"bad quoting: {exc}"
        yield _text_row(line, record, fields if err is None else None, err, rec.full_hash)


def _scalar_fields(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Known fields must be JSON scalars; nested values are an error, not a silent ``str()``."""
    for k in FIELDS + PAIR_FIELDS:
        v = obj.get(k)
        if isinstance(v, (dict, list)):
            return None, f"field {k!r} is a JSON {type(v).__name__}, expected a string"
        if isinstance(v, float) and not math.isfinite(v):
            return None, f"field {k!r} is not a finite number"
    return join_pair_fields(obj), None


def read_json_lines(lines: Iterator[Line], max_chars: int) -> Iterator[RawRow]:
    """One row per non-blank line; a line that is not a JSON object is a parse error."""
    for ln in lines:
        record = ln.text.rstrip("\r\n")
        if not record.strip():
            continue
        if ln.full_hash is not None:
            yield _text_row(ln.number, record, None, f"oversized record (more than {max_chars} characters)",
                            ln.full_hash)
            continue
        try:
            obj = json.loads(record)
        except ValueError as exc:
            yield _text_row(ln.number, record, None, f"bad JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield _text_row(ln.number, record, None, f"bad JSON: expected an object, got {type(obj).__name__}")
            continue
        fields, err = _scalar_fields(obj)
        yield RawRow(ln.number, fields, record, record, err)


def read_parquet(path: Path, batch_rows: int) -> Iterator[RawRow]:
    """Rows of a Parquet file, one record batch at a time; row numbers are 1-based.

    Raises :class:`Unreadable` if the file cannot be opened; a batch that fails to decode
    part-way becomes one error row covering the rest of the file.
    """
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unreadable"
        raise Unreadable(f"not a Parquet file ({type(exc).__name__}: {str(exc)[:120]})") from None
    missing = missing_columns(names)
    if missing:
        raise Unreadable(f"Parquet schema lacks column(s) {missing}")
    wanted = [c for c in pf.schema_arrow.names if c in FIELDS + PAIR_FIELDS]
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
            for rec in batch.to_pylist():
                n += 1
                raw = json.dumps(rec, ensure_ascii=False, sort_keys=True, default=str)
                if any(isinstance(v, (dict, list, bytes)) for v in rec.values()):
                    yield RawRow(n, None, raw, raw, "nested or binary value in a known column")
                else:
                    yield RawRow(n, join_pair_fields(rec), raw, raw, None)
    except Exception as exc:  # noqa: BLE001
        msg = f"Parquet decoding failed after row {n} ({type(exc).__name__}: {str(exc)[:120]})"
        yield RawRow(n + 1, None, "", json.dumps({"after_row": n}), msg)
