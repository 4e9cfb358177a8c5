"""The end-of-run summary: per-stage time and the key metrics."""

from __future__ import annotations

from typing import Any

KEY_METRICS = {
    "version-raw-data": ("versioned", "pushed", "raw_md5"),
    "ingest": ("rows_in", "files_read"),
    "validate": ("rows_in", "rows_accepted", "rows_quarantined"),
    "reputation": ("n_items", "n_contributors", "gold_check_accuracy", "majority_vote_gold_check_accuracy",
                   "mean_confidence"),
    "augment": ("n_train", "n_valid", "n_augmented"),
    "pretrain": ("perplexity_before", "perplexity_after", "steps"),
    "finetune": ("n_members",),
    "federated": ("enabled", "n_sites", "rounds_applied", "secagg", "epsilon", "gate_accuracy"),
    "ensemble": ("test_accuracy", "test_macro_f1", "test_ece", "test_n"),
    "register": ("model_name", "version", "new_version"),
    "promote": ("decision", "champion_version", "challenger_metric", "champion_metric"),
}


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_summary(result: dict[str, Any]) -> str:
    lines = ["", "crowdforge run summary", "=" * 22, f"{'stage':<22}{'time':>9}  status  key metrics"]
    total = 0.0
    for row in result["stages"]:
        name = row["stage"]
        secs = row.get("seconds")
        if secs is not None and ":" not in name:
            total += secs
        keys = KEY_METRICS.get(name, ("valid_accuracy", "strategy", "not_applicable"))  # members
        metrics = ", ".join(f"{k}={_fmt(row['metrics'][k])}" for k in keys if k in (row["metrics"] or {}))
        status = "cached" if row["cached"] else "left out" if (row["metrics"] or {}).get("not_applicable") else "ran"
        time_s = f"{secs:8.1f}s" if secs is not None else " " * 9
        lines.append(f"{name:<22}{time_s}  {status:<6}  {metrics}")
    lines.append(f"{'total':<22}{total:8.1f}s")
    promo = result.get("promotion") or {}
    if promo.get("summary"):
        lines.append(f"promotion: {promo['summary']}")
    return "\n".join(lines)
