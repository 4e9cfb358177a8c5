"""The federated stage on Flower's deployment runtime for real: a SuperLink and one SuperNode per
site as separate processes on loopback, a tiny random BERT, two sites, two rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from crowdforge import io
from crowdforge.agents import federated
from crowdforge.config import ParamsError, parse_params
from crowdforge.federated.client_app import REPLY_METRICS
from crowdforge.federated.local_training import build_member, get_arrays
from crowdforge.federated.site_data import write_site
from crowdforge.modeling.members import MEMBER_FILE
from crowdforge.modeling.toy import toy_labelled, write_toy_blackboard
from crowdforge.paths import Paths

CLASSES = ("negative", "neutral", "positive")
# what SecAgg+ itself exchanges (public keys, encrypted shares, masked vectors, key shares), by stage
SECAGG_KEYS = {"pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"}


def params_for(backbone: Path, **federated_section: Any):
    return parse_params({
        "data": {"classes": list(CLASSES)},
        "pretrain": {"backbone": str(backbone), "max_length": 24},
        "finetune": {"max_length": 24, "refine_rounds": 0,
                     "members": [{"name": "head-a", "strategy": "head", "seed": 1, "max_epochs": 2}]},
        "federated": {"enabled": True, "sites": ["sites/north", "sites/south"], "rounds": 2, "batch_size": 8,
                      "lr_head": 0.05, "lr_backbone": 1e-3, "timeout_seconds": 600, **federated_section},
    })


def write_sites(paths: Paths) -> dict[str, list[str]]:
    rng = np.random.default_rng(5)
    texts = {}
    for name in ("north", "south"):
        df = toy_labelled(40, CLASSES, rng, name)
        write_site(paths.sites / name, df["text"], df["label"])
        texts[name] = df["text"].tolist()
    return texts


def strings_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in ([v] if k == "str" else strings_in(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


@pytest.fixture(scope="module")
def secagg_dp_run(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory):
    paths = Paths(tmp_path_factory.mktemp("federated"))
    write_toy_blackboard(paths, CLASSES, n_valid=40)
    texts = write_sites(paths)
    params = params_for(tiny_backbone)
    report = federated.run(params, paths)
    return params, paths, report, texts


@pytest.mark.slow
def test_secagg_and_dp_run_gives_a_member_with_its_epsilon_and_protections(secagg_dp_run) -> None:
    params, paths, report, _ = secagg_dp_run
    assert report["enabled"] and report["n_sites"] == 2 and report["rounds"] == 2
    assert 0 < report["epsilon"] <= params.federated.dp.epsilon * 1.02
    assert report["protections"]["secure_aggregation"] == "SecAgg+"
    assert [r["round"] for r in report["history"]] == [1, 2]
    assert sorted(s["site"] for s in report["history"][0]["sites"]) == ["north", "south"]
    assert all(s["noise_multiplier"] > 0 for r in report["history"] for s in r["sites"])
    assert report["bytes_per_site_round"] > 0
    info = io.read_json(paths.federated / MEMBER_FILE)
    assert info["federated"]["sites"] == ["north", "south"] and info["federated"]["secagg"] is True
    assert len(info["federated"]["aggregate_sha256"]) == 64
    # the member joins the ensemble like any other (merged encoder + head; its own temperature and weight)
    from crowdforge.agents import ensemble, finetune

    finetune.run(params, paths)
    report = ensemble.run(params, paths)
    assert list(report["members"]) == ["head-a", "federated"]


@pytest.mark.slow
def test_no_text_label_or_per_example_value_reaches_the_coordinator(secagg_dp_run) -> None:
    params, paths, _, texts = secagg_dp_run
    lines = (paths.federated_work / "job" / "messages.jsonl").read_text().splitlines()
    messages = [json.loads(x) for x in lines]
    assert messages, "the coordinator received no replies"
    all_texts = [t for ts in texts.values() for t in ts]
    labels = set(CLASSES)
    for m in messages:
        assert not m["error"]
        # no array of the coordinator's choosing: SecAgg+ replies carry the masked vector as bytes and
        # an empty parameter record
        assert set(m["arrays"]) <= {"fitres.parameters"} and all(v == [] for v in m["arrays"].values())
        assert set(m["metrics"]) <= {"fitres.num_examples"}
        assert set(m["configs"]) <= {"secaggplus_configs", "fitres.metrics", "fitres.status"}
        assert set(m["configs"].get("secaggplus_configs", {})) <= SECAGG_KEYS
        assert set(m["configs"].get("fitres.metrics", {})) <= set(REPLY_METRICS)
        for key, kind in m["configs"].get("fitres.metrics", {}).items():
            assert kind in ("float", "int") or (key == "site" and kind["str"] in texts), (key, kind)
        for s in strings_in(m["configs"]):
            assert s not in labels and not any(t in s or s in t for t in all_texts if len(s) > 3), s
    # the masked vectors are the declared trainable tensors (after SecAgg+'s own leading weight factor), nothing more
    assert params.federated.member_adapter == "lora"  # auto: DP is on, so the member trains LoRA adapters
    model, _ = build_member(federated.member_spec(params, params.pretrain.backbone))
    n_arrays = len(get_arrays(model))
    masked = [m["configs"]["secaggplus_configs"]["masked_params"] for m in messages
              if "masked_params" in m["configs"].get("secaggplus_configs", {})]
    assert masked and all(len(v) == n_arrays + 1 for v in masked)


@pytest.mark.slow
def test_without_secagg_each_site_is_scored_and_robust_aggregation_runs(tiny_backbone: Path, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write_toy_blackboard(paths, CLASSES, n_valid=40)
    write_sites(paths)
    params = params_for(tiny_backbone, rounds=1, secagg=False, strategy="fedmedian", dp={"enabled": False},
                        adapter="lora")
    report = federated.run(params, paths)
    assert report["protections"]["secure_aggregation"].startswith("off")
    assert report["epsilon"] is None
    sites = report["history"][0]["sites"]
    assert all(0 <= s["gold_accuracy"] <= 1 for s in sites)
    # each site's record goes to the sites' ledger, kept across runs
    ledger = pd.read_parquet(paths.site_ledger)
    assert sorted(ledger["site"]) == ["north", "south"] and set(report["site_reputation"]) == {"north", "south"}
    messages = [json.loads(x) for x in (paths.federated_work / "job" / "messages.jsonl").read_text().splitlines()]
    model, _ = build_member(federated.member_spec(params, params.pretrain.backbone))
    shapes = [list(a.shape) for a in get_arrays(model)]
    replies = [m for m in messages if m["arrays"]]
    assert len(replies) == 2 and all([a["shape"] for a in m["arrays"]["fitres.parameters"]] == shapes
                                     for m in replies)


def test_disabled_costs_nothing(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    report = federated.run(parse_params({}), paths)
    assert report == {"stage": "federated", "enabled": False, "summary_md": report["summary_md"]}
    assert io.read_json(paths.federated / MEMBER_FILE) == {"enabled": False}
    assert pd.read_parquet(paths.site_ledger).empty  # the persisted ledger exists from the first run on


def test_params_refuse_what_cannot_work() -> None:
    with pytest.raises(ParamsError, match="secure aggregation hides"):
        parse_params({"federated": {"strategy": "krum", "secagg": True}})
    with pytest.raises(ParamsError, match="at least one site"):
        parse_params({"federated": {"enabled": True}})
    with pytest.raises(ParamsError, match="max_epsilon"):
        parse_params({"federated": {"dp": {"epsilon": 12.0, "max_epsilon": 10.0}}})


def test_missing_site_folder_is_named(tmp_path: Path, tiny_backbone: Path) -> None:
    paths = Paths(tmp_path)
    write_toy_blackboard(paths, CLASSES, n_valid=20)
    with pytest.raises(FileNotFoundError, match="sites/north"):
        federated.run(params_for(tiny_backbone), paths)
    assert not paths.federated.exists() and not pd.io.common.file_exists(str(paths.report("federated")))
