import pandas as pd

from crowdforge.safety import neutralise_formulas


def test_spreadsheet_formulas_are_neutralised_and_numbers_kept():
    df = pd.DataFrame({"text": ["=HYPERLINK(\"http://x\")", "+1", "fine", "@SUM(A1)"], "p": [0.1, -0.2, 0.3, 0.4]})
    out = neutralise_formulas(df)
    assert out["text"].tolist() == ["'=HYPERLINK(\"http://x\")", "'+1", "fine", "'@SUM(A1)"]
    assert out["p"].tolist() == [0.1, -0.2, 0.3, 0.4]
