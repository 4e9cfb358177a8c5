"""The federated job as Flower's run config: flat TOML scalars every party reads (one place).

``crowdforge`` writes them into the Flower app's ``pyproject.toml`` (:mod:`.deployment`); the
ServerApp and every ClientApp read them back from ``context.run_config``. Sites get only what they
need to build and train the member; ``job-dir`` is the coordinator's own folder (its gold checks and
where the result goes), which sites never read.
Pure data (no torch): a SuperNode imports it for every message, most of which train nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

ADAPTERS = ("partial", "lora")


@dataclass(frozen=True)
class MemberSpec:
    """What the coordinator and every site build the same member from."""

    backbone: str
    n_classes: int
    unfreeze_layers: int = 1
    adapter: str = "partial"  # partial | lora
    lora_rank: int = 8
    lora_targets: str = "all"  # all | attention (local_training.LORA_TARGETS)
    max_length: int = 64
    seed: int = 0


@dataclass(frozen=True)
class LocalConfig:
    epochs: int = 1
    batch_size: int = 32
    lr_head: float = 3e-3
    lr_backbone: float = 5e-5
    lora_plus_ratio: float = 1.0  # LoRA+: lr of the adapters' B matrices / lr of their A matrices
    proximal_mu: float = 0.0  # FedProx; 0 = FedAvg's plain local training
    dp_noise: float = 0.0  # DP-SGD noise multiplier; 0 = no DP
    dp_max_grad_norm: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Job:
    spec: MemberSpec
    local: LocalConfig
    classes: tuple[str, ...]
    rounds: int
    n_sites: int
    strategy: str = "fedavg"
    secagg: bool = True
    gold_gate: bool = True
    server_steps: tuple[float, ...] = (1.0,)  # the gate's line search along each round's update
    dp_epsilon: float = 0.0  # the target each site calibrates DP-SGD to; 0 = no DP
    dp_delta: float = 1e-5
    backbone_fingerprint: str = ""
    job_dir: str = ""  # the coordinator's folder (gold checks in, result out)

    def to_run_config(self) -> dict[str, Any]:
        return {"spec": json.dumps(asdict(self.spec)), "local": json.dumps(asdict(self.local)),
                "classes": json.dumps(list(self.classes)), "rounds": self.rounds, "n-sites": self.n_sites,
                "strategy": self.strategy, "secagg": self.secagg, "gold-gate": self.gold_gate,
                "server-steps": json.dumps(list(self.server_steps)),
                "dp-epsilon": float(self.dp_epsilon), "dp-delta": float(self.dp_delta),
                "backbone-fingerprint": self.backbone_fingerprint, "job-dir": self.job_dir}

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> Job:
        return cls(spec=MemberSpec(**json.loads(str(rc["spec"]))), local=LocalConfig(**json.loads(str(rc["local"]))),
                   classes=tuple(json.loads(str(rc["classes"]))), rounds=int(rc["rounds"]),
                   n_sites=int(rc["n-sites"]), strategy=str(rc["strategy"]), secagg=bool(rc["secagg"]),
                   gold_gate=bool(rc["gold-gate"]), server_steps=tuple(json.loads(str(rc["server-steps"]))),
                   dp_epsilon=float(rc["dp-epsilon"]),
                   dp_delta=float(rc["dp-delta"]), backbone_fingerprint=str(rc["backbone-fingerprint"]),
                   job_dir=str(rc["job-dir"]))
