from pathlib import Path

import yaml

from crowdforge.config import Params, parse_params
from crowdforge.stages import AGENTS, STAGES, dvc_yaml, fingerprint, outputs_exist

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_generated_from_the_stage_registry():
    assert yaml.safe_load((ROOT / "dvc.yaml").read_text()) == dvc_yaml()


def test_every_agent_is_a_stage_calling_the_cli():
    spec = dvc_yaml()["stages"]
    for name in AGENTS:
        assert spec[name]["cmd"] == f"crowdforge stage {name}"
        assert all((ROOT / c).exists() for c in STAGES[name].code), name


def _workspace(tmp_path: Path) -> Path:
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "a.csv").write_text("x\n1\n")
    for out in STAGES["ingest"].outs:
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text("out")
    code = tmp_path / STAGES["ingest"].code[0]
    code.parent.mkdir(parents=True)
    code.write_text("# agent\n")
    return tmp_path


def test_fingerprint_follows_data_code_and_params(tmp_path):
    root = _workspace(tmp_path)
    stage, p = STAGES["ingest"], Params()
    base = fingerprint(stage, p, root)
    assert base == fingerprint(stage, p, root)
    (root / "data/raw/a.csv").write_text("x\n2\n")
    changed_data = fingerprint(stage, p, root)
    assert changed_data != base
    (root / stage.code[0]).write_text("# agent v2\n")
    assert fingerprint(stage, p, root) != changed_data
    other = parse_params({"data": {"classes": ["a", "b"]}})
    assert fingerprint(stage, other, root) != fingerprint(stage, p, root)
    # a param section the stage does not read changes nothing
    assert fingerprint(stage, parse_params({"promote": {"margin": 0.5}}), root) == fingerprint(stage, p, root)


def test_outputs_exist_notices_a_deleted_output(tmp_path):
    root = _workspace(tmp_path)
    assert outputs_exist(STAGES["ingest"], root)
    (root / STAGES["ingest"].outs[0]).unlink()
    assert not outputs_exist(STAGES["ingest"], root)
