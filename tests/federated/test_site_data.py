from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from crowdforge.federated.site_data import QUARANTINE_FILE, SiteDataError, read_site, write_site


def test_bad_rows_are_quarantined_at_the_site_with_file_row_and_reason(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text(
        "text,label,confidence\n"
        "a fine sentence,pos,0.9\n"
        ",neg,0.8\n"               # row 2: no text
        "another sentence,maybe,1\n"  # row 3: unknown label
        "third sentence,neg,1.7\n"    # row 4: confidence outside 0-1
        "last sentence,neg,0.6\n", encoding="utf-8")
    data = read_site(tmp_path, ["neg", "pos"])
    assert data.texts == ["a fine sentence", "last sentence"]
    assert data.q.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert data.w.tolist() == [0.9, 0.6]
    assert data.n_quarantined == 3
    q = pd.read_csv(tmp_path / QUARANTINE_FILE)
    assert q["row"].tolist() == [2, 3, 4]
    assert q["reason"].tolist() == ["missing_text", "label_not_in_classes", "confidence_not_in_0_1"]
    assert set(q["file"]) == {str(tmp_path / "labels.csv")}


def test_a_site_without_labels_or_columns_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="no labels file"):
        read_site(tmp_path, ["neg", "pos"])
    (tmp_path / "labels.csv").write_text("sentence,label\nhello,neg\n", encoding="utf-8")
    with pytest.raises(SiteDataError, match=r"labels.csv: missing column\(s\) text"):
        read_site(tmp_path, ["neg", "pos"])


def test_written_sites_read_back(tmp_path: Path) -> None:
    write_site(tmp_path, ["one", "two"], ["pos", "neg"])
    data = read_site(tmp_path, ["neg", "pos"])
    assert data.texts == ["one", "two"] and data.w.tolist() == [1.0, 1.0] and data.n_quarantined == 0
