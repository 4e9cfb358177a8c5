from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import random_ensemble

from crowdforge import io
from crowdforge.agents import ensemble, finetune, pretrain
from crowdforge.config import parse_params
from crowdforge.modeling.inference import load_ensemble
from crowdforge.modeling.toy import write_toy_blackboard
from crowdforge.paths import Paths

MEMBERS = [
    {"name": "head-a", "strategy": "head", "seed": 1},
    {"name": "head-boot", "strategy": "head", "seed": 2, "bootstrap": True},
    {"name": "partial-1", "strategy": "partial", "seed": 3, "unfreeze_layers": 1, "max_epochs": 4},
]


def tiny_params(backbone: Path, **ens):
    return parse_params({
        "pretrain": {"backbone": str(backbone), "max_steps": 2, "batch_size": 8, "max_length": 24},
        "finetune": {"max_length": 24, "batch_size": 16, "max_epochs": 20, "patience": 4,
                     "lr_head": 0.05, "lr_backbone": 1e-3, "members": MEMBERS},
        "ensemble": ens,
        "runtime": {"torch_threads": 1},
    })


@pytest.fixture(scope="module")
def built(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory):
    paths = Paths(tmp_path_factory.mktemp("ensemble"))
    write_toy_blackboard(paths, n_train=150, n_valid=60, n_test=50)
    params = tiny_params(tiny_backbone)
    pretrain.run(params, paths)
    finetune.run(params, paths)
    return params, paths, ensemble.run(params, paths)


def test_report_fields(built) -> None:
    _, paths, report = built
    for key in ("test_accuracy", "test_macro_f1", "test_ece", "test_n", "test_set_hash", "valid_accuracy"):
        assert key in report
    assert report["test_n"] == 50 and 0 <= report["test_ece"] <= 1
    assert 0 < report["test_ece_floor"] < 1 and 0 <= report["test_ece_p_value"] <= 1
    assert set(report["comparison"]) == {"weighted", "average", "majority_vote"}
    assert report["test_accuracy"] > 0.5  # chance is 1/3
    assert io.read_json(paths.report("ensemble"))["test_set_hash"] == report["test_set_hash"]


def test_weights_and_temperatures(built) -> None:
    _, paths, report = built
    weights = [m["weight"] for m in report["members"].values()]
    assert sum(weights) == pytest.approx(1.0) and all(w >= 0 for w in weights)
    assert all(m["temperature"] > 0 for m in report["members"].values())
    assert all("test_accuracy" in m for m in report["members"].values())
    index = io.read_json(paths.ensemble / "ensemble.json")
    assert index["weights"] == {k: v["weight"] for k, v in report["members"].items()}


def test_folder_is_self_contained_and_shares_the_pretrained_encoder(built, tmp_path: Path) -> None:
    _, paths, _ = built
    assert sorted(p.name for p in (paths.ensemble / "encoders").iterdir()) == ["member-partial-1", "pretrained"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(paths.ensemble, moved)
    texts = ["great love superb", "awful worst bad"]
    np.testing.assert_array_equal(load_ensemble(moved).predict_proba(texts),
                                  load_ensemble(paths.ensemble).predict_proba(texts))


def test_round_trip_matches_in_memory_ensemble(built) -> None:
    params, paths, report = built
    mem = ensemble.build_ensemble(params, paths)
    for m in mem.members:
        m.temperature = report["members"][m.name]["temperature"]
        m.ensemble_weight = report["members"][m.name]["weight"]
    mem.temperature = report["mixture_temperature"]
    texts = pd.read_parquet(paths.valid)["text"].tolist()[:20] + ["", "love it " * 50]
    loaded = load_ensemble(paths.ensemble)
    assert loaded.classes == list(params.data.classes)
    np.testing.assert_array_equal(loaded.predict_proba(texts), mem.predict_proba(texts))
    df = loaded.predict(texts)
    assert list(df.columns[:2]) == ["label", "confidence"] and len(df) == len(texts)


def test_test_split_only_evaluates(built, tmp_path: Path) -> None:
    """Changing the gold test labels changes the test metrics, never the fitted ensemble."""
    params, paths, report = built
    other = Paths(tmp_path)
    shutil.copytree(paths.root, tmp_path, dirs_exist_ok=True)
    gold = pd.read_parquet(other.gold)
    test = gold["split"] == "test"
    gold.loc[test, "label"] = np.roll(gold.loc[test, "label"].to_numpy(), 1)
    io.write_parquet(other.gold, gold)
    again = ensemble.run(params, other)
    for name, m in report["members"].items():
        assert again["members"][name]["weight"] == pytest.approx(m["weight"])
        assert again["members"][name]["temperature"] == pytest.approx(m["temperature"])
    assert again["valid_accuracy"] == report["valid_accuracy"]
    assert again["test_set_hash"] != report["test_set_hash"]
    # and no test text was used for training or pretraining
    test_texts = set(gold.loc[test, "text"])
    assert test_texts.isdisjoint(pd.read_parquet(paths.train)["text"])
    assert test_texts.isdisjoint(pd.read_parquet(paths.valid)["text"])


def test_pure_helpers() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    z = np.eye(3)[y] * 8 + rng.normal(size=(300, 3))  # overconfident logits
    t = ensemble.fit_temperature(z, np.eye(3)[y] * 0.7 + 0.1)
    assert t > 1  # softened
    good, bad = np.eye(3)[y] * 0.9 + 0.1 / 3, np.full((300, 3), 1 / 3)
    w = ensemble.fit_weights([good, bad], np.eye(3)[y])
    assert w.sum() == pytest.approx(1) and w[0] > w[1]
    assert ensemble.expected_calibration_error(np.eye(3)[y], y) == pytest.approx(0)
    assert ensemble.majority_vote([np.eye(3)[[0]], np.eye(3)[[0]], np.eye(3)[[2]]]).argmax() == 0


def test_distillation_into_one_student(built, tmp_path: Path) -> None:
    params, paths, report = built
    other = Paths(tmp_path)
    shutil.copytree(paths.root, tmp_path, dirs_exist_ok=True)
    p = tiny_params(Path(params.pretrain.backbone), distill=True, distill_strategy="partial", distill_epochs=3)
    again = ensemble.run(p, other)
    student = again["student"]
    assert student["strategy"] == "partial" and student["epochs_run"] >= 1
    n_train = len(pd.read_parquet(other.train))
    # self-training on unlabelled text
    assert n_train < student["n_train"] <= n_train + len(pd.read_parquet(other.unlabeled))
    assert ("student" in again["comparison"]
            and again["comparison"]["student"]["test_accuracy"] == student["test_accuracy"])
    assert student["test_accuracy"] > 0.5  # chance is 1/3
    assert again["test_accuracy"] == pytest.approx(report["test_accuracy"])  # the ensemble itself is unchanged
    loaded = load_ensemble(other.ensemble / "student")
    assert [m.name for m in loaded.members] == ["student"] and len(loaded.encoders) == 1
    assert loaded.predict(["great love superb"]).shape[0] == 1
    assert not (paths.ensemble / "student").exists()  # off by default


def test_noise_aware_temperature_undoes_label_noise() -> None:
    """Labels flipped at rate eps: plain temperature scaling learns the noise as under-confidence;
    fitting through the noise channel recovers the temperature that is right for the truth."""
    rng = np.random.default_rng(0)
    n = 20000
    y = rng.integers(0, 2, n)
    z = np.stack([np.zeros(n), (2 * y - 1) * 2.0 + rng.normal(0, 1.5, n)], 1)  # logits
    truth_t = ensemble.fit_temperature(z, np.eye(2)[y])
    flip = rng.random(n) < 0.2
    noisy = np.where(flip, 1 - y, y)
    plain = ensemble.fit_temperature(z, np.eye(2)[noisy])
    aware = ensemble.fit_temperature(z, np.eye(2)[noisy], noise=0.2)
    assert plain > 1.5 * truth_t  # noise read as under-confidence
    assert aware == pytest.approx(truth_t, rel=0.1)


def test_mixture_of_calibrated_members_is_calibrated_again(tiny_backbone: Path) -> None:
    """Three members that see the truth through independent noise, each temperature-scaled: their
    average is under-confident (it hedges wherever they disagree); the mixture's own temperature
    sharpens it and lowers the ECE on items it was not fitted on."""
    rng = np.random.default_rng(0)
    n = 20000
    y = rng.integers(0, 2, n)
    ens = random_ensemble(tiny_backbone, classes=("negative", "positive"))
    logits = {m.name: np.stack([np.zeros(n), (2 * y - 1) * 1.5 + rng.normal(0, 2.0, n)], 1) for m in ens.members}
    fit, held = np.arange(n) < n // 2, np.arange(n) >= n // 2
    targets = np.eye(2)[y[fit]]
    ece = {}
    for mixture in (False, True):
        ensemble.calibrate_and_weight(ens, {k: v[fit] for k, v in logits.items()}, targets, True,
                                      calibrate_mixture=mixture)
        ece[mixture] = ensemble.expected_calibration_error(ens.combine({k: v[held] for k, v in logits.items()}),
                                                          y[held])
    assert ens.temperature < 0.8
    assert ece[True] < 0.5 * ece[False] and ece[False] > 0.03


def test_replicas_share_their_family_weight(tiny_backbone: Path) -> None:
    """Two replicas of one model and one different model that is as good: fitted per family, each
    family gets half of the vote; fitted per member, the pull toward uniform weights hands the
    replicas more than half."""
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.integers(0, 2, n)
    ens = random_ensemble(tiny_backbone, classes=("negative", "positive"))
    for m, strategy in zip(ens.members, ("partial", "partial", "pair_features")):
        m.meta["strategy"] = strategy
    shared = rng.normal(0, 2.0, n)
    logits = {m.name: np.stack([np.zeros(n), (2 * y - 1) * 1.5 + (shared if i < 2 else rng.normal(0, 2.0, n))], 1)
              for i, m in enumerate(ens.members)}
    targets = np.eye(2)[y]
    assert ensemble.member_families(ens) == ["partial", "partial", "pair_features"]
    ensemble.calibrate_and_weight(ens, logits, targets, True, by_family=True)
    w = [m.ensemble_weight for m in ens.members]
    assert w[0] == pytest.approx(w[1]) and w[0] + w[1] == pytest.approx(w[2], rel=0.15)
    ensemble.calibrate_and_weight(ens, logits, targets, True, by_family=False)
    assert sum(m.ensemble_weight for m in ens.members[:2]) > 0.55


def test_label_noise_is_the_expected_error_of_the_hard_labels() -> None:
    q = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    assert ensemble.label_noise(q, np.array([0, 1, 0])) == pytest.approx(1 - (0.9 + 0.7 + 0.5) / 3)
    assert ensemble.noisy_channel(np.array([[1.0, 0.0]]), 0.2).tolist() == [[0.8, 0.2]]
    assert ensemble.noisy_channel(np.array([[0.7, 0.3]]), 0.0).tolist() == [[0.7, 0.3]]


def test_noise_per_row_and_the_calibration_source() -> None:
    """Gold rows are not flipped by the channel; all-gold valid means a plain fit on true labels."""
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert ensemble.noisy_channel(p, np.array([0.0, 0.2])).tolist() == [[1.0, 0.0], [0.8, 0.2]]
    q = np.array([[0.9, 0.1], [0.6, 0.4], [1.0, 0.0]])
    y = np.array([0, 0, 0])
    source, noise = ensemble.valid_noise(q, y, np.array([False, False, True]), noise_aware=True)
    assert source == "crowd" and noise.tolist() == pytest.approx([0.25, 0.25, 0.0])
    source, noise = ensemble.valid_noise(q, y, np.array([False, False, True]), noise_aware=False)
    assert source == "crowd" and not noise.any()
    source, noise = ensemble.valid_noise(q, y, np.ones(3, dtype=bool), noise_aware=True)
    assert source == "gold_check" and not noise.any()


def test_gold_valid_is_fitted_without_a_noise_channel(built, tmp_path: Path) -> None:
    params, paths, report = built
    assert report["calibration_source"] == "crowd" and report["valid_label_noise"] > 0  # toy valid: crowd labels
    assert report["n_valid_gold"] == 0
    gold_root, plain_root = Paths(tmp_path / "gold"), Paths(tmp_path / "plain")
    for root in (gold_root, plain_root):
        shutil.copytree(paths.root, root.root)
    valid = pd.read_parquet(gold_root.valid)
    io.write_parquet(gold_root.valid, valid.assign(gold=True))
    on_gold = ensemble.run(params, gold_root)
    plain = ensemble.run(tiny_params(Path(params.pretrain.backbone), noise_aware=False), plain_root)
    assert on_gold["calibration_source"] == "gold_check" and on_gold["valid_label_noise"] == 0
    assert on_gold["n_valid_gold"] == len(valid)
    for name, m in on_gold["members"].items():
        assert m["temperature"] == pytest.approx(plain["members"][name]["temperature"])
    assert "gold check items with their expert labels" in gold_root.report("ensemble").with_suffix(".md").read_text()


def test_student_corpus_adds_unlabelled_text_but_never_held_out_text() -> None:
    corpus = ensemble.student_corpus(["a good film", "dull"], ["A  good film", "new text", "the test item", ""],
                                     held_out=["The test item", "dull"])
    assert corpus == ["a good film", "new text"]


def test_decision_bias_recovers_a_rare_class_the_arg_max_never_picks() -> None:
    # calibrated but never above 0.5 for the rare class: the arg-max answers the common class only
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.1).astype(int)
    p1 = np.clip(np.where(y == 1, 0.35, 0.08) + rng.normal(0, 0.05, 400), 0.01, 0.45)
    probs = np.c_[1 - p1, p1]
    b = ensemble.fit_decision_bias(probs, y, 2)
    assert b[0] == 0 and b[1] > 0
    decided = (np.log(probs) + b).argmax(1)
    assert label_f1(y, decided) > label_f1(y, probs.argmax(1)) + 0.3
    balanced = np.eye(2)[[0, 1] * 50] * 0.8 + 0.1  # the arg-max is already right: nothing to move
    assert np.allclose(ensemble.fit_decision_bias(balanced, np.array([0, 1] * 50), 2), 0.0)


def label_f1(y, pred) -> float:
    from crowdforge.metrics import label_metrics

    return label_metrics(y, pred, 2)["macro_f1"]


def test_decision_bias_is_dropped_when_cross_validation_does_not_support_it() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(30) < 0.2).astype(int)
    noise = rng.random(30) * 0.4  # probabilities unrelated to the labels: any offset is fitted noise
    probs = np.c_[1 - noise, noise]
    assert np.allclose(ensemble.checked_decision_bias(probs, y, 2), 0.0)
    p1 = np.where(y == 1, 0.4, 0.1)  # informative but never above 0.5: the offset generalises
    assert ensemble.checked_decision_bias(np.c_[1 - p1, p1], y, 2)[1] > 0


def test_expected_f1_threshold_needs_no_labels_and_finds_the_rare_class() -> None:
    # calibrated probabilities (labels drawn from them) whose rare class never reaches 0.5
    rng = np.random.default_rng(2)
    p1 = np.where(rng.random(3000) < 0.12, rng.uniform(0.2, 0.45, 3000), rng.uniform(0.0, 0.1, 3000))
    probs = np.c_[1 - p1, p1]
    y = (rng.random(3000) < p1).astype(int)
    b = ensemble.expected_f1_decision_bias(probs)  # sees no label
    decided = (np.log(probs) + b).argmax(1)
    best = (np.log(probs) + ensemble.fit_decision_bias(probs, y, 2)).argmax(1)  # fitted on the labels
    assert b[1] > 0 and label_f1(y, decided) > label_f1(y, probs.argmax(1)) + 0.15
    assert label_f1(y, decided) > label_f1(y, best) - 0.02
    assert ensemble.expected_macro_f1(probs, decided) == pytest.approx(label_f1(y, decided), abs=0.03)


def test_decision_pool_leaves_out_held_out_texts_and_is_seeded() -> None:
    corpus = [f"text {i}" for i in range(50)] + ["Held out", "seen in training"]
    pool = ensemble.decision_pool(corpus, ["held out", "SEEN in training"], size=20, seed=3)
    assert len(pool) == 20 and not {"Held out", "seen in training"} & set(pool)
    assert pool == ensemble.decision_pool(corpus, ["held out", "seen in training"], size=20, seed=3)


def test_decision_rule_prefers_unlabelled_text_on_imbalanced_classes(built, tmp_path: Path) -> None:
    params, built_paths, _ = built
    paths = Paths(tmp_path)
    shutil.copytree(built_paths.root, tmp_path, dirs_exist_ok=True)
    ens = ensemble.build_ensemble(params, paths)
    v_texts = pd.read_parquet(paths.valid)["text"].astype(str).tolist()
    logits = ens.member_logits(v_texts)
    y = np.zeros(len(v_texts), int)
    y[:4] = 2  # imbalanced gold checks: 4 of 60
    gold = np.ones(len(y), bool)
    training = pd.read_parquet(paths.train)["text"].astype(str).tolist()
    corpus = [f"unlabelled text number {i}" for i in range(240)] + training[:30]
    io.write_parquet(paths.unlabeled, pd.DataFrame({"text": corpus}))
    small = parse_params(params.to_dict(), {"ensemble.decision_pool": 100, "ensemble.decision_pool_min": 50})
    info = ensemble.choose_decision(small, paths, ens, logits, y, gold, v_texts)
    assert info == {"rule": "expected_f1_unlabelled", "pool": 100}
    gold_only = parse_params(params.to_dict(), {"ensemble.decision": "gold_checks"})
    assert ensemble.choose_decision(gold_only, paths, ens, logits, y, gold, v_texts)["rule"] == "gold_checks"
    strict = parse_params(params.to_dict(), {"ensemble.decision": "unlabelled",
                                                "ensemble.decision_pool_min": 250})
    with pytest.raises(ValueError, match="at least 250 unlabelled texts.*found 240"):
        ensemble.choose_decision(strict, paths, ens, logits, y, gold, v_texts)  # training texts do not count
    balanced = np.arange(len(y)) % 3
    assert ensemble.choose_decision(small, paths, ens, logits, balanced, gold, v_texts)["rule"] == "argmax"


PAIR_MEMBERS = [{"name": "head-a", "strategy": "head", "seed": 1},
                {"name": "pair-similarity", "strategy": "pair_features", "seed": 2}]


def _pair_params(backbone: Path):
    return parse_params({
        "data": {"classes": ["no_match", "match"]},
        "pretrain": {"backbone": str(backbone)},
        "finetune": {"max_length": 32, "batch_size": 16, "max_epochs": 4, "lr_head": 0.05,
                     "members": PAIR_MEMBERS},
        "runtime": {"torch_threads": 1},
    })


def test_pair_member_joins_the_ensemble_on_a_pair_task(tiny_backbone: Path, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write_toy_blackboard(paths, ("no_match", "match"), n_train=160, n_valid=60, n_test=60, pairs=True)
    params = _pair_params(tiny_backbone)
    fin = finetune.run(params, paths)
    assert fin["members_left_out"] == {} and fin["members"]["pair-similarity"]["strategy"] == "pair_features"
    info = io.read_json(paths.member("pair-similarity") / "member.json")
    assert info["encoder"] == {"kind": "none"} and info["label_refinement"]["pair_features"] is True
    ref = info["label_refinement"]  # auto: to convergence on a pair task
    assert ref["rounds"] == 20 or (ref["rounds"] >= 1 and ref["round_changes"][-1] < 1e-3)
    report = ensemble.run(params, paths)
    # the tiny random encoder cannot see a model code; the similarity features can
    assert report["members"]["pair-similarity"]["test_accuracy"] >= 0.9
    assert report["members"]["pair-similarity"]["weight"] > report["members"]["head-a"]["weight"]
    assert report["test_macro_f1"] >= 0.85
    assert sorted(p.name for p in (paths.ensemble / "text_models").iterdir()) == ["01-pair-similarity.skops"]
    texts = pd.read_parquet(paths.gold)["text"].tolist()[:10]
    loaded = load_ensemble(paths.ensemble)
    np.testing.assert_allclose(loaded.predict_proba(texts),
                               pd.read_parquet(paths.test_predictions)[["prob_no_match", "prob_match"]].to_numpy()[:10],
                               atol=1e-12)


def test_pair_member_is_left_out_of_a_task_without_pairs_and_says_so(tiny_backbone: Path, tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    write_toy_blackboard(paths, ("no_match", "match"), n_train=80, n_valid=30, n_test=30)
    params = _pair_params(tiny_backbone)
    fin = finetune.run(params, paths)
    assert "not pairs" in fin["members_left_out"]["pair-similarity"]
    assert set(fin["members"]) == {"head-a"}
    report = ensemble.run(params, paths)
    assert set(report["members"]) == {"head-a"} and "pair-similarity" in report["members_left_out"]
    assert "Left out: pair-similarity" in (paths.reports / "ensemble.md").read_text()
    # only a pair member, on texts without pairs: a clear error, not an empty ensemble
    alone = parse_params({"data": {"classes": ["no_match", "match"]}, "pretrain": {"backbone": str(tiny_backbone)},
                          "finetune": {"members": PAIR_MEMBERS[1:]}})
    with pytest.raises(ValueError, match="no member of finetune.members applies"):
        finetune.run(alone, paths)
