"""The demo data set: reproducible byte for byte, complete, and never overwrites real data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from crowdforge.config import Params, parse_params
from crowdforge.paths import Paths
from crowdforge.simulate.demo import MALFORMED_KINDS, simulation_dir, write_demo_data


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Paths, dict]:
    paths = Paths(tmp_path_factory.mktemp("demo"))
    return paths, write_demo_data(paths, Params())


def test_byte_identical_on_rerun(demo, tmp_path: Path) -> None:
    paths, _ = demo
    other = Paths(tmp_path)
    write_demo_data(other, Params())
    assert _tree(paths.root / "data") == _tree(other.root / "data")
    # a different seed gives different data
    seeded = Paths(tmp_path / "s")
    write_demo_data(seeded, parse_params({"demo": {"seed": 8}}))
    assert _tree(seeded.raw) != _tree(paths.raw)


def test_layout_and_contents(demo) -> None:
    paths, summary = demo
    p = Params().demo
    files = sorted(paths.contributions.rglob("*.csv"))
    assert summary["n_contributors"] >= 40 and summary["n_files"] == len(files)
    folders = [d for d in paths.contributions.iterdir() if d.is_dir()]
    assert len(folders) == 3 and all(len(list(d.glob("batch*.csv"))) == 2 for d in folders)
    assert (paths.unlabeled_raw / "corpus.txt").read_text().count("\n") == p.n_unlabeled
    # no ground truth under data/raw
    raw_files = {f.name for f in paths.raw.rglob("*") if f.is_file()}
    assert not {"contributors.csv", "items.csv", "malformed.csv"} & raw_files
    truth = pd.read_csv(simulation_dir(paths) / "contributors.csv")
    assert {"expert", "ordinary", "careless", "spammer", "adversary", "biased", "copier"} == set(truth["kind"])
    mal = pd.read_csv(simulation_dir(paths) / "malformed.csv", dtype=str, keep_default_na=False)
    assert len(mal) == p.malformed_rows and set(mal["kind"]) == set(MALFORMED_KINDS)

    items = pd.read_csv(simulation_dir(paths) / "items.csv", dtype=str, keep_default_na=False)
    gold = pd.read_csv(paths.gold_raw, dtype=str)
    assert gold["split"].value_counts().to_dict() == {"test": p.n_gold_test, "check": p.n_gold_check}
    crowd_items = items[items["gold_split"] != "test"]
    new = crowd_items[crowd_items["origin"] == "contributor"]
    assert len(new) == round(p.new_item_fraction * p.n_items)
    assert new["item_id"].str.match(r"^c\d+\.n\d{3}$").all()

    # the clean labels (simulation truth: n_labels) vs what is in the files
    clean = summary["n_labels"]
    assert truth["n_labels"].sum() == clean
    assert summary["n_rows"] == clean + p.malformed_rows


def test_gold_test_items_never_reach_the_crowd(demo) -> None:
    paths, _ = demo
    gold = pd.read_csv(paths.gold_raw, dtype=str)
    blob = b"".join(f.read_bytes() for f in paths.contributions.rglob("*.csv")).decode("utf-8", "replace")
    for item_id, text in gold.loc[gold["split"] == "test", ["item_id", "text"]].itertuples(index=False):
        assert item_id not in blob and text not in blob
    for item_id in gold.loc[gold["split"] == "check", "item_id"]:
        assert f",{item_id}," in blob or f"\n{item_id}," in blob


def test_refuses_to_overwrite(demo, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.contributions.mkdir(parents=True)
    (paths.contributions / "real.csv").write_text("contributor_id,item_id,text,label\n")
    with pytest.raises(FileExistsError, match="force=True"):
        write_demo_data(paths, Params())
    assert (paths.contributions / "real.csv").exists()
    write_demo_data(paths, Params(), force=True)
    assert not (paths.contributions / "real.csv").exists()
    assert not list(paths.root.joinpath("data").glob(".*"))  # no temporary leftovers
