"""The champion/challenger gate, and rollback.

Both ``@challenger`` and ``@champion`` are scored now, on the same frozen gold test split; the
``champion`` alias moves only when the challenger beats the champion by ``promote.margin`` on
``promote.metric`` (``auto``: macro-F1 when the test split is imbalanced, else accuracy;
:mod:`crowdforge.metrics`), and never when it does not beat the majority-class baseline by that margin,
first version included: a model that answers one class for everything is not promoted. When the
challenger is the ensemble the ensemble stage just evaluated (same files, same test split), its test
predictions are reused instead of predicted again. The gate refuses when the two versions were built
against different gold test splits (a model may have trained on items that are now test items),
unless forced with a reason.
Every decision, both scores and the test-set hash are tags on the challenger version, so the
registry itself says why a version is (not) champion. A file lock serialises promotions on one
machine and the alias is re-read after it moves, so two concurrent gates cannot interleave.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from crowdforge.config import Params
from crowdforge.gold import gold_test, test_set_hash
from crowdforge.paths import Paths
from crowdforge.reports import write_report


class PromotionError(RuntimeError):
    pass


def decide(challenger: float, champion: float | None, margin: float,
           baseline: float | None = None) -> tuple[bool, str]:
    """Pure gate: promote when the challenger beats the majority-class ``baseline`` by ``margin`` and
    there is no champion or the challenger beats it by at least ``margin``."""
    if baseline is not None and (challenger <= baseline or challenger < baseline + margin):
        return False, (f"challenger {challenger:.4f} does not beat the majority-class baseline {baseline:.4f} "
                       f"+ margin {margin}: it has learned nothing usable")
    if champion is None:
        return True, "no champion yet"
    if challenger >= champion + margin:
        return True, f"challenger {challenger:.4f} >= champion {champion:.4f} + margin {margin}"
    return False, f"challenger {challenger:.4f} < champion {champion:.4f} + margin {margin}"


def comparable(challenger_hash: str, champion_hash: str | None, current_hash: str) -> str | None:
    """Why the two versions cannot be compared fairly on the current test split, or ``None``."""
    if challenger_hash != current_hash:
        return (f"the challenger was evaluated on test split {challenger_hash[:12] or '?'} but the current "
                f"gold test split is {current_hash[:12]}")
    if champion_hash is not None and champion_hash != current_hash:
        return (f"the champion was built against test split {champion_hash[:12] or '?'}, the challenger "
                f"against {current_hash[:12]}: different test data")
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _lock(paths: Paths):
    from filelock import FileLock

    paths.cache.mkdir(parents=True, exist_ok=True)
    return FileLock(str(paths.cache / "promote.lock"), timeout=600)


def promote(params: Params, paths: Paths, force: bool = False, reason: str | None = None) -> dict[str, Any]:
    """Run the gate; ``force`` promotes regardless and needs a ``reason``, which is recorded."""
    if force and not (reason and reason.strip()):
        raise PromotionError("--force needs --reason: say why the gate is overridden (it is recorded)")
    with _lock(paths):
        return _promote_locked(params, paths, force, reason)


def _reused_test_labels(paths: Paths, challenger: Any, current_hash: str) -> list[str] | None:
    """The ensemble stage's test predictions, when the challenger is exactly that ensemble (same files
    and the same test split); ``None`` otherwise."""
    from crowdforge import io
    from crowdforge.registry.lineage import md5_path

    report = paths.report("ensemble")
    if not (paths.test_predictions.exists() and report.exists() and paths.ensemble.exists()):
        return None
    written = io.read_json(report)
    if written.get("test_set_hash") != current_hash:
        return None
    if not challenger.tags.get("ensemble_md5") == written.get("ensemble_md5") == md5_path(paths.ensemble):
        return None
    import pandas as pd

    return pd.read_parquet(paths.test_predictions, columns=["item_id", "label"])["label"].astype(str).tolist()


def _promote_locked(params: Params, paths: Paths, force: bool, reason_given: str | None) -> dict[str, Any]:
    from mlflow import MlflowClient

    from crowdforge.registry.evaluate import score, score_labels
    from crowdforge.registry.tracking import connect

    connect(params, paths)
    client = MlflowClient()
    name = params.register.model_name
    classes = list(params.data.classes)
    challenger = _alias(client, name, "challenger")
    if challenger is None:
        raise PromotionError(f"model {name!r} has no version aliased 'challenger': run the register stage first")
    champion = _alias(client, name, "champion")
    test = gold_test(paths.gold)  # sorted by item_id, as the ensemble stage's predictions are
    current = test_set_hash(test)
    chal_v = str(challenger.version)
    champ_v = str(champion.version) if champion is not None else None
    imbalanced: bool | None = None
    metric = params.promote.metric

    chal_score: float | None = None
    champ_score: float | None = None
    baseline: float | None = None
    reused = False
    if champ_v == chal_v and not force:
        decision, reason = "kept", f"version {chal_v} is already champion"
    else:
        problem = comparable(challenger.tags.get("test_set_hash", ""),
                             champion.tags.get("test_set_hash", "") if champion else None, current)
        labels = _reused_test_labels(paths, challenger, current)
        reused = labels is not None
        chal_all = (score_labels(labels, test, classes) if labels is not None
                    else score(f"models:/{name}/{chal_v}", test, classes))
        metric = chal_all["headline_metric"] if metric == "auto" else metric
        imbalanced = chal_all["imbalanced"]
        chal_score = chal_all[metric]
        baseline = chal_all[f"majority_{metric}"]
        champ_score = score(f"models:/{name}/{champ_v}", test, classes)[metric] if champ_v else None
        if force:
            decision, reason = "forced", f"forced: {reason_given.strip()}" + (f" (gate: {problem})" if problem else "")
        elif problem:
            decision, reason = "refused", f"refused: {problem}"
        else:
            promoted, reason = decide(chal_score, champ_score, params.promote.margin, baseline)
            decision = "promoted" if promoted else ("refused" if "baseline" in reason else "rejected")
        tags = {
            "promotion.decision": decision, "promotion.reason": reason, "promotion.metric": metric,
            f"promotion.challenger_{metric}": f"{chal_score:.6f}",
            f"promotion.champion_{metric}": "" if champ_score is None else f"{champ_score:.6f}",
            f"promotion.majority_baseline_{metric}": f"{baseline:.6f}",
            "promotion.champion_version": champ_v or "", "promotion.margin": str(params.promote.margin),
            "promotion.test_set_hash": current, "promotion.at": _now(),
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, chal_v, key, value)
        if decision in ("promoted", "forced") and champ_v != chal_v:
            client.set_registered_model_alias(name, "champion", chal_v)
            client.set_model_version_tag(name, chal_v, "promotion.previous_champion", champ_v or "")
            if champ_v:
                client.set_model_version_tag(name, champ_v, "promotion.replaced_by", chal_v)
            now = _alias(client, name, "champion")
            if now is None or str(now.version) != chal_v:  # someone else moved it in between
                raise PromotionError(f"champion alias moved concurrently (now {now and now.version}); re-run promote")

    final = _alias(client, name, "champion")
    now_champion = str(final.version) if final is not None else ""
    summary = f"{decision}: {reason}"
    md = (f"## promote\n\n**{decision}** version {chal_v} of `{name}` ({metric} on {len(test)} gold test "
          f"items): {reason}. Champion is now version {now_champion or 'none'}.\n")
    report = {"decision": decision, "reason": reason, "summary": summary, "metric": metric,
              "challenger_version": int(chal_v), "champion_version": int(now_champion) if now_champion else None,
              "previous_champion_version": int(champ_v) if champ_v else None,
              "challenger_metric": chal_score, "champion_metric": champ_score,
              "majority_baseline_metric": baseline, "test_imbalanced": imbalanced,
              "reused_ensemble_predictions": reused, "test_set_hash": current}
    return write_report(paths, "promote", report, md)


def rollback(params: Params, paths: Paths, reason: str | None = None) -> dict[str, Any]:
    """Give ``champion`` back to the version it replaced (recorded on both versions)."""
    from mlflow import MlflowClient

    from crowdforge.registry.tracking import connect

    with _lock(paths):
        connect(params, paths)
        client = MlflowClient()
        name = params.register.model_name
        champion = _alias(client, name, "champion")
        if champion is None:
            raise PromotionError(f"model {name!r} has no champion to roll back")
        previous = champion.tags.get("promotion.previous_champion", "")
        if not previous:
            raise PromotionError(f"champion version {champion.version} replaced no earlier champion: "
                                 "nothing to roll back to")
        client.set_registered_model_alias(name, "champion", previous)
        note = reason or "rollback"
        client.set_model_version_tag(name, str(champion.version), "rollback.at", _now())
        client.set_model_version_tag(name, str(champion.version), "rollback.reason", note)
        client.set_model_version_tag(name, previous, "rollback.restored_from", str(champion.version))
    md = (f"## rollback\n\n`{name}` champion moved back from version {champion.version} to version {previous} "
          f"({note}).\n")
    return {"from_version": int(champion.version), "to_version": int(previous), "summary_md": md}
