"""The blackboard: every artifact an agent reads or writes, named once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path

    # raw inputs
    @property
    def raw(self) -> Path: return self.root / "data" / "raw"
    @property
    def contributions(self) -> Path: return self.raw / "contributions"
    @property
    def unlabeled_raw(self) -> Path: return self.raw / "unlabeled"
    @property
    def gold_raw(self) -> Path: return self.raw / "gold.csv"
    @property
    def sites(self) -> Path: return self.root / "sites"  # demo partner sites (outside data/raw: not the crowd's)

    # interim
    @property
    def interim(self) -> Path: return self.root / "data" / "interim"
    @property
    def submissions(self) -> Path: return self.interim / "submissions.parquet"
    @property
    def unlabeled(self) -> Path: return self.interim / "unlabeled.parquet"
    @property
    def gold(self) -> Path: return self.interim / "gold.parquet"
    @property
    def accepted(self) -> Path: return self.interim / "accepted.parquet"
    @property
    def quarantine(self) -> Path: return self.root / "data" / "quarantine"

    # processed
    @property
    def processed(self) -> Path: return self.root / "data" / "processed"
    @property
    def labels(self) -> Path: return self.processed / "labels.parquet"
    @property
    def train(self) -> Path: return self.processed / "train_augmented.parquet"
    @property
    def valid(self) -> Path: return self.processed / "valid.parquet"
    @property
    def ledger(self) -> Path: return self.root / "data" / "reputation" / "ledger.parquet"
    @property
    def site_ledger(self) -> Path: return self.root / "data" / "reputation" / "sites.parquet"  # federated sites

    # models
    @property
    def models(self) -> Path: return self.root / "models"
    @property
    def pretrained(self) -> Path: return self.models / "pretrained"
    @property
    def members(self) -> Path: return self.models / "members"
    def member(self, name: str) -> Path: return self.members / name
    @property
    def federated(self) -> Path: return self.models / "federated"  # the federated member (member format)
    @property
    def federated_work(self) -> Path: return self.cache / "federated"  # SuperLink/SuperNode homes, logs, the job
    @property
    def ensemble(self) -> Path: return self.models / "ensemble"

    # reports
    @property
    def reports(self) -> Path: return self.root / "reports"
    def report(self, stage: str) -> Path: return self.reports / f"{stage}.json"
    @property
    def test_predictions(self) -> Path: return self.reports / "test_predictions.parquet"
    @property
    def data_docs(self) -> Path: return self.reports / "data_docs"
    @property
    def cache(self) -> Path: return self.root / ".crowdforge"
