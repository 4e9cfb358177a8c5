from __future__ import annotations

from pathlib import Path

import pytest

from crowdforge import io
from crowdforge.agents import finetune
from crowdforge.config import parse_params
from crowdforge.modeling.toy import write_toy_blackboard
from crowdforge.paths import Paths

MEMBERS = [
    {"name": "head-a", "strategy": "head", "seed": 1},
    {"name": "head-boot", "strategy": "head", "seed": 2, "bootstrap": True},
    {"name": "partial-1", "strategy": "partial", "seed": 3, "unfreeze_layers": 1, "max_epochs": 8},
    {"name": "full", "strategy": "full", "seed": 4, "max_epochs": 2},
]


def tiny_params(backbone: Path, members=MEMBERS, **ft):
    return parse_params({
        "pretrain": {"backbone": str(backbone)},
        "finetune": {"max_length": 24, "batch_size": 16, "max_epochs": 25, "patience": 4,
                     "lr_head": 0.05, "lr_backbone": 1e-3, "members": members, **ft},
        "runtime": {"torch_threads": 1},
    })


@pytest.fixture(scope="module")
def trained(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory):
    paths = Paths(tmp_path_factory.mktemp("finetune"))
    write_toy_blackboard(paths, n_train=150, n_valid=60)
    paths.gold.unlink()  # no training step may need the gold test split
    params = tiny_params(tiny_backbone)
    return params, paths, finetune.run(params, paths)


def test_report_lists_every_member(trained) -> None:
    _, paths, report = trained
    assert set(report["members"]) == {m["name"] for m in MEMBERS}
    for m in report["members"].values():
        assert m["epochs_run"] >= 1 and m["seconds"] > 0 and m["examples_per_s"] > 0
        assert 0 <= m["valid_accuracy"] <= 1
    assert io.read_json(paths.report("finetune"))["best_member"] == report["best_member"]


def test_members_beat_chance_on_a_separable_toy_task(trained) -> None:
    _, _, report = trained
    for name in ("head-a", "head-boot", "partial-1"):
        assert report["members"][name]["valid_accuracy"] > 0.6, name  # chance is 1/3


def test_member_folders(trained) -> None:
    _, paths, _ = trained
    head = io.read_json(paths.member("head-a") / "member.json")
    assert head["encoder"] == {"kind": "base", "name": head["initial_encoder"]["name"]}  # no pretrain ran
    assert not (paths.member("head-a") / "encoder").exists()  # frozen: a reference, not a copy
    partial = io.read_json(paths.member("partial-1") / "member.json")
    assert partial["encoder"]["kind"] == "trained" and (paths.member("partial-1") / "encoder" / "config.json").exists()
    assert partial["classes"] == ["negative", "neutral", "positive"] and partial["max_length"] == 24


def test_head_members_share_cached_embeddings(trained) -> None:
    _, paths, _ = trained
    # one file for the train texts, one for valid: the bootstrapped head reused both
    assert len(list((paths.cache / "embeddings").glob("*.npy"))) == 2


def test_early_stopping_and_pretrained_encoder(trained, tiny_backbone: Path) -> None:
    _, paths, _ = trained
    import shutil

    shutil.copytree(tiny_backbone, paths.pretrained)  # now a "pretrained" encoder exists
    params = tiny_params(tiny_backbone, members=[{"name": "stuck", "strategy": "head", "seed": 5}],
                         lr_head=0.0, patience=2)
    info = finetune.train_member(params, paths, "stuck")
    assert info["best_epoch"] == 1 and info["epochs_run"] == 3 < info["max_epochs"]
    assert info["encoder"] == {"kind": "pretrained"}


def test_unknown_member_is_an_error(trained) -> None:
    params, paths, _ = trained
    with pytest.raises(KeyError):
        finetune.train_member(params, paths, "nope")
