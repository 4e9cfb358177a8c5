"""The champion/challenger gate.

Both ``@challenger`` and ``@champion`` are scored now, on the same frozen gold test split; the
``champion`` alias moves only when the challenger beats the champion by ``promote.margin`` on
``promote.metric``. The decision, both scores and the test-set hash are recorded as tags on the
challenger version, so the registry itself says why a version is (not) champion.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from crowdforge.config import Params
from crowdforge.gold import gold_test, test_set_hash
from crowdforge.paths import Paths
from crowdforge.reports import write_report

METRICS = ("accuracy", "macro_f1")


class PromotionError(RuntimeError):
    pass


def decide(challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """Pure gate: promote when there is no champion or the challenger wins by at least ``margin``."""
    if champion is None:
        return True, "no champion yet"
    if challenger >= champion + margin:
        return True, f"challenger {challenger:.4f} >= champion {champion:.4f} + margin {margin}"
    return False, f"challenger {challenger:.4f} < champion {champion:.4f} + margin {margin}"


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(params: Params, paths: Paths) -> dict[str, Any]:
    from mlflow import MlflowClient

    from crowdforge.registry.evaluate import score
    from crowdforge.registry.tracking import connect

    metric = params.promote.metric
    if metric not in METRICS:
        raise PromotionError(f"promote.metric must be one of {METRICS}, got {metric!r}")
    connect(params, paths)
    client = MlflowClient()
    name = params.register.model_name
    challenger = _alias(client, name, "challenger")
    if challenger is None:
        raise PromotionError(f"model {name!r} has no version aliased 'challenger': run the register stage first")
    champion = _alias(client, name, "champion")
    test = gold_test(paths.gold)
    test_hash = test_set_hash(test)

    if champion is not None and champion.version == challenger.version:
        promoted, reason = False, f"version {challenger.version} is already champion"
        chal_score = champ_score = float(challenger.tags.get(f"promotion.challenger_{metric}", "nan"))
        decision = "kept"
    else:
        chal_score = score(f"models:/{name}/{challenger.version}", test)[metric]
        champ_score = score(f"models:/{name}/{champion.version}", test)[metric] if champion else None
        promoted, reason = decide(chal_score, champ_score, params.promote.margin)
        decision = "promoted" if promoted else "rejected"
        tags = {
            "promotion.decision": decision, "promotion.reason": reason, "promotion.metric": metric,
            f"promotion.challenger_{metric}": f"{chal_score:.6f}",
            f"promotion.champion_{metric}": "" if champ_score is None else f"{champ_score:.6f}",
            "promotion.champion_version": str(champion.version) if champion else "",
            "promotion.margin": str(params.promote.margin),
            "promotion.test_set_hash": test_hash,
            "promotion.at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, challenger.version, key, value)
        if promoted:
            client.set_registered_model_alias(name, "champion", challenger.version)
            if champion is not None:
                client.set_model_version_tag(name, champion.version, "promotion.replaced_by", str(challenger.version))

    now_champion = str(challenger.version) if promoted else (str(champion.version) if champion else "")
    summary = f"{decision}: {reason}"
    md = (f"## promote\n\n**{decision}** version {challenger.version} of `{name}` "
          f"({metric} on {len(test)} gold test items): {reason}. Champion is now version {now_champion}.\n")
    report = {"decision": decision, "reason": reason, "summary": summary, "metric": metric,
              "challenger_version": int(challenger.version),
              "champion_version": int(now_champion) if now_champion else None,
              "challenger_metric": chal_score, "champion_metric": champ_score, "test_set_hash": test_hash}
    return write_report(paths, "promote", report, md)
