"""The server's prediction sets, checked against an established conformal library (crepes).

`proco-serve eval --fit-conformal data/val --export-scores ...` exported, for every rule, the
balanced probabilities and labels of the calibration (validation) and test images it used
(models/cifar10-lt/decisions/scores.json.gz); the same run wrote its own coverage and set sizes
to models/cifar10-lt/decisions/test.json. Here crepes builds the sets from the same
probabilities, with the same score (1 - p_y) and non-smoothed p-values: a standard conformal
classifier for marginal sets, a Mondrian one with the label as category for class-conditional
sets. Coverage, per-class coverage, mean set size and the share of empty sets must agree.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from crepes import ConformalClassifier

DECISIONS = Path(__file__).resolve().parents[2] / "models" / "cifar10-lt" / "decisions"


@pytest.fixture(scope="module")
def exported():
    with gzip.open(DECISIONS / "scores.json.gz", "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def report():
    return json.loads((DECISIONS / "test.json").read_text())


def p_values(rule_data: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """crepes' non-smoothed p-values of every (test image, class), and the test labels."""
    cal_p = np.array(rule_data["calibration"]["probabilities"])
    cal_y = np.array(rule_data["calibration"]["labels"])
    test_p = np.array(rule_data["test"]["probabilities"])
    test_y = np.array(rule_data["test"]["labels"])
    cal_alphas = 1.0 - cal_p[np.arange(len(cal_y)), cal_y]
    test_alphas = 1.0 - test_p
    if kind == "marginal":
        cc = ConformalClassifier().fit(cal_alphas)
        return cc.predict_p(test_alphas, smoothing=False), test_y
    # Class-conditional: each class is calibrated on its own images, and each candidate label
    # of a test image is judged against the scores of that label's class.
    cc = ConformalClassifier().fit(cal_alphas, bins=cal_y)
    p = np.empty_like(test_alphas)
    for c in range(test_alphas.shape[1]):
        p[:, c] = cc.predict_p(
            test_alphas[:, c], bins=np.full(len(test_y), c), smoothing=False
        )
    return p, test_y


def test_the_export_and_the_report_come_from_one_run(exported, report):
    rules = {row["rule"] for row in report["prediction_sets"]}
    assert rules == set(exported["rules"]) == {"linear", "proco", "vmf", "ensemble"}
    for rule, data in exported["rules"].items():
        assert data["temperature"] == report["temperatures"][rule]
        assert len(data["test"]["labels"]) == report["images"] == 10000
        assert len(data["calibration"]["labels"]) == 1000


@pytest.mark.parametrize("kind", ["marginal", "class"])
@pytest.mark.parametrize("rule", ["linear", "proco", "vmf", "ensemble"])
def test_sets_match_crepes(exported, report, rule, kind):
    p, y = p_values(exported["rules"][rule], kind)
    labels = exported["labels"]
    rows = [r for r in report["prediction_sets"] if r["rule"] == rule and r["kind"] == kind]
    assert [r["level"] for r in rows] == [0.8, 0.9, 0.95]
    for row in rows:
        sets = p >= 1.0 - row["level"]
        hit = sets[np.arange(len(y)), y]
        assert hit.mean() == pytest.approx(row["coverage"], abs=1e-12)
        assert sets.sum(axis=1).mean() == pytest.approx(row["mean_size"], abs=1e-12)
        assert (sets.sum(axis=1) == 0).mean() == pytest.approx(row["empty"], abs=1e-12)
        for c, label in enumerate(labels):
            assert hit[y == c].mean() == pytest.approx(row["class_coverage"][label], abs=1e-12)
        worst = min(labels, key=lambda l: row["class_coverage"][l])
        assert row["worst_class"] == worst
