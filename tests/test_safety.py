import pandas as pd

from crowdforge.safety import neutralise_formulas


def test_spreadsheet_formulas_are_neutralised_and_numbers_kept():
    df = pd.DataFrame({"text": ["=HYPERLINK(\"http://x\")", "+1", "fine", "@SUM(A1)"], "p": [0.1, -0.2, 0.3, 0.4]})
    out = neutralise_formulas(df)
    assert out["text"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+1", "fine", "'@SUM(A1)"]
    assert out["p"].tolist() == [0.1, -0.2, 0.3, 0.4]


def test_full_width_and_control_formula_starts_are_neutralised():
    from crowdforge.safety import neutralise_cell

    assert neutralise_cell("\uff1dSUM(A1)") == "'\uff1dSUM(A1)"
    assert neutralise_cell("\tx") == "'\tx" and neutralise_cell(3) == 3


def test_safe_join_refuses_traversal(tmp_path):
    import pytest

    from crowdforge.safety import UnsafePath, safe_join

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "link").symlink_to(tmp_path)
    assert safe_join(tmp_path / "base", "a", "b.csv") == (tmp_path / "base" / "a" / "b.csv").resolve()
    for bad in (("..", "x"), ("/etc/passwd",), ("a\x00b",), ("link", "secret"), ("",)):
        with pytest.raises(UnsafePath):
            safe_join(tmp_path / "base", *bad)


def test_open_regular_file_refuses_links_and_fifos(tmp_path):
    import os

    import pytest

    from crowdforge.safety import open_regular_file

    (tmp_path / "f").write_bytes(b"ok")
    (tmp_path / "l").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "p")
    with open_regular_file(tmp_path / "f") as fh:
        assert fh.read() == b"ok"
    for name in ("l", "p"):
        with pytest.raises(OSError):
            open_regular_file(tmp_path / name).close()
