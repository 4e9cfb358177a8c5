from pathlib import Path

import pytest

from crowdforge.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_the_typed_defaults():
    """params.yaml and the dataclass defaults must say the same thing (one source of truth)."""
    assert load_params(ROOT / "params.yaml") == Params()


def test_unknown_key_names_the_section_and_key():
    with pytest.raises(ParamsError, match=r"params\.finetune: unknown key\(s\) \['epochs'\]"):
        parse_params({"finetune": {"epochs": 3}})


def test_dotted_overrides_win_over_the_file():
    p = parse_params({"pretrain": {"max_steps": 30}}, {"pretrain.max_steps": 2, "promote.margin": 0.1})
    assert p.pretrain.max_steps == 2 and p.promote.margin == 0.1


def test_members_are_validated():
    with pytest.raises(ParamsError, match="strategy 'frozen' is not head|partial|full"):
        parse_params({"finetune": {"members": [{"name": "a", "strategy": "frozen"}]}})
    with pytest.raises(ParamsError, match="unique"):
        parse_params({"finetune": {"members": [{"name": "a", "strategy": "head"}] * 2}})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
