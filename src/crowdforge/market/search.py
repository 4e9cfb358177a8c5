"""Search: rank the market's models for a user who shows unlabelled texts (and maybe names classes).

Two-stage, as in the learnware market (Zhou & Tan 2024): the semantic specification filters (the
same task; when the user names classes, a model must predict every one of them), then the
statistical one ranks by the squared MMD between the user's RKME and each model's. Each distance is
read against that model's own null band at the user's sample size (:mod:`crowdforge.market.spec`),
and each model is asked whether it covers the user's texts (most of them typical of its training
texts); "no suitable model" means none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdforge.market.catalog import Entry, task_of
from crowdforge.market.features import FEATURE_SPACE, embed
from crowdforge.market.spec import GAMMA, covers, density, mmd2, rkme, verdict


@dataclass(frozen=True)
class Match:
    entry: Entry
    mmd2: float
    band: float  # the model's null band at the user's sample size
    coverage: float  # the share of the user's texts typical of the model's training texts

    @property
    def ratio(self) -> float:
        return self.mmd2 / max(self.band, 1e-12)

    @property
    def verdict(self) -> str:
        return verdict(self.mmd2, self.band, self.coverage)

    @property
    def suitable(self) -> bool:
        return covers(self.coverage)


@dataclass(frozen=True)
class UserTask:
    """The user's side: texts, their embeddings and RKME, the task and the classes they need."""

    texts: list[str]
    x: np.ndarray
    rkme: Any
    task: str
    classes: tuple[str, ...] | None


def user_task(texts: Sequence[str], classes: Sequence[str] | None = None, points: int = 100,
              seed: int = 0) -> UserTask:
    texts = [str(t) for t in texts]
    if len(texts) < 4:
        raise ValueError(f"search needs at least 4 texts to describe a task, got {len(texts)}")
    x = embed(texts)
    return UserTask(texts, x, rkme(x, min(points, len(texts)), seed), task_of(texts),
                    tuple(classes) if classes else None)


def compatible(entry: Entry, user: UserTask) -> str | None:
    """Why ``entry`` cannot serve ``user`` (None: it can)."""
    if entry.stat.feature_space != FEATURE_SPACE or abs(entry.stat.gamma - GAMMA) > 1e-12:
        return f"specification in another feature space ({entry.stat.feature_space}, gamma {entry.stat.gamma})"
    if entry.semantic.task != user.task:
        return f"task {entry.semantic.task}, not {user.task}"
    if user.classes and not set(user.classes) <= set(entry.semantic.classes):
        lacking = sorted(set(user.classes) - set(entry.semantic.classes))
        return f"classes {', '.join(entry.semantic.classes)} lack {', '.join(lacking)}"
    return None


def search(user: UserTask, entries: Sequence[Entry]) -> tuple[list[Match], dict[str, str]]:
    """Compatible entries ranked by squared MMD (closest first), and why the others were left out."""
    matches, skipped = [], {}
    for e in entries:
        why = compatible(e, user)
        if why:
            skipped[f"{e.uri}"] = why
            continue
        coverage = float((density(e.rkme, user.x) >= e.stat.typical_density).mean())
        matches.append(Match(e, mmd2(user.rkme, e.rkme), e.stat.null.at(len(user.texts)), coverage))
    matches.sort(key=lambda m: m.mmd2)
    return matches, skipped


def market_entries(params: Any, paths: Any, zips: Any = None) -> tuple[list[Entry], list[str]]:
    """The registry's specified versions plus the learnware zips in ``zips`` (a folder), and the
    registered versions that have no specification."""
    from mlflow import MlflowClient

    from crowdforge.market.catalog import iter_zip_entries, registry_entries
    from crowdforge.registry.tracking import connect

    connect(params, paths)
    entries, missing = registry_entries(MlflowClient(), paths.cache / "market" / "specs")
    if zips is not None:
        entries += list(iter_zip_entries(zips))
    return entries, missing


def table(matches: Sequence[Match], top: int) -> str:
    """The search result as a fixed-width table, closest first."""
    rows = [("model", "version", "classes", "domain", "MMD^2", "x band", "typical", "verdict")]
    for m in matches[:top]:
        s = m.entry.semantic
        rows.append((m.entry.model, m.entry.version, ",".join(s.classes), s.domain, f"{m.mmd2:.4f}",
                     f"{m.ratio:.1f}", f"{100 * m.coverage:.0f} %", m.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def summary(matches: Sequence[Match], user: UserTask) -> str:
    """One sentence: the closest model that covers the user's texts, or that none does and why."""
    if not matches:
        return "no suitable model: no registered model has a specification for this task and these classes"
    suitable = [m for m in matches if m.suitable]
    if not suitable:
        best = max(matches, key=lambda m: m.coverage)
        return (f"no suitable model: at most {100 * best.coverage:.0f} % of your {len(user.texts)} texts are typical "
                f"of any model's training texts ({best.entry.uri}); a model needs more than half")
    return f"best match: {suitable[0].entry.uri} ({suitable[0].verdict})"
