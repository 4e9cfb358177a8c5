import pandas as pd
import pytest

from crowdforge import gold


def test_hash_ignores_row_order_but_not_content():
    df = pd.DataFrame({"item_id": ["b", "a"], "text": ["x", "y"], "label": ["p", "q"]})
    assert gold.test_set_hash(df) == gold.test_set_hash(df.iloc[::-1])
    changed = df.assign(label=["p", "p"])
    assert gold.test_set_hash(changed) != gold.test_set_hash(df)


def test_gold_test_selects_the_frozen_split(tmp_path):
    path = tmp_path / "gold.parquet"
    pd.DataFrame({"item_id": ["1", "2"], "text": ["a", "b"], "label": ["x", "y"],
                  "split": ["check", "test"]}).to_parquet(path)
    assert gold.gold_test(path)["item_id"].tolist() == ["2"]
    pd.DataFrame({"item_id": ["1"], "text": ["a"], "label": ["x"], "split": ["check"]}).to_parquet(path)
    with pytest.raises(ValueError, match="no rows with split == 'test'"):
        gold.gold_test(path)
