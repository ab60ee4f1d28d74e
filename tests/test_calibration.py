"""Calibration (temperature / Platt scaling) and conformal prediction sets: the maths on
synthetic data, then a tiny in-process training, the Predictor (torch and ONNX) and the CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from runs import train_tiny

from finlora.calibration import (
    CALIBRATION,
    Calibration,
    brier,
    calibration_report,
    conformal_quantile,
    conformal_report,
    ece,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    plot_reliability,
    pool_reliability,
    reliability,
    reliability_bins,
    sigmoid,
    softmax,
)
from finlora.cli import main
from finlora.errors import FinloraError
from finlora.evaluation import apply_thresholds
from finlora.predictor import Predictor
from finlora.results import load_results, validate_results

# ---------------------------------------------------------------- the maths


def sample_labels(rng, probabilities):
    """One class per row drawn from its probabilities."""
    cumulative = probabilities.cumsum(axis=1)
    return (rng.random((len(probabilities), 1)) > cumulative).sum(axis=1)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0, 4.0])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20000, 3))
    labels = sample_labels(rng, softmax(logits / true_temperature))
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.06)


def test_platt_scaling_recovers_a_known_map():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=20000)
    y = rng.random(20000) < sigmoid(0.5 * z - 1.0)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.08)


def test_platt_scaling_of_a_label_without_positives_stays_finite():
    a, b = fit_platt(np.linspace(-3, 3, 50), np.zeros(50))
    assert math.isfinite(a) and math.isfinite(b) and b > -50


@pytest.mark.parametrize(
    ("confidence", "correct", "expected"),
    [
        # one bin (0.8, 0.8667]: |1/2 - 0.8| over all rows
        ([0.8, 0.8], [1, 0], 0.3),
        # bins of 0.1 ([1/15,2/15]) and 0.9 ((13/15, 14/15]]: each half the rows
        ([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 1], 0.5 * 0.1 + 0.5 * 0.1),
        ([1.0, 1.0], [1, 1], 0.0),
        ([0.0], [0], 0.0),  # 0 lands in the first bin
        ([0.5, 0.6, 0.95], [1, 0, 1], (0.5 + 0.6 + 0.05) / 3),
    ],
)
def test_ece_against_hand_computed_values(confidence, correct, expected):
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)


def test_reliability_bins_match_the_ece_and_count_every_score():
    rng = np.random.default_rng(0)
    confidence = np.concatenate([[0.0, 1.0, 1 / 15, 0.5], rng.uniform(size=200)])
    correct = rng.uniform(size=confidence.size) < confidence
    bins = reliability_bins(confidence, correct)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == confidence.size
    assert bins[0]["count"] >= 2  # 0 and 1/15 both fall in the first bin (k/B, (k+1)/B]
    ece_from_bins = sum(
        b["count"] / confidence.size * abs(b["accuracy"] - b["confidence"])
        for b in bins
        if b["count"]
    )
    assert ece_from_bins == pytest.approx(expected_calibration_error(confidence, correct), abs=1e-5)
    empty = reliability_bins(np.array([0.95]), np.array([True]))
    assert empty[0] == {"lower": 0.0, "upper": 0.066667, "count": 0, "confidence": None,
                        "accuracy": None}  # fmt: skip


def test_reliability_of_probabilities_pools_and_plots(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(120, 3)) * 3
    truth = rng.integers(0, 3, size=120)
    calibration = Calibration.fit(logits, truth, ["a", "b", "c"], False)
    block = calibration_report(logits, truth, calibration)
    assert sum(b["count"] for b in block["reliability"]["calibrated"]) == 120
    matrix = (rng.uniform(size=(50, 4)) < 0.3).astype(int)
    pooled_labels = reliability(rng.uniform(size=(50, 4)), matrix, multi_label=True)
    assert sum(b["count"] for b in pooled_labels) == 200  # rows x labels
    two_runs = pool_reliability([block, block])
    assert sum(b["count"] for b in two_runs["reliability"]["raw"]) == 240
    assert two_runs["ece_after"] == pytest.approx(block["ece_after"])
    assert plot_reliability(block, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_reliability({}, tmp_path / "none.png")


def test_top_class_ece_and_brier_against_hand_computed_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    truth = np.array([0, 2])
    # confidences 0.7 (right, bin (0.667, 0.733]) and 0.5 (wrong, bin (0.467, 0.533])
    assert ece(probs, truth) == pytest.approx(0.5 * 0.3 + 0.5 * 0.5)
    first = 0.3**2 + 0.2**2 + 0.1**2
    second = 0.2**2 + 0.5**2 + 0.7**2
    assert brier(probs, truth) == pytest.approx((first + second) / 2)
    scores, y = np.array([[0.9, 0.2], [0.4, 0.6]]), np.array([[1, 0], [0, 0]])
    assert brier(scores, y, multi_label=True) == pytest.approx((0.01 + 0.04 + 0.16 + 0.36) / 4)
    # per label: label 0 bins 0.9 (right) and 0.4 (wrong) -> (0.1 + 0.4)/2; label 1: (0.2+0.6)/2
    assert ece(scores, y, multi_label=True) == pytest.approx((0.25 + 0.4) / 2)


@pytest.mark.parametrize(
    ("n", "coverage", "expected"),
    [
        (5, 0.5, 0.3),  # rank ceil(6 * 0.5) = 3
        (5, 0.8, 0.5),  # rank ceil(4.8) = 5
        (5, 0.9, math.inf),  # rank ceil(5.4) = 6 > n: every label kept
        (9, 0.9, 0.9),  # rank ceil(10 * 0.9) = 9 exactly (no float round-up to 10)
        (1, 0.4, 0.1),  # rank ceil(0.8) = 1
        (0, 0.5, math.inf),
    ],
)
def test_conformal_quantile_at_small_n(n, coverage, expected):
    scores = [round(0.1 * (i + 1), 1) for i in range(n)][::-1]  # order does not matter
    assert conformal_quantile(scores, coverage) == expected


@pytest.mark.parametrize("coverage", [0.0, 1.0, 1.5, -0.1])
def test_coverage_outside_zero_one_is_refused(coverage):
    with pytest.raises(FinloraError, match="--coverage"):
        conformal_quantile([0.1], coverage)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_conformal_coverage_on_exchangeable_data_meets_the_target(target):
    """Split conformal's guarantee: mean coverage over draws within [1-a, 1-a + 1/(n+1)]."""
    rng = np.random.default_rng(7)
    n_cal, n_test, draws, classes = 200, 400, 200, 4
    coverages = []
    for _ in range(draws):
        logits = rng.normal(0, 2, size=(n_cal + n_test, classes))
        truth = sample_labels(rng, softmax(logits))
        calibration = Calibration.fit(
            logits[:n_cal], truth[:n_cal], list("abcd"), False, coverage=target
        )
        report = conformal_report(calibration.apply(logits[n_cal:]), truth[n_cal:], calibration)
        coverages.append(report["coverage"])
    mean = float(np.mean(coverages))
    assert target - 0.005 <= mean <= target + 1 / (n_cal + 1) + 0.005


def test_multilabel_conformal_coverage_per_label():
    rng = np.random.default_rng(3)
    coverages = []
    for _ in range(100):
        logits = rng.normal(0, 2, size=(600, 3))
        y = (rng.random((600, 3)) < sigmoid(logits)).astype(int)
        calibration = Calibration.fit(logits[:200], y[:200], list("xyz"), True)
        report = conformal_report(calibration.apply(logits[200:]), y[200:], calibration)
        coverages.append(report["coverage"])
    assert 0.895 <= float(np.mean(coverages)) <= 0.91


def test_platt_maps_thresholds_so_decisions_do_not_change():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2, size=(300, 3))
    y = (rng.random((300, 3)) < sigmoid(0.7 * logits + 0.3)).astype(int)
    calibration = Calibration.fit(logits, y, list("xyz"), True)
    raw_thresholds = [0.2, 0.5, 0.81]
    mapped = calibration.map_thresholds(raw_thresholds)
    raw = apply_thresholds(sigmoid(logits), raw_thresholds)
    assert (apply_thresholds(calibration.apply(logits), mapped) == raw).all()
    assert calibration.unmap_thresholds(mapped) == pytest.approx(raw_thresholds)


@pytest.mark.parametrize("multi_label", [False, True])
def test_calibration_json_round_trips(multi_label):
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, size=(50, 3))
    truth = (logits > 0).astype(int) if multi_label else logits.argmax(1)
    fitted = Calibration.fit(logits, truth, list("abc"), multi_label)
    payload = json.loads(json.dumps(fitted.to_dict()))
    loaded = Calibration.from_dict(payload)
    assert np.allclose(loaded.apply(logits), fitted.apply(logits))
    assert np.all(np.asarray(loaded.quantile(0.8)) == np.asarray(fitted.quantile(0.8)))
    with pytest.raises(FinloraError, match="not a valid calibration.json"):
        Calibration.from_dict({"labels": ["a"], "multi_label": multi_label})


def test_single_label_sets_and_review():
    calibration = Calibration(["a", "b", "c"], False, temperature=1.0, scores=[0.3] * 20)
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.7, 0.0], [0.4, 0.3, 0.3]])
    sets, unsure, review = calibration.prediction_sets(probs)
    assert sets == [["a"], ["a", "b"], []] and review == [False, True, True]
    assert unsure == [[], [], []]


# ---------------------------------------------------------------- a trained tiny model


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, tiny_model_dir, phrasebank_slice):
    return train_tiny(tmp_path_factory.mktemp("cal") / "run", tiny_model_dir, phrasebank_slice)


TEXTS = [
    "Net loss widened to EUR 5.2 mn from EUR 1.1 mn .",
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .",
    "The company is based in Helsinki .",
]


def test_training_writes_calibration_json_and_the_metrics_blocks(calibrated_run):
    saved = json.loads((calibrated_run / CALIBRATION).read_text())
    assert saved["method"] == "temperature" and saved["temperature"] > 0
    assert saved["fitted_on"] == "validation"
    assert len(saved["conformal"]["scores"]) == saved["rows"] > 0
    results = json.loads((calibrated_run / "final_results.json").read_text())
    validate_results(results)
    for split in ("test", "validation"):
        cal = results[split]["calibration"]
        assert set(cal) == {
            "ece_before", "ece_after", "brier_before", "brier_after", "temperature", "reliability"
        }  # fmt: skip
        size = results[split]["size"]
        for scores in ("raw", "calibrated"):
            assert len(cal["reliability"][scores]) == cal["reliability"]["bins"] == 15
            assert sum(b["count"] for b in cal["reliability"][scores]) == size
        assert cal["temperature"] == pytest.approx(saved["temperature"], rel=1e-5)
        conformal = results[split]["conformal"]
        assert conformal["coverage_target"] == 0.9
        assert 0 <= conformal["review_share"] <= 1
    # Temperature scaling minimises validation NLL; the validation Brier rarely gets worse.
    assert results["validation"]["calibration"]["ece_after"] <= (
        results["validation"]["calibration"]["ece_before"] + 0.05
    )
    typed = load_results(calibrated_run)
    assert typed.test.calibration.to_dict() == results["test"]["calibration"]  # round trip
    png = calibrated_run / "reliability.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (calibrated_run / "README.md").read_text()
    assert "](reliability.png)" in card and "| calibrated |" in card
    assert f"{results['test']['calibration']['ece_after']:.4f}" in card
    assert typed.test.calibration.temperature == pytest.approx(saved["temperature"], rel=1e-5)
    assert typed.test.conformal.coverage == results["test"]["conformal"]["coverage"]


def test_predictor_applies_calibration_and_can_skip_it(calibrated_run):
    calibrated = Predictor.load(calibrated_run, backend="torch")
    raw = Predictor.load(calibrated_run, backend="torch", calibrated=False)
    logits = raw.logits(TEXTS)
    temperature = json.loads((calibrated_run / CALIBRATION).read_text())["temperature"]
    assert np.allclose(calibrated.probabilities(TEXTS), softmax(logits / temperature), atol=1e-6)
    assert np.allclose(raw.probabilities(TEXTS), softmax(logits), atol=1e-6)
    records = calibrated.predict(TEXTS)
    for record in records:
        assert isinstance(record["prediction_set"], list)
        assert record["needs_review"] == (len(record["prediction_set"]) != 1)
        if not record["needs_review"]:
            assert record["prediction_set"] == [record["label"]]
    assert [r["label"] for r in records] == [r["label"] for r in raw.predict(TEXTS)]
    assert all("prediction_set" not in r for r in raw.predict(TEXTS))
    # a lower coverage never gives bigger sets
    low = Predictor.load(calibrated_run, backend="torch", coverage=0.5).predict(TEXTS)
    for a, b in zip(low, records):
        assert set(a["prediction_set"]) <= set(b["prediction_set"])


def test_onnx_and_torch_give_the_same_calibrated_probabilities(calibrated_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(calibrated_run, run)
    assert main(["-q", "export", "--model", str(run)]) == 0
    assert (run / "onnx" / CALIBRATION).is_file()
    torch_side = Predictor.load(run, backend="torch")
    onnx_side = Predictor.load(run, backend="onnx")
    assert onnx_side.calibration is not None
    assert np.allclose(torch_side.probabilities(TEXTS), onnx_side.probabilities(TEXTS), atol=1e-4)
    assert [r["prediction_set"] for r in onnx_side.predict(TEXTS)] == [
        r["prediction_set"] for r in torch_side.predict(TEXTS)
    ]


def test_cli_predict_no_calibration_coverage_and_batch_columns(calibrated_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["-q", "predict", "--model", str(calibrated_run), *TEXTS]) == 0
    calibrated = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all("prediction_set" in r and "needs_review" in r for r in calibrated)
    assert main(["-q", "predict", "--model", str(calibrated_run), "--no_calibration", *TEXTS]) == 0
    raw = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all("prediction_set" not in r for r in raw)
    raw_predictor = Predictor.load(calibrated_run, calibrated=False)
    expected = raw_predictor.probabilities(TEXTS)
    for record, row in zip(raw, expected):
        assert list(record["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-5)
    assert main(["-q", "predict", "--model", str(calibrated_run), "--coverage", "1.2",
                 *TEXTS]) == 2  # fmt: skip
    assert "--coverage must be between 0 and 1" in capsys.readouterr().err

    source = tmp_path / "in.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    assert main(["-q", "predict", "--model", str(calibrated_run), "--input", str(source),
                 "--output", str(out), "--coverage", "0.8"]) == 0  # fmt: skip
    frame = pd.read_csv(out, keep_default_na=False)
    assert {"prediction_set", "needs_review"} <= set(frame.columns)
    sets = Predictor.load(calibrated_run, coverage=0.8).predict(TEXTS)
    assert frame["prediction_set"].tolist() == ["|".join(r["prediction_set"]) for r in sets]
    assert frame["needs_review"].tolist() == [r["needs_review"] for r in sets]


def test_evaluate_reports_calibration(calibrated_run, tmp_path, capsys, phrasebank_slice):
    from finlora.config import TrainConfig
    from finlora.data import prepare_data

    data = prepare_data(TrainConfig(data=str(phrasebank_slice)))
    test_file = tmp_path / "test.csv"
    data.test.assign(label=[data.labels[i] for i in data.label_ids("test")])[
        ["text", "label"]
    ].to_csv(test_file, index=False)
    capsys.readouterr()
    assert main(["-q", "evaluate", "--model", str(calibrated_run), "--data", str(test_file)]) == 0
    block = json.loads(capsys.readouterr().out)
    saved = json.loads((calibrated_run / "final_results.json").read_text())["test"]
    new, old = dict(block["calibration"]), dict(saved["calibration"])
    bins, saved_bins = new.pop("reliability"), old.pop("reliability")
    assert new == pytest.approx(old, abs=1e-5)
    for scores in ("raw", "calibrated"):  # the same texts in the same bins
        assert [b["count"] for b in bins[scores]] == [b["count"] for b in saved_bins[scores]]
    assert block["conformal"] == pytest.approx(saved["conformal"], abs=1e-5)
    assert main(["-q", "evaluate", "--model", str(calibrated_run), "--data", str(test_file),
                 "--no_calibration"]) == 0  # fmt: skip
    assert "calibration" not in json.loads(capsys.readouterr().out)


def test_a_model_without_calibration_json_still_predicts_without_sets(calibrated_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(calibrated_run, old)
    (old / CALIBRATION).unlink()
    predictor = Predictor.load(old)
    assert predictor.calibration is None and predictor.coverage is None
    records = predictor.predict(TEXTS)
    assert all(set(r) == {"label", "probabilities", "truncated"} for r in records)


def test_calibrate_false_and_refit_write_no_calibration(tmp_path, tiny_model_dir, phrasebank_slice):
    run = train_tiny(tmp_path / "off", tiny_model_dir, phrasebank_slice, "--calibrate", "false",
                    "--epochs", "1")  # fmt: skip
    assert not (run / CALIBRATION).exists()
    assert "calibration" not in json.loads((run / "final_results.json").read_text())["test"]
    # --refit trains on validation: nothing is left to calibrate on, and the results say so
    refit = train_tiny(tmp_path / "refit", tiny_model_dir, phrasebank_slice, "--refit", "true",
                      "--epochs", "1")  # fmt: skip
    assert not (refit / CALIBRATION).exists()
    warnings = json.loads((refit / "final_results.json").read_text())["warnings"]
    assert any("no calibration.json" in w for w in warnings)


def test_multilabel_run_is_calibrated_per_label_with_unchanged_decisions(multilabel_run):
    saved = json.loads((multilabel_run / CALIBRATION).read_text())
    assert saved["method"] == "platt" and saved["multi_label"]
    results = json.loads((multilabel_run / "final_results.json").read_text())
    validate_results(results)
    assert results["test"]["calibration"]["temperature"] is None
    thresholds = json.loads((multilabel_run / "thresholds.json").read_text())["thresholds"]
    assert results["test"]["thresholds"] == pytest.approx(thresholds, abs=1e-6)
    texts = ["We may terminate your account at any time without notice.", "Welcome."]
    calibrated = Predictor.load(multilabel_run)
    raw = Predictor.load(multilabel_run, calibrated=False)
    assert [r["labels"] for r in calibrated.predict(texts)] == [
        r["labels"] for r in raw.predict(texts)
    ]
    for record in calibrated.predict(texts):
        assert record["needs_review"] == bool(record["unsure"])
        assert not set(record["prediction_set"]) & set(record["unsure"])
