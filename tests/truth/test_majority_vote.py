import pandas as pd
import pytest

from crowdforge.truth import MajorityVote


def test_votes_ties_and_skills():
    df = pd.DataFrame({"task": ["a", "a", "a", "b", "b"], "worker": ["w1", "w2", "w3", "w1", "w2"],
                       "label": ["x", "x", "y", "x", "y"]})
    mv = MajorityVote().fit(df)
    assert mv.labels_["a"] == "x" and mv.probas_.loc["a", "x"] == pytest.approx(2 / 3)
    assert mv.labels_["b"] == "x"  # tie -> first class, deterministically
    assert mv.skills_["w3"] == 0.0
    weighted = MajorityVote(skills=pd.Series({"w2": 3.0})).fit_predict(df)
    assert weighted["b"] == "y"


def test_declared_classes_and_errors():
    df = pd.DataFrame({"task": [1], "worker": [1], "label": ["x"]})
    p = MajorityVote(classes=["x", "y", "z"]).fit_predict_proba(df)
    assert list(p.columns) == ["x", "y", "z"] and p.loc[1, "x"] == 1.0
    with pytest.raises(ValueError, match="not among the classes"):
        MajorityVote(classes=["y", "z"]).fit(df)
    with pytest.raises(ValueError, match="empty"):
        MajorityVote().fit(df.iloc[0:0])
    with pytest.raises(ValueError, match="missing column"):
        MajorityVote().fit(df.drop(columns="worker"))
