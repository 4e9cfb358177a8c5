"""Streaming readers: encodings, multi-line records, oversized lines, bounded memory."""

from __future__ import annotations

import io

import pytest

from crowdforge.ingestion import readers
from crowdforge.ingestion.readers import Encoding, Unreadable


def _lines(data: bytes, max_chars: int = 1000, codec: str = "utf-8") -> list[readers.Line]:
    return list(readers.iter_lines(io.BytesIO(data), Encoding(codec, 0, "default"), max_chars))


def test_detect_encoding_order() -> None:
    assert readers.detect_encoding(b"\xff\xfe\x00\x00a", "latin-1", "utf-8").codec == "utf-32-le"
    assert readers.detect_encoding(b"\xff\xfea\x00", None, "utf-8") == Encoding("utf-16-le", 2, "bom")
    assert readers.detect_encoding(b"abc", "cp1252", "utf-8") == Encoding("cp1252", 0, "sidecar")
    assert readers.detect_encoding(b"abc", None, "utf-8").how == "default"
    for bad in ("rot13", "zlib", "no-such-codec", "x" * 50):
        with pytest.raises(Unreadable):
            readers.detect_encoding(b"abc", bad, "utf-8")


def test_scan_rejects_undecodable_and_binary() -> None:
    with pytest.raises(Unreadable, match=r"not utf-8 text \(byte 5\)"):
        readers.scan_file(io.BytesIO(b"a,b,c\xff\n"), ".csv", None, "utf-8")
    with pytest.raises(Unreadable, match="binary content"):
        readers.scan_file(io.BytesIO(b"\x00" * 500), ".csv", None, "utf-8")
    scan = readers.scan_file(io.BytesIO(b"\xef\xbb\xbfa\n"), ".csv", None, "utf-8")
    assert scan.encoding == Encoding("utf-8", 3, "bom") and scan.size == 5


def test_multi_line_records_and_unterminated_quotes() -> None:
    data = b'item_id,text,label\n1,"two\nlines",x\n2,"open,x\n3,ok,x\n'
    rows = list(readers.read_delimited(iter(_lines(data)), ",", 1000))
    assert [(r.line, r.fields, r.error) for r in rows] == [
        (2, {"item_id": "1", "text": "two\nlines", "label": "x"}, None),
        (4, None, "unterminated quote"),
        (5, {"item_id": "3", "text": "ok", "label": "x"}, None),
    ]


def test_oversized_line_is_cut_but_fully_hashed() -> None:
    long = "a" * 5000
    (line, nxt) = _lines(f"{long}\nb\n".encode(), max_chars=100)
    assert len(line.text) == 100 and line.full_hash == readers.sha256(long)
    assert nxt == readers.Line(2, "b\n", None)
    data = f"item_id,text,label\n{long}\n1,2,3\n".encode()
    rows = list(readers.read_delimited(iter(_lines(data, 100)), ",", 100))
    assert (rows[0].error.startswith("oversized record")
            and rows[1].fields == {"item_id": "1", "text": "2", "label": "3"})


def test_unusable_header_keeps_every_line() -> None:
    rows = list(readers.read_delimited(iter(_lines(b"a,b\n1,2\n3,4\n")), ",", 1000))
    assert [r.line for r in rows] == [1, 2, 3] and all("header lacks" in r.error for r in rows)  # the header too


def test_json_lines_scalars_only() -> None:
    data = b'{"item_id": "a", "text": "t", "label": "x"}\n{"text": ["list"]}\n{"text": NaN}\n7\n'
    rows = list(readers.read_json_lines(iter(_lines(data)), 1000))
    assert [r.error is None for r in rows] == [True, False, False, False]


def test_two_text_fields_are_joined_as_a_pair() -> None:
    data = b'item_id,text_a,text_b,label\n1,sony tv kdl-40,Sony KDL40,match\n2,,lonely,no_match\n'
    rows = list(readers.read_delimited(iter(_lines(data)), ",", 1000))
    assert rows[0].fields["text"] == "sony tv kdl-40 [SEP] Sony KDL40" and rows[0].fields["text_a"] == "sony tv kdl-40"
    assert rows[1].fields["text"] is None  # a missing side: no text, so validation quarantines the row
    rows = list(readers.read_json_lines(iter(_lines(b'{"item_id": "1", "text_a": "a", "text_b": "b", "label": "x"}\n')),
                                        1000))
    assert rows[0].fields["text"] == "a [SEP] b"
    only_a = list(readers.read_delimited(iter(_lines(b"item_id,text_a,label\n1,a,x\n")), ",", 1000))
    assert "header lacks column(s) ['text (or text_a and text_b)']" in only_a[0].error
