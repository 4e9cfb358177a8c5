"""The Flower ClientApp a site's SuperNode runs: train the member on the site's own folder.

The site's folder comes from the SuperNode's node config (``--node-config 'data-path="..."'``),
the job from the run config (:class:`~crowdforge.federated.job.Job`). A site replies with its
trainable tensors and a few scalars (its name, examples, loss, the update's norm, its DP noise and
the epsilon it has spent, how many rows it quarantined) - :data:`REPLY_METRICS`;
text, tokens, embeddings, labels and per-example losses never leave it. The mods: ``secaggplus_mod``
when the job has secure aggregation (outermost: it masks what the inner mods produce) and
``fixedclipping_mod`` (clips the update to the norm the coordinator sends, bounding any one site's
influence).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod

from crowdforge.federated.job import Job

REPLY_METRICS = ("train_loss", "update_norm", "epsilon", "noise_multiplier", "quarantined", "site")
CACHE_DIR = ".crowdforge-cache"  # inside the site's folder: the frozen layers' states of its texts


def dp_noise(job: Job, n: int) -> float:
    """The site's DP-SGD noise multiplier for the whole job's steps (0 without DP)."""
    from crowdforge.federated.dp_accounting import noise_multiplier
    from crowdforge.federated.local_training import steps_per_epoch

    if job.dp_epsilon <= 0:
        return 0.0
    steps = job.rounds * job.local.epochs * steps_per_epoch(n, job.local.batch_size)
    return noise_multiplier(job.dp_epsilon, job.dp_delta, min(1.0, job.local.batch_size / n), steps)


def site_cache(folder: Path, model: Any, tokenizer: Any, texts: list[str], job: Job, fingerprint: str) -> Any:
    """The frozen lower layers' states of the site's texts, computed once and kept in the site's folder."""
    import torch

    from crowdforge import io
    from crowdforge.federated.local_training import frozen_cache
    from crowdforge.modeling.classifier import FrozenLowerCache

    h = hashlib.sha256(f"{fingerprint}|{job.spec.max_length}|{model.n_trainable_layers}|".encode())
    for t in texts:
        h.update(t.encode() + b"\x00")
    file = folder / CACHE_DIR / f"frozen-{h.hexdigest()[:24]}.pt"
    if file.exists():
        return FrozenLowerCache.from_state(torch.load(file, weights_only=False))
    cache = frozen_cache(model, tokenizer, texts, job.spec.max_length)
    with io.atomic_path(file) as tmp:
        torch.save(cache.state(), tmp)
    return cache


class SiteClient(NumPyClient):
    def __init__(self, folder: Path, job: Job, backbone: str, name: str) -> None:
        self.folder, self.job, self.backbone, self.name = folder, job, backbone, name

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        from dataclasses import replace

        from crowdforge.federated.dp_accounting import epsilon_spent
        from crowdforge.federated.local_training import build_member, get_arrays, set_arrays, train_local
        from crowdforge.federated.site_data import read_site
        from crowdforge.modeling.backbone import backbone_fingerprint

        job = self.job
        fingerprint = backbone_fingerprint(self.backbone)
        if job.backbone_fingerprint and fingerprint != job.backbone_fingerprint:
            raise ValueError(f"site {self.folder}: backbone {self.backbone} is not the one the coordinator trains "
                             f"(fingerprint {fingerprint[:12]} != {job.backbone_fingerprint[:12]}); "
                             "give the SuperNode the coordinator's pretrained backbone (node config `backbone`)")
        data = read_site(self.folder, job.classes)
        server_round = int(config.get("server-round", 1))
        spec = replace(job.spec, backbone=self.backbone)
        model, tokenizer = build_member(spec)
        set_arrays(model, parameters)
        cache = site_cache(self.folder, model, tokenizer, data.texts, job, fingerprint)
        n = len(data.texts)
        noise = dp_noise(job, n)
        local = replace(job.local, dp_noise=noise, seed=job.local.seed + 1000 * server_round)
        result = train_local(model, cache, data.q, data.w, local, server_round)
        arrays = get_arrays(model)
        norm = float(np.sqrt(sum(float(((a - p) ** 2).sum()) for a, p in zip(arrays, parameters, strict=True))))
        rate = min(1.0, job.local.batch_size / n)
        spent = epsilon_spent(noise, job.dp_delta, rate, int(result["steps"]) * server_round) if noise > 0 else 0.0
        return arrays, n, {"train_loss": result["train_loss"], "update_norm": norm, "epsilon": spent,
                           "noise_multiplier": noise, "quarantined": data.n_quarantined, "site": self.name}


def client_fn(context: Context) -> Any:
    folder = Path(str(context.node_config["data-path"]))
    job = Job.from_run_config(dict(context.run_config))
    backbone = str(context.node_config.get("backbone", job.spec.backbone))
    name = str(context.node_config.get("site-name", folder.name))
    return SiteClient(folder, job, backbone, name).to_client()


def secagg_when_on(msg: Any, ctxt: Context, call_next: Any) -> Any:
    """``secaggplus_mod`` for a job with secure aggregation; a plain pass-through for one without
    (the mod refuses messages that carry no SecAgg+ configuration)."""
    if bool(ctxt.run_config.get("secagg", True)):
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(client_fn=client_fn, mods=[secagg_when_on, fixedclipping_mod])
