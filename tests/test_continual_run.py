"""The continual-unlearning harness end to end at toy size: fine-tunes, a real ``oblivio serve``
subprocess, two registrations through the Admin API, every gate configuration measured over
gRPC, likelihoods replayed under the server's decisions, report and plots written.

Sizes are cut to minutes (one fine-tune step, two training steps per registration, four probes
per split), so the numbers say nothing about quality; `oblivio eval continual` measures that.
What this test pins down is that each piece of the report measures what it claims.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oblivio.eval.continual import GATE_CONFIGS, RunSettings, run
from oblivio.eval.target_model import FinetuneSettings

# About 5 minutes alone on the 2-core CI machine (a vLLM server, two registrations, seven
# measurements); 15 were seen while a full evaluation shared the cores, hence the wide limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def toy_report(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("continual")
    settings = RunSettings(n_people=6, n_requests=2, percent=16.7, probes_per_split=4, max_tokens=8,
                           finetune=FinetuneSettings(epochs=0.02, batch_size=8, max_length=48, threads=1),
                           gateway_benchmark=False, registration_steps=2)
    return run(settings, root / "out", model_path, root / "models", "pytest toy run")


def test_report_has_goals_tables_and_plots(toy_report: Path) -> None:
    text = toy_report.read_text()
    assert "## Goals" in text and "Forget Quality >= 0.05" in text and "pytest toy run" in text
    for png in ("metrics_vs_request.png", "roc_per_request.png"):
        assert (toy_report.parent / png).stat().st_size > 1000, png
    assert (toy_report.parent / "server.log").read_text().count("gRPC listening") == 1


def test_every_configuration_is_measured_after_every_request(toy_report: Path) -> None:
    data = json.loads((toy_report.parent / "report.json").read_text())
    seen = [(m["request"], m["config"]) for m in data["measurements"]]
    assert seen == [(0, "no_unlearning")] + [(r, c) for r in (1, 2) for c in GATE_CONFIGS]
    assert [sorted(t) for t in data["timings"]] == [sorted(data["timings"][0])] * 2
    assert data["timings"][0]["live"] >= data["timings"][0]["enforcing"] > 0


def test_measurements_follow_from_the_gate_configuration(toy_report: Path) -> None:
    rows = {(m["request"], m["config"]): m for m in json.loads((toy_report.parent / "report.json").read_text())["measurements"]}
    base = rows[(0, "no_unlearning")]
    assert base["forget_matched"] == base["retain_matched"] == base["general_matched"] == 0.0
    for request in (1, 2):
        # Without a threshold every prompt gets adapters; a general question never matches ours.
        assert rows[(request, "lora_always_on")]["general_matched"] == 1.0
        assert rows[(request, "o3_sigmoid")]["retain_matched"] == 1.0
        assert rows[(request, "oblivio_gate")]["general_matched"] == 0.0
        assert rows[(request, "oblivio_gate")]["forget_matched"] > 0.5, "its people's paraphrases must match"
    for row in rows.values():
        assert 0.0 <= row["forget_quality"] <= 1.0
        assert 0.0 < row["retain_probability"] <= 1.0 and row["forget_truth_ratio"] > 0
        assert row["model_utility"] >= 0.0


def test_roc_scores_come_from_each_request_own_people(toy_report: Path) -> None:
    scores = json.loads((toy_report.parent / "report.json").read_text())["scores"]
    assert sorted(scores["positives"]) == ["request-1", "request-2"]
    for name, positives in scores["positives"].items():
        negatives = scores["negatives"][name]
        assert positives and negatives and all(0.0 <= s <= 1.0 for s in positives + negatives)
