"""Validate agent: a Great Expectations suite decides, row by row, accepted or quarantined.

The suite runs on a pandas batch (an ephemeral GX context: nothing accumulates between runs),
with ``result_format=COMPLETE`` so every failed expectation lists its unexpected row indices;
each index is mapped to a reason code, and a row with any reason is quarantined. Reason codes:

=====================  ===================================================================
``parse_error``         ingest could not parse the row (then no other reason is listed: the
                        other failures are consequences of the parse error)
``missing_<column>``    ``contributor_id``, ``item_id``, ``text`` or ``label`` is null
``text_length``         stripped text shorter than ``min_text_chars`` or longer than ``max_text_chars``
``label_not_in_classes`` label is not one of ``params.data.classes``
``bad_item_id``         item id does not match ``params.validate.item_id_pattern`` (e.g. a slash)
``bad_contributor_id``  contributor id does not match ``contributor_id_pattern``
``duplicate``           the contributor already labelled this item; the first row (in
                        file/line order) is kept, later ones are quarantined
=====================  ===================================================================

Rows in = rows accepted + rows quarantined is checked in code. Data Docs for the run are built
into ``reports/data_docs/`` (swapped in atomically).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.reports import write_report

REQUIRED = ("contributor_id", "item_id", "text", "label")
SITE_NAME = "crowdforge"
SUITE_NAME = "submissions"
DETAIL_CHARS = 60


@dataclass(frozen=True)
class Check:
    """One expectation and the reason code its unexpected rows get."""

    reason: str
    expectation: Any
    detail_column: str | None = None


def check_frame(subs: pd.DataFrame) -> pd.DataFrame:
    """The frame GX validates: the row's fields plus two derived columns.

    ``text_stripped`` (so whitespace-only text fails the length check) and ``pair_occurrence``
    (0 for a contributor's first row on an item, 1, 2... for repeats; rows with a parse error or
    a missing id do not take part).
    """
    frame = subs[["contributor_id", "item_id", "text", "label", "parse_error"]].copy()
    frame = frame.reset_index(drop=True)
    frame["text_stripped"] = frame["text"].str.strip()
    eligible = frame["parse_error"].isna() & frame["contributor_id"].notna() & frame["item_id"].notna()
    occ = pd.Series(0, index=frame.index, dtype="int64")
    occ[eligible] = frame[eligible].groupby(["contributor_id", "item_id"], sort=False).cumcount()
    frame["pair_occurrence"] = occ
    return frame


def build_checks(params: Params) -> list[Check]:
    import great_expectations.expectations as gxe

    v = params.validate
    checks = [Check("parse_error", gxe.ExpectColumnValuesToBeNull(column="parse_error"), "parse_error")]
    checks += [Check(f"missing_{c}", gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in REQUIRED]
    checks += [
        Check("text_length", gxe.ExpectColumnValueLengthsToBeBetween(
            column="text_stripped", min_value=v.min_text_chars, max_value=v.max_text_chars), "text_stripped"),
        Check("label_not_in_classes", gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(params.data.classes)), "label"),
        Check("bad_item_id", gxe.ExpectColumnValuesToMatchRegex(column="item_id", regex=v.item_id_pattern), "item_id"),
        Check("bad_contributor_id", gxe.ExpectColumnValuesToMatchRegex(
            column="contributor_id", regex=v.contributor_id_pattern), "contributor_id"),
        Check("duplicate", gxe.ExpectColumnValuesToBeInSet(column="pair_occurrence", value_set=[0])),
    ]
    return checks


def run_suite(frame: pd.DataFrame, checks: Sequence[Check], docs_dir: Path | None) -> list[dict[str, Any]]:
    """Run the checks as one GX suite; returns per expectation its reason and unexpected indices.

    With ``docs_dir``, a Data Docs site for this run is written there.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        ctx.add_data_docs_site(SITE_NAME, {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        })
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME]))
    asset = ctx.data_sources.add_pandas("contributions").add_dataframe_asset("submissions")
    batch_def = asset.add_batch_definition_whole_dataframe("all_rows")
    suite = ctx.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for c in checks:
        suite.add_expectation(c.expectation)
    vdef = ctx.validation_definitions.add(gx.ValidationDefinition(name="validate_submissions", data=batch_def, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name="validate", validation_definitions=[vdef], actions=actions,
        result_format={"result_format": "COMPLETE"},
    ))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (vres,) = result.run_results.values()
    by_id = {c.expectation.id: c for c in checks}
    out = []
    for r in vres.results:
        if r.exception_info and r.exception_info.get("raised_exception"):
            raise RuntimeError(f"expectation {r.expectation_config.type} raised: {r.exception_info.get('exception_message')}")
        check = by_id[r.expectation_config.id]
        out.append({
            "reason": check.reason,
            "detail_column": check.detail_column,
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column"),
            "success": bool(r.success),
            "unexpected_index_list": [int(i) for i in (r.result.get("unexpected_index_list") or [])],
        })
    return out


def assign_reasons(frame: pd.DataFrame, failures: Sequence[dict[str, Any]]) -> pd.Series:
    """``;``-joined ``reason[:detail]`` per row ('' = accepted); parse errors mask other reasons."""
    per_row: dict[int, list[str]] = {}
    for f in failures:
        col = f["detail_column"]
        for i in f["unexpected_index_list"]:
            code = f["reason"]
            if col is not None:
                val = frame.at[i, col]
                code = f"{code}:{str(val)[:DETAIL_CHARS]}" if col == "parse_error" else f"{code}:{str(val)[:DETAIL_CHARS]!r}"
            per_row.setdefault(i, []).append(code.replace(";", ","))
    reasons = pd.Series("", index=frame.index, dtype=object)
    for i, codes in per_row.items():
        if any(c.startswith("parse_error") for c in codes):
            codes = [c for c in codes if c.startswith("parse_error")]
        reasons.at[i] = ";".join(codes)
    return reasons


def reason_codes(reasons: pd.Series) -> pd.Series:
    """Reason codes without details, one list per row."""
    return reasons.map(lambda s: [c.split(":", 1)[0] for c in s.split(";")] if s else [])


def summarise(subs: pd.DataFrame, reasons: pd.Series) -> dict[str, Any]:
    quarantined = reasons != ""
    by_reason: dict[str, int] = {}
    for codes in reason_codes(reasons[quarantined]):
        for c in set(codes):
            by_reason[c] = by_reason.get(c, 0) + 1
    cid = subs["contributor_id"].fillna("<missing>").astype(str)
    g = pd.DataFrame({"cid": cid, "q": quarantined.to_numpy()}).groupby("cid")["q"].agg(["size", "sum"])
    by_contributor = {
        str(k): {"rows_in": int(r["size"]), "rows_accepted": int(r["size"] - r["sum"]), "rows_quarantined": int(r["sum"])}
        for k, r in g.iterrows()
    }
    return {
        "rows_in": len(subs),
        "rows_accepted": int((~quarantined).sum()),
        "rows_quarantined": int(quarantined.sum()),
        "by_reason": dict(sorted(by_reason.items())),
        "by_contributor": by_contributor,
    }


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Split ``submissions`` into ``accepted`` and ``quarantined`` with the GX suite; build Data Docs."""
    t0 = time.perf_counter()
    if not paths.submissions.is_file():
        raise FileNotFoundError(f"{paths.submissions} not found: run the ingest stage first")
    subs = pd.read_parquet(paths.submissions).reset_index(drop=True)
    frame = check_frame(subs)
    checks = build_checks(params)
    with io.atomic_dir(paths.data_docs) as docs_tmp:
        failures = run_suite(frame, checks, docs_tmp)
        if not (docs_tmp / "index.html").is_file():
            raise RuntimeError("Great Expectations did not write a Data Docs index.html")
    reasons = assign_reasons(frame, failures)
    quarantined_mask = (reasons != "").to_numpy()
    accepted = subs[~quarantined_mask].reset_index(drop=True)
    quarantined = subs[quarantined_mask].assign(reasons=reasons[quarantined_mask].to_numpy()).reset_index(drop=True)
    if len(subs) != len(accepted) + len(quarantined):
        raise RuntimeError(f"row accounting broken: {len(subs)} in != {len(accepted)} + {len(quarantined)}")
    io.write_parquet(paths.accepted, accepted)
    io.write_parquet(paths.quarantine / "quarantined.parquet", quarantined)
    metrics = summarise(subs, reasons)
    if metrics["rows_in"] != metrics["rows_accepted"] + metrics["rows_quarantined"]:
        raise RuntimeError(f"row accounting broken: {metrics}")
    metrics["data_docs"] = (paths.data_docs / "index.html").relative_to(paths.root).as_posix()
    metrics["expectations"] = [
        {"expectation": f["expectation"], "column": f["column"], "reason": f["reason"], "success": f["success"],
         "unexpected_count": len(f["unexpected_index_list"])}
        for f in failures
    ]
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    lines = [f"- `{k}`: {v}" for k, v in metrics["by_reason"].items()] or ["- none"]
    summary = (
        f"# validate\n\n{metrics['rows_in']} row(s) in = {metrics['rows_accepted']} accepted + "
        f"{metrics['rows_quarantined']} quarantined.\n\nQuarantine reasons (rows):\n" + "\n".join(lines)
        + f"\n\nData Docs: `{metrics['data_docs']}`\n"
    )
    return write_report(paths, "validate", metrics, summary)
