"""Seeded generator of short English sentences for a 3-class sentiment task.

The label is a deterministic function of the words, built so that a unigram bag of words can
learn most of it but not all of it:

- a sentiment clause is ``<subject> <verb> [intensifier] <adjective>``; the adjective's polarity
  gives the class (positive / negative; "okay", "average"... give neutral);
- negation flips in a fixed, asymmetric way: ``not <positive>`` -> negative, ``not <negative>``
  -> neutral ("not bad" is faint praise, not praise);
- contrast: in ``A but B`` and ``although A, B`` the second clause ``B`` decides;
- ``I would [not] recommend ...`` -> positive / negative;
- factual statements ("the train leaves at 9 am") -> neutral.

Intensifiers, openers and closers change the words, never the class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_CLASSES: tuple[str, str, str] = ("negative", "neutral", "positive")

NEG, NEU, POS = "negative", "neutral", "positive"

TOPICS: dict[str, dict[str, list[str]]] = {
    "food": {
        "nouns": ["pasta", "soup", "burger", "curry", "dessert", "pizza", "salad", "steak", "bread", "coffee"],
        "pos": ["tasty", "delicious", "fresh"],
        "neg": ["bland", "greasy", "stale"],
        "facts": [
            "the {noun} comes with a side of rice",
            "i ordered the {noun} at lunch on {day}",
            "the {noun} is served until {hour}",
            "they added the {noun} to the menu in {month}",
        ],
    },
    "travel": {
        "nouns": ["flight", "hotel", "train ride", "room", "beach", "tour", "cruise", "hostel", "airport", "bus trip"],
        "pos": ["relaxing", "comfortable", "scenic"],
        "neg": ["exhausting", "cramped", "noisy"],
        "facts": [
            "the {noun} was booked for {day}",
            "the {noun} leaves at {hour}",
            "we paid for the {noun} in {month}",
            "the {noun} is two hours from the city",
        ],
    },
    "phones": {
        "nouns": ["phone", "battery", "screen", "camera", "charger", "speaker", "keyboard", "update", "case", "app"],
        "pos": ["fast", "sharp", "reliable"],
        "neg": ["laggy", "flimsy", "buggy"],
        "facts": [
            "the {noun} arrived on {day}",
            "the {noun} was released in {month}",
            "i bought the {noun} online",
            "the {noun} comes in three colours",
        ],
    },
    "movies": {
        "nouns": ["movie", "plot", "ending", "soundtrack", "acting", "sequel", "script", "trailer", "director's cut",
                  "series"],
        "pos": ["moving", "gripping", "hilarious"],
        "neg": ["dull", "predictable", "clumsy"],
        "facts": [
            "the {noun} runs for two hours",
            "we watched the {noun} on {day}",
            "the {noun} came out in {month}",
            "the {noun} was filmed in canada",
        ],
    },
    "service": {
        "nouns": ["staff", "waiter", "support team", "delivery", "receptionist", "manager", "checkout", "help desk",
                  "courier", "service"],
        "pos": ["helpful", "friendly", "polite"],
        "neg": ["rude", "slow", "careless"],
        "facts": [
            "the {noun} works until {hour}",
            "i called the {noun} on {day}",
            "the {noun} changed in {month}",
            "the {noun} answers by email",
        ],
    },
    "books": {
        "nouns": ["novel", "chapter", "author", "cover", "story", "translation", "audiobook", "poem", "biography",
                  "sequel"],
        "pos": ["beautiful", "clever", "engaging"],
        "neg": ["tedious", "confusing", "shallow"],
        "facts": [
            "the {noun} has four hundred pages",
            "i borrowed the {noun} on {day}",
            "the {noun} was published in {month}",
            "the {noun} is on the second shelf",
        ],
    },
    "games": {
        "nouns": ["game", "level", "controller", "multiplayer", "graphics", "boss fight", "tutorial", "expansion",
                  "console", "story mode"],
        "pos": ["addictive", "polished", "fun"],
        "neg": ["repetitive", "unfair", "glitchy"],
        "facts": [
            "the {noun} installs in ten minutes",
            "i played the {noun} on {day}",
            "the {noun} got a patch in {month}",
            "the {noun} supports four players",
        ],
    },
}

POS_ADJ = ["good", "great", "excellent", "wonderful", "fantastic", "amazing", "pleasant", "superb",
           "lovely", "impressive", "enjoyable", "brilliant", "perfect", "nice"]
NEG_ADJ = ["bad", "terrible", "awful", "horrible", "disappointing", "poor", "dreadful", "mediocre",
           "annoying", "useless", "frustrating", "unpleasant", "weak", "boring"]
NEU_ADJ = ["okay", "average", "ordinary", "acceptable", "standard", "typical", "alright", "so-so"]
INTENSIFIERS = ["very", "extremely", "really", "quite", "incredibly", "truly", "so", "rather"]
SUBJ_DET = ["the", "this", "our", "my", "that"]
VERBS = ["was", "is", "seemed", "felt", "looked", "turned out"]
NEG_VERBS = ["was not", "is not", "wasn't", "isn't", "did not seem", "never felt"]
OPENERS = ["", "", "", "honestly, ", "overall, ", "to be fair, ", "i think ", "in my opinion ",
           "last week ", "sadly ", "frankly, ", "well, "]
CLOSERS = ["", "", "", " today", " this time", " again", " for the price", " as usual",
           " at first", " in the end", " on the whole", " this weekend"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
HOURS = ["9 am", "noon", "6 pm", "10 pm", "7:30", "half past eight"]
MONTHS = ["january", "march", "may", "july", "september", "november"]

# Sentence shapes and their sampling weights (chosen so the three classes come out balanced-ish).
SHAPES = {
    "simple": 0.24,
    "neutral_adj": 0.10,
    "fact": 0.12,
    "negated": 0.18,
    "contrast": 0.22,
    "recommend": 0.07,
    "two_same": 0.07,
}


def _check_classes(classes: Sequence[str]) -> None:
    if len(classes) != 3 or set(classes) != set(DEFAULT_CLASSES):
        raise ValueError(
            f"the simulated text task is 3-class sentiment with classes {list(DEFAULT_CLASSES)} "
            f"(any order); got {list(classes)}"
        )


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _subject(rng: np.random.Generator, topic: dict[str, list[str]]) -> str:
    return f"{_pick(rng, SUBJ_DET)} {_pick(rng, topic['nouns'])}"


def _adjective(rng: np.random.Generator, topic: dict[str, list[str]], polarity: str) -> str:
    if polarity == NEU:
        return _pick(rng, NEU_ADJ)
    generic, specific = (POS_ADJ, topic["pos"]) if polarity == POS else (NEG_ADJ, topic["neg"])
    return _pick(rng, specific) if rng.random() < 0.3 else _pick(rng, generic)


def _clause(rng: np.random.Generator, topic: dict[str, list[str]], allow_negation: bool = True) -> tuple[str, str]:
    """A sentiment clause and its class: polar adjective, optionally intensified or negated."""
    polarity = POS if rng.random() < 0.6 else NEG
    adj = _adjective(rng, topic, polarity)
    if allow_negation and rng.random() < 0.3:
        label = NEG if polarity == POS else NEU
        return f"{_subject(rng, topic)} {_pick(rng, NEG_VERBS)} {adj}", label
    intens = f"{_pick(rng, INTENSIFIERS)} " if rng.random() < 0.4 else ""
    return f"{_subject(rng, topic)} {_pick(rng, VERBS)} {intens}{adj}", polarity


def _sentence(rng: np.random.Generator, shape: str, topics: Sequence[str] = tuple(TOPICS)) -> tuple[str, str]:
    topic = TOPICS[_pick(rng, list(topics))]
    if shape == "simple":
        body, label = _clause(rng, topic, allow_negation=False)
    elif shape == "neutral_adj":
        body, label = f"{_subject(rng, topic)} {_pick(rng, VERBS)} {_adjective(rng, topic, NEU)}", NEU
    elif shape == "fact":
        body = _pick(rng, topic["facts"]).format(
            noun=_pick(rng, topic["nouns"]), day=_pick(rng, DAYS), hour=_pick(rng, HOURS), month=_pick(rng, MONTHS)
        )
        label = NEU
    elif shape == "negated":
        polarity = POS if rng.random() < 0.45 else NEG
        adj = _adjective(rng, topic, polarity)
        body = f"{_subject(rng, topic)} {_pick(rng, NEG_VERBS)} {adj}"
        label = NEG if polarity == POS else NEU
    elif shape == "contrast":
        first, first_label = _clause(rng, topic)
        second, label = _clause(rng, topic)
        # make most contrasts real contrasts: the words of the first clause point the other way
        if first_label == label and rng.random() < 0.7:
            first, first_label = _clause(rng, topic)
        if rng.random() < 0.7:
            body = f"{first} but {second}"
        else:
            body = f"although {first}, {second}"
    elif shape == "recommend":
        noun = _pick(rng, topic["nouns"])
        if rng.random() < 0.5:
            body, label = f"i would {_pick(rng, ['definitely ', 'happily ', ''])}recommend the {noun}", POS
        else:
            body, label = f"i would {_pick(rng, ['not', 'never'])} recommend the {noun}", NEG
    elif shape == "two_same":
        polarity = POS if rng.random() < 0.5 else NEG
        body = (
            f"{_subject(rng, topic)} {_pick(rng, VERBS)} {_adjective(rng, topic, polarity)} and "
            f"{_subject(rng, topic)} {_pick(rng, VERBS)} {_adjective(rng, topic, polarity)}"
        )
        label = polarity
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    text = f"{_pick(rng, OPENERS)}{body}{_pick(rng, CLOSERS)} ."
    return text, label


def generate_texts(n: int, seed: int, classes: Sequence[str] = DEFAULT_CLASSES,
                   topics: Sequence[str] | None = None) -> pd.DataFrame:
    """``n`` distinct sentences with their true class, reproducible from ``seed``, about ``topics``
    (default: every topic of :data:`TOPICS`).

    Returns a DataFrame with columns ``text`` and ``label`` (class names). Exact duplicates are
    dropped and replaced by fresh draws, so every text is unique.
    """
    _check_classes(classes)
    topics = tuple(topics or TOPICS)
    unknown = sorted(set(topics) - set(TOPICS))
    if unknown:
        raise ValueError(f"unknown topics {unknown}; known: {', '.join(TOPICS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    shapes = list(SHAPES)
    weights = np.array([SHAPES[s] for s in shapes])
    weights = weights / weights.sum()
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[str] = []
    attempts = 0
    while len(texts) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct texts (got {len(texts)})")
        shape = shapes[int(rng.choice(len(shapes), p=weights))]
        text, label = _sentence(rng, shape, topics)
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    return pd.DataFrame({"text": pd.Series(texts, dtype=object), "label": pd.Series(labels, dtype=object)})
