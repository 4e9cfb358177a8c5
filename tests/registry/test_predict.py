"""Reading the texts `crowdforge predict --file` scores (the model side is tested in test_registry)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from crowdforge.registry.predict import PredictError, read_texts


def test_read_texts_from_every_format_and_two_pair_fields(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert read_texts(tmp_path / "t.txt") == ["one", "two"]
    pd.DataFrame({"text": ["a", None]}).to_parquet(tmp_path / "t.parquet")
    assert read_texts(tmp_path / "t.parquet") == ["a", ""]
    pd.DataFrame({"text_a": ["sony kdl-40", "x"], "text_b": ["Sony KDL40", None]}).to_csv(tmp_path / "p.csv",
                                                                                         index=False)
    assert read_texts(tmp_path / "p.csv") == ["sony kdl-40 [SEP] Sony KDL40", "x [SEP] "]
    pd.DataFrame({"body": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PredictError, match=r"needs a `text` column \(or `text_a` and `text_b`\), found \['body'\]"):
        read_texts(tmp_path / "bad.csv")
    with pytest.raises(PredictError, match="unsupported format"):
        read_texts(tmp_path / "t.xlsx" if (tmp_path / "t.xlsx").write_text("x") else tmp_path)
