import subprocess
import sys
from pathlib import Path

import pytest

from crowdforge.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_the_typed_defaults():
    """params.yaml and the dataclass defaults must say the same thing (one source of truth)."""
    assert load_params(ROOT / "params.yaml") == Params()


def test_unknown_key_names_the_section_key_and_the_known_keys():
    with pytest.raises(ParamsError, match=r"finetune\.epochs: unknown key; known keys: batch_size, .*max_epochs"):
        parse_params({"finetune": {"epochs": 3}})


def test_dotted_overrides_win_over_the_file():
    p = parse_params({"pretrain": {"max_steps": 30}}, {"pretrain.max_steps": 2, "promote.margin": 0.1})
    assert p.pretrain.max_steps == 2 and p.promote.margin == 0.1


def test_members_are_validated():
    with pytest.raises(ParamsError, match=r"finetune\.members\[0\]\.strategy = 'frozen': Input should be 'head', "
                                          r"'partial', 'full' or 'pair_features'"):
        parse_params({"finetune": {"members": [{"name": "a", "strategy": "frozen"}]}})
    # forcing one strategy on every member, or distilling into one, needs an encoder strategy
    for override in ({"finetune.strategy": "pair_features"}, {"ensemble.distill_strategy": "pair_features"}):
        with pytest.raises(ParamsError, match=r"Input should be 'head', 'partial' or 'full'"):
            parse_params({}, override)
    with pytest.raises(ParamsError, match="unique"):
        parse_params({"finetune": {"members": [{"name": "a", "strategy": "head"}] * 2}})


@pytest.mark.parametrize(("override", "expected"), [
    ({"runtime.task_runner": "treads"}, r"runtime\.task_runner = 'treads': Input should be 'threads' or 'dask'"),
    ({"finetune.max_epochs": "three"}, r"finetune\.max_epochs = 'three': Input should be a valid integer"),
    ({"ensemble.calibrate": "no"}, r"ensemble\.calibrate = 'no': Input should be a valid boolean"),
    ({"augment.valid_fraction": 1.5}, r"augment\.valid_fraction = 1\.5: Input should be less than 1"),
    ({"finetune.refine_rounds": "often"}, r"refine_rounds\S* = 'often': Input should be 'auto' or 'converge'"),
    ({"reputation.method": "hierarchical"}, r"reputation\.method = 'hierarchical': unknown method; choose from auto"),
])
def test_every_bad_value_names_key_value_and_what_is_allowed(override, expected):
    with pytest.raises(ParamsError, match=expected):
        parse_params({}, override)


def test_every_mistake_is_reported_at_once():
    with pytest.raises(ParamsError) as info:
        parse_params({"finetune": {"max_epochs": 0, "lr_head": -1}})
    assert len(info.value.problems) == 2


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("setting", "needle"), [
    ("finetune.epochs=3", "finetune.epochs: unknown key"),            # unknown key
    ("finetune.max_epochs=three", "finetune.max_epochs = 'three'"),   # wrong type
    ("runtime.task_runner=treads", "Input should be 'threads' or 'dask'"),  # bad choice
    ("promote.margin=-0.1", "promote.margin = -0.1: Input should be greater than or equal to 0"),  # out of range
])
def test_cli_refuses_bad_params_with_one_error_line_before_any_stage(tmp_path, setting, needle):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "crowdforge.cli", "stage", "ingest", "--params", str(params),
                           "--root", str(tmp_path), "-S", setting], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()  # no stage ran


def test_market_tags_are_checked_against_the_learnware_package_at_load():
    with pytest.raises(ParamsError, match=r"market\.scenario = 'Movies': .*Scenario values: Business"):
        parse_params({"market": {"scenario": "Movies"}})
    assert parse_params({"market": {"licence": "mit", "scenario": "internet"}}).market.licence == "MIT"


def test_the_federated_member_takes_fewer_trained_numbers_under_dp():
    with_dp = parse_params({"federated": {"dp": {"enabled": True}}}).federated
    without = parse_params({"federated": {"dp": {"enabled": False}}}).federated
    assert (with_dp.member_adapter, with_dp.member_lora_targets) == ("lora", "attention")
    assert (without.member_adapter, without.member_lora_targets) == ("partial", "all")
    chosen = parse_params({"federated": {"adapter": "partial", "lora_targets": "all"}}).federated
    assert (chosen.member_adapter, chosen.member_lora_targets) == ("partial", "all")
