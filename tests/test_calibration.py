"""Calibration report: probe files, threshold selection, plots + JSON written and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_gate import assert_real_png

from oblivio.gateway.gate.calibration import (
    CalibrationError,
    CalibrationTarget,
    Probe,
    apply_suggested_threshold,
    calibrate,
    load_probes,
    suggest_threshold,
)
from oblivio.gateway.config import GateConfig
from oblivio.gateway.gate.policy_store import PolicyStore


def test_load_probes_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "probes.jsonl"
    jsonl.write_text('{"prompt": "Who wrote X?", "forget": true}\n\n{"prompt": "2+2?", "forget": false}\n')
    csv_file = tmp_path / "probes.csv"
    csv_file.write_text('prompt,label\n"Who, really, wrote X?",1\nWhat is rain?,keep\n')
    assert load_probes(jsonl) == [Probe("Who wrote X?", True), Probe("2+2?", False)]
    assert load_probes(csv_file) == [Probe("Who, really, wrote X?", True), Probe("What is rain?", False)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"prompt": "x"}\n', "expected"),
        ("b.jsonl", "{oops\n", "not valid JSON"),
        ("c.jsonl", '{"prompt": "x", "forget": "maybe"}\n', "label must be true/false"),
        ("d.csv", "just one column\n", "two columns"),
        ("e.txt", "x", "must end in .jsonl or .csv"),
        ("f.jsonl", "\n", "contains no probes"),
        ("g.jsonl", '{"prompt": "  ", "forget": true}\n', "non-empty string"),
    ],
)
def test_bad_probe_files_fail_clearly(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        load_probes(path)


def test_threshold_selection_matches_the_gate_rule() -> None:
    labels = [True] * 5 + [False] * 5
    scores = [0.9, 0.8, 0.7, 0.6, 0.3, 0.65, 0.4, 0.2, 0.1, 0.05]
    # Sorted: .9+ .8+ .7+ .65- .6+ .4- .3+ .2- .1- .05-. The threshold is the midpoint between
    # the operating point's score and the next lower score (same rates, largest margin).
    # 80% catch: down to 0.6 (4 of 5 positives, 1 false positive) -> between 0.6 and 0.4.
    assert suggest_threshold(labels, scores, CalibrationTarget("catch_rate", 0.8)) == pytest.approx(0.5)
    # Full catch needs going down to 0.3 -> between 0.3 and 0.2.
    assert suggest_threshold(labels, scores, CalibrationTarget("catch_rate", 1.0)) == pytest.approx(0.25)
    # FPR 0: stop above the 0.65 negative -> between 0.7 and 0.65.
    assert suggest_threshold(labels, scores, CalibrationTarget("fpr", 0.0)) == pytest.approx(0.675)
    # FPR 0.2 allows one negative: the most catches (0.8) is reached at 0.6 -> between 0.6 and 0.4.
    assert suggest_threshold(labels, scores, CalibrationTarget("fpr", 0.2)) == pytest.approx(0.5)
    # A generous FPR budget does not lower the threshold once every positive is caught.
    separable = [True, True, False, False]
    assert suggest_threshold(separable, [0.9, 0.8, 0.3, 0.1], CalibrationTarget("fpr", 0.5)) == pytest.approx(0.55)


@pytest.mark.parametrize(("kind", "value"), [("catch_rate", 0.0), ("fpr", 1.5), ("tpr", 0.5), ("fpr", float("nan"))])
def test_bad_targets(kind: str, value: float) -> None:
    with pytest.raises(CalibrationError):
        CalibrationTarget(kind, value)  # type: ignore[arg-type]


def test_report_from_precomputed_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pos = np.clip(rng.normal(0.8, 0.1, 40), 0, 1)
    neg = np.clip(rng.normal(0.3, 0.15, 60), 0, 1)
    probes = [Probe(f"p{i}", True) for i in range(40)] + [Probe(f"n{i}", False) for i in range(60)]
    report = calibrate(
        "authors", probes, out_dir=tmp_path / "out", scores=[*pos, *neg],
        target=CalibrationTarget("catch_rate", 0.9), current_threshold=0.5,
    )
    assert report.positives == 40 and report.negatives == 60
    assert 0.9 < report.roc_auc <= 1.0
    assert report.catch_rate >= 0.9
    assert report.catch_rate == np.mean(pos >= report.suggested_threshold)
    assert report.false_positive_rate == np.mean(neg >= report.suggested_threshold)
    assert report.current_catch_rate == np.mean(pos >= 0.5)
    summary = json.loads(report.summary_json_path.read_text())
    assert summary["suggested_threshold"] == report.suggested_threshold
    assert summary["target"] == {"kind": "catch_rate", "value": 0.9}
    assert [Path(p).name for p in summary["plot_paths"]] == ["authors_roc.png", "authors_score_histograms.png"]
    for path in report.plot_paths:
        assert_real_png(path)


def test_needs_both_labels_and_matching_scores(tmp_path: Path) -> None:
    only_pos = [Probe("a", True), Probe("b", True)]
    with pytest.raises(CalibrationError, match="at least one probe"):
        calibrate("s", only_pos, out_dir=tmp_path, scores=[0.1, 0.2])
    mixed = [Probe("a", True), Probe("b", False)]
    with pytest.raises(CalibrationError, match="got 1 scores for 2"):
        calibrate("s", mixed, out_dir=tmp_path, scores=[0.1])
    with pytest.raises(CalibrationError, match="finite"):
        calibrate("s", mixed, out_dir=tmp_path, scores=[0.1, float("nan")])
    with pytest.raises(CalibrationError, match="exactly one"):
        calibrate("s", mixed, out_dir=tmp_path)


def test_apply_threshold_creates_a_policy_version(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "gate", GateConfig())
    store.register_set("authors")
    probes = [Probe("a", True), Probe("b", True), Probe("c", False), Probe("d", False)]
    report = calibrate("authors", probes, out_dir=tmp_path / "cal", scores=[0.9, 0.7, 0.4, 0.2])
    version = apply_suggested_threshold(report, store)
    assert version == 2 and store.current().for_set("authors").threshold == pytest.approx(0.55)
    assert json.loads(report.summary_json_path.read_text())["applied_policy_version"] == 2


@pytest.mark.slow
def test_report_on_a_real_fitted_detector(gate_detector_bank, tmp_path: Path) -> None:
    """Score operator probes with the real detector, write the plots, open them, apply the result."""
    from fixtures_gate import GATE_SET, write_probe_file

    probes = load_probes(write_probe_file(tmp_path / "probes.jsonl"))
    store = PolicyStore(tmp_path / "gate", GateConfig())
    store.register_set(GATE_SET)
    report = calibrate(
        GATE_SET,
        probes,
        out_dir=tmp_path / "report",
        scorer=lambda prompts: [s[GATE_SET] for s in gate_detector_bank.score(prompts)],
        target=CalibrationTarget("catch_rate", 0.9),
        current_threshold=store.current().for_set(GATE_SET).threshold,
    )
    assert (report.positives, report.negatives) == (10, 10)
    assert all(0.0 <= s <= 1.0 for s in report.positive_scores + report.negative_scores)
    # Held-out questions about the author vs unrelated chat: the detector must separate them.
    assert report.roc_auc >= 0.9, report.to_json()
    assert report.catch_rate >= 0.9
    for path in report.plot_paths:
        assert_real_png(path)
    summary = json.loads(report.summary_json_path.read_text())
    assert summary["roc_auc"] == report.roc_auc and len(summary["positive_scores"]) == 10
    apply_suggested_threshold(report, store)
    assert store.current().for_set(GATE_SET).threshold == report.suggested_threshold
