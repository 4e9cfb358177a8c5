"""Demo partner sites for the federated stage: folders outside ``data/raw`` that only their SuperNode reads.

Each site labels its own texts (new sentences, none of which is in the demo crowd's items, gold
checks, test split or corpus) with a class mix of its own (a Dirichlet(0.5) draw over classes, the
label skew of real partners) and an accuracy of its own; the first site also records a confidence
per label. Seeded by ``params.demo.seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crowdforge.config import Params
from crowdforge.federated.site_data import write_site
from crowdforge.simulate.text import generate_texts

SITE_ACCURACY = (0.95, 0.9, 0.85)  # cycled over the sites


def site_names(n: int) -> list[str]:
    return [f"site-{chr(ord('a') + i)}" if i < 26 else f"site-{i}" for i in range(n)]


def write_demo_sites(folder: Path, params: Params, n_sites: int, per_site: int) -> dict[str, Any]:
    demo, classes = params.demo, list(params.data.classes)
    used = set(generate_texts(demo.n_items + demo.n_gold_test + demo.n_unlabeled, demo.seed, classes)["text"])
    pool = generate_texts(len(used) + n_sites * per_site * 3, demo.seed + 1, classes)
    pool = pool[~pool["text"].isin(used)].reset_index(drop=True)
    rng = np.random.default_rng([demo.seed, 4242])
    by_class = {c: pool[pool["label"] == c].sample(frac=1.0, random_state=demo.seed) for c in classes}
    taken = dict.fromkeys(classes, 0)
    summary: dict[str, Any] = {}
    for i, name in enumerate(site_names(n_sites)):
        mix = rng.dirichlet(np.full(len(classes), 0.5))
        counts = rng.multinomial(per_site, mix)
        texts, truth = [], []
        for c, k in zip(classes, counts, strict=True):
            rows = by_class[c].iloc[taken[c]:taken[c] + int(k)]
            taken[c] += len(rows)
            texts += rows["text"].tolist()
            truth += [c] * len(rows)
        acc = SITE_ACCURACY[i % len(SITE_ACCURACY)]
        wrong = rng.random(len(truth)) > acc
        labels = [rng.choice([d for d in classes if d != t]) if w else t for t, w in zip(truth, wrong, strict=True)]
        order = rng.permutation(len(texts))
        write_site(folder / name, [texts[j] for j in order], [str(labels[j]) for j in order],
                   confidence=np.full(len(texts), acc) if i == 0 else None)
        summary[name] = {"rows": len(texts), "label_accuracy": acc,
                         "classes": {c: int(k) for c, k in zip(classes, counts, strict=True)}}
    return summary
