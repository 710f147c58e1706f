"""The TOFU harness end to end at toy size: TOFU's own forget requests through a real
``oblivio serve`` subprocess's Admin API, two unlearning methods, the baselines switched live on
the default method's server, likelihoods replayed under the server's decisions, report written.

Sizes are cut to minutes (one or two fine-tune steps, two training steps per registration, a
few questions per split), so the numbers say nothing about quality; ``oblivio eval tofu``
measures that. What this test pins down is that each row of the report is what it claims.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from oblivio.eval.target_model import FinetuneSettings
from oblivio.eval.tofu_report import rewrite
from oblivio.eval.tofu_unlearning import BASELINE_POLICIES, NO_UNLEARNING, SYSTEM_PROMPT, RunSettings, request_rows, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def toy_report(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tofu")
    settings = RunSettings(generations_per_split=3, likelihood_questions=8, requests=2, max_tokens=8,
                           methods=("refusal",), registration_steps=2,
                           finetune=FinetuneSettings(epochs=0.02, batch_size=8, max_length=48, threads=1))
    first = run(settings, root / "out", model_path, root / "models", "pytest toy run")
    (root / "first.json").write_text((first.parent / "report.json").read_text())
    # The second method as a resumed run: it keeps the first run's measurements and adds its own.
    return run(replace(settings, methods=("npo",), default_method="npo"), root / "out", model_path, root / "models",
               "pytest toy run", resume=True)


def test_resume_refuses_a_report_measured_with_other_settings(tmp_path: Path) -> None:
    settings = RunSettings(requests=2)
    (tmp_path / "report.json").write_text(json.dumps({"settings": {**json.loads(json.dumps(asdict(settings))), "max_tokens": 9}}))
    with pytest.raises(SystemExit, match="other settings \\(max_tokens\\)"):
        run(settings, tmp_path, tmp_path / "no-model", tmp_path / "models", "pytest", resume=True)


def test_requests_are_tofu_splits_minus_the_previous_ones() -> None:
    requests = request_rows()
    assert [len(rows) for rows in requests] == [40, 160, 200]
    questions = [{row.question for row in rows} for rows in requests]
    assert not (questions[0] & questions[1]) and not (questions[1] & questions[2]) and not (questions[0] & questions[2])
    from oblivio.eval.tofu import forget_split

    assert questions[0] == {row.question for row in forget_split("forget01")}
    assert questions[0] | questions[1] == {row.question for row in forget_split("forget05")}


def test_every_configuration_is_measured_after_every_request(toy_report: Path) -> None:
    data = json.loads((toy_report.parent / "report.json").read_text())
    seen = {(m["request"], m["config"]) for m in data["measurements"]}
    expected = {(k, c) for k in (1, 2) for c in (NO_UNLEARNING, SYSTEM_PROMPT, *BASELINE_POLICIES, "oblivio_refusal",
                                                  "oblivio_npo")}
    assert seen == expected and len(data["measurements"]) == len(expected)
    assert [(r["request"], r["method"]) for r in data["registrations"]] == [(1, "refusal"), (2, "refusal"), (1, "npo"), (2, "npo")]
    assert all(r["live"] >= r["enforcing"] > 0 for r in data["registrations"])
    assert data["subjects"][0] == ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"]
    servers = sorted(p.name for p in toy_report.parent.glob("server-*.log"))
    assert servers == ["server-npo.log", "server-refusal.log"]
    first = json.loads((toy_report.parent.parent / "first.json").read_text())
    assert data["measurements"][: len(first["measurements"])] == first["measurements"], "resuming keeps what was measured"
    assert data["settings"]["methods"] == ["refusal", "npo"] and data["settings"]["default_method"] == "refusal"
    assert data["seconds"] > first["seconds"]
    assert data["command"] == "pytest toy run; resumed with pytest toy run"


def test_measurements_follow_from_the_configuration(toy_report: Path) -> None:
    rows = {(m["request"], m["config"]): m for m in json.loads((toy_report.parent / "report.json").read_text())["measurements"]}
    for k in (1, 2):
        untouched, guarded = rows[(k, NO_UNLEARNING)], rows[(k, SYSTEM_PROMPT)]
        assert untouched["fired_forget"] == guarded["fired_forget"] == 0.0, "nothing is registered yet"
        assert rows[(k, "lora_always_on")]["fired_world_facts"] == 1.0
        assert rows[(k, "o3_gate")]["fired_retain"] == 1.0
        assert rows[(k, "oblivio_refusal")]["fired_world_facts"] == 0.0
        assert rows[(k, "oblivio_refusal")]["fired_forget"] > 0.5, "its authors' paraphrases must match"
        refused = rows[(k, "detector_refusal")]
        assert refused["forget_probability"] < untouched["forget_probability"], "a refusal has probability 0"
        assert refused["fired_world_facts"] == 0.0, "each baseline changes the default policy, not the previous baseline"
    for row in rows.values():
        assert 0.0 <= row["forget_quality"] <= 1.0 and 0.0 <= row["model_utility"] <= 1.0
        assert 0.0 < row["retain_probability"] <= 1.0 and row["forget_truth_ratio"] > 0


def test_report_has_goals_plots_and_rewrites_from_its_json(toy_report: Path) -> None:
    text = toy_report.read_text()
    assert "## Goals" in text and "Forget Quality >= 0.05" in text and "beats lora_always_on on forgetting" in text
    for png in ("metrics_vs_request.png", "fq_vs_mu.png", "detector_roc.png"):
        assert (toy_report.parent / png).stat().st_size > 1000, png
    assert rewrite(toy_report.parent).read_text() == text
