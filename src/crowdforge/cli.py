"""The ``crowdforge`` command. Thin wiring only; heavy libraries are imported inside commands."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from crowdforge.runtime import configure_environment

configure_environment()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train models you can trust on data that many people contribute.")

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]
RootOpt = Annotated[Path, typer.Option("--root", help="Project folder holding data/, models/, reports/.")]
VersionArg = Annotated[str, typer.Argument(help="A version number, or an alias such as champion.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Registered model name (default register.model_name).")]
SetOpt = Annotated[list[str] | None,
                   typer.Option("--set", "-S", help="Override a param: section.key=value (YAML value).")]


@app.callback()
def _options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Debug logging from crowdforge and Prefect.")] = False,
) -> None:
    """Train models you can trust on data that many people contribute."""
    import logging
    import os

    if quiet:
        os.environ["CROWDFORGE_PROGRESS"] = "0"
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        logging.basicConfig(level=logging.WARNING)
    elif verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "DEBUG")
        logging.basicConfig(level=logging.DEBUG)
        logging.getLogger("crowdforge").setLevel(logging.DEBUG)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected section.key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _load(params_file: Path, root: Path, overrides: list[str] | None):
    from crowdforge.config import ParamsError, load_params
    from crowdforge.paths import Paths

    try:
        return load_params(params_file, parse_overrides(overrides)), Paths(root.resolve())
    except ParamsError as exc:
        _fail(*str(exc).splitlines())


def _fail(*messages: str) -> None:
    """One ``error:`` line per problem, exit code 2."""
    for message in messages:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Re-run every stage even if its inputs did not change.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run on this project to finish.")] = 0.0,
) -> None:
    """Run the Prefect flow `collaborative_training` through every agent, then the promotion gate."""
    p, paths = _load(params, root, set_)  # fail fast on a bad params file
    import os

    from crowdforge.run_lock import RunLocked, run_lock

    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(paths.cache / "prefect-results"))
    home = Path(os.environ.get("PREFECT_HOME") or paths.cache / "prefect")
    home.mkdir(parents=True, exist_ok=True)
    import contextlib

    code_root = str(Path(__file__).resolve().parents[2])
    sys.path.insert(0, code_root)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")]))
    from pipelines.local_servers import run_api

    try:
        with run_lock(paths, wait=wait, what="crowdforge run"):
            # Prefect's API for this run (unless PREFECT_API_URL names one): a child process the kernel
            # kills with this one, shared by Dask workers (each would otherwise start its own).
            own_api = not os.environ.get("PREFECT_API_URL")
            with run_api(home) if own_api else contextlib.nullcontext() as api_url:
                if api_url:
                    os.environ["PREFECT_API_URL"] = api_url
                from pipelines.collaborative_training import build_flow
                from pipelines.summary import format_summary

                result = build_flow(p)(params_file=str(params.resolve()), root=str(paths.root),
                                       overrides=parse_overrides(set_), force=force)
                if api_url:  # ship the last logs before the server goes away
                    from prefect.logging.handlers import APILogWorker

                    APILogWorker.drain_all(timeout=10)
    except RunLocked as exc:
        _fail(str(exc))
    from crowdforge import io

    io.write_json(paths.reports / "summary.json", result)
    typer.echo(format_summary(result))


@app.command()
def stage(
    name: Annotated[str, typer.Argument(
        help="ingest|validate|reputation|augment|pretrain|finetune|ensemble|register|promote")],
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Run one stage without Prefect (what dvc.yaml calls)."""
    from crowdforge.stages import STAGES

    if name not in STAGES:
        _fail(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    p, paths = _load(params, root, set_)
    from crowdforge.run_lock import RunLocked, run_lock
    from crowdforge.runtime import set_torch_threads

    if name in ("pretrain", "finetune", "ensemble"):
        set_torch_threads(p.runtime.torch_threads)
    try:
        with run_lock(paths, what=f"crowdforge stage {name}"):
            from crowdforge.stages import fingerprint, record_run

            inputs = fingerprint(STAGES[name], p, paths.root)
            if name == "promote":
                from crowdforge.registry.promote import promote as do_promote

                report = do_promote(p, paths)
            else:
                report = importlib.import_module(f"crowdforge.agents.{name}").run(p, paths)
            record_run(STAGES[name], paths.root, inputs)  # the flow reuses what `dvc repro` made
    except RunLocked as exc:
        _fail(str(exc))
    typer.echo(report.get("summary_md", json.dumps(report, indent=2, default=str)))


@app.command("params")
def show_params(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    changed: Annotated[bool, typer.Option("--changed", help="Only the keys that differ from the defaults.")] = False,
) -> None:
    """The effective configuration (params.yaml + -S overrides), checked, with defaults and help text."""
    import yaml

    from crowdforge.config import ParamsError, describe, load_params

    try:
        p = load_params(params, parse_overrides(set_))
    except ParamsError as exc:
        _fail(*str(exc).splitlines())
    section = ""
    for row in describe(p):
        if changed and row["value"] == row["default"]:
            continue
        head = row["key"].split(".")[0]
        if head != section:
            section = head
            typer.echo(f"{section}:")

        def show(v: Any) -> str:
            return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...")

        note = "" if row["value"] == row["default"] else f"  [default: {show(row['default'])}]"
        name = row["key"].split(".", 1)[1]
        typer.echo(f"  {name}: {show(row['value'])}  # {row['help']}{note}")


@app.command("demo-data")
def demo_data(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Overwrite data/raw if it already holds data.")] = False,
    sites: Annotated[int, typer.Option(help="Also write this many demo partner sites to sites/ (federated stage).",
                                       min=0)] = 0,
    site_rows: Annotated[int, typer.Option(help="Labelled rows per demo site.", min=1)] = 300,
) -> None:
    """Generate the seeded simulated crowd under data/raw/ (skipped when data/raw holds data), and with
    ``--sites N`` N partner sites under sites/ (each folder is one SuperNode's data; skipped when present)."""
    p, paths = _load(params, root, set_)
    if sites:
        from crowdforge.simulate.sites import write_demo_sites

        if paths.sites.exists() and any(paths.sites.iterdir()) and not force:
            typer.echo(f"{paths.sites} already holds sites; left as is (use --force to regenerate).")
        else:
            typer.echo(json.dumps(write_demo_sites(paths.sites, p, sites, site_rows), indent=2))
    if paths.raw.exists() and any(paths.raw.iterdir()) and not force:
        typer.echo(f"{paths.raw} already holds data; left as is (use --force to regenerate).")
        return
    from crowdforge.simulate.demo import write_demo_data

    summary = write_demo_data(paths, p, force=force)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("simulate-crowd")
def simulate_crowd(
    gold_file: Annotated[Path, typer.Argument(
        help="Gold-labelled text: CSV/TSV/Parquet with text,label, or SST lines '<label> <text>'.")],
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Folder to write contributions/, gold.csv and the contributor truth table.")],
    n_contributors: Annotated[int, typer.Option(help="Number of simulated contributors.")] = 40,
    labels_per_item: Annotated[int, typer.Option(help="Labels per item (0 = 1 to 5 at random).")] = 3,
    spammer_share: Annotated[float, typer.Option(help="Share of spammers.")] = 0.2,
    adversary_share: Annotated[float, typer.Option(help="Share of adversaries.")] = 0.1,
    max_items: Annotated[int, typer.Option(help="Use at most this many items (0 = all).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Simulate a crowd on any gold-labelled text file (for benchmarks on real text)."""
    from crowdforge.simulate.crowd import simulate_crowd_from_file

    try:
        summary = simulate_crowd_from_file(
            gold_file, out_dir, n_contributors=n_contributors,
            labels_per_item=labels_per_item or (1, 5), spammer_share=spammer_share,
            adversary_share=adversary_share, max_items=max_items or None, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def promote(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Promote the challenger even if the gate says no.")] = False,
    reason: Annotated[str | None, typer.Option(
        help="Why the gate is overridden (required with --force; recorded).")] = None,
) -> None:
    """Champion/challenger gate on the frozen gold test split; records the decision on the version."""
    p, paths = _load(params, root, set_)
    from crowdforge.registry.promote import PromotionError
    from crowdforge.registry.promote import promote as do_promote

    try:
        report = do_promote(p, paths, force=force, reason=reason)
    except (PromotionError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(report["summary_md"])


@app.command()
def rollback(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
    reason: Annotated[str | None, typer.Option(help="Why (recorded on the version).")] = None,
) -> None:
    """Give `champion` back to the version the current champion replaced."""
    p, paths = _load(params, root, set_)
    from crowdforge.registry.promote import PromotionError
    from crowdforge.registry.promote import rollback as do_rollback

    try:
        report = do_rollback(p, paths, reason=reason)
    except PromotionError as exc:
        _fail(str(exc))
    typer.echo(report["summary_md"])


@app.command()
def lineage(
    version: VersionArg,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Where a registered version came from, and the commands that restore its code and data."""
    p, paths = _load(params, root, set_)
    from crowdforge.registry.lineage_report import LineageError, describe

    try:
        typer.echo(describe(p, paths, version))
    except LineageError as exc:
        _fail(str(exc))


@app.command()
def export(
    version: VersionArg,
    to: Annotated[Path, typer.Option("--to", help="Folder to write: new, empty, or an earlier export.")],
    license_: Annotated[str | None, typer.Option(
        "--license", help="Hub licence id for the model card (default: the version's market.licence, "
                          "else apache-2.0).")] = None,
    language: Annotated[list[str] | None, typer.Option(
        "--language", help="Language code for the model card; repeat for several (default: the version's "
                           "market.language, else en).")] = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """One model of a registered version as a Hugging Face folder (config, safetensors, tokenizer, model card)."""
    p, paths = _load(params, root, set_)
    from crowdforge.registry.hf_export import ExportError, export_version

    try:
        out = export_version(p, paths, version, to, license_id=license_, language=language)
    except ExportError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out} (see its README.md); load it with "
               "AutoModelForSequenceClassification.from_pretrained(..., trust_remote_code=True)")


@app.command()
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", help="A text file (one text per line) or CSV/Parquet with a `text` column.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write predictions to this CSV/Parquet instead of printing.")] = None,
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<register.model_name>@champion.")] = None,
    precision: Annotated[str, typer.Option(
        help="fp32 | bf16 (about 5x faster on CPUs with bfloat16, 0.1 % of SST-2 labels changed) | int8 "
             "(about 4x, 8 % changed); BENCHMARKS.md, inference throughput")] = "fp32",
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Labels and class probabilities from the registered model (default `@champion`)."""
    p, paths = _load(params, root, set_)
    from crowdforge.registry.predict import PredictError, predict_texts, read_texts

    try:
        all_texts = list(texts or []) + (read_texts(file) if file else [])
        if not all_texts:
            _fail("give texts as arguments or --file")
        df = predict_texts(p, paths, all_texts, model_uri=model_uri, precision=precision)
    except PredictError as exc:
        _fail(str(exc))
    if out:
        from crowdforge import io
        from crowdforge.safety import neutralise_formulas

        if out.suffix == ".parquet":
            io.write_parquet(out, df)
        else:
            io.write_text(out, neutralise_formulas(df).to_csv(index=False))
        typer.echo(f"wrote {len(df)} predictions to {out}")
    else:
        import pandas as pd

        with pd.option_context("display.max_colwidth", 60, "display.width", 160):
            typer.echo(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


@app.command()
def aggregate(
    labels: Annotated[Path, typer.Option(
        "--labels", help="CSV/TSV/Parquet with one row per label (item, worker, label).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Write item,label,confidence,n_labels,prob_<class>... (CSV or .parquet).")],
    workers_out: Annotated[Path | None, typer.Option(
        "--workers-out", help="Write each worker's reliability and its sd.")] = None,
    gold: Annotated[Path | None, typer.Option(
        "--gold", help="Known answers (item,label): they anchor the model, calibrate the confidence (a temperature, "
                       "kept when cross-validation on the gold says it helps) and, with >= 20 items, check it by "
                       "cross-fitting (5 extra fits; reported as a note).")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="auto (default: the Dawid-Skene family stacked by held-out label likelihood, chosen per "
                         "crowd) | dawid_skene | one_coin | mace | majority_vote.")] = "auto",
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the chosen model, the evidence for it (held-out likelihood and weight of every "
                         "candidate), repeated pairs, the gold check and the notes as JSON.")] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated class list; a label outside it is an error. "
                          "Default: the labels seen.")] = None,
    item_col: Annotated[str, typer.Option("--item-col", help="Item column name.")] = "item",
    worker_col: Annotated[str, typer.Option("--worker-col", help="Worker column name.")] = "worker",
    label_col: Annotated[str, typer.Option("--label-col", help="Label column name.")] = "label",
    gold_item_col: Annotated[str, typer.Option(
        "--gold-item-col", help="Item column of the --gold file (--item-col does not apply to it).")] = "item",
    gold_label_col: Annotated[str, typer.Option(
        "--gold-label-col", help="Label column of the --gold file (--label-col does not apply to it).")] = "label",
    seed: Annotated[int, typer.Option(help="Random seed (calibration subsample on very large inputs).")] = 0,
) -> None:
    """Aggregate crowd labels into one label per item, with calibrated confidence and worker reliability."""
    from crowdforge.truth.aggregate import AggregateError, read_gold, read_labels, write_table
    from crowdforge.truth.aggregate import aggregate as run_aggregate

    try:
        cls = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
        df = read_labels(labels, item_col, worker_col, label_col, cls)
        g = read_gold(gold, gold_item_col, gold_label_col) if gold else None
        res = run_aggregate(df, method=method, gold=g, classes=cls, seed=seed, source=str(labels))
        write_table(res.items, out)
        if workers_out:
            write_table(res.workers, workers_out)
        if report:
            from crowdforge import io

            io.write_json(report, {"labels": str(labels), "n_labels": len(df), "n_items": len(res.items),
                                   "n_workers": int(res.workers.shape[0]), "model": res.model,
                                   "gold_check": res.gold_check, "notes": res.notes})
    except (AggregateError, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write output: {exc}")
    for note in res.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"aggregated {len(df)} labels from {res.workers.shape[0]} workers into {len(res.items)} items "
               f"with {method}; mean confidence {res.items['confidence'].mean():.3f}; wrote {out}"
               + (f" and {workers_out}" if workers_out else "") + (f"; report {report}" if report else ""))


@app.command()
def schedule(
    port: Annotated[int, typer.Option(help="Port of the local Prefect server (ignored with PREFECT_API_URL).")] = 4200,
    deployment: Annotated[str, typer.Option(help="Deployment name in prefect.yaml.")] = "nightly",
    root: RootOpt = Path("."),
) -> None:
    """Serve the scheduled deployment from prefect.yaml (starts a Prefect server on loopback unless PREFECT_API_URL is set)."""  # noqa: E501 -- one line: `crowdforge --help` keeps a docstring's line breaks
    import contextlib
    import os

    import yaml

    root = root.resolve()
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    found = [d for d in spec.get("deployments", []) if d.get("name") == deployment]
    if not found:
        _fail(f"prefect.yaml has no deployment named {deployment!r}")
    dep = found[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from pipelines.local_servers import prefect_server

    home = Path(os.environ.get("PREFECT_HOME", root / ".crowdforge" / "prefect"))
    server = (contextlib.nullcontext(os.environ["PREFECT_API_URL"]) if os.environ.get("PREFECT_API_URL")
              else prefect_server(home, port=port))
    with server as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        os.chdir(root)
        from prefect.schedules import Cron

        from pipelines.collaborative_training import collaborative_training

        schedules = [Cron(s["cron"], timezone=s.get("timezone", "UTC")) for s in dep.get("schedules", [])]
        typer.echo(f"serving {dep['name']} on {api_url} with {[s['cron'] for s in dep.get('schedules', [])]}")
        collaborative_training.serve(name=dep["name"], schedules=schedules, parameters=dep.get("parameters", {}),
                                     description=dep.get("description"))


market_app = typer.Typer(no_args_is_help=True, help="Models as learnware: search the registry with your own texts, "
                         "reuse what fits, export learnware packages.")
app.add_typer(market_app, name="market")
TextsOpt = Annotated[Path, typer.Option("--texts", help="Your unlabelled texts: .txt (one per line) or "
                                        "CSV/Parquet/JSONL with a `text` column.")]
ClassesOpt = Annotated[str | None, typer.Option("--classes", help="Classes you need, comma-separated (a,b,c).")]
ZipsOpt = Annotated[Path | None, typer.Option("--zips", help="Also search the learnware zips in this folder.")]


def _user_task(texts: Path, classes: str | None):
    from crowdforge.market.search import user_task
    from crowdforge.registry.predict import PredictError, read_texts

    try:
        return user_task(read_texts(texts), [c.strip() for c in classes.split(",") if c.strip()] if classes else None)
    except (PredictError, ValueError) as exc:
        _fail(str(exc))


@market_app.command("search")
def market_search(
    texts: TextsOpt,
    classes: ClassesOpt = None,
    top: Annotated[int, typer.Option("--top", help="Rows to show.")] = 10,
    zips: ZipsOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Rank every registered model (and learnware zips) by how close its training texts are to yours."""
    p, paths = _load(params, root, set_)
    from crowdforge.market.search import market_entries, search, summary, table

    user = _user_task(texts, classes)
    entries, missing = market_entries(p, paths, zips)
    matches, skipped = search(user, entries)
    typer.echo(f"{len(user.texts)} texts, task {user.task}; {len(entries)} models with a specification, "
               f"{len(matches)} compatible")
    if matches:
        typer.echo(table(matches, top))
    for uri, why in list(skipped.items())[:top]:
        typer.echo(f"left out {uri}: {why}")
    if missing:
        typer.echo(f"{len(missing)} registered versions have no specification (registered before it existed, or "
                   f"with market.spec off): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    typer.echo(summary(matches, user))


@market_app.command("export")
def market_export(
    version: VersionArg,
    out: Annotated[Path, typer.Option("--out", help="The learnware zip to write.")],
    model: ModelOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Write a registered version as a learnware zip (the learnware package's format, with its specification)."""
    p, paths = _load(params, root, set_)
    from crowdforge.market.export import export_learnware

    try:
        path = export_learnware(p, paths, version, out, model)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@market_app.command("specify")
def market_specify(
    version: VersionArg,
    texts: Annotated[Path, typer.Option("--texts", help="The version's training texts (e.g. that run's "
                                        "data/processed/labels.parquet): .txt, or CSV/Parquet/JSONL with `text`.")],
    model: ModelOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Attach a specification to a version registered without one, so search can find it."""
    p, paths = _load(params, root, set_)
    from crowdforge.market.backfill import specify_version
    from crowdforge.registry.predict import PredictError, read_texts

    try:
        tags = specify_version(p, paths, version, read_texts(texts), model)
    except (PredictError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"specified {model or p.register.model_name} version {version}: "
               + ", ".join(f"{k}={v}" for k, v in tags.items() if k != "market.description"))


@market_app.command("reuse")
def market_reuse(
    texts: TextsOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the reused model, predictions.csv and reuse.json.")],
    classes: ClassesOpt = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="average (default without labels) | select (job selector: each text to the model whose "
                         "specification fits it best) | augment (default with --labels: a classifier on your labels "
                         "over the models' outputs and the texts' embeddings) | prune (needs --labels: keep the "
                         "models whose average scores best)")] = None,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="A few labelled texts: CSV/Parquet/JSONL with `text` and `label`.")] = None,
    top: Annotated[int | None, typer.Option(
        "--top", help="Models to reuse, closest first (default: market.reuse.DEFAULT_TOP, 3).")] = None,
    register_as: Annotated[str | None, typer.Option(
        "--register", help="Register the result under this model name (average and prune).")] = None,
    zips: ZipsOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    set_: SetOpt = None,
) -> None:
    """Build a model for your texts from the closest registered models, without or with a few labels."""
    p, paths = _load(params, root, set_)
    from crowdforge.market.reuse import reuse
    from crowdforge.registry.predict import PredictError, read_labelled

    user = _user_task(texts, classes)
    try:
        labelled = read_labelled(labels) if labels else None
        record = reuse(p, paths, user, method, top, out.resolve(), labelled, zips, register_as)
    except (PredictError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{record['method']} over {', '.join(record.get('kept', record['sources']))}; wrote {out}/"
               + (f"; registered {record['registered']}" if record.get("registered") else ""))


@app.command("dvc-yaml", hidden=True)
def dvc_yaml_cmd(out: Annotated[Path, typer.Option(help="Where to write.")] = Path("dvc.yaml")) -> None:
    """Regenerate dvc.yaml from crowdforge.stages (developers)."""
    import yaml

    from crowdforge import io
    from crowdforge.stages import dvc_yaml

    header = "# Generated by `crowdforge dvc-yaml` from src/crowdforge/stages.py; edit that, not this.\n"
    io.write_text(out, header + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=120))
    typer.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
