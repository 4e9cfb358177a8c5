"""Shared test set-up: offline engines, one torch thread per test process, a tiny project."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the learnware package's files (crowdforge.market.learnware_home) stay out of the user's cache
os.environ.setdefault("CROWDFORGE_LEARNWARE_HOME", tempfile.mkdtemp(prefix="crowdforge-learnware-"))

import pytest
import yaml

from crowdforge.runtime import configure_environment

configure_environment()

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(backbone: Path) -> dict[str, Any]:
    """Params for a whole pipeline in seconds: small crowd, tiny random BERT, short training."""
    return {
        # 80 test items and a head member trained longer: the tiny random encoder must let the ensemble
        # beat the majority-class baseline, or the gate (rightly) refuses to promote it
        "demo": {"n_items": 160, "n_gold_check": 20, "n_gold_test": 80, "n_unlabeled": 120,
                 "n_contributors": 40, "malformed_rows": 10},
        "pretrain": {"backbone": str(backbone), "max_steps": 3, "batch_size": 8, "max_length": 32},
        # the tiny random encoder lands within two test items of the majority baseline, so the refinement
        # that these flows were sized with is pinned; refine_workers has its own tests (modeling, finetune)
        "finetune": {"max_length": 32, "batch_size": 16, "max_epochs": 2, "patience": 8, "lr_head": 0.03,
                     "refine_workers": False,
                     "members": [{"name": "head-a", "strategy": "head", "seed": 1, "max_epochs": 8},
                                 {"name": "partial-1", "strategy": "partial", "seed": 2,
                                  "unfreeze_layers": 1, "max_epochs": 1}]},
        "runtime": {"torch_threads": 1},
        # the specification (an RKME over MiniLM embeddings, the learnware import) is tested with a real
        # registry in tests/market/test_market_commands.py; the other pipelines skip its cost
        "market": {"spec": False},
    }


def write_tiny_params(root: Path, backbone: Path, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """The project's params.yaml with the tiny overrides (and ``extra`` sections) merged in, written to ``root``."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = tiny_overrides(backbone)
    for section, values in (extra or {}).items():
        sections[section] = {**sections.get(section, {}), **values}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def random_ensemble(backbone: Path, classes: tuple[str, ...] | list[str] = ("negative", "neutral", "positive"),
                    seed: int = 0, perturb: float = 0.0, max_length: int = 16,
                    names: tuple[str, str, str] = ("m0", "m1", "m2"),
                    temperatures: tuple[float, float, float] = (0.7, 1.3, 1.0),
                    meta: dict[str, Any] | None = None) -> Any:
    """Three random heads (weights 0.2, 0.3, 0.5) over two copies of the tiny encoder: two share
    ``shared``, the heaviest has ``own`` (its weights moved by ``perturb`` noise, so using the wrong
    encoder shows)."""
    import numpy as np
    import torch

    from crowdforge.modeling.classifier import load_encoder
    from crowdforge.modeling.inference import Ensemble, Member

    shared, tok = load_encoder(str(backbone))
    own, _ = load_encoder(str(backbone))
    if perturb:
        with torch.no_grad():
            for p in own.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    rng = np.random.default_rng(seed)
    members = [Member(name=name, encoder=key, weight=rng.normal(size=(len(classes), 32)).astype(np.float32),
                      bias=rng.normal(size=len(classes)).astype(np.float32), temperature=t, ensemble_weight=w,
                      meta=dict(meta or {}))
               for name, key, t, w in zip(names, ("shared", "shared", "own"), temperatures, (0.2, 0.3, 0.5),
                                          strict=True)]
    return Ensemble(list(classes), tok, {"shared": shared, "own": own}, members, max_length)


def run_tiny_pipeline(root: Path, backbone: Path, stages: tuple[str, ...] | None = None,
                      extra: dict[str, dict[str, Any]] | None = None) -> tuple[Any, Any]:
    """Tiny params (plus ``extra`` sections) and demo data in ``root``, then ``stages`` in order (default
    every agent: ingest .. register, no gate)."""
    import importlib

    from crowdforge.config import load_params
    from crowdforge.paths import Paths
    from crowdforge.simulate.demo import write_demo_data
    from crowdforge.stages import AGENTS

    params = load_params(write_tiny_params(root, backbone, extra))
    paths = Paths(root)
    write_demo_data(paths, params)
    for name in stages or AGENTS:
        importlib.import_module(f"crowdforge.agents.{name}").run(params, paths)
    return params, paths


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crowdforge.modeling.backbone import make_tiny_backbone

    return make_tiny_backbone(tmp_path_factory.mktemp("backbone") / "tiny-bert")


@pytest.fixture()
def tiny_project(tmp_path: Path, tiny_backbone: Path) -> Path:
    """A project folder with tiny params and the demo data generated from them."""
    from crowdforge.config import load_params
    from crowdforge.paths import Paths
    from crowdforge.simulate.demo import write_demo_data

    params_file = write_tiny_params(tmp_path, tiny_backbone)
    write_demo_data(Paths(tmp_path), load_params(params_file))
    return tmp_path
