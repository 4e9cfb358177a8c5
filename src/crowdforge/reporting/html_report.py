"""One self-contained HTML page per run: the numbers people ask about, drawn instead of listed.

``reports/run_report.html`` holds a header with the run's key numbers and five plots: contributor
reliability, label confusion on the gold test split, confidence histograms, member vs ensemble
accuracy and the ensemble's calibration curve. Every plot is a PNG embedded as a base64 data URI
(matplotlib's Agg canvas, no pyplot state, no CDN), so the page opens offline, as an MLflow
artifact or a Prefect link alike.

A report must never fail a run: a section whose inputs are missing or unusable renders as
"not available: <reason>" and the others still render. Test-split predictions come from the
ensemble agent (reports/test_predictions.parquet); nothing is fitted or predicted here.
"""

from __future__ import annotations

import base64
import html
import io as bytes_io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.truth.calibration import REPORT_ECE_BINS, confidence_ece

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "run_report.html"
N_LABELLED = 5  # contributors named at each end of the reliability plot
N_BINS = REPORT_ECE_BINS  # calibration bins: the same equal-width bins as the ensemble report's ECE


class Unavailable(Exception):
    """A section's inputs are missing or unusable; the message is shown in place of the plot."""


@dataclass(frozen=True)
class Section:
    """One rendered block: a plot (data URI) or the reason there is none, plus how to read it."""

    title: str
    how_to_read: str
    image: str | None = None
    reason: str | None = None
    notes: tuple[str, ...] = ()


# --- inputs -------------------------------------------------------------------------------------


def load_reports(paths: Paths, stages: Sequence[str]) -> dict[str, dict[str, Any] | str]:
    """Each stage's report, or the reason it cannot be read (a missing report is not an error)."""
    out: dict[str, dict[str, Any] | str] = {}
    for stage in stages:
        path = paths.report(stage)
        try:
            out[stage] = io.read_json(path)
        except FileNotFoundError:
            out[stage] = f"reports/{stage}.json not found (run the {stage} stage)"
        except (OSError, ValueError) as e:
            out[stage] = f"reports/{stage}.json unreadable: {e}"
    return out


def _need(reports: Mapping[str, dict[str, Any] | str], stage: str) -> dict[str, Any]:
    rep = reports.get(stage, f"reports/{stage}.json not loaded")
    if isinstance(rep, str):
        raise Unavailable(rep)
    return rep


def contributor_reliability(ledger: pd.DataFrame, data_version: str | None) -> pd.DataFrame:
    """This run's ledger rows (one per contributor), most reliable first.

    The ledger keeps every data version's rows (the track record); only the version named in
    ``reports/reputation.json`` describes this run. Without it, a single-version ledger is unambiguous.
    """
    versions = ledger["data_version"].unique()
    if data_version is None:
        if len(versions) != 1:
            raise Unavailable(f"ledger holds {len(versions)} data versions and no report names this run's")
        data_version = str(versions[0])
    rows = ledger[ledger["data_version"] == data_version]
    if rows.empty:
        raise Unavailable(f"ledger has no rows for data version {data_version[:12]}")
    return rows.sort_values(["reliability", "contributor_id"], ascending=[False, True],
                            kind="mergesort").reset_index(drop=True)


def gold_test_predictions(paths: Paths, classes: Sequence[str]) -> pd.DataFrame:
    """The ensemble's per-item predictions on the frozen gold test split (``gold`` = the expert
    label), as the ensemble agent wrote them: the plots need them, and predicting again is slow."""
    path = paths.test_predictions
    if not path.exists():
        raise Unavailable("reports/test_predictions.parquet not found (run the ensemble stage)")
    pred = pd.read_parquet(path)
    missing = [f"prob_{c}" for c in classes if f"prob_{c}" not in pred.columns]
    if missing:
        raise Unavailable(f"ensemble classes differ from data.classes {list(classes)}")
    return pred


# --- pure numbers -------------------------------------------------------------------------------


def probability_confidence(pred: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The calibration of the probabilities: the largest probability per item and whether its class
    is the gold label (the decided ``label`` may differ where a decision threshold moved it)."""
    probs = pred[[f"prob_{c}" for c in classes]].to_numpy(float)
    top = np.asarray(classes, dtype=object)[probs.argmax(1)]
    return probs.max(1), (top == pred["gold"].to_numpy()).astype(float)


def fmt(value: Any) -> str:
    """Integers with thousands separators, rates with 3 decimals, larger floats with 2."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) <= 1 else f"{value:,.2f}"


def key_numbers(reports: Mapping[str, dict[str, Any] | str]) -> list[tuple[str, str, str]]:
    """(label, formatted value, source) for the header; a missing report gives ``n/a``."""

    def get(stage: str, key: str) -> Any:
        rep = reports.get(stage)
        return rep.get(key) if isinstance(rep, dict) else None

    measure = "SimCSE loss" if get("pretrain", "eval_metric") == "simcse_loss" else "MLM perplexity"
    spec = [
        ("rows in", "validate", "rows_in"), ("accepted", "validate", "rows_accepted"),
        ("quarantined", "validate", "rows_quarantined"),
        ("gold check accuracy", "reputation", "gold_check_accuracy"),
        (f"{measure} before", "pretrain", "eval_before"), (f"{measure} after", "pretrain", "eval_after"),
        ("test accuracy", "ensemble", "test_accuracy"), ("test macro-F1", "ensemble", "test_macro_f1"),
        ("majority-class accuracy", "ensemble", "test_majority_accuracy"),
        ("majority-class macro-F1", "ensemble", "test_majority_macro_f1"), ("test ECE", "ensemble", "test_ece"),
    ]
    return [(label, fmt(get(stage, key)), f"{stage}.{key}") for label, stage, key in spec]


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins dropped).

    Bins are ``(lo, hi]`` with the first closed at 0, as in the ensemble agent's ECE, so
    ``sum(n/N * |accuracy - confidence|)`` over the rows reproduces ``test_ece``.
    """
    rows = []
    for lo, hi in pairwise(np.linspace(0.0, 1.0, n_bins + 1)):
        sel = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        if sel.any():
            rows.append({"lo": lo, "hi": hi, "n": int(sel.sum()),
                         "confidence": float(confidence[sel].mean()), "accuracy": float(correct[sel].mean())})
    return pd.DataFrame(rows, columns=["lo", "hi", "n", "confidence", "accuracy"])


# --- figures (pure: data in, matplotlib Figure out) ----------------------------------------------


def _figure(width: float, height: float) -> Figure:
    """A Figure on an Agg canvas, outside pyplot: no global backend or figure registry touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Figure) -> str:
    buf = bytes_io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def reliability_figure(workers: pd.DataFrame, n_classes: int, n_labelled: int = N_LABELLED) -> Figure:
    """Reliability +- sd per contributor, sorted; the ``n_labelled`` at each end named."""
    n = len(workers)
    x = np.arange(n)
    rel, sd = workers["reliability"].to_numpy(float), workers["reliability_sd"].to_numpy(float)
    k = min(n_labelled, n // 2)
    colour = np.array(["#4c72b0"] * n, dtype=object)
    colour[:k], colour[n - k:] = "#55a868", "#c44e52"
    fig = _figure(max(6.0, 0.16 * n + 2), 3.8)
    ax = fig.add_subplot()
    ax.errorbar(x, rel, yerr=sd, fmt="none", ecolor="#999999", elinewidth=1, capsize=2)
    ax.scatter(x, rel, c=list(colour), s=22, zorder=3)
    ax.axhline(1.0 / n_classes, ls="--", lw=1, color="#888888")
    ax.text(-0.5, 1.0 / n_classes - 0.01, "chance (random labels)", ha="left", va="top",
            fontsize=8, color="#666666")
    for i in [*range(k), *range(n - k, n)]:
        top = i < k
        y = rel[i] + sd[i] + 0.02 if top else rel[i] - sd[i] - 0.02
        ax.text(i, y, str(workers["contributor_id"].iloc[i]), rotation=90, fontsize=8,
                ha="center", va="bottom" if top else "top")
    ax.set(xlim=(-1, n), ylim=(-0.3, 1.25), yticks=np.linspace(0, 1, 6), xticks=[],
           xlabel=f"{n} contributors, most reliable first", ylabel="reliability (expected accuracy)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_figure(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> Figure:
    """Row-normalised confusion (colour) with raw counts (text): rows gold, columns predicted."""
    idx = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for g, p in zip(gold, pred):
        if g in idx and p in idx:
            counts[idx[g], idx[p]] += 1
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = 1.2 + 1.0 * len(classes)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), c in np.ndenumerate(counts):
        ax.text(j, i, f"{c}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                color="white" if share[i, j] > 0.6 else "black")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, list(classes), rotation=30, ha="right")
    ax.set_yticks(ticks, list(classes))
    ax.set(xlabel="ensemble prediction", ylabel="gold label")
    fig.colorbar(im, ax=ax, label="share of the gold row", shrink=0.8)
    return fig


def confidence_figure(series: Mapping[str, np.ndarray], n_classes: int) -> Figure:
    """Density histograms of top-class confidence, one step curve per source, means dashed."""
    bins = np.linspace(1.0 / n_classes, 1.0, 21)
    fig = _figure(6.5, 3.4)
    ax = fig.add_subplot()
    for (name, conf), colour in zip(series.items(), ("#4c72b0", "#dd8452", "#55a868")):
        ax.hist(conf, bins=bins, density=True, histtype="step", lw=2, color=colour,
                label=f"{name} (n={len(conf)}, mean {np.mean(conf):.2f})")
        ax.axvline(float(np.mean(conf)), ls="--", lw=1, color=colour)
    ax.set(xlabel="confidence (probability of the top class)", ylabel="density", xlim=(bins[0], 1.0))
    ax.legend(fontsize=8, loc="upper left")
    return fig


def accuracy_figure(ensemble_report: Mapping[str, Any]) -> Figure:
    """Test accuracy of each member and each combination scheme; the shipped one outlined."""
    names: list[str] = []
    values: list[float] = []
    colours: list[str] = []
    for name, m in (ensemble_report.get("members") or {}).items():
        names.append(f"member {name}" + (f" ({m['strategy']})" if m.get("strategy") else ""))
        values.append(float(m["test_accuracy"]))
        colours.append("#a0a0a0")
    for name, c in (ensemble_report.get("comparison") or {}).items():
        names.append("ensemble: weighted (shipped)" if name == "weighted" else f"ensemble: {name}")
        values.append(float(c["test_accuracy"]))
        colours.append("#4c72b0" if name == "weighted" else "#8fa8d0")
    if not names:
        raise Unavailable("reports/ensemble.json has no members or comparison")
    fig = _figure(6.5, 0.9 + 0.38 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=colours)
    for yi, v in zip(y, values):
        ax.text(min(v + 0.01, 0.9), yi, f"{v:.3f}", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    if "test_accuracy" in ensemble_report:
        ax.axvline(float(ensemble_report["test_accuracy"]), ls="--", lw=1, color="#4c72b0")
    ax.set_yticks(y, names, fontsize=8)
    n = ensemble_report.get("test_n")
    ax.set(xlim=(0, 1), xlabel="accuracy on the gold test split" + (f" (n={n})" if n else ""))
    ax.grid(axis="x", alpha=0.3)
    return fig


def calibration_figure(bins: pd.DataFrame, ece: float) -> Figure:
    """Reliability diagram (Guo et al. 2017): accuracy bars per confidence bin, the bin's mean
    confidence as a red mark, over a histogram of how many items fall in each bin."""
    fig = _figure(5.2, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = 0.9 * (float((bins["hi"] - bins["lo"]).iloc[0]) if len(bins) else 1.0 / N_BINS)
    centre = (bins["lo"] + bins["hi"]) / 2
    top.plot([0, 1], [0, 1], ls="--", color="#555555", lw=1, label="perfect calibration")
    top.bar(centre, bins["accuracy"], width=width, color="#4c72b0", label="accuracy in bin")
    top.hlines(bins["confidence"], centre - width / 2, centre + width / 2, color="#c44e52", lw=2.5,
               label="mean confidence in bin")
    top.set(ylim=(0, 1.02), ylabel="accuracy", title=f"ECE {ece:.3f} ({N_BINS} bins, {int(bins['n'].sum())} items)")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centre, bins["n"], width=width, color="#999999")
    bottom.set(xlim=(0, 1), xlabel="ensemble confidence", ylabel="items")
    return fig


# --- sections -----------------------------------------------------------------------------------


def render_section(title: str, how_to_read: str,
                   draw: Callable[[], Figure | tuple[Figure, Sequence[str]]]) -> Section:
    """Run ``draw``; any failure becomes the section's reason, so one bad input never hides the rest."""
    try:
        out = draw()
        fig, notes = out if isinstance(out, tuple) else (out, ())
        return Section(title, how_to_read, image=png_data_uri(fig), notes=tuple(notes))
    except Unavailable as e:
        return Section(title, how_to_read, reason=str(e))
    except Exception as e:  # noqa: BLE001 - a report never fails the run; the reason is shown instead
        return Section(title, how_to_read, reason=f"{type(e).__name__}: {e}")


def _capture(fn: Callable[[], pd.DataFrame]) -> pd.DataFrame | str:
    """``fn()``, or the reason it failed (shared inputs fail once, shown in every section using them)."""
    try:
        return fn()
    except Unavailable as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - see render_section
        return f"{type(e).__name__}: {e}"


def _frame(value: pd.DataFrame | str) -> pd.DataFrame:
    if isinstance(value, str):
        raise Unavailable(value)
    return value


def sections(paths: Paths, classes: Sequence[str], reports: Mapping[str, dict[str, Any] | str],
             preds: pd.DataFrame | str) -> list[Section]:
    """The five plots, each from the artifacts it needs."""
    K = len(classes)

    def reliability() -> Figure:
        rep = _need(reports, "reputation")
        if not paths.ledger.exists():
            raise Unavailable("data/reputation/ledger.parquet not found (run the reputation stage)")
        workers = contributor_reliability(pd.read_parquet(paths.ledger), rep.get("data_version"))
        return reliability_figure(workers, K)

    def confusion() -> Figure:
        p = _frame(preds)
        return confusion_figure(p["gold"].tolist(), p["label"].tolist(), classes)

    def confidence() -> tuple[Figure, list[str]]:
        series: dict[str, np.ndarray] = {}
        notes: list[str] = []
        if paths.labels.exists():
            series["soft labels (crowd items)"] = pd.read_parquet(paths.labels, columns=["confidence"])[
                "confidence"].to_numpy(float)
        else:
            notes.append("soft labels not available: data/processed/labels.parquet not found")
        if isinstance(preds, str):
            notes.append(f"ensemble confidence not available: {preds}")
        else:
            series["ensemble on gold test split"] = preds["confidence"].to_numpy(float)
        if not series:
            raise Unavailable("; ".join(notes))
        return confidence_figure(series, K), notes

    def accuracy() -> Figure:
        return accuracy_figure(_need(reports, "ensemble"))

    def calibration() -> Figure:
        conf, correct = probability_confidence(_frame(preds), classes)
        return calibration_figure(calibration_bins(conf, correct), confidence_ece(conf, correct, N_BINS))

    return [
        render_section("Contributor reliability", (
            "Each dot is one contributor's estimated labelling accuracy (bar: ±1 sd, wide when they "
            "gave few labels); green are trusted most, red least; below the dashed line is worse than random."),
            reliability),
        render_section("Label confusion on the gold test split", (
            "Rows are the expert label, columns the ensemble's; the diagonal is what it gets right, "
            "dark off-diagonal cells are the confusions worth a look."), confusion),
        render_section("Confidence", (
            "How sure the soft labels and the ensemble are (top-class probability); mass near 1 is "
            "certainty, mass near the left edge is a coin toss between classes."), confidence),
        render_section("Members vs ensemble", (
            "Test accuracy of each fine-tuned member (grey) and each way of combining them (blue); the "
            "dashed line is the shipped ensemble, which should beat or match the best member."), accuracy),
        render_section("Calibration of the ensemble", (
            "In each confidence bin the bar is how often the ensemble was right and the red mark how sure "
            "it was: bars above their mark are underconfidence, below it overconfidence."), calibration),
    ]


# --- page ---------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.6rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem;min-width:8rem}
.card .v{font-size:1.4rem;font-weight:600}.card .k{color:#666;font-size:.8rem}
section{border-top:1px solid #eee;padding-top:.6rem;margin-top:1.2rem}
.how{color:#444;font-style:italic}.na{color:#a33}.note{color:#a60;font-size:.9rem}
img{max-width:100%;height:auto}
"""


def render_html(numbers: Sequence[tuple[str, str, str]], subtitle: str, notes: Sequence[str],
                body: Sequence[Section]) -> str:
    """The page; every piece of text from the blackboard is escaped."""
    e = html.escape
    cards = "".join(f'<div class="card" title="{e(src)}"><div class="v">{e(v)}</div>'
                    f'<div class="k">{e(k)}</div></div>' for k, v, src in numbers)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>crowdforge run report</title>", f"<style>{CSS}</style></head><body>",
        "<h1>crowdforge run report</h1>", f'<p class="sub">{e(subtitle)}</p>',
        f'<div class="cards">{cards}</div>',
        *(f'<p class="note">{e(n)}</p>' for n in notes),
    ]
    for s in body:
        parts += ["<section>", f"<h2>{e(s.title)}</h2>", f'<p class="how">{e(s.how_to_read)}</p>']
        parts += [f'<p class="note">{e(n)}</p>' for n in s.notes]
        parts.append(f'<img alt="{e(s.title)}" src="{s.image}">' if s.image
                     else f'<p class="na">not available: {e(s.reason or "unknown")}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _subtitle_and_notes(reports: Mapping[str, dict[str, Any] | str]) -> tuple[str, list[str]]:
    rep = reports.get("reputation")
    ens = reports.get("ensemble")
    bits = []
    if isinstance(rep, dict) and rep.get("data_version"):
        bits.append(f"data version {str(rep['data_version'])[:12]}")
    if isinstance(ens, dict) and ens.get("test_set_hash"):
        bits.append(f"gold test split {str(ens['test_set_hash'])[:12]} ({ens.get('test_n', '?')} items)")
    notes = [f"missing: {r}" for r in reports.values() if isinstance(r, str)]
    fed = reports.get("federated")
    if isinstance(fed, dict) and fed.get("enabled"):  # which protections were in force for the federated member
        notes.append(f"federated member: {fed.get('n_sites')} sites ({', '.join(fed.get('sites', []))}), "
                     f"{fed.get('rounds_applied')} of {fed.get('rounds')} rounds applied; "
                     + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in (fed.get("protections") or {}).items()))
    return " · ".join(bits) or "run identity not available", notes


def build_report(paths: Paths, params: Params) -> Path:
    """Write ``reports/run_report.html`` (self-contained, atomic) from the blackboard; return its path.

    Reads reports/{validate,reputation,pretrain,ensemble}.json, the reputation ledger, the soft
    labels, and the ensemble's gold-test predictions. Missing inputs make sections
    "not available", never an exception.
    """
    classes = list(params.data.classes)
    reports = load_reports(paths, ("validate", "reputation", "pretrain", "ensemble"))
    if paths.report("federated").exists():
        reports.update(load_reports(paths, ("federated",)))
    preds = _capture(lambda: gold_test_predictions(paths, classes))
    subtitle, notes = _subtitle_and_notes(reports)
    page = render_html(key_numbers(reports), subtitle, notes, sections(paths, classes, reports, preds))
    out = paths.reports / REPORT_FILE
    io.write_text(out, page)
    return out
