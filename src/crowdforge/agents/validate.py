"""Validate agent: Great Expectations decides, row by row, accepted or quarantined - with every reason.

Two GX suites run on pandas batches of an ephemeral context (nothing accumulates between runs),
with ``result_format=COMPLETE`` so every failed expectation lists its unexpected row indices; each
index is mapped to a reason code, and a row with any reason is quarantined.

1. ``rows`` - checks on each row alone:

   =====================  ================================================================
   ``parse_error``         ingest could not parse the row (then no other reason is listed:
                           the other failures are consequences of the parse error)
   ``missing_<column>``    ``contributor_id``, ``item_id``, ``text`` or ``label`` is null
   ``text_length``         stripped text shorter than ``min_text_chars`` or longer than ``max_text_chars``
   ``label_not_in_classes`` label is not one of ``params.data.classes``
   ``bad_item_id``         item id does not match ``validate.item_id_pattern`` (e.g. a slash)
   ``bad_contributor_id``  contributor id does not match ``contributor_id_pattern``
   ``resubmitted``         the row's file is byte-identical to an earlier file (see ingest)
   ``pii_<kind>``          the text holds an e-mail address, phone or card number and
                           ``validate.pii_policy`` is ``quarantine`` (or the finding cannot be
                           masked in place); see :mod:`crowdforge.ingestion.privacy`
   =====================  ================================================================

2. ``duplicates`` - among the rows that passed suite 1 only, so an invalid first copy never
   takes a valid later one down with it (the first in file/line order is kept):

   =====================  ================================================================
   ``duplicate``           within a contributor: they already labelled this item
   ``duplicate_text``      across contributors: the same text (case and spacing folded) is
                           already an item under another item id
   =====================  ================================================================

PII never reaches Data Docs or reports: GX sees the PII finding as booleans, and the result format
keeps no sample of unexpected values (``partial_unexpected_count: 0``), so the HTML lists counts
and percentages, not contributed text. With ``pii_policy: mask`` the accepted row's ``text`` and
``raw`` are masked; the original stays where it was received (``data/raw``, ``submissions``) and
``data/quarantine/masked.parquet`` records where (file, line, kinds) - no second copy of it.

Outputs: ``accepted.parquet``; ``data/quarantine/quarantined.parquet`` (the row exactly as received
plus ``reasons``; a file that could not be read is also copied whole to
``data/quarantine/files/<sha256>``); ``quarantined.csv`` for review in a spreadsheet, with formula
cells neutralised. Rows are streamed from ``submissions`` in record batches, so the full rows
(with ``raw``) are never all in memory; only the columns the checks need are.
Rows in = rows accepted + rows quarantined is checked in code, overall and per contributor.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.gold import text_keys
from crowdforge.ingestion.privacy import KINDS as PII_KINDS
from crowdforge.ingestion.privacy import find_pii, pii_report
from crowdforge.ingestion.privacy import mask as mask_text
from crowdforge.paths import Paths
from crowdforge.reports import write_report
from crowdforge.safety import UnsafePath, neutralise_formulas, open_regular_file, safe_join

REQUIRED = ("contributor_id", "item_id", "text", "label")
CHECK_COLUMNS = ["contributor_id", "item_id", "text", "label", "parse_error", "resubmission_of",
                 "source_file", "source_line", "file_sha256"]
SITE_NAME = "crowdforge"
DETAIL_CHARS = 60
PARSE_DETAIL_CHARS = 200
PII_POLICIES = ("quarantine", "mask")
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": 0}  # no values in Data Docs
BATCH_ROWS = 50_000


@dataclass(frozen=True)
class Check:
    """One expectation and the reason code its unexpected rows get."""

    reason: str
    expectation: Any
    detail_column: str | None = None


# ----------------------------------------------------------------------------- derived columns
def pii_columns(text: pd.Series, policy: str) -> pd.DataFrame:
    """Per row: ``pii_<kind>`` (True = quarantine for that kind), ``masked_text`` (or None), ``pii_kinds``."""
    if policy not in PII_POLICIES:
        raise ValueError(f"validate.pii_policy must be one of {PII_POLICIES}, got {policy!r}")
    n = len(text)
    flags = {k: np.zeros(n, dtype=bool) for k in PII_KINDS}
    masked: list[str | None] = [None] * n
    kinds: list[str | None] = [None] * n
    for i, t in enumerate(text.tolist()):
        if not isinstance(t, str):
            continue
        rep = pii_report(t)
        if not rep.kinds:
            continue
        kinds[i] = ",".join(rep.kinds)
        if policy == "quarantine" or rep.unmaskable:
            for k in rep.kinds:
                flags[k][i] = True
        else:
            masked[i] = rep.masked
    return pd.DataFrame({**{f"pii_{k}": v for k, v in flags.items()}, "masked_text": masked, "pii_kinds": kinds},
                        index=text.index)


def row_frame(subs: pd.DataFrame, policy: str) -> pd.DataFrame:
    """The frame suite 1 validates: the row's fields, the stripped text length and PII flags."""
    frame = subs[["contributor_id", "item_id", "text", "label", "parse_error",
                  "resubmission_of"]].reset_index(drop=True)
    frame = frame.assign(text_chars=frame["text"].str.strip().str.len())
    return pd.concat([frame, pii_columns(frame["text"], policy)], axis=1)


def duplicate_frame(frame: pd.DataFrame, ok: np.ndarray) -> pd.DataFrame:
    """The frame suite 2 validates, computed over the rows that passed suite 1 (``ok``) only.

    ``pair_occurrence``: 0 for a contributor's first row on an item, 1, 2... for repeats.
    ``text_duplicate_of``: the item id that first carried this text, when it is another id.
    """
    n = len(frame)
    occ = np.zeros(n, dtype="int64")
    dup_of = pd.Series([None] * n, dtype=object)
    idx = np.flatnonzero(ok)
    if len(idx):
        sub = frame.iloc[idx]
        occ[idx] = sub.groupby(["contributor_id", "item_id"], sort=False).cumcount().to_numpy()
        first = occ == 0
        keep = idx[first[idx]]
        text = frame["masked_text"].iloc[keep].where(frame["masked_text"].iloc[keep].notna(), frame["text"].iloc[keep])
        key = text_keys(text)
        items = frame["item_id"].iloc[keep]
        canonical = items.groupby(key.to_numpy(), sort=False).transform("first")
        differs = (items.to_numpy() != canonical.to_numpy())
        dup_of.iloc[keep[differs]] = canonical.to_numpy()[differs]
    return pd.DataFrame({"pair_occurrence": occ, "text_duplicate_of": dup_of.to_numpy()})


# ----------------------------------------------------------------------------- the suites
def build_row_checks(params: Params) -> list[Check]:
    import great_expectations.expectations as gxe

    v = params.validate
    checks = [Check("parse_error", gxe.ExpectColumnValuesToBeNull(column="parse_error"), "parse_error")]
    checks += [Check(f"missing_{c}", gxe.ExpectColumnValuesToNotBeNull(column=c)) for c in REQUIRED]
    checks += [
        Check("text_length", gxe.ExpectColumnValuesToBeBetween(
            column="text_chars", min_value=v.min_text_chars, max_value=v.max_text_chars), "text_chars"),
        Check("label_not_in_classes", gxe.ExpectColumnValuesToBeInSet(
            column="label", value_set=list(params.data.classes)), "label"),
        Check("bad_item_id", gxe.ExpectColumnValuesToMatchRegex(column="item_id", regex=v.item_id_pattern), "item_id"),
        Check("bad_contributor_id", gxe.ExpectColumnValuesToMatchRegex(
            column="contributor_id", regex=v.contributor_id_pattern), "contributor_id"),
        Check("resubmitted", gxe.ExpectColumnValuesToBeNull(column="resubmission_of"), "resubmission_of"),
    ]
    checks += [Check(f"pii_{k}", gxe.ExpectColumnValuesToBeInSet(column=f"pii_{k}", value_set=[False]))
               for k in PII_KINDS]
    return checks


def build_duplicate_checks() -> list[Check]:
    import great_expectations.expectations as gxe

    return [
        Check("duplicate", gxe.ExpectColumnValuesToBeInSet(column="pair_occurrence", value_set=[0])),
        Check("duplicate_text", gxe.ExpectColumnValuesToBeNull(column="text_duplicate_of"), "text_duplicate_of"),
    ]


class SuiteRunner:
    """One ephemeral GX context that runs named suites and writes one Data Docs site."""

    def __init__(self, docs_dir: Path | None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.actions = []
        if docs_dir is not None:
            self.ctx.add_data_docs_site(SITE_NAME, {
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            })
            self.actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME]))
        self.source = self.ctx.data_sources.add_pandas("contributions")

    def run(self, name: str, frame: pd.DataFrame, checks: Sequence[Check]) -> list[dict[str, Any]]:
        """Run ``checks`` as suite ``name``; per expectation its reason and unexpected indices."""
        gx = self.gx
        batch_def = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all_rows")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=name))
        for c in checks:
            suite.add_expectation(c.expectation)
        vdef = self.ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        checkpoint = self.ctx.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[vdef], actions=self.actions, result_format=RESULT_FORMAT))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        (vres,) = result.run_results.values()
        by_id = {c.expectation.id: c for c in checks}
        out = []
        for r in vres.results:
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise RuntimeError(f"expectation {r.expectation_config.type} raised: "
                                   f"{r.exception_info.get('exception_message')}")
            check = by_id[r.expectation_config.id]
            out.append({
                "suite": name, "reason": check.reason, "detail_column": check.detail_column,
                "expectation": r.expectation_config.type, "column": r.expectation_config.kwargs.get("column"),
                "success": bool(r.success),
                "unexpected_index_list": [int(i) for i in (r.result.get("unexpected_index_list") or [])],
            })
        return out


def detail(value: Any, verbatim: bool) -> str:
    """A short, printable rendering of the failing value (parser messages are kept longer)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text[:PARSE_DETAIL_CHARS] if verbatim else repr(text[:DETAIL_CHARS])


def assign_reasons(frame: pd.DataFrame, failures: Sequence[dict[str, Any]]) -> pd.Series:
    """``;``-joined ``reason[:detail]`` per row ('' = accepted); parse errors mask other reasons."""
    per_row: dict[int, list[str]] = {}
    for f in failures:
        col = f["detail_column"]
        for i in f["unexpected_index_list"]:
            code = f["reason"]
            if col is not None:
                code = f"{code}:{detail(frame.at[i, col], col == 'parse_error')}"
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
    """Counts overall, by reason and by contributor (with each contributor's failure rate and reasons)."""
    quarantined = (reasons != "").to_numpy()
    codes = reason_codes(reasons)
    by_reason: dict[str, int] = {}
    cid = subs["contributor_id"].fillna("<missing>").astype(str).to_numpy()
    per_c: dict[str, dict[str, Any]] = {}
    for c, q, cs in zip(cid, quarantined, codes):
        rec = per_c.setdefault(c, {"rows_in": 0, "rows_accepted": 0, "rows_quarantined": 0, "reasons": {}})
        rec["rows_in"] += 1
        rec["rows_quarantined" if q else "rows_accepted"] += 1
        for code in set(cs):
            by_reason[code] = by_reason.get(code, 0) + 1
            rec["reasons"][code] = rec["reasons"].get(code, 0) + 1
    for rec in per_c.values():
        rec["failure_rate"] = round(rec["rows_quarantined"] / rec["rows_in"], 4)
        rec["reasons"] = dict(sorted(rec["reasons"].items()))
    return {
        "rows_in": len(subs),
        "rows_accepted": int((~quarantined).sum()),
        "rows_quarantined": int(quarantined.sum()),
        "by_reason": dict(sorted(by_reason.items())),
        "by_contributor": dict(sorted(per_c.items())),
    }


def check_invariant(metrics: dict[str, Any]) -> None:
    """Rows in = accepted + quarantined, overall and for every contributor; raises otherwise."""
    if metrics["rows_in"] != metrics["rows_accepted"] + metrics["rows_quarantined"]:
        raise RuntimeError(f"row accounting broken: {metrics['rows_in']} in != "
                           f"{metrics['rows_accepted']} + {metrics['rows_quarantined']}")
    per = metrics["by_contributor"].values()
    if sum(r["rows_in"] for r in per) != metrics["rows_in"] or any(
            r["rows_in"] != r["rows_accepted"] + r["rows_quarantined"] for r in per):
        raise RuntimeError("row accounting broken per contributor")


# ----------------------------------------------------------------------------- outputs
def quarantine_file_copy(root: Path, contributions: Path, source: str, file_hash: str | None,
                         dest_dir: Path) -> str | None:
    """Copy an unreadable contribution file into quarantine, named by its content hash.

    The source path comes from the submissions table, so it is checked to lie inside
    ``contributions`` and opened without following links; the destination name is the hash, never
    a contributed name. Returns the copy's path relative to ``root`` or None when not copied.
    """
    if not file_hash or len(file_hash) != 64 or not all(c in "0123456789abcdef" for c in file_hash):
        return None
    try:
        src = safe_join(root, source)
        if not src.is_relative_to(contributions.resolve()):
            return None
        dest = dest_dir / file_hash
        if not dest.exists():
            dest_dir.mkdir(parents=True, exist_ok=True)
            with open_regular_file(root / source) as fh, io.atomic_path(dest) as tmp, tmp.open("wb") as out:
                shutil.copyfileobj(fh, out)
        return dest.relative_to(root).as_posix()
    except (UnsafePath, OSError):
        return None


def prune_quarantine_copies(dest_dir: Path, keep: set[str]) -> list[str]:
    """Delete the hash-named copies this run no longer refers to; returns their names.

    ``data/quarantine`` is a DVC output, so it must be a function of this run's inputs: a file
    dropped from (or fixed in) ``contributions/`` must not leave its old copy behind. Only names
    that are sha256 hex digests are touched; anything else in the folder is left alone.
    """
    if not dest_dir.is_dir():
        return []
    stale = [f for f in dest_dir.iterdir()
             if f.name not in keep and len(f.name) == 64 and all(c in "0123456789abcdef" for c in f.name)
             and f.is_file() and not f.is_symlink()]
    for f in stale:
        f.unlink()
    return sorted(f.name for f in stale)


def write_outputs(paths: Paths, reasons: pd.Series, masked_text: pd.Series, copies: dict[int, str]) -> None:
    """Stream ``submissions`` into accepted / quarantined Parquet files and the review CSV.

    Accepted rows with a masked text get the mask in ``text`` and ``raw`` too.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(paths.submissions)
    schema = pf.schema_arrow
    q_schema = schema.append(pa.field("reasons", pa.string())).append(pa.field("quarantined_copy", pa.string()))
    reasons_arr, masked_arr = reasons.to_numpy(), masked_text.to_numpy()
    qdir = paths.quarantine
    qdir.mkdir(parents=True, exist_ok=True)
    with (io.atomic_path(paths.accepted) as acc_tmp, io.atomic_path(qdir / "quarantined.parquet") as q_tmp,
          io.atomic_path(qdir / "quarantined.csv") as csv_tmp,
          pq.ParquetWriter(acc_tmp, schema) as acc_w, pq.ParquetWriter(q_tmp, q_schema) as q_w,
          csv_tmp.open("w", encoding="utf-8", newline="") as csv_fh):
        wrote_header = False
        start = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS):
            df = batch.to_pandas(types_mapper=None).astype({c: object for c in schema.names if c != "source_line"})
            df = df.where(df.notna(), None)
            stop = start + len(df)
            r = reasons_arr[start:stop]
            bad = r != ""
            acc = df[~bad].copy()
            m = masked_arr[start:stop][~bad]
            hit = pd.notna(m)
            if hit.any():
                acc.loc[hit, "text"] = m[hit]
                acc.loc[hit, "raw"] = [mask_text(raw, find_pii(raw)) for raw in acc.loc[hit, "raw"]]
            acc_w.write_table(pa.Table.from_pandas(acc, schema=schema, preserve_index=False))
            q = df[bad].assign(reasons=r[bad],
                               quarantined_copy=[copies.get(i) for i in np.flatnonzero(bad) + start])
            q_w.write_table(pa.Table.from_pandas(q, schema=q_schema, preserve_index=False))
            neutralise_formulas(q).to_csv(csv_fh, index=False, header=not wrote_header, quoting=csv.QUOTE_MINIMAL)
            wrote_header = True
            start = stop
        if start == 0:
            acc_w.write_table(schema.empty_table())
            q_w.write_table(q_schema.empty_table())
            csv_fh.write(",".join(q_schema.names) + "\n")
    if start != len(reasons):
        raise RuntimeError(f"row accounting broken: submissions has {start} rows, checks saw {len(reasons)}")


def summary_md(m: dict[str, Any], top: int = 10) -> str:
    """The markdown the Prefect artifact and ``reports/validate.md`` show."""
    share = m["rows_quarantined"] / m["rows_in"] if m["rows_in"] else 0.0
    lines = [
        "# validate", "",
        (f"**{m['rows_in']}** row(s) in = **{m['rows_accepted']}** accepted + **{m['rows_quarantined']}** "
         f"quarantined ({share:.1%}); the invariant is checked in code."), "",
        "| reason | rows |", "|---|---:|",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in sorted(m["by_reason"].items(), key=lambda kv: -kv[1])] or ["| none | 0 |"]
    if m.get("rows_masked"):
        lines += ["", f"Personal data masked in {m['rows_masked']} accepted row(s) (policy `mask`)."]
    worst = sorted(((c, r) for c, r in m["by_contributor"].items() if r["rows_quarantined"]),
                   key=lambda cr: (-cr[1]["failure_rate"], -cr[1]["rows_quarantined"], cr[0]))[:top]
    if worst:
        lines += ["", (f"Contributors with the highest failure rate (top {len(worst)} of "
                       f"{len(m['by_contributor'])}; passed to reputation):"), "",
                  "| contributor | rows | quarantined | rate | main reason |", "|---|---:|---:|---:|---|"]
        for c, r in worst:
            main = max(r["reasons"].items(), key=lambda kv: kv[1])[0] if r["reasons"] else ""
            safe_c = "".join(ch if ch.isalnum() or ch in "_.:-" else "?" for ch in c[:40])
            lines.append(f"| `{safe_c}` | {r['rows_in']} | {r['rows_quarantined']} | {r['failure_rate']:.0%} | "
                         f"`{main}` |")
    lines += ["", f"Data Docs: `{m['data_docs']}`; quarantine: `data/quarantine/quarantined.parquet`."]
    return "\n".join(lines) + "\n"


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Split ``submissions`` into ``accepted`` and ``quarantined`` with the GX suites; build Data Docs."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    if not paths.submissions.is_file():
        raise FileNotFoundError(f"{paths.submissions} not found: run the ingest stage first")
    subs = pq.read_table(paths.submissions, columns=CHECK_COLUMNS).to_pandas()
    subs = subs.astype({c: object for c in CHECK_COLUMNS if c != "source_line"})
    subs = subs.where(subs.notna(), None).reset_index(drop=True)
    frame = row_frame(subs, params.validate.pii_policy)
    with io.atomic_dir(paths.data_docs) as docs_tmp:
        runner = SuiteRunner(docs_tmp)
        failures = runner.run("rows", frame, build_row_checks(params))
        reasons = assign_reasons(frame, failures)
        dups = duplicate_frame(frame, (reasons == "").to_numpy())
        dup_failures = runner.run("duplicates", dups, build_duplicate_checks())
        if not (docs_tmp / "index.html").is_file():
            raise RuntimeError("Great Expectations did not write a Data Docs index.html")
    dup_reasons = assign_reasons(dups, dup_failures)
    reasons = reasons.where(dup_reasons == "", dup_reasons)  # rows failing suite 2 had no reason before
    whole = np.flatnonzero((subs["source_line"] == 0).to_numpy() & (reasons != "").to_numpy())
    copies = {}
    for i in whole:
        copy = quarantine_file_copy(paths.root, paths.contributions, subs.at[i, "source_file"],
                                    subs.at[i, "file_sha256"], paths.quarantine / "files")
        if copy:
            copies[int(i)] = copy
    prune_quarantine_copies(paths.quarantine / "files", {Path(c).name for c in copies.values()})
    accepted_mask = (reasons == "").to_numpy()
    masked = frame["masked_text"].where(accepted_mask, None)
    write_outputs(paths, reasons, masked, copies)
    masked_rows = subs.loc[masked.notna().to_numpy(), ["source_file", "source_line"]].assign(
        pii_kinds=frame.loc[masked.notna(), "pii_kinds"].to_numpy())
    io.write_parquet(paths.quarantine / "masked.parquet", masked_rows.reset_index(drop=True))
    metrics = summarise(subs, reasons)
    check_invariant(metrics)
    metrics["rows_masked"] = int(masked.notna().sum())
    metrics["pii_policy"] = params.validate.pii_policy
    metrics["files_quarantined_whole"] = len(copies)
    metrics["data_docs"] = (paths.data_docs / "index.html").relative_to(paths.root).as_posix()
    metrics["expectations"] = [
        {"suite": f["suite"], "expectation": f["expectation"], "column": f["column"], "reason": f["reason"],
         "success": f["success"], "unexpected_count": len(f["unexpected_index_list"])}
        for f in [*failures, *dup_failures]
    ]
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return write_report(paths, "validate", metrics, summary_md(metrics))
