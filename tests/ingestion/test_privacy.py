"""The personal-data detector: what it finds, what it must not flag, and how it masks."""

from __future__ import annotations

import pytest

from crowdforge.ingestion.privacy import find_pii, luhn_ok, mask, pii_report


@pytest.mark.parametrize("text,kinds", [
    ("write to ann.lee+x@mail.example.co.uk now", ["email"]),
    ("call +44 20 7946 0958", ["phone"]),
    ("call (555) 123-4567 or 555.123.4567", ["phone", "phone"]),
    ("card 4111 1111 1111 1111", ["card"]),
    ("card 5500-0000-0000-0004 and a@b.io", ["card", "email"]),
    ("no card: 4111 1111 1111 1112", []),  # fails Luhn, 16 digits: not a phone either
    ("item 12345 costs 12.50 on 2026-01-05 at 08:00", []),
    ("order 1234567890", []),  # bare digits without a separator or '+': an id, not a phone
    ("call 1-800-555-1234 or 020 7946 0958 or +49 30 1234567", ["phone", "phone", "phone"]),
    # product and part codes from product catalogues (Abt-Buy, Amazon-Google): not phones
    ("garmin 010-10823-00 mount, hp 970118-0403, isbn 0-7356-0592-0, sku 2007 02107746", []),
    ("isbn 9780201754544", []),  # an ISBN-13 that happens to pass the Luhn check
    ("the soup was great .", []),
])
def test_find_pii(text: str, kinds: list[str]) -> None:
    assert [f.kind for f in find_pii(text)] == kinds


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_mask_and_report() -> None:
    text = "mail a@b.io or call +1 555 123 4567"
    assert mask(text, find_pii(text)) == "mail [EMAIL] or call [PHONE]"
    rep = pii_report(text)
    assert rep.kinds == ("email", "phone") and rep.masked == "mail [EMAIL] or call [PHONE]" and not rep.unmaskable
    assert pii_report("fine text") == pii_report(None) == ((), None, False)


def test_evasions_are_found_and_marked_unmaskable() -> None:
    wide = pii_report("call \uff0b\uff14\uff14 \uff12\uff10 "
                      "\uff17\uff19\uff14\uff16 \uff10\uff19\uff15\uff18")  # full-width
    assert wide.kinds == ("phone",) and wide.unmaskable
    zw = pii_report("bob\u200b@example.com")
    assert zw.kinds == ("email",) and zw.unmaskable
