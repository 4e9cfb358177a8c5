"""Find personal data in contributed text: e-mail addresses, phone numbers, payment card numbers.

Why here and not in the model: a text that carries someone's e-mail or card number must not reach
training data, models, reports, Data Docs or MLflow. Validate asks :func:`find_pii` about every
text and applies ``validate.pii_policy``:

* ``quarantine`` - the row goes to quarantine (reason ``pii_<kind>``), untouched;
* ``mask`` - the row is accepted with every finding replaced by ``[EMAIL]``/``[PHONE]``/``[CARD]``.

Detection runs twice: on the text as received (those spans can be masked exactly) and on a
normalised copy (NFKC folds full-width digits and ``＠``; zero-width and other format characters
are removed), which catches the usual evasions. A finding that only the normalised copy shows cannot
be masked in place, so :func:`pii_report` marks it ``unmaskable`` and validate quarantines that row
under either policy.

Card numbers are 13-19 digits (spaces or dashes allowed between them) that pass the Luhn checksum
and are not 13-digit ISBNs (978/979...);
phone numbers are 9-15 digits with the usual separators in the usual digit groups, a leading ``+``
or a separator being required so that plain numbers (ids, amounts) and product codes are not
flagged (:func:`_is_phone`). Known misses: spelled-out addresses
("bob at example dot com"), numbers written in words, 7-8 digit local phone numbers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple

KINDS = ("email", "phone", "card")
MASKS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"}

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<![0-9])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])")
_PHONE = re.compile(r"(?<![0-9A-Za-z+])\+?\(?[0-9][0-9 ().\-]{7,20}[0-9](?![0-9A-Za-z])")
_QUICK = re.compile(r"@|[0-9]")  # no '@' and no digit: nothing to find (most texts)


class Finding(NamedTuple):
    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (1 in 10 random numbers do too)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_phone(span: str) -> bool:
    """9-15 digits in the digit groups phone numbers are written in: after a ``+``, groups of at most
    4 digits (the last up to 8: ``+49 30 1234567``); without one, at least three groups, the first of
    1-4 digits and the rest of 2-4 (``(555) 123-4567``, ``020 7946 0958``, ``1-800-555-1234``).
    Product and part codes (``010-10823-00``, ``970118-0403``, ISBNs ``0-7356-0592-0``) have longer
    or single-digit groups and are not phones."""
    digits = sum(c.isdigit() for c in span)
    if not 9 <= digits <= 15:
        return False
    if span.count("(") != span.count(")"):
        return False
    groups = [len(g) for g in re.findall(r"[0-9]+", span)]
    if span.startswith("+"):
        return len(groups) >= 2 and all(n <= 4 for n in groups[:-1]) and groups[-1] <= 8
    return len(groups) >= 3 and groups[0] <= 4 and all(2 <= n <= 4 for n in groups[1:])


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping findings in ``text``, in order; cards take precedence over phones."""
    if not text or not _QUICK.search(text):
        return []
    found: list[Finding] = [Finding("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]
    taken = [(f.start, f.end) for f in found]

    def free(a: int, b: int) -> bool:
        return all(b <= s or a >= e for s, e in taken)

    for m in _CARD.finditer(text):
        digits = re.sub(r"[ \-]", "", m.group())
        isbn = len(digits) == 13 and digits.startswith(("978", "979"))  # EAN-13 books pass Luhn-like checks too
        if 13 <= len(digits) <= 19 and not isbn and luhn_ok(digits) and free(m.start(), m.end()):
            found.append(Finding("card", m.start(), m.end()))
            taken.append((m.start(), m.end()))
    for m in _PHONE.finditer(text):
        span = m.group().rstrip(" .-(")
        if _is_phone(span) and free(m.start(), m.start() + len(span)):
            found.append(Finding("phone", m.start(), m.start() + len(span)))
            taken.append((m.start(), m.start() + len(span)))
    return sorted(found, key=lambda f: f.start)


def normalise_for_detection(text: str) -> str:
    """NFKC plus removal of format characters (zero-width spaces, joiners, direction marks)."""
    folded = unicodedata.normalize("NFKC", text)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def mask(text: str, findings: Iterable[Finding]) -> str:
    """``text`` with every finding replaced by its kind's placeholder."""
    out, pos = [], 0
    for f in sorted(findings, key=lambda f: f.start):
        out.append(text[pos:f.start])
        out.append(MASKS[f.kind])
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


class PiiReport(NamedTuple):
    kinds: tuple[str, ...]  # kinds found (as received or after normalisation), sorted
    masked: str | None  # text with the findings masked (None when nothing was found)
    unmaskable: bool  # something only the normalised text shows: masking cannot remove it


def pii_report(text: str | None) -> PiiReport:
    """What :func:`find_pii` finds in ``text`` and its normalised copy, and the masked text."""
    if not text:
        return PiiReport((), None, False)
    direct = find_pii(text)
    norm = normalise_for_detection(text) if not text.isascii() else text
    hidden = {f.kind for f in find_pii(norm)} if norm != text else set()
    direct_kinds = {f.kind for f in direct}
    kinds = tuple(sorted(direct_kinds | hidden))
    if not kinds:
        return PiiReport((), None, False)
    masked = mask(text, direct) if direct else text
    unmaskable = bool(hidden - direct_kinds) or (norm != text and bool(find_pii(normalise_for_detection(masked))))
    return PiiReport(kinds, masked, unmaskable)
