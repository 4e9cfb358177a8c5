"""`crowdforge aggregate` end to end through the CLI: outputs, options and every bad input."""

import pandas as pd
import pytest
from test_dawid_skene import make_crowd
from typer.testing import CliRunner

from crowdforge.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, ["aggregate", *map(str, args)])


def test_aggregate_writes_items_and_workers(tmp_path):
    df, truth = make_crowd(n_tasks=120)
    df.rename(columns={"task": "item"}).to_csv(tmp_path / "l.csv", index=False)
    pd.DataFrame({"item": truth.index[:20], "label": truth.iloc[:20]}).to_csv(tmp_path / "g.csv", index=False)
    r = _run("--labels", tmp_path / "l.csv", "--out", tmp_path / "o.csv", "--workers-out",
             tmp_path / "w.parquet", "--gold", tmp_path / "g.csv")
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "o.csv", dtype={"item": str})
    assert list(out.columns) == ["item", "label", "confidence", "n_labels", "prob_0", "prob_1", "prob_2"]
    assert len(out) == 120 and ((out["confidence"] > 0.33) & (out["confidence"] <= 1)).all()
    assert (out.set_index("item")["label"].reindex(truth.index).to_numpy() == truth.to_numpy()).mean() > 0.8
    w = pd.read_parquet(tmp_path / "w.parquet")
    assert {"worker", "n_labels", "reliability", "reliability_sd", "gold_checks", "gold_passed"} <= set(w.columns)
    assert set(w.nsmallest(4, "reliability")["worker"]) == {"w8", "w9", "w10", "w11"}


def test_aggregate_options_and_soft_cases(tmp_path):
    f = tmp_path / "x.csv"
    pd.DataFrame({"it": ["a", "a", "b", "c", "c", "d", "e", "f"],
                  "who": ["u", "v", "u", "u", "v", "lazy", "lazy", "lazy"],
                  "ans": ["y", "y", "n", "n", "n", "y", "y", "y"]}).to_parquet(tmp_path / "x.parquet")
    r = _run("--labels", tmp_path / "x.parquet", "--out", tmp_path / "o.parquet", "--item-col", "it",
             "--worker-col", "who", "--label-col", "ans", "--method", "mace", "--classes", "n,y,maybe")
    assert r.exit_code == 0, r.output
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert list(out.filter(like="prob_").columns) == ["prob_n", "prob_y", "prob_maybe"]
    assert "single label" in r.output  # items b, d, e, f have one label: answered, with a note
    f.write_text("item,worker,label\na,w,x\nb,w,x\nc,w,x\nd,w,x\ne,w,x\n")
    r = _run("--labels", f, "--out", tmp_path / "o.csv", "--workers-out", tmp_path / "w.csv")
    assert r.exit_code == 0 and "same label to every item" in r.output
    assert pd.read_csv(tmp_path / "o.csv")["label"].eq("x").all()


@pytest.mark.parametrize("content, args, message", [
    ("", (), "the file is empty"),
    ("item,worker,label\n", (), "no label rows"),
    ("item,worker,label\na,w1,x\na,w2,z\n", ("--classes", "x,y"),
     "outside the classes ['x', 'y']: ['z'], first at row(s) [3]"),
    ("item,worker,label\na,,x\n", (), "empty worker"),
    ("i,w,l\na,b,c\n", (), "missing column(s) 'item'"),
    ("item,worker,label\na,w1,x\n", ("--method", "magic"), "unknown method 'magic'"),
    ("item,worker,label\na,w1,x\nb,w2,y\n", ("--classes", "x,y", "--gold", "GOLD"), "gold label(s) ['q']"),
])
def test_bad_input_is_a_clear_error(tmp_path, content, args, message):
    f = tmp_path / "l.csv"
    f.write_text(content)
    (tmp_path / "g.csv").write_text("item,label\na,q\n")
    args = [str(tmp_path / "g.csv") if a == "GOLD" else a for a in args]
    r = _run("--labels", f, "--out", tmp_path / "o.csv", *args)
    assert r.exit_code == 2
    assert "error:" in r.output and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.csv").exists()


def test_missing_file(tmp_path):
    r = _run("--labels", tmp_path / "nope.csv", "--out", tmp_path / "o.csv")
    assert r.exit_code == 2 and "no such labels file" in r.output


def test_gold_columns_are_the_gold_files_own(tmp_path):
    """--item-col/--label-col name the labels file's columns only; the gold file has item,label or
    its own --gold-item-col/--gold-label-col."""
    df, truth = make_crowd(n_tasks=60)
    df.rename(columns={"task": "it", "label": "ans"}).to_csv(tmp_path / "l.csv", index=False)
    gold = pd.DataFrame({"item": truth.index[:10], "label": truth.iloc[:10]})
    gold.to_csv(tmp_path / "g.csv", index=False)
    common = ("--labels", tmp_path / "l.csv", "--out", tmp_path / "o.csv", "--item-col", "it", "--label-col", "ans",
              "--workers-out", tmp_path / "w.csv")
    r = _run(*common, "--gold", tmp_path / "g.csv")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "w.csv")["gold_checks"].sum() > 0  # the gold was read and used
    # a gold file named like the labels file is not read through --item-col: a clear error instead
    gold.rename(columns={"item": "it", "label": "ans"}).to_csv(tmp_path / "g2.csv", index=False)
    r = _run(*common, "--gold", tmp_path / "g2.csv")
    assert r.exit_code == 2 and "missing gold column(s) ['item', 'label']" in r.output and "--gold-item-col" in r.output
    r = _run(*common, "--gold", tmp_path / "g2.csv", "--gold-item-col", "it", "--gold-label-col", "ans")
    assert r.exit_code == 0, r.output
    assert pd.read_csv(tmp_path / "w.csv")["gold_checks"].sum() > 0
