"""A pair member: similarity features of the two records and gradient-boosted trees on them.

Whether two records (``"<left> [SEP] <right>"``, :mod:`crowdforge.modeling.tokens`) describe the same
thing turns on details a mean-pooled sentence encoder blurs: a model code (``kdl40v4150`` against
``KDL-40V4150``), a number, a rare word. The classic entity-matching features capture them
(Magellan: Konda et al. 2016, "Magellan: toward building entity matching management systems",
VLDB; the similarity functions of Christen 2012, "Data Matching"): TF-IDF cosine over character
n-grams and over words, token Jaccard, overlap of the code-like tokens (letters with digits, or
3+ digits, punctuation removed) and of the numbers, and the record lengths. They are computed from
the text alone, on any pair task, with no field names and nothing fitted to one data set; the
vectorisers learn their vocabulary and IDF from the training pairs.

The classifier is scikit-learn's ``HistGradientBoostingClassifier`` at its defaults (the LightGBM
algorithm, Ke et al. 2017). Soft labels train it as weighted copies: item ``i`` appears once per
class ``c`` with weight ``w_i q_ic`` (the expected loss under the soft label). On Abt-Buy and
Amazon-Google with 1,000 gold-labelled pairs it reaches a match F1 of 0.85 / 0.55 where the
partial cross-encoder reached 0.32 / 0.42 (BENCHMARKS.md, entity matching).

Saved with skops (no pickle: only scikit-learn, NumPy and SciPy types are trusted on load).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crowdforge.modeling.tokens import PAIR_SEPARATOR, split_pair

#: A task is a pair task when at least this share of its training texts hold a separator.
PAIR_TASK_SHARE = 0.9
MODEL_FILE = "pair_model.skops"
FEATURES = ("char_tfidf_cosine", "word_tfidf_cosine", "token_jaccard", "code_overlap", "longest_shared_code",
            "number_overlap", "left_tokens", "right_tokens")

_TOKEN = re.compile(r"[a-z0-9]+(?:[-./][a-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_SAFE_MODULES = ("sklearn.", "numpy.", "scipy.", "builtins.")


def sides(texts: Sequence[str], separators: Sequence[str] = (PAIR_SEPARATOR,)) -> tuple[list[str], list[str]]:
    """Left and right records (the right one empty for a text that is not a pair)."""
    parts = [split_pair(str(t), separators) for t in texts]
    return [a for a, _ in parts], [b or "" for _, b in parts]


def is_pair_task(texts: Sequence[str], separators: Sequence[str] = (PAIR_SEPARATOR,)) -> bool:
    """Whether nearly every text (:data:`PAIR_TASK_SHARE`) is a pair."""
    if not len(texts):
        return False
    n_pairs = sum(split_pair(str(t), separators)[1] is not None for t in texts)
    return n_pairs >= PAIR_TASK_SHARE * len(texts)


def _tokens(s: str) -> set[str]:
    return set(_TOKEN.findall(s.lower()))


def _codes(tokens: set[str]) -> set[str]:
    """Code-like tokens (model numbers, part numbers), punctuation removed: ``kdl-40v4150`` -> ``kdl40v4150``."""
    out = set()
    for t in tokens:
        has_digit = any(ch.isdigit() for ch in t)
        if has_digit and (any(ch.isalpha() for ch in t) or sum(ch.isdigit() for ch in t) >= 3):
            out.add(_NOT_ALNUM.sub("", t))
    return out


def _overlap(a: set[str], b: set[str]) -> float:
    """``|a & b| / min(|a|, |b|)``, or -1 when either side has none (missing, not dissimilar)."""
    return len(a & b) / min(len(a), len(b)) if a and b else -1.0


def _row_cosines(va, vb) -> np.ndarray:  # rows are L2-normalised by TfidfVectorizer
    return np.asarray(va.multiply(vb).sum(axis=1)).ravel()


class PairFeaturizer:
    """Similarity features ``(n, len(FEATURES))`` of pair texts; ``fit`` learns the vocabularies."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, lowercase=True)
        self.word = TfidfVectorizer(token_pattern=r"[a-z0-9]+", sublinear_tf=True, lowercase=True)

    def fit(self, texts: Sequence[str]) -> PairFeaturizer:
        left, right = sides(texts)
        corpus = [s for s in left + right if s]
        self.char.fit(corpus)
        self.word.fit(corpus)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        left, right = sides(texts)
        cols = [_row_cosines(v.transform(left), v.transform(right)) for v in (self.char, self.word)]
        rows = []
        for a, b in zip(left, right):
            ta, tb = _tokens(a), _tokens(b)
            ca, cb = _codes(ta), _codes(tb)
            ja, jb = _NOT_ALNUM.sub("", a.lower()), _NOT_ALNUM.sub("", b.lower())
            # the longest code of one record found anywhere in the other (codes split or glued differently)
            shared = [len(c) for c in ca if len(c) >= 4 and c in jb] + [len(c) for c in cb if len(c) >= 4 and c in ja]
            rows.append((len(ta & tb) / max(1, len(ta | tb)), _overlap(ca, cb), max(shared, default=0),
                         _overlap(set(_NUMBER.findall(a)), set(_NUMBER.findall(b))), len(ta), len(tb)))
        return np.column_stack([*cols, np.asarray(rows, dtype=np.float64).reshape(len(left), 6)])


def soft_label_rows(q: np.ndarray, w: np.ndarray, min_prob: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, class, weight) triples that train a hard-label learner on soft labels ``q``:
    item ``i`` once per class ``c`` with ``q_ic > min_prob``, weighted ``w_i q_ic``."""
    i, c = np.nonzero(q > min_prob)
    return i, c, w[i] * q[i, c]


class PairSimilarityModel:
    """Features + gradient-boosted trees; ``logits`` are log-probabilities over all classes."""

    def __init__(self, n_classes: int, seed: int = 0) -> None:
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.featurizer = PairFeaturizer()
        self.trees = None
        self.classes_seen: np.ndarray = np.arange(self.n_classes)

    def fit(self, texts: Sequence[str], q: np.ndarray, w: np.ndarray) -> PairSimilarityModel:
        from sklearn.ensemble import HistGradientBoostingClassifier

        x = self.featurizer.fit(texts).transform(texts)
        rows, labels, weights = soft_label_rows(q, w)
        self.trees = HistGradientBoostingClassifier(random_state=self.seed)
        self.trees.fit(x[rows], labels, sample_weight=weights)
        self.classes_seen = np.asarray(self.trees.classes_, dtype=int)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if self.trees is None:
            raise RuntimeError("PairSimilarityModel is not fitted")
        out = np.zeros((len(texts), self.n_classes))
        if len(texts):
            out[:, self.classes_seen] = self.trees.predict_proba(self.featurizer.transform(texts))
        return out

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """``log p`` (floored at 1e-6, so a class the trees never saw stays possible after calibration)."""
        return np.log(np.clip(self.predict_proba(texts), 1e-6, None))

    # --- persistence (skops: the fitted scikit-learn parts, never a pickle of this class) ---------
    def save(self, path: str | Path) -> None:
        import skops.io as sio

        sio.dump({"n_classes": self.n_classes, "seed": self.seed, "char": self.featurizer.char,
                  "word": self.featurizer.word, "trees": self.trees,
                  "classes_seen": self.classes_seen}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> PairSimilarityModel:
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=str(path))
        unsafe = [t for t in untrusted if not t.startswith(_SAFE_MODULES)]
        if unsafe:
            raise ValueError(f"{path}: refusing to load types outside scikit-learn/NumPy/SciPy: {unsafe}")
        state = sio.load(str(path), trusted=untrusted)
        model = cls(state["n_classes"], state["seed"])
        model.featurizer.char, model.featurizer.word = state["char"], state["word"]
        model.trees, model.classes_seen = state["trees"], np.asarray(state["classes_seen"], dtype=int)
        return model
