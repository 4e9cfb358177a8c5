"""ensemble agent: calibrate and weight the members on valid, evaluate once on the gold test split.

Calibration: each member's logits are divided by a temperature ``T_k > 0`` fitted by minimising
the negative log-likelihood of the valid soft labels (temperature scaling, Guo et al. 2017, "On
Calibration of Modern Neural Networks"): one parameter per member, so it fixes over- or
under-confidence without changing the member's ranking of classes.

Where the fitting labels come from: the augment stage puts the gold ``check`` items (expert labels)
in valid. With enough of them (``augment.min_gold_valid``) valid holds only gold items, and
temperatures and weights are fitted on true labels (``calibration_source: gold_check``), which is
what test ECE measures. Otherwise most valid labels are crowd labels (``crowd``) and the fit is
noise-aware (``ensemble.noise_aware``, default on): fitting temperatures to labels that are wrong
for a share ``eps`` of the items teaches the ensemble to be as unsure as the labels are noisy. So the fitted
model is the *noisy-label* likelihood through a symmetric noise channel,
``P(label = j | x) = (1 - eps) p_j(x) + eps (1 - p_j(x)) / (K - 1)`` (forward loss correction,
Patrini et al. 2017, "Making Deep Neural Networks Robust to Label Noise: a Loss Correction
Approach"), with ``eps = 1 - mean(confidence of the valid label)`` over the crowd rows from the
reputation stage's posteriors, and ``eps = 0`` on the gold rows. The channel is used for fitting
only; predictions are ``p``.

Weighting: ``p = sum_k w_k softmax(z_k / T_k)`` with ``w = softmax(a)`` on the simplex, ``a``
fitted by minimising valid NLL plus a small ridge penalty on ``a`` that pulls toward uniform
weights (robust when valid is small). By default (``weights: family``) one weight per family of
members (same strategy; the replicas in it share its weight equally, as in bagging), so on a pair
task the pair member and the three cross-encoder replicas compete as two models, not one against
three (:func:`calibrate_and_weight`). Then (``calibrate_mixture``) one temperature of the mixture
itself, fitted the same way: a weighted average of calibrated members is under-confident wherever
they disagree (on the weather crowd: mean confidence 0.78 at 84 % accuracy), so the ensemble is
calibrated again after combining (``crowdforge.modeling.inference``). The report compares this with
plain averaging (uniform weights, uncalibrated) and majority vote.

Distillation (``ensemble.distill``, off by default): the calibrated ensemble's probabilities on
the training texts, softened by ``distill_temperature``, become the soft targets of ONE student
(a mean-pooled encoder + head trained with ``distill_strategy``), as in Hinton et al. 2015,
"Distilling the Knowledge in a Neural Network". The student is temperature-scaled on valid like a
member and saved as a one-member ensemble in ``models/ensemble/student/`` (same format, same
``load_ensemble``), so serving it costs one encoder pass instead of one per distinct encoder.
With ``distill_unlabeled`` (default on) the student also learns the teacher's labels on the
unlabelled corpus (self-training; valid and gold texts are left out). It costs one more training
run and matched its teacher on the learning benchmark (BENCHMARKS.md), so it is off by default.

How small a test split can judge calibration: ECE measured on ``n`` items is biased upward, since
binned accuracies scatter even for a perfectly calibrated model. The report gives that floor
(``test_ece_floor``, the mean ECE of a perfectly calibrated model with the same confidences on the
same items, by consistency resampling, Bröcker & Smith 2007) and ``test_ece_p_value``, the share of
such models at or above the measured ECE; on a few hundred test items the floor is several
hundredths.

Decisions on imbalanced classes (``ensemble.decision``): the arg-max of calibrated probabilities
rarely names a rare class, so a per-class offset on ``log p`` is chosen to maximise macro-F1. By
default it maximises the macro-F1 *expected* under the calibrated ensemble on up to
``decision_pool`` unlabelled corpus texts (no labels needed); with too small a corpus, the macro-F1
on the gold checks, kept only when cross-validation there says it helps.

The gold ``test`` split is read only here, after everything is fitted, and only for evaluation;
``test_set_hash`` identifies it so later comparisons (promote) can check they use the same items.

reads  models/members/<name>/, models/pretrained/, data/processed/valid.parquet, data/interim/gold.parquet,
       data/processed/train_augmented.parquet, data/interim/unlabeled.parquet (``distill``, and the
       decision threshold on imbalanced classes)
writes models/ensemble/ (self-contained, see crowdforge.modeling.inference; ``student/`` with
       ``distill``), reports/ensemble.json
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crowdforge import io
from crowdforge.config import Params
from crowdforge.gold import gold_test, test_set_hash, text_key
from crowdforge.metrics import evaluate, headline_metric, label_metrics
from crowdforge.modeling.backbone import project_backbone
from crowdforge.modeling.inference import Ensemble, Member, softmax, temper
from crowdforge.modeling.members import (
    ENCODER_DIR,
    FEDERATED_MEMBER,
    HEAD_FILE,
    MEMBER_FILE,
    encoder_source,
    load_split,
    valid_gold_mask,
)
from crowdforge.modeling.pair_features import PairSimilarityModel
from crowdforge.modeling.strategies import strategy
from crowdforge.paths import Paths
from crowdforge.progress import track
from crowdforge.registry.lineage import md5_path
from crowdforge.reports import write_report
from crowdforge.runtime import set_torch_threads
from crowdforge.truth import calibration

# --- pure metrics and fitting -------------------------------------------------------------------


def soft_nll(probs: np.ndarray, q: np.ndarray) -> float:
    """Mean cross entropy ``-sum_c q_c log p_c`` of probabilities against (soft) targets."""
    return float(-(q * np.log(np.clip(probs, 1e-12, None))).sum(1).mean())


def noisy_channel(probs: np.ndarray, noise: float | np.ndarray) -> np.ndarray:
    """``P(observed label | x)`` when labels are flipped uniformly to another class with rate
    ``noise`` (a scalar, or one rate per row: gold rows are not flipped)."""
    k = probs.shape[-1]
    eps = np.asarray(noise, dtype=np.float64)
    if k < 2 or not (eps > 0).any():
        return probs
    eps = eps[:, None] if eps.ndim == 1 else eps
    return (1.0 - eps) * probs + eps * (1.0 - probs) / (k - 1)


def label_noise(q: np.ndarray, y: np.ndarray) -> float:
    """Expected error rate of hard labels ``y`` under their posteriors ``q``: ``1 - mean q[i, y_i]``."""
    if len(y) == 0:
        return 0.0
    return float(np.clip(1.0 - np.mean(q[np.arange(len(y)), y]), 0.0, 1.0 - 1.0 / q.shape[1] - 1e-6))


def fit_temperature(logits: np.ndarray, q: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0),
                    noise: float | np.ndarray = 0.0) -> float:
    """The ``T > 0`` minimising ``NLL(channel(softmax(z / T)), q)`` (1-D search over log T);
    ``noise`` is the label-noise rate of the channel (0: plain temperature scaling)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)

    def nll(t: float) -> float:
        return soft_nll(noisy_channel(softmax(z / t), noise), q)

    res = minimize_scalar(lambda lt: nll(np.exp(lt)), bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    t = float(np.exp(res.x))
    # never accept a temperature that is worse than leaving the member alone
    return t if nll(t) <= nll(1.0) else 1.0


def fit_weights(member_probs: Sequence[np.ndarray], q: np.ndarray, ridge: float = 1e-2,
                noise: float | np.ndarray = 0.0) -> np.ndarray:
    """Simplex weights minimising the mixture's valid NLL (through the noise channel) +
    ``ridge * |a|^2`` (``w = softmax(a)``)."""
    from scipy.optimize import minimize

    P = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # (K, n, C)
    K = len(P)
    if K == 1:
        return np.ones(1)

    def objective(a: np.ndarray) -> float:
        w = softmax(a)
        return soft_nll(noisy_channel(np.einsum("k,knc->nc", w, P), noise), q) + ridge * float(a @ a)

    res = minimize(objective, np.zeros(K), method="L-BFGS-B")
    w = softmax(res.x)
    return w / w.sum()


def majority_vote(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Vote shares per class (ties are broken by the average probability, as a tiny bonus)."""
    P = np.stack(member_probs)
    votes = np.zeros(P.shape[1:])
    for p in P:
        votes[np.arange(len(p)), p.argmax(1)] += 1
    return (votes + 1e-6 * P.mean(0)) / len(P)


ECE_BINS = calibration.REPORT_ECE_BINS


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over ``n_bins`` equal-width confidence bins (see ``crowdforge.truth.calibration``)."""
    return calibration.expected_calibration_error(probs, y, n_bins)


def ascend_decision_bias(probs: np.ndarray, score: Any, n_classes: int, rounds: int = 3,
                         max_candidates: int = 200) -> np.ndarray:
    """Offsets ``b`` on ``log p`` that maximise ``score(decisions)``, ``decisions = argmax(log p + b)``.

    With imbalanced classes a calibrated model rarely gives the rare class the largest probability,
    so the arg-max of calibrated probabilities answers the common class almost always; moving the
    decision threshold (a per-class offset, the plug-in rule for F-measures, Lipton et al. 2014,
    "Thresholding classifiers to maximize F1") recovers the rare class without touching the
    probabilities. Coordinate ascent over the offsets at which some item's decision flips (class 0
    fixed at 0); an offset is kept only when it raises the score.
    """
    logp = np.log(np.clip(np.asarray(probs, float), 1e-12, None))
    b = np.zeros(n_classes)
    best = score(logp.argmax(1))
    for _ in range(rounds):
        before = best
        for k in range(1, n_classes):
            others = np.delete(logp + b, k, axis=1).max(1)
            flips = np.unique(others - logp[:, k])  # b_k above which item i is decided k
            if len(flips) > max_candidates:
                flips = np.unique(np.quantile(flips, np.linspace(0, 1, max_candidates)))
            for c in np.r_[(flips[:-1] + flips[1:]) / 2, flips[0] - 1e-6, flips[-1] + 1e-6]:
                trial = b.copy()
                trial[k] = c
                s = score((logp + trial).argmax(1))
                if s > best + 1e-12 or (abs(s - best) <= 1e-12 and abs(c) < abs(b[k])):
                    best, b = s, trial
        if best <= before + 1e-12:
            break
    return b


def fit_decision_bias(probs: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Offsets (:func:`ascend_decision_bias`) that maximise macro-F1 against the labels ``y``."""
    return ascend_decision_bias(probs, lambda d: label_metrics(y, d, n_classes)["macro_f1"], n_classes)


def expected_macro_f1(probs: np.ndarray, decided: np.ndarray) -> float:
    """Macro-F1 the decisions would score if the labels were drawn from ``probs``: per class,
    ``2 E[TP] / (#decided + E[#true])`` with ``E[TP] = sum of p_c over the items decided c`` (the
    ratio of expectations, accurate on a pool of hundreds of items)."""
    p = np.asarray(probs, float)
    f1 = [2.0 * p[decided == c, c].sum() / max((decided == c).sum() + p[:, c].sum(), 1e-12)
          for c in range(p.shape[1])]
    return float(np.mean(f1))


def expected_f1_decision_bias(probs: np.ndarray) -> np.ndarray:
    """Offsets that maximise the *expected* macro-F1 under the calibrated probabilities themselves,
    on a pool of unlabelled texts (the decision-theoretic approach of Nan et al. 2012, "Optimizing
    F-measures: a tale of two approaches"; Jansche 2007). It needs no labels, so it is not limited by
    the handful of rare-class items among the gold checks; it is as good as the calibration, which
    the gold checks fit with one temperature per member."""
    return ascend_decision_bias(probs, lambda d: expected_macro_f1(probs, d), probs.shape[1])


def checked_decision_bias(probs: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5,
                          seed: int = 0) -> np.ndarray:
    """:func:`fit_decision_bias` on all items, kept only when it helps out of sample: macro-F1 of the
    out-of-fold decisions (offsets fitted on the other folds) must beat the arg-max's on the same
    items. On a few dozen gold checks an offset fitted in sample is mostly noise."""
    n = len(y)
    if n < 2 * folds:
        return np.zeros(n_classes)
    fold = np.random.default_rng(seed).permutation(n) % folds
    logp = np.log(np.clip(np.asarray(probs, float), 1e-12, None))
    out_of_fold = logp.argmax(1)
    for f in range(folds):
        train, held = fold != f, fold == f
        out_of_fold[held] = (logp[held] + fit_decision_bias(probs[train], y[train], n_classes)).argmax(1)
    gain = (label_metrics(y, out_of_fold, n_classes)["macro_f1"]
            - label_metrics(y, logp.argmax(1), n_classes)["macro_f1"])
    return fit_decision_bias(probs, y, n_classes) if gain > 0 else np.zeros(n_classes)


def decision_pool(unlabeled: Sequence[str], held_out: Sequence[str], size: int, seed: int) -> list[str]:
    """Up to ``size`` distinct unlabelled texts (seeded sample), none of them a ``held_out`` text: the
    texts the decision threshold is chosen on. Training texts are held out too (the members have seen
    their labels, so their probabilities there are over-confident)."""
    pool = student_corpus([], unlabeled, held_out)
    order = np.random.default_rng(seed).permutation(len(pool))[:size]
    return [pool[i] for i in sorted(order)]


def choose_decision(params: Params, paths: Paths, ens: Ensemble, valid_logits: dict[str, np.ndarray],
                    y_valid: np.ndarray, gold_rows: np.ndarray, v_texts: Sequence[str]) -> dict[str, Any]:
    """Set ``ens.decision_bias`` for imbalanced classes (``ensemble.decision``) and say how it was chosen.

    Imbalanced means so on the gold check rows of valid (all valid rows when there are none). The
    default prefers the unlabelled corpus (:func:`expected_f1_decision_bias`) over the gold checks
    (:func:`checked_decision_bias`): with a 10 % class, 75 gold checks hold about 7 of its items,
    and a threshold fitted on them moved the entity-matching benchmark's match F1 by several points
    between runs (BENCHMARKS.md, entity matching)."""
    ep, classes = params.ensemble, list(params.data.classes)
    judged = y_valid[gold_rows] if gold_rows.any() else y_valid
    if ep.decision == "argmax" or not len(judged) or headline_metric(judged, len(classes)) != "macro_f1":
        return {"rule": "argmax", "why": "balanced classes" if ep.decision != "argmax" else "ensemble.decision"}
    pool: list[str] = []
    if ep.decision in ("auto", "unlabelled") and paths.unlabeled.exists():
        held_out = [*v_texts, *pd.read_parquet(paths.gold, columns=["text"])["text"].astype(str),
                    *pd.read_parquet(paths.train, columns=["text"])["text"].astype(str)]
        pool = decision_pool(pd.read_parquet(paths.unlabeled, columns=["text"])["text"].astype(str).tolist(),
                             held_out, ep.decision_pool, params.finetune.seed)
    if ep.decision == "unlabelled" and len(pool) < ep.decision_pool_min:
        raise ValueError(f"ensemble.decision: unlabelled needs at least {ep.decision_pool_min} unlabelled texts "
                         f"(data/raw/unlabeled) that are not training, valid or gold texts; found {len(pool)}")
    if len(pool) >= ep.decision_pool_min:
        ens.decision_bias = expected_f1_decision_bias(ens.predict_proba(pool))
        return {"rule": "expected_f1_unlabelled", "pool": len(pool)}
    if not gold_rows.any():
        return {"rule": "argmax", "why": "no gold checks in valid and too few unlabelled texts"}
    ens.decision_bias = checked_decision_bias(ens.combine(valid_logits)[gold_rows], judged, len(classes))
    return {"rule": "gold_checks", "items": len(judged), "kept": bool(np.any(ens.decision_bias != 0))}


def classification_metrics(probs: np.ndarray, y: np.ndarray, n_classes: int,
                           decide: Any = None) -> dict[str, float]:
    """Scores of the decisions (``decide(probs)``, default arg-max) and the calibration of ``probs``."""
    scores = label_metrics(y, (decide or (lambda p: p.argmax(1)))(probs), n_classes)
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "ece": expected_calibration_error(probs, y), "nll": soft_nll(probs, np.eye(n_classes)[y])}


# --- assembling the members ---------------------------------------------------------------------


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def member_dirs(params: Params, paths: Paths) -> dict[str, Path]:
    """Every member's folder: finetune's, then the federated member (when ``federated.enabled``)."""
    dirs = {mp.name: paths.member(mp.name) for mp in params.finetune.members}
    if params.federated.enabled:
        if FEDERATED_MEMBER in dirs:
            raise ValueError(f"finetune.members: `{FEDERATED_MEMBER}` names the federated member; rename yours")
        dirs[FEDERATED_MEMBER] = paths.federated
    return dirs


def build_ensemble(params: Params, paths: Paths) -> Ensemble:
    """Load every member once; members sharing the pretrained (or base) encoder share one copy."""
    from safetensors.numpy import load_file

    from crowdforge.modeling.classifier import load_encoder

    classes = list(params.data.classes)
    encoders: dict[str, Any] = {}
    tokenizer = None
    members: list[Member] = []
    max_length = params.finetune.max_length
    for name, mdir in member_dirs(params, paths).items():
        info = io.read_json(mdir / MEMBER_FILE)
        if list(info["classes"]) != classes:
            raise ValueError(f"member {name}: classes {info['classes']} != {classes}")
        if info.get("not_applicable"):  # recorded by finetune; run() reports it
            continue
        meta = {"strategy": info["strategy"], "valid_accuracy_finetune": info["valid_accuracy"]}
        ref = info["encoder"]
        if ref["kind"] == "none":  # a text model (pair_features)
            members.append(Member(name=name, encoder=None, meta=meta,
                                  text_model=PairSimilarityModel.load(mdir / info["head"])))
            continue
        max_length = int(info["max_length"])
        if ref["kind"] == "trained":
            key, source = f"member-{_key(name)}", str(mdir / ref.get("path", ENCODER_DIR))
        elif ref["kind"] == "pretrained":
            key, source = "pretrained", str(paths.pretrained)
        else:
            key, source = "base", project_backbone(ref["name"], params, paths)
        if key not in encoders:
            encoders[key], tok = load_encoder(source)
            tokenizer = tokenizer or tok
        head = load_file(str(mdir / info.get("head", HEAD_FILE)))
        members.append(Member(name=name, encoder=key, weight=head["weight"], bias=head["bias"], meta=meta))
    return Ensemble(classes, tokenizer, encoders, members, max_length)


def members_left_out(params: Params, paths: Paths) -> dict[str, str]:
    """Members finetune recorded as not applicable to this data, with the reason."""
    infos = {mp.name: io.read_json(paths.member(mp.name) / MEMBER_FILE) for mp in params.finetune.members}
    return {name: info["not_applicable"] for name, info in infos.items() if info.get("not_applicable")}


def _label_index(labels: pd.Series, classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {list(classes)}")
    return np.array([index[l] for l in labels])


def valid_noise(q: np.ndarray, y: np.ndarray, gold: np.ndarray, noise_aware: bool) -> tuple[str, np.ndarray]:
    """(calibration source, per-row label-noise rate) of the valid rows: ``gold_check`` with no
    noise when every row carries an expert label; else ``crowd`` with the crowd rows' expected error
    (``noise_aware``) and 0 on gold rows."""
    if len(gold) and gold.all():
        return "gold_check", np.zeros(len(y))
    eps = label_noise(q[~gold], y[~gold]) if noise_aware else 0.0
    return "crowd", np.where(gold, 0.0, eps)


def member_families(ens: Ensemble) -> list[str]:
    """Each member's family: its strategy. Members of one strategy on one backbone differ only by
    seed or bootstrap sample: replicas of one model, as in bagging (Breiman 1996)."""
    return [str(m.meta.get("strategy") or m.name) for m in ens.members]


def calibrate_and_weight(
    ens: Ensemble, valid_logits: dict[str, np.ndarray], q_valid: np.ndarray, calibrate: bool,
    noise: float | np.ndarray = 0.0, calibrate_mixture: bool = False, by_family: bool = False,
) -> None:
    """Fit temperatures and weights on valid targets ``q_valid`` (one-hot or soft), through a label
    noise channel of rate ``noise``, and set them on ``ens`` in place.

    ``by_family``: the weights are fitted over families (:func:`member_families`), each family's
    members averaged with equal shares. Replicas are averaged as bagging averages them, and only the
    distinct models compete for weight: a few dozen valid items cannot tell three replicas apart
    (their weights stayed near uniform), so without this three replicas outvote one different model
    three to one. ``calibrate_mixture``: then the weighted mixture's own temperature
    (``crowdforge.modeling.inference``: averaging calibrated members leaves the mixture
    under-confident where they disagree)."""
    for m in ens.members:
        m.temperature = fit_temperature(valid_logits[m.name], q_valid, noise=noise) if calibrate else 1.0
    probs = [softmax(valid_logits[m.name] / m.temperature) for m in ens.members]
    families = member_families(ens) if by_family else [m.name for m in ens.members]
    names = list(dict.fromkeys(families))
    size = {f: families.count(f) for f in names}
    family_probs = [np.mean([p for p, g in zip(probs, families) if g == f], axis=0) for f in names]
    weight = dict(zip(names, fit_weights(family_probs, q_valid, noise=noise)))
    for m, f in zip(ens.members, families):
        m.ensemble_weight = float(weight[f] / size[f])
    ens.temperature = 1.0
    if calibrate and calibrate_mixture and len(ens.members) > 1:
        ens.temperature = fit_temperature(np.log(np.clip(ens.mixture(valid_logits), 1e-300, None)), q_valid,
                                          noise=noise)


def distill_student(ens: Ensemble, params: Params, train_texts: Sequence[str], valid_texts: Sequence[str],
                    y_valid: np.ndarray, encoder_source: str, noise: float | np.ndarray = 0.0
                    ) -> tuple[Ensemble, dict[str, Any]]:
    """Train one student on the ensemble's softened probabilities (Hinton et al. 2015).

    Targets ``softmax(log p_ens / tau)`` on ``train_texts``; the student's logits are divided by the
    same ``tau`` in the loss; early stopping on the valid labels; then temperature scaling on valid.
    Returns the student as a one-member :class:`Ensemble` and its training summary.
    """
    import torch

    from crowdforge.modeling.classifier import (
        FitConfig,
        MeanPoolClassifier,
        fit_classifier,
        fit_head,
        load_encoder,
        new_head,
    )
    from crowdforge.modeling.inference import encode_texts

    ep, ft = params.ensemble, params.finetune
    tau = float(ep.distill_temperature)
    classes = ens.classes
    teacher = ens.predict_proba(list(train_texts))
    q = temper(teacher, tau)  # the ranking kept, flattened: how the non-top classes compare ("dark knowledge")
    q_valid = np.eye(len(classes))[y_valid]
    cfg = FitConfig(batch_size=ft.batch_size, max_epochs=ep.distill_epochs, patience=ft.patience,
                    lr_head=ft.lr_head, lr_backbone=ft.lr_backbone, seed=ft.seed * 1000 + 999, temperature=tau)
    torch.manual_seed(cfg.seed)
    encoder, tokenizer = load_encoder(encoder_source)
    head = new_head(int(encoder.config.hidden_size), len(classes), cfg.seed)
    w = np.ones(len(train_texts))
    if strategy(ep.distill_strategy).embeddings_only:
        x = encode_texts(encoder, tokenizer, list(train_texts), ft.max_length)
        xv = encode_texts(encoder, tokenizer, list(valid_texts), ft.max_length)
        result = fit_head(head, x, q, w, xv, y_valid, q_valid, cfg)
    else:
        model = MeanPoolClassifier(encoder, head)
        model.set_strategy(ep.distill_strategy, unfreeze_layers=2)
        result = fit_classifier(model, tokenizer, train_texts, q, w, valid_texts, y_valid, q_valid, ft.max_length,
                                cfg, cache_frozen=ft.cache_frozen)
    student = Ensemble(classes, tokenizer, {"student": encoder},
                       [Member("student", "student", head.weight.detach().numpy().copy(),
                               head.bias.detach().numpy().copy(),
                               meta={"strategy": ep.distill_strategy,
                                     "distilled_from": [m.name for m in ens.members]})],
                       ens.max_length)
    calibrate_and_weight(student, student.member_logits(list(valid_texts)), q_valid, params.ensemble.calibrate, noise)
    info = {"strategy": ep.distill_strategy, "temperature": tau, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "n_train": len(train_texts),
            "train_seconds": round(result.train_seconds, 3)}
    return student, info


def student_corpus(train_texts: Sequence[str], unlabeled: Sequence[str], held_out: Sequence[str]) -> list[str]:
    """The student's texts: the training texts, then the unlabelled ones (self-training: the
    teacher labels text no one labelled), deduplicated (whitespace/case-insensitively), minus every
    ``held_out`` text (valid and gold items: the student must not fit what calibrates or tests it)."""
    forbidden = {text_key(t) for t in held_out}
    seen: set[str] = set()
    out: list[str] = []
    for t in [*train_texts, *unlabeled]:
        key = text_key(t)
        if key and key not in seen and key not in forbidden:
            seen.add(key)
            out.append(str(t))
    return out


def test_predictions(test: pd.DataFrame, probs: np.ndarray, classes: Sequence[str],
                     decided: np.ndarray | None = None) -> pd.DataFrame:
    """Per-item ensemble predictions on the gold test split, so reports need not predict again."""
    decided = probs.argmax(1) if decided is None else decided
    out = pd.DataFrame({"item_id": test["item_id"].astype(str).to_numpy(),
                        "gold": test["label"].astype(str).to_numpy(),
                        "label": np.asarray(classes)[decided],
                        "confidence": probs[np.arange(len(probs)), decided]})
    for i, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, i]
    return out


def _headline_md(m: dict[str, Any]) -> str:
    """The report's first line: macro-F1 first on an imbalanced split, always next to the majority-class
    baseline, and a warning when the model does not beat it."""
    acc = f"accuracy {m['test_accuracy']:.3f} (majority class: {m['test_majority_accuracy']:.3f})"
    f1 = f"macro F1 {m['test_macro_f1']:.3f} (majority class: {m['test_majority_macro_f1']:.3f})"
    first, second = (f1, acc) if m["test_imbalanced"] else (acc, f1)
    per_class = ", ".join(f"{c} {v:.3f}" for c, v in m["test_per_class_f1"].items())
    line = (f"Gold test split ({m['test_n']} items{', imbalanced' if m['test_imbalanced'] else ''}): "
            f"{first}, {second}; F1 per class: {per_class}.")
    if m["test_beats_majority_by"] <= 0:
        line += (f" **Warning: no better than always answering '{m['test_majority_class']}' on "
                 f"{m['test_headline_metric']}: the model has learned nothing usable.**")
    return line


def run(params: Params, paths: Paths) -> dict[str, Any]:
    start = time.perf_counter()
    threads = set_torch_threads(params.runtime.torch_threads)
    classes = list(params.data.classes)
    ens = build_ensemble(params, paths)

    v_texts, q_valid, _, y_valid = load_split(paths.valid, classes)
    target = params.ensemble.calibration_target
    fit_target = np.eye(len(classes))[y_valid] if target == "hard" else q_valid
    gold_rows = valid_gold_mask(paths.valid)
    source, noise = valid_noise(q_valid, y_valid, gold_rows, params.ensemble.noise_aware and target == "hard")
    with track(2, "ensemble: score valid, fit, score test") as advance:
        valid_logits = ens.member_logits(v_texts)
        calibrate_and_weight(ens, valid_logits, fit_target, params.ensemble.calibrate, noise,
                             params.ensemble.calibrate_mixture, params.ensemble.weights == "family")
        decision = choose_decision(params, paths, ens, valid_logits, y_valid, gold_rows, v_texts)
        advance()
        # --- only now, with everything fitted, touch the frozen test split ---
        test = gold_test(paths.gold)
        y_test = _label_index(test["label"], classes)
        test_logits = ens.member_logits(test["text"].astype(str).tolist())
        advance()

    def schemes(logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = [softmax(logits[m.name]) for m in ens.members]
        return {"weighted": ens.combine(logits), "average": np.mean(raw, axis=0), "majority_vote": majority_vote(raw)}

    valid_s, test_s = schemes(valid_logits), schemes(test_logits)
    decide = {"weighted": ens.decide}  # the shipped ensemble's decisions (its threshold); the others: arg-max
    comparison = {
        name: {**{f"valid_{k}": v for k, v in classification_metrics(
                   valid_s[name], y_valid, len(classes), decide.get(name)).items()},
               **{f"test_{k}": v for k, v in classification_metrics(
                   test_s[name], y_test, len(classes), decide.get(name)).items()}}
        for name in valid_s
    }
    members = {
        m.name: {
            "strategy": m.meta.get("strategy"),
            "family": family,
            "weight": m.ensemble_weight,
            "temperature": m.temperature,
            "valid_accuracy": float((valid_logits[m.name].argmax(1) == y_valid).mean()),
            "test_accuracy": float((test_logits[m.name].argmax(1) == y_test).mean()),
            "test_macro_f1": label_metrics(y_test, test_logits[m.name].argmax(1), len(classes))["macro_f1"],
        }
        for m, family in zip(ens.members, member_families(ens))
    }
    student, student_info = None, None
    if params.ensemble.distill:
        train_texts = pd.read_parquet(paths.train, columns=["text"])["text"].astype(str).tolist()
        if params.ensemble.distill_unlabeled and paths.unlabeled.exists():
            gold_texts = pd.read_parquet(paths.gold, columns=["text"])["text"].astype(str).tolist()
            unlabeled = pd.read_parquet(paths.unlabeled, columns=["text"])["text"].astype(str).tolist()
            train_texts = student_corpus(train_texts, unlabeled, [*v_texts, *gold_texts])
        student, student_info = distill_student(ens, params, train_texts, v_texts, y_valid,
                                                encoder_source(paths, params)[0], noise)
        student_probs = student.predict_proba(test["text"].astype(str).tolist())
        student_test = {f"test_{k}": v for k, v in classification_metrics(student_probs, y_test, len(classes)).items()}
        student_info.update(student_test)
        student_info["temperature_fitted"] = student.members[0].temperature
        comparison["student"] = dict(student_test)
        comparison["student"].update({f"valid_{k}": v for k, v in classification_metrics(
            student.predict_proba(v_texts), y_valid, len(classes)).items()})

    best = comparison["weighted"]
    floor = calibration.ece_sampling_floor(test_s["weighted"], best["test_ece"], ECE_BINS)
    headline = evaluate(y_test, ens.decide(test_s["weighted"]), len(classes))
    metrics = {
        "classes": classes,
        "test_accuracy": best["test_accuracy"],
        "test_macro_f1": best["test_macro_f1"],
        "test_per_class_f1": dict(zip(classes, headline["per_class_f1"], strict=True)),
        "test_majority_class": classes[headline["majority_class_index"]],
        "test_majority_accuracy": headline["majority_accuracy"],
        "test_majority_macro_f1": headline["majority_macro_f1"],
        "test_imbalanced": headline["imbalanced"],
        "test_headline_metric": headline["headline_metric"],
        "test_beats_majority_by": headline["beats_majority_by"],
        "test_ece": best["test_ece"],
        "ece_bins": ECE_BINS,
        "decision_bias": dict(zip(classes, (float(b) for b in ens.decision_bias), strict=True)),
        "decision": decision,
        "test_ece_floor": floor["mean"],
        "test_ece_p_value": floor["p_value"],
        "test_nll": best["test_nll"],
        "test_n": len(test),
        "test_set_hash": test_set_hash(test),
        "valid_accuracy": best["valid_accuracy"],
        "valid_ece": best["valid_ece"],
        "valid_n": len(v_texts),
        "calibrated": params.ensemble.calibrate,
        "mixture_temperature": ens.temperature,
        "weights_by": params.ensemble.weights,
        "calibration_target": target,
        "calibration_source": source,
        "n_valid_gold": int(gold_rows.sum()),
        "valid_label_noise": float(noise.mean()) if len(noise) else 0.0,
        "members": members,
        "members_left_out": members_left_out(params, paths),
        "comparison": comparison,
        "student": student_info,
        "torch_threads": threads,
    }
    with io.atomic_dir(paths.ensemble) as tmp:
        ens.save(tmp, extra={"test_set_hash": metrics["test_set_hash"], "test_accuracy": metrics["test_accuracy"]})
        if student is not None:
            student.save(tmp / "student", extra={"test_set_hash": metrics["test_set_hash"],
                                                 "test_accuracy": student_info["test_accuracy"]})
    io.write_parquet(paths.test_predictions,
                     test_predictions(test, test_s["weighted"], classes, ens.decide(test_s["weighted"])))
    metrics["ensemble_md5"] = md5_path(paths.ensemble)  # the gate reuses these test predictions for this ensemble
    metrics["seconds"] = round(time.perf_counter() - start, 3)

    lines = ["# ensemble", "", _headline_md(metrics),
             (f"ECE {metrics['test_ece']:.3f} (a perfectly calibrated model "
              f"would show {metrics['test_ece_floor']:.3f} on this many items; "
              f"p = {metrics['test_ece_p_value']:.2f})."),
             (f"Temperatures and weights fitted on {metrics['valid_n']} valid items: "
              + ("gold check items with their expert labels." if source == "gold_check" else
                 f"crowd labels through a noise channel (mean label noise {metrics['valid_label_noise']:.3f}; "
                 f"{metrics['n_valid_gold']} gold check items, too few to fit on alone).")
              + f" The mixture's temperature: {metrics['mixture_temperature']:.2f}."), "",
             "| scheme | valid acc | test acc | test macro F1 | test ECE |", "|---|---|---|---|---|"]
    for name, c in comparison.items():
        lines.append(f"| {name} | {c['valid_accuracy']:.3f} | {c['test_accuracy']:.3f} | "
                     f"{c['test_macro_f1']:.3f} | {c['test_ece']:.3f} |")
    lines += ["", "| member | weight | temperature | test acc | test macro F1 |", "|---|---|---|---|---|"]
    for name, v in members.items():
        lines.append(f"| {name} | {v['weight']:.3f} | {v['temperature']:.2f} | {v['test_accuracy']:.3f} | "
                     f"{v['test_macro_f1']:.3f} |")
    lines += [f"\nLeft out: {name}: {why}." for name, why in metrics["members_left_out"].items()]
    return write_report(paths, "ensemble", metrics, "\n".join(lines))
