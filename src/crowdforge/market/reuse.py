"""Reuse: a model for the user's task built from the market's closest models.

Without labels (data-free):

- ``average``: the mean of the top models' class probabilities (the learnware market's averaging
  ensemble reuser).
- ``select``: a job selector. Each input goes to the model whose specification gives it the highest
  kernel mean embedding, ``f_j(x) = sum_k beta_jk k(z_jk, x)``: an estimate of the density of model
  ``j``'s training texts at ``x`` (Wu et al. 2021 route by the same RKMEs, through a classifier trained
  on herded samples; evaluating the kernel mean directly needs no training).

With a few labels:

- ``augment`` (the default with labels): feature augmentation, the learnware market's
  ``FeatureAugmentReuser`` (Tan et al. 2024, Beimingwu). A multinomial logistic regression on the
  user's labels over each text's shared-space embedding (:mod:`crowdforge.market.features`) and the
  chosen models' log-probabilities: the models' outputs are features the labels learn how far to trust,
  the embedding lets them correct what the models miss. The L2 strength is chosen by cross-validated
  log-loss on the labels themselves (:func:`fit_augmented`).
- ``prune``: greedy forward selection of the models whose averaged probabilities score best on the
  labelled texts (ensemble pruning, Zhou 2012 "Ensemble Methods", ch. 6), ties broken towards fewer
  models.

Which models: the *suitable* ones (most of the user's texts are typical of their training texts) that
predict the user's classes, the ``top`` closest of them. A model whose training texts do not cover the
user's has no evidence behind its accuracy there: on the market benchmark, averaging in the nearest
unsuitable models cost up to 4.5 points against the best model once the in-domain models were well
trained (BENCHMARKS.md).

Every model's probabilities are restricted to the user's classes (renormalised), so a model trained on
more classes can serve a task that needs fewer. ``average`` and ``prune`` results are ordinary
crowdforge ensemble folders (:func:`combine`): predict, serve and register them like any other.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdforge.market.catalog import Entry
from crowdforge.market.spec import density

METHODS = ("average", "select", "prune", "augment")
DEFAULT_TOP = 3  # models reused, closest first (`market reuse --top`)
#: Candidate inverse L2 strengths for :func:`fit_augmented` (1e-3 .. 1e3, half a decade apart); the
#: labels choose among them by cross-validated log-loss.
AUGMENT_CS = tuple(float(c) for c in np.logspace(-3, 3, 13))
AUGMENT_FILE = "augment.json"


def ensemble_dir(entry: Entry, cache: Path) -> Path:
    """The entry's ensemble folder on local disk (downloaded once per registered version)."""
    if entry.source == "registry":  # the run id: a deleted and re-registered name gets new files
        out = cache / "ensembles" / f"{entry.model}-{entry.version}-{entry.run_id}"
    else:
        import hashlib

        digest = hashlib.sha256(Path(entry.source).read_bytes()).hexdigest()[:12]
        out = cache / "zips" / f"{Path(entry.source).stem}-{digest}"
    if not (out / "ensemble.json").exists():
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        found = _fetch_ensemble(entry, tmp)
        shutil.rmtree(out, ignore_errors=True)
        found.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fetch_ensemble(entry: Entry, tmp: Path) -> Path:
    if entry.source == "registry":
        from mlflow import MlflowClient

        from crowdforge.registry.versions import download_ensemble

        return download_ensemble(MlflowClient(), entry.model, entry.version, tmp)
    import zipfile

    from crowdforge.market.learnware_package import ENSEMBLE_DIR

    with zipfile.ZipFile(entry.source) as zf:
        zf.extractall(tmp, [n for n in zf.namelist() if n.startswith(f"{ENSEMBLE_DIR}/")])
    return tmp / ENSEMBLE_DIR


def restricted(ens: Any, classes: Sequence[str], source: str = "") -> Any:
    """``ens`` answering over ``classes`` only: every member's head keeps those rows, so each member's
    calibrated probabilities are renormalised over the user's classes (in place; returns ``ens``)."""
    idx = [ens.classes.index(c) for c in classes]
    for m in ens.members:
        if m.text_model is not None:
            if list(classes) != list(ens.classes):
                raise ValueError(f"{source or 'a model'} holds a pair text model that answers over "
                                 f"{ens.classes}; it cannot be cut to {list(classes)}")
            continue
        m.weight, m.bias = m.weight[idx], m.bias[idx]
    ens.classes = list(classes)
    ens.decision_bias = np.asarray(ens.decision_bias)[idx]
    return ens


def average(probs: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(probs), axis=0)


def select(entries: Sequence[Entry], probs: Sequence[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The job selector's probabilities and, per input, the index of the model it was sent to."""
    route = np.stack([density(e.rkme, x) for e in entries], axis=1).argmax(axis=1)
    stacked = np.stack(probs)  # (models, n, C)
    return stacked[route, np.arange(len(x))], route


def prune(probs: Sequence[np.ndarray], y: np.ndarray) -> list[int]:
    """Greedy forward selection (by accuracy of the average on the labelled texts ``y``)."""
    chosen: list[int] = []
    best = -1.0
    while True:
        scores = [(float((average([probs[j] for j in [*chosen, i]]).argmax(1) == y).mean()), i)
                  for i in range(len(probs)) if i not in chosen]
        if not scores:
            return chosen
        score, i = max(scores, key=lambda s: (s[0], -s[1]))
        if score <= best:
            return chosen
        chosen.append(i)
        best = score


def augmented_features(x: np.ndarray, probs: Sequence[np.ndarray]) -> np.ndarray:
    """Each text's embedding followed by every model's log-probabilities (floored at 1e-6)."""
    return np.hstack([np.asarray(x, dtype=np.float64), *[np.log(np.clip(p, 1e-6, 1.0)) for p in probs]])


@dataclass(frozen=True)
class Augmented:
    """A fitted feature-augmentation reuser: ``softmax(features @ coef.T + intercept)`` over ``classes``."""

    classes: list[str]
    coef: np.ndarray  # (C, D + models * C); rows of classes absent from the labels are -inf biased
    intercept: np.ndarray
    c: float  # the inverse L2 strength the cross-validation chose
    folds: int

    def predict_proba(self, x: np.ndarray, probs: Sequence[np.ndarray]) -> np.ndarray:
        z = augmented_features(x, probs) @ self.coef.T + self.intercept
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def to_json(self) -> dict[str, Any]:
        return {"classes": self.classes, "coef": self.coef.tolist(),
                "intercept": [x if np.isfinite(x) else None for x in self.intercept.tolist()],
                "c": self.c, "folds": self.folds}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Augmented:
        icpt = np.array([-np.inf if x is None else x for x in d["intercept"]], dtype=np.float64)
        return Augmented(list(d["classes"]), np.asarray(d["coef"], dtype=np.float64), icpt, float(d["c"]),
                         int(d["folds"]))


def fit_augmented(x: np.ndarray, probs: Sequence[np.ndarray], y: np.ndarray, classes: Sequence[str],
                  seed: int = 0) -> Augmented:
    """Fit :class:`Augmented` on labelled texts (``x`` their embeddings, ``probs`` each model's
    probabilities on them, ``y`` class indices). The L2 strength is the one with the best
    stratified-cross-validated log-loss over :data:`AUGMENT_CS` (as many folds as the rarest labelled
    class allows, at most 5); with a class labelled once, no folds can hold it out and ``C = 1``."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"the labels name only one class ({classes[int(present[0])]}): augment needs two or more")
    feats = augmented_features(x, probs)
    folds = int(min(5, np.bincount(y)[present].min()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        clf = LogisticRegressionCV(Cs=list(AUGMENT_CS), cv=cv, scoring="neg_log_loss", max_iter=5000).fit(feats, y)
        c = float(clf.C_[0])
    else:
        clf, c, folds = LogisticRegression(C=1.0, max_iter=5000).fit(feats, y), 1.0, 0
    coef = np.zeros((len(classes), feats.shape[1]))
    intercept = np.full(len(classes), -np.inf)
    if len(clf.classes_) == 2:  # sklearn's binary form: one row for the second class
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        intercept[clf.classes_[0]] = 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    return Augmented(list(classes), coef, intercept, c, folds)


def combine(dirs: Sequence[Path], weights: Sequence[float], classes: Sequence[str], out: Path,
            sources: Sequence[str], method: str) -> Path:
    """One crowdforge ensemble folder whose prediction is ``sum_j w_j p_j(y | x)`` over the user's classes.

    Each source model's members keep their temperatures and relative weights; their heads are cut to
    the user's classes. A source's mixture temperature (``Ensemble.temperature``) is not carried over:
    it tempers that source's whole mixture, not its members, so the combined model's is 1. The sources
    must share a tokenizer vocabulary (all crowdforge models built on the same backbone family do);
    ``reuse.json`` and the index's ``reused_from`` name them.
    """
    from crowdforge.modeling.inference import Ensemble, load_ensemble

    loaded = [load_ensemble(d) for d in dirs]
    vocab = loaded[0].tokenizer.get_vocab() if loaded[0].tokenizer is not None else None
    encoders, members = {}, []
    for j, (ens, w) in enumerate(zip(loaded, weights, strict=True)):
        if ens.tokenizer is not None and vocab is not None and ens.tokenizer.get_vocab() != vocab:
            raise ValueError(f"{sources[j]} uses another tokenizer vocabulary; its models cannot share an ensemble "
                             "(use --method select, or reuse them one at a time)")
        restricted(ens, classes, sources[j])
        total = sum(m.ensemble_weight for m in ens.members)
        for key, enc in ens.encoders.items():
            encoders[f"m{j}-{key}"] = enc
        for m in ens.members:
            m.name, m.encoder = f"m{j}-{m.name}", (f"m{j}-{m.encoder}" if m.encoder is not None else None)
            m.ensemble_weight = float(w) * m.ensemble_weight / total
            members.append(m)
    ens = Ensemble(list(classes), loaded[0].tokenizer, encoders, members, max(e.max_length for e in loaded))
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ens.save(tmp, extra={"reused_from": list(sources), "reuse_method": method})
    (tmp / "reuse.json").write_text(json.dumps({"method": method, "sources": list(sources),
                                                "weights": [float(w) for w in weights]}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def model_probs(dirs: Sequence[Path], texts: Sequence[str], classes: Sequence[str]) -> list[np.ndarray]:
    """Each model's probabilities on ``texts``, restricted to ``classes``."""
    from crowdforge.modeling.inference import load_ensemble

    return [restricted(load_ensemble(d), classes, str(d)).predict_proba(list(texts)) for d in dirs]


def choose(matches: Sequence[Any], classes: Sequence[str] | None, top: int) -> tuple[list[str], list[Any]]:
    """The user's classes (the closest suitable model's when not named) and the ``top`` closest suitable
    matches that predict all of them; ValueError when there are none. ``matches`` are the search's,
    closest first."""
    suitable = [m for m in matches if m.suitable]
    if not suitable:
        raise ValueError("no suitable model in the market for these texts (crowdforge market search shows why)")
    classes = list(classes or suitable[0].entry.semantic.classes)
    chosen = [m for m in suitable if set(classes) <= set(m.entry.semantic.classes)][:top]
    if not chosen:
        raise ValueError(f"no suitable model in the market predicts all of {classes}")
    return classes, chosen


def reuse(params: Any, paths: Any, user: Any, method: str | None, top: int | None, out: Path,
          labelled: tuple[list[str], list[str]] | None = None, zips: Path | None = None,
          register_as: str | None = None) -> dict[str, Any]:
    """Search, then build the user's model from the ``top`` (:data:`DEFAULT_TOP`) closest suitable
    models that predict the user's classes (:func:`choose`) with ``method`` (default: ``augment`` given
    labels, else ``average``). Writes ``out/``: the ensemble folder for average/prune,
    ``augment.json`` for augment, ``predictions.csv`` of the user's texts and ``reuse.json``; optionally
    registers an ensemble. Raises ValueError when nothing suitable exists."""
    import pandas as pd

    from crowdforge import io
    from crowdforge.market.search import market_entries, search

    method = method or ("augment" if labelled else "average")
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if method in ("prune", "augment") and not labelled:
        raise ValueError(f"--method {method} needs --labels (a CSV/Parquet with `text` and `label`)")
    if method in ("select", "augment") and register_as:
        raise ValueError(f"a {method} result is not an ensemble folder: register average or prune results")
    entries, _ = market_entries(params, paths, zips)
    classes, chosen = choose(search(user, entries)[0], user.classes, top or DEFAULT_TOP)
    cache = paths.cache / "market"
    dirs = [ensemble_dir(m.entry, cache) for m in chosen]
    sources = [m.entry.uri for m in chosen]
    probs = model_probs(dirs, user.texts, classes)
    record: dict[str, Any] = {"method": method, "classes": classes, "sources": sources,
                              "mmd2": [m.mmd2 for m in chosen], "verdicts": [m.verdict for m in chosen]}
    if labelled:
        texts, labels = labelled
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {classes}")
        y = np.array([classes.index(lab) for lab in labels])
    if method in ("prune", "augment"):
        labelled_probs = model_probs(dirs, texts, classes)
    if method == "prune":
        keep = prune(labelled_probs, y)
        record["kept"] = [sources[i] for i in keep]
        dirs, sources, probs = [dirs[i] for i in keep], [sources[i] for i in keep], [probs[i] for i in keep]
    if method == "select":
        p, route = select([m.entry for m in chosen], probs, user.x)
        record["routed"] = {s: int((route == i).sum()) for i, s in enumerate(sources)}
    elif method == "augment":
        from crowdforge.market.features import embed

        model = fit_augmented(embed(texts), labelled_probs, y, classes, params.market.seed)
        p = model.predict_proba(user.x, probs)
        record["augment"] = {"c": model.c, "folds": model.folds, "labels": len(labels)}
        io.write_json(out / AUGMENT_FILE, {"sources": sources, **model.to_json()})
    else:
        p = average(probs)
        combine(dirs, [1.0] * len(dirs), classes, out / "ensemble", sources, method)
    pred = pd.DataFrame({"text": user.texts, "label": [classes[i] for i in p.argmax(1)],
                         "confidence": p.max(1), **{f"prob_{c}": p[:, j] for j, c in enumerate(classes)}})
    io.write_text(out / "predictions.csv", pred.to_csv(index=False))
    if register_as:
        record["registered"] = register_reused(params, paths, out / "ensemble", classes, register_as, record,
                                               user.texts)
    io.write_json(out / "reuse.json", record)
    return record


def register_reused(params: Any, paths: Any, folder: Path, classes: list[str], name: str,
                    record: dict[str, Any], texts: Sequence[str]) -> str:
    """Register a reused ensemble with lineage naming its sources, and (with ``market.spec``) a
    specification of the user's ``texts``, the task it was built for, so the market finds it too;
    returns its ``models:/`` URI."""
    import mlflow
    from mlflow import MlflowClient

    from crowdforge.agents.register import log_pyfunc
    from crowdforge.market.catalog import specify
    from crowdforge.registry.tracking import connect

    experiment_id = connect(params, paths)
    tags = {"reused_from": ",".join(record["sources"]), "reuse_method": record["method"]}
    semantic = None
    with mlflow.start_run(experiment_id=experiment_id, run_name="market_reuse"):
        mlflow.set_tags(tags)
        mlflow.log_dict(record, "lineage/reuse.json")
        if params.market.spec:
            staging = paths.cache / "market" / "spec-staging-reuse"
            shutil.rmtree(staging, ignore_errors=True)
            semantic = specify(texts, classes, name, params.market, staging, folder)
            mlflow.log_artifacts(str(staging), artifact_path="spec")
            shutil.rmtree(staging, ignore_errors=True)
        info = log_pyfunc(folder, classes, name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in {**tags, **(semantic.to_tags() if semantic is not None else {})}.items():
        client.set_model_version_tag(name, version, key, value)
    return f"models:/{name}/{version}"


def registry_backbone(uri: str, params: Any, paths: Any) -> str:
    """A registered version's encoder as a backbone folder (``pretrain.backbone: models:/name/version``):
    the encoder of its heaviest encoder member, with the tokenizer, saved once under
    ``.crowdforge/market/backbones/``. Fine-tuning it on the new task is reuse with labels."""
    import re

    from mlflow import MlflowClient

    from crowdforge.modeling.inference import load_ensemble
    from crowdforge.registry.tracking import connect
    from crowdforge.registry.versions import resolve_version

    name, _, ref = uri[len("models:/"):].partition("/")
    if "@" in name and not ref:
        name, _, ref = name.partition("@")
    if not name or not ref:
        raise ValueError(f"pretrain.backbone {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    connect(params, paths)
    mv = resolve_version(MlflowClient(), name, ref)
    out = paths.cache / "market" / "backbones" / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}-{mv.version}-{mv.run_id}")
    if not (out / "config.json").exists():
        entry = Entry("registry", name, str(mv.version), None, None, None, mv.run_id)
        ens = load_ensemble(ensemble_dir(entry, paths.cache / "market"))
        encoders = [m for m in ens.members if m.encoder is not None]
        if not encoders or ens.tokenizer is None:
            raise ValueError(f"{uri}: holds no encoder member to start from")
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ens.encoders[max(encoders, key=lambda m: m.ensemble_weight).encoder].save_pretrained(tmp)
        ens.tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return str(out)
