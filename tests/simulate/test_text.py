"""The generated sentiment task: reproducible, diverse, learnable but not by unigrams alone."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from crowdforge.simulate.text import DEFAULT_CLASSES, generate_texts


def test_reproducible_and_diverse() -> None:
    a = generate_texts(1500, seed=3)
    b = generate_texts(1500, seed=3)
    assert a.equals(b)
    assert list(a.columns) == ["text", "label"]
    assert a["text"].is_unique
    assert set(a["label"]) == set(DEFAULT_CLASSES)
    shares = a["label"].value_counts(normalize=True)
    assert shares.min() > 0.2  # roughly balanced
    assert not generate_texts(200, seed=4)["text"].equals(a["text"].iloc[:200])


def test_class_order_may_change_but_names_may_not() -> None:
    generate_texts(10, seed=0, classes=["positive", "negative", "neutral"])
    with pytest.raises(ValueError, match="3-class sentiment"):
        generate_texts(10, seed=0, classes=["bad", "ok", "good"])
    with pytest.raises(ValueError):
        generate_texts(10, seed=0, classes=["negative", "positive"])


def test_rules_negation_and_contrast() -> None:
    df = generate_texts(3000, seed=5)
    # "not <negative>" is neutral, never positive; "recommend" without "not/never" is positive
    not_bad = df[df["text"].str.contains(r"\b(?:was not|is not) (?:bad|terrible|awful)\b")
                 & ~df["text"].str.contains(" but |although")]
    assert len(not_bad) > 0 and set(not_bad["label"]) == {"neutral"}
    rec = df[df["text"].str.contains("would (?:definitely |happily )?recommend")]
    assert len(rec) > 0 and set(rec["label"]) == {"positive"}
    # the clause after "but" decides: a positive first clause does not make the sentence positive
    contrast = df[df["text"].str.contains(" but ")]
    assert contrast["label"].nunique() == 3


def test_label_depends_on_text_beyond_unigrams() -> None:
    df = generate_texts(4000, seed=11)
    train, test = df.iloc[:3000], df.iloc[3000:]
    vec = CountVectorizer(token_pattern=r"[^\s]+")
    model = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train["text"]), train["label"])
    acc = float(np.mean(model.predict(vec.transform(test["text"])) == test["label"]))
    majority = float(test["label"].value_counts(normalize=True).max())
    assert acc > majority + 0.35, (acc, majority)  # learnable
    assert acc < 0.97, acc  # but negation / contrast defeat a bag of words
