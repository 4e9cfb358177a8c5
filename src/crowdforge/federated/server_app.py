"""The Flower ServerApp crowdforge's coordinator runs (under the SuperLink it starts or points at).

Each round, through Flower's legacy workflow (``LegacyContext`` + ``DefaultWorkflow``):

1. every site trains the member from the current global weights (:mod:`.client_app`);
2. with ``secagg`` the replies are SecAgg+ masked vectors (Bell et al. 2020; ``SecAggPlusWorkflow``),
   so the coordinator only ever decodes their weighted sum; without it the base strategy sees each
   site's weights and may aggregate robustly (FedMedian, FedTrimmedAvg, Krum);
3. :class:`InfluenceClipping` has every site clip its update (``fixedclipping_mod``) to the median
   of the norms the sites reported the round before: one site can move the aggregate no further
   than a typical site, even when its update is hidden;
4. :class:`GoldGate` moves the global weights along the round's aggregate update by the step
   (``server_steps``) whose weights have the lowest negative log-likelihood on the coordinator's
   gold checks, and keeps the previous weights when none is better than they are; without secagg
   it also scores every site's own weights (the sites' reputations).

The run writes ``history.json`` after every round, ``messages.jsonl`` (the structure of every reply
the coordinator received: what the message test inspects) and finally ``result.npz``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from crowdforge import io
from crowdforge.federated.job import Job

NO_CLIP = 1e12  # the first round's clipping norm: no site has reported a norm yet
RESULT_FILE, HISTORY_FILE, MESSAGES_FILE, GOLD_FILE = "result.npz", "history.json", "messages.jsonl", "gold.parquet"


class GoldScorer:
    """Scores trainable weights on the coordinator's gold checks: (accuracy, NLL)."""

    def __init__(self, job: Job) -> None:
        import pandas as pd

        from crowdforge.federated.local_training import build_member, frozen_cache, get_arrays

        gold = pd.read_parquet(Path(job.job_dir) / GOLD_FILE)
        self.model, tokenizer = build_member(job.spec)
        self.initial = get_arrays(self.model)
        self.cache = frozen_cache(self.model, tokenizer, gold["text"].astype(str).tolist(), job.spec.max_length)
        index = {c: i for i, c in enumerate(job.classes)}
        self.y = gold["label"].map(index).to_numpy(dtype=int)

    def __call__(self, arrays: list[np.ndarray]) -> tuple[float, float]:
        import torch

        from crowdforge.federated.local_training import predict_logits, set_arrays

        set_arrays(self.model, arrays)
        z = torch.from_numpy(predict_logits(self.model, self.cache))
        nll = float(torch.nn.functional.cross_entropy(z, torch.from_numpy(self.y)))
        return float((z.argmax(-1).numpy() == self.y).mean()), nll


class InfluenceClipping(DifferentialPrivacyClientSideFixedClipping):
    """Client-side clipping of every site's update to the median norm the sites reported last round.

    No noise is added here (the sites' DP-SGD is the privacy mechanism): the clipping bounds a site's
    influence on the sum, which secure aggregation keeps the coordinator from inspecting.
    """

    def __init__(self, strategy: Strategy, n_sites: int) -> None:
        super().__init__(strategy, noise_multiplier=0.0, clipping_norm=NO_CLIP, num_sampled_clients=n_sites)
        self.norms: list[float] = []

    def next_norm(self) -> float:
        """The bound for the coming round: the median of the norms reported last round."""
        return float(np.median(self.norms)) if self.norms else NO_CLIP

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[tuple[Any, FitIns]]:
        self.clipping_norm = self.next_norm()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, FitRes]], failures: Any) -> Any:
        self.norms = [float(r.metrics["update_norm"]) for _, r in results if "update_norm" in r.metrics]
        return super().aggregate_fit(server_round, results, failures)


def step_candidates(current: list[np.ndarray], aggregate: list[np.ndarray],
                    steps: tuple[float, ...]) -> list[tuple[float, list[np.ndarray]]]:
    """``current + step * (aggregate - current)`` for every step (1: the aggregate itself)."""
    return [(s, aggregate if s == 1.0 else [c + s * (a - c) for c, a in zip(current, aggregate, strict=True)])
            for s in steps]


class GoldGate(Strategy):
    """Takes the best step along a round's aggregate update by the gold checks' NLL, or none; logs every round.

    The step is a server learning rate (Reddi et al. 2021, "Adaptive Federated Optimization") chosen
    each round by held-out likelihood on the coordinator's own gold checks (a line search), so
    nothing is tuned to a benchmark: a noisy update (DP-SGD) or a slow one (small adapters) can take
    a longer step, and an update that a bad site has partly turned against the task a shorter one.
    The NLL is used rather than accuracy because on a few hundred checks accuracy moves in coarse
    steps and picks among candidates by chance. With ``gold_gate`` off the aggregate is applied as is.
    """

    def __init__(self, inner: InfluenceClipping, job: Job, score: GoldScorer) -> None:
        self.inner, self.job, self.score = inner, job, score
        self.current = ndarrays_to_parameters(score.initial)
        self.best = score(score.initial)
        self.history: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return self.current

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self.round_started = time.perf_counter()
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self.clip_norm = self.inner.clipping_norm  # set by the inner configure_fit
        return instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, FitRes]], failures: Any) -> Any:
        sites = [{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in r.metrics.items()}
                 | {"num_examples": int(r.num_examples)} for _, r in results]
        if not self.job.secagg:  # each site's own weights are visible: score them (the site's reputation)
            for site, (_, r) in zip(sites, results, strict=True):
                site["gold_accuracy"], site["gold_nll"] = self.score(parameters_to_ndarrays(r.parameters))
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        entry: dict[str, Any] = {"round": server_round, "sites": sites, "failures": len(failures),
                                 "failure_reasons": sorted({str(f)[:300] for f in failures})[:3],
                                 "clipping_norm": self.clip_norm, "before": {"accuracy": self.best[0],
                                                                            "nll": self.best[1]}}
        if params is None:
            entry.update(applied=False, reason="no aggregate")
        else:
            steps = self.job.server_steps if self.job.gold_gate else (1.0,)
            scored = [(step, arrays, self.score(arrays)) for step, arrays in
                      step_candidates(parameters_to_ndarrays(self.current), parameters_to_ndarrays(params), steps)]
            entry["candidates"] = [{"step": step, "accuracy": acc, "nll": nll} for step, _, (acc, nll) in scored]
            step, arrays, (acc, nll) = min(scored, key=lambda c: c[2][1])
            entry["candidate"] = {"step": step, "accuracy": acc, "nll": nll}
            if self.job.gold_gate and nll >= self.best[1]:
                entry.update(applied=False, reason="no step lowers the NLL on the gold checks")
            else:
                self.current, self.best = ndarrays_to_parameters(arrays), (acc, nll)
                entry.update(applied=True, step=step)
        entry["seconds"] = round(time.perf_counter() - self.round_started, 3)
        self.history.append(entry)
        io.write_json(Path(self.job.job_dir) / HISTORY_FILE, {"rounds": self.history, "final": {
            "accuracy": self.best[0], "nll": self.best[1]}})
        return self.current, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return []  # scored on the coordinator's gold checks; the sites' data is not an evaluation set

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> tuple[None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class AuditedGrid(Grid):
    """Passes everything to Flower's grid and writes the structure of every reply to ``messages.jsonl``:
    record names, array shapes and dtypes, metric names and types, config names and the types of
    their values (string values verbatim, so a test can check no text is among them), and bytes."""

    def __init__(self, inner: Grid, path: Path) -> None:
        self._inner, self._path = inner, path

    def set_run(self, run_id: int) -> None:
        self._inner.set_run(run_id)

    @property
    def run(self) -> Any:
        return self._inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Any:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Any) -> Any:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        return self._log(list(self._inner.pull_messages(message_ids)))

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        return self._log(list(self._inner.send_and_receive(messages, timeout=timeout)))

    def _log(self, replies: list[Any]) -> list[Any]:
        with self._path.open("a", encoding="utf-8") as fh:
            for m in replies:
                fh.write(json.dumps(describe_message(m), default=str) + "\n")
        return replies


def _value_kind(v: Any) -> Any:
    if isinstance(v, list):
        return [_value_kind(x) for x in v]
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bytes": len(v)}
    return type(v).__name__


def _array_kind(a: Any) -> dict[str, Any]:
    x = a.numpy()  # the legacy path serialises each array whole: its own shape and dtype are inside
    return {"shape": list(x.shape), "dtype": str(x.dtype)}


def describe_message(m: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"src": m.metadata.src_node_id, "type": m.metadata.message_type,
                           "group": m.metadata.group_id, "error": m.has_error()}
    if m.has_content():
        c = m.content
        out["arrays"] = {k: [_array_kind(a) for a in v.values()] for k, v in c.array_records.items()}
        out["metrics"] = {k: {kk: type(vv).__name__ for kk, vv in v.items()} for k, v in c.metric_records.items()}
        out["configs"] = {k: {kk: _value_kind(vv) for kk, vv in v.items()} for k, v in c.config_records.items()}
        out["bytes"] = sum(r.count_bytes() for r in c.values())
    return out


def base_strategy(job: Job, initial: Parameters) -> Strategy:
    common = {"fraction_fit": 1.0, "fraction_evaluate": 0.0, "min_fit_clients": job.n_sites,
                  "min_available_clients": job.n_sites, "initial_parameters": initial,
                  "on_fit_config_fn": lambda r: {"server-round": r}}
    if job.strategy == "fedprox":
        return FedProx(**common, proximal_mu=job.local.proximal_mu)
    if job.strategy == "fedmedian":
        return FedMedian(**common)
    if job.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=0.2)
    if job.strategy == "krum":
        return Krum(**common, num_malicious_clients=max(1, (job.n_sites - 3) // 2))
    return FedAvg(**common)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    job = Job.from_run_config(dict(context.run_config))
    out = Path(job.job_dir)
    score = GoldScorer(job)
    clipping = InfluenceClipping(base_strategy(job, ndarrays_to_parameters(score.initial)), job.n_sites)
    gate = GoldGate(clipping, job, score)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=job.rounds), strategy=gate)
    shares = 1.0 if job.n_sites <= 2 else 2 / 3
    workflow = (DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=shares))
                if job.secagg else DefaultWorkflow())
    workflow(AuditedGrid(grid, out / MESSAGES_FILE), legacy)
    final = parameters_to_ndarrays(gate.current)
    with io.atomic_path(out / RESULT_FILE) as tmp, tmp.open("wb") as fh:
        np.savez(fh, *final)
