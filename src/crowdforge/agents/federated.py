"""federated: the member partner sites train where their data lives (Flower), or nothing when disabled.

Thin wiring around :mod:`crowdforge.federated`: prepare the job (the member's spec, the sites'
training settings, the coordinator's gold checks), run it on Flower's deployment runtime (a local
SuperLink and one SuperNode per site, or a SuperLink partners already connect to), then save the
aggregate in the members' format under ``models/federated/`` so the ensemble takes it like any
other member. The (epsilon, delta) is the largest any site accounted; a member above
``federated.dp.max_epsilon`` is refused and nothing is written. Lineage gets the sites' names,
rounds, epsilon and the aggregate's hash, never a site's data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.paths import Paths
from crowdforge.reports import write_report


def site_folders(params: Params, paths: Paths) -> dict[str, Path]:
    """Each site's name (its folder's name) and folder (relative paths: the project root)."""
    out: dict[str, Path] = {}
    for s in params.federated.sites:
        folder = Path(s) if Path(s).is_absolute() else paths.root / s
        if folder.name in out:
            raise ValueError(f"federated.sites: two sites are named {folder.name!r}; site folders need distinct names")
        out[folder.name] = folder
    return out


def gate_items(paths: Paths) -> tuple[pd.DataFrame, str]:
    """The coordinator's items that score each round: the valid split's gold checks, else all of valid."""
    valid = pd.read_parquet(paths.valid)
    gold = valid["gold"].fillna(False).astype(bool) if "gold" in valid else pd.Series(False, index=valid.index)
    if gold.any():
        return valid[gold][["text", "label"]], "gold checks (expert labels)"
    return valid[["text", "label"]], "the valid split (crowd labels: no gold checks in it)"


def bytes_per_site_round(messages: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and max bytes a site sent the coordinator in one round (every stage of the round)."""
    per: dict[tuple[Any, Any], int] = defaultdict(int)
    for m in messages:
        per[(m["src"], m["group"])] += int(m.get("bytes", 0))
    values = list(per.values()) or [0]
    return {"mean": float(np.mean(values)), "max": float(max(values))}


def aggregate_hash(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


SITE_LEDGER_COLUMNS = ("site", "flower_run_id", "recorded_at", "rounds_scored", "gold_items", "gold_accuracy",
                       "gold_nll", "examples")


def update_site_ledger(paths: Paths, history: list[dict[str, Any]], run_id: str, gold_items: int) -> pd.DataFrame:
    """Append each site's record of this run (its own updates scored on the gold checks, when secure
    aggregation was off and they were visible) to ``data/reputation/sites.parquet``, kept across runs."""
    ledger = (pd.read_parquet(paths.site_ledger) if paths.site_ledger.exists()
              else pd.DataFrame(columns=list(SITE_LEDGER_COLUMNS)))
    scored = pd.DataFrame([s for r in history for s in r["sites"] if "gold_accuracy" in s])
    if not scored.empty:
        rows = scored.groupby("site").agg(
            rounds_scored=("gold_accuracy", "size"), gold_accuracy=("gold_accuracy", "mean"),
            gold_nll=("gold_nll", "mean"), examples=("num_examples", "max")).reset_index()
        rows = rows.assign(flower_run_id=run_id, recorded_at=pd.Timestamp.now(tz="UTC").isoformat(),
                           gold_items=gold_items)[list(SITE_LEDGER_COLUMNS)]
        ledger = rows if ledger.empty else pd.concat([ledger[~ledger["flower_run_id"].eq(run_id)], rows],
                                                     ignore_index=True)
    io.write_parquet(paths.site_ledger, ledger)
    return ledger


def disabled(params: Params, paths: Paths) -> dict[str, Any]:
    from crowdforge.modeling.members import MEMBER_FILE

    with io.atomic_dir(paths.federated) as tmp:
        io.write_json(tmp / MEMBER_FILE, {"enabled": False})
    if not paths.site_ledger.exists():  # kept across runs (a DVC `persist` out): created empty once
        update_site_ledger(paths, [], "", 0)
    return write_report(paths, "federated", {"enabled": False},
                        "## federated\n\nDisabled (`federated.enabled: false`): no federated member.\n")


def member_spec(params: Params, backbone: str) -> Any:
    """The federated member's :class:`~crowdforge.federated.job.MemberSpec` (``auto`` settings resolved)."""
    from crowdforge.federated.job import MemberSpec

    fp = params.federated
    return MemberSpec(backbone=backbone, n_classes=len(params.data.classes), unfreeze_layers=fp.unfreeze_layers,
                      adapter=fp.member_adapter, lora_rank=fp.lora_rank, lora_targets=fp.member_lora_targets,
                      max_length=params.finetune.max_length, seed=fp.seed)


def make_job(params: Params, paths: Paths, n_sites: int, job_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The job every party reads (the member's spec, the sites' settings) and where the member starts."""
    from crowdforge.federated.job import Job, LocalConfig
    from crowdforge.modeling.backbone import backbone_fingerprint
    from crowdforge.modeling.members import encoder_source

    fp = params.federated
    backbone, source = encoder_source(paths, params)
    job = Job(spec=member_spec(params, str(Path(backbone).resolve()) if Path(backbone).exists() else backbone),
              local=LocalConfig(epochs=fp.local_epochs, batch_size=fp.batch_size, lr_head=fp.lr_head,
                                lr_backbone=fp.lr_backbone, lora_plus_ratio=fp.lora_plus_ratio,
                                proximal_mu=fp.proximal_mu if fp.strategy == "fedprox" else 0.0,
                                dp_max_grad_norm=fp.dp.max_grad_norm, seed=fp.seed),
              classes=tuple(params.data.classes), rounds=fp.rounds, n_sites=n_sites, strategy=fp.strategy,
              secagg=fp.secagg, gold_gate=fp.gold_gate,
              server_steps=fp.server_steps, dp_epsilon=fp.dp.epsilon if fp.dp.enabled else 0.0,
              dp_delta=fp.dp.delta, backbone_fingerprint=backbone_fingerprint(backbone),
              job_dir=str(job_dir.resolve()))
    return job, source


def launch(params: Params, work: Path, sites: dict[str, Path], app: Path) -> dict[str, Any]:
    """Run the app: on local SuperLink + SuperNode processes, or on the partners' SuperLink."""
    from crowdforge.federated.deployment import FederatedRunError, local_federation, run_app, tail, write_connection

    fp, cli_home, log = params.federated, work / "cli", work / "logs" / "flwr-run.log"
    try:
        if fp.superlink == "local":
            with local_federation(work, sites) as (address, procs):
                write_connection(cli_home, address)
                return run_app(app, cli_home, fp.timeout_seconds, log, procs)
        write_connection(cli_home, fp.superlink, fp.root_certificates)
        return run_app(app, cli_home, fp.timeout_seconds, log)
    except FederatedRunError as exc:
        raise FederatedRunError(f"{exc}\nSuperLink log ({work / 'logs' / 'superlink.log'}):\n"
                                f"{tail(work / 'logs' / 'superlink.log')}") from exc


def read_outcome(job_dir: Path, work: Path, status: dict[str, Any]) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """The run's history, the replies' audit and the final weights; a failed run is an error."""
    from crowdforge.federated.deployment import FederatedRunError, tail
    from crowdforge.federated.server_app import HISTORY_FILE, MESSAGES_FILE, RESULT_FILE

    if status.get("status") != "finished:completed" or not (job_dir / RESULT_FILE).exists():
        raise FederatedRunError(f"federated run {status.get('run_id')} ended {status.get('status')} "
                                f"({status.get('status-details', '')}); logs in {work / 'logs'}:\n"
                                f"{tail(work / 'logs' / 'superlink.log')}")
    history = io.read_json(job_dir / HISTORY_FILE)
    if not any(r["sites"] for r in history["rounds"]):
        reasons = sorted({why for r in history["rounds"] for why in r.get("failure_reasons", [])})
        raise FederatedRunError(f"no site returned an update in any round: {'; '.join(reasons) or 'no reason given'}"
                                f"; the sites' logs are in {work / 'logs'}")
    messages = [json.loads(line) for line in (job_dir / MESSAGES_FILE).read_text().splitlines() if line.strip()]
    with np.load(job_dir / RESULT_FILE) as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return history, messages, arrays


def protections_in_force(params: Params, epsilon: float, gate_kind: str) -> dict[str, str]:
    fp = params.federated
    return {"secure_aggregation": "SecAgg+" if fp.secagg else "off (each site's update visible)",
            "differential_privacy": (f"DP-SGD at every site, (epsilon={epsilon:.2f}, delta={fp.dp.delta:g})"
                                     if fp.dp.enabled else "off"),
            "influence_clipping": "each site's update clipped to the median norm of the previous round",
            "aggregation": fp.strategy,
            "gold_gate": (f"on: each round takes the step of {list(fp.server_steps)} with the lowest NLL on "
                          f"{gate_kind}, or none when none lowers it") if fp.gold_gate else "off"}


def save_member(paths: Paths, job: Any, arrays: list[Any], info: dict[str, Any]) -> None:
    """The aggregate in the members' format (LoRA merged), so the ensemble loads it like any member."""
    from safetensors.torch import save_file

    from crowdforge.federated.local_training import build_member, merged_encoder, set_arrays
    from crowdforge.modeling.members import ENCODER_DIR, HEAD_FILE, MEMBER_FILE

    model, tokenizer = build_member(job.spec)
    set_arrays(model, arrays)
    info = {**info, "hidden_size": int(model.head.in_features), "head": HEAD_FILE,
            "encoder": {"kind": "trained", "path": ENCODER_DIR}}
    with io.atomic_dir(paths.federated) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, str(tmp / HEAD_FILE))
        merged_encoder(model).save_pretrained(tmp / ENCODER_DIR)
        tokenizer.save_pretrained(tmp / ENCODER_DIR)
        io.write_json(tmp / MEMBER_FILE, info)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    fp = params.federated
    if not fp.enabled:
        return disabled(params, paths)
    from crowdforge.federated.deployment import write_app
    from crowdforge.federated.server_app import GOLD_FILE
    from crowdforge.modeling.members import FEDERATED_MEMBER

    start = time.perf_counter()
    sites = site_folders(params, paths)
    if fp.superlink == "local":
        missing = [str(f) for f in sites.values() if not f.is_dir()]
        if missing:
            raise FileNotFoundError(f"federated.sites: no such site folder(s): {', '.join(missing)}")
    work = paths.federated_work
    job_dir = work / "job"
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    gate, gate_kind = gate_items(paths)
    io.write_parquet(job_dir / GOLD_FILE, gate)
    job, source = make_job(params, paths, len(sites), job_dir)
    status = launch(params, work, sites, write_app(job_dir / "app", job.to_run_config()))
    history, messages, arrays = read_outcome(job_dir, work, status)
    rounds, run_id = history["rounds"], str(status.get("run_id", ""))
    epsilon = max((float(s.get("epsilon", 0.0)) for r in rounds for s in r["sites"]), default=0.0)
    if fp.dp.enabled and epsilon > fp.dp.max_epsilon:
        raise ValueError(f"federated member refused: its accounted epsilon {epsilon:.2f} exceeds "
                         f"federated.dp.max_epsilon {fp.dp.max_epsilon} (delta {fp.dp.delta})")
    digest = aggregate_hash(arrays)
    protections = protections_in_force(params, epsilon, gate_kind)
    provenance = {"sites": list(sites), "rounds": fp.rounds, "rounds_applied": sum(r["applied"] for r in rounds),
                  "secagg": fp.secagg, "epsilon": epsilon if fp.dp.enabled else None, "delta": fp.dp.delta,
                  "aggregate_sha256": digest, "protections": protections}
    save_member(paths, job, arrays, {
        "name": FEDERATED_MEMBER, "enabled": True, "strategy": f"federated-{fp.member_adapter}", "seed": fp.seed,
        "classes": list(params.data.classes), "max_length": params.finetune.max_length, "initial_encoder": source,
        "valid_accuracy": history["final"]["accuracy"], "valid_nll": history["final"]["nll"],
        "federated": provenance})
    ledger = update_site_ledger(paths, rounds, run_id, len(gate))
    sent = bytes_per_site_round(messages)
    metrics = {
        "enabled": True, **{k: v for k, v in provenance.items() if k != "protections"}, "n_sites": len(sites),
        "strategy": fp.strategy, "adapter": fp.member_adapter, "dp": fp.dp.enabled,
        "gate_items": len(gate), "gate_kind": gate_kind, "gate_accuracy": history["final"]["accuracy"],
        "bytes_per_site_round": sent["mean"], "bytes_per_site_round_max": sent["max"],
        "seconds_per_round": float(np.mean([r["seconds"] for r in rounds])) if rounds else None,
        "site_failures": sum(r["failures"] for r in rounds),
        "steps_taken": [r.get("step", 0.0) for r in rounds],  # the gate's step per round (0: not applied)
        "site_reputation": ({} if fp.secagg else  # hidden by design under secure aggregation
                            {r.site: round(float(r.gold_accuracy), 4)
                             for r in ledger[ledger["flower_run_id"] == run_id].itertuples()}),
        "protections": protections, "flower_run_id": run_id, "history": rounds,
        "seconds": round(time.perf_counter() - start, 2),
    }
    eps = f"epsilon {epsilon:.2f} (delta {fp.dp.delta:g})" if fp.dp.enabled else "no DP"
    md = (f"## federated\n\n{len(sites)} sites ({', '.join(sites)}), {fp.rounds} rounds of {fp.strategy} "
          f"({metrics['rounds_applied']} applied), {fp.member_adapter}; secure aggregation "
          f"{'on' if fp.secagg else 'off'}; {eps}. Accuracy on {gate_kind}: {history['final']['accuracy']:.3f}. "
          f"{sent['mean'] / 1e6:.2f} MB per site per round."
          + (f" {metrics['site_failures']} site update(s) failed (history in reports/federated.json)."
             if metrics["site_failures"] else "") + "\n\n"
          + "".join(f"- {k.replace('_', ' ')}: {v}\n" for k, v in protections.items()))
    return write_report(paths, "federated", metrics, md)
