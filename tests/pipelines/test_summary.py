from __future__ import annotations

from pipelines.summary import format_summary


def test_summary_shows_metrics_and_members_left_out() -> None:
    text = format_summary({"stages": [
        {"stage": "finetune:partial-3", "seconds": 12.0, "cached": False,
         "metrics": {"valid_accuracy": 0.9, "strategy": "partial"}},
        {"stage": "finetune:pair-similarity", "seconds": 0.0, "cached": False,
         "metrics": {"strategy": "pair_features", "not_applicable": "the training texts are not pairs"}},
        {"stage": "finetune", "seconds": 12.5, "cached": False, "metrics": {}},
    ], "promotion": {"summary": "promoted: no champion yet"}})
    lines = text.splitlines()
    assert "valid_accuracy=0.9000, strategy=partial" in lines[4] and " ran " in lines[4]
    assert " left out " in lines[5] and "not_applicable=the training texts are not pairs" in lines[5]
    assert lines[-2].split() == ["total", "12.5s"] and lines[-1] == "promotion: promoted: no champion yet"
