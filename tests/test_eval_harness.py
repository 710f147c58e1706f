"""Pieces of the evaluation harness that can run at test size: fact keys and the cached
fine-tune that produces the target / retain models."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from oblivio.eval.entity_data import build_dataset
from oblivio.eval.facts import item_key_values, key_values
from oblivio.eval.metrics import contains_fact
from oblivio.eval.target_model import FinetuneSettings, cache_key, cached_finetune, entity_pairs


def test_every_fact_has_key_values_found_in_its_own_answer() -> None:
    dataset = build_dataset(seed=3, n_people=6)
    for item in dataset.items():
        values = item_key_values(dataset, item)
        assert values and contains_fact(item.answer, values), (item.fact, item.answer, values)
    with pytest.raises(ValueError, match="unknown fact"):
        key_values(dataset.people[0], "shoe_size")


@pytest.mark.slow
def test_cached_finetune_builds_a_loadable_model_once(model_path: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    dataset = build_dataset(seed=0, n_people=4)
    settings = FinetuneSettings(epochs=0.32, batch_size=8, max_length=48, threads=1)  # 2 steps
    progress: list[int] = []
    built = cached_finetune(model_path, entity_pairs(dataset, [0]), tmp_path, "target", settings, lambda s, t, loss: progress.append(s))
    assert progress == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(built)
    assert not any("lora" in name for name in model.state_dict()), "the LoRA must be merged into the weights"
    again = cached_finetune(model_path, entity_pairs(dataset, [0]), tmp_path, "target", settings, lambda s, t, loss: progress.append(s))
    assert again == built and progress == [1, 2], "a second call must reuse the cached model"
    assert cache_key(model_path, entity_pairs(dataset, [1]), settings) not in built.name, "other people, other model"


@pytest.mark.slow
def test_target_is_the_retain_model_taught_the_forget_people(model_path: Path, tmp_path: Path) -> None:
    """The retain model never sees the forget people; the target is built on it from the forget
    people's questions plus as many replayed retain questions, and each is cached by content."""
    from oblivio.eval.target_model import entity_pairs, evaluation_models

    dataset = build_dataset(seed=0, n_people=4)
    settings = FinetuneSettings(epochs=0.02, batch_size=8, max_length=48, threads=1)  # 1 step each
    def models(forget: int) -> tuple[Path, Path]:
        kept = [p for p in range(len(dataset.people)) if p != forget]
        return evaluation_models(model_path, entity_pairs(dataset, kept), entity_pairs(dataset, [forget]), tmp_path, settings)

    retain, target = models(2)
    retain_run = json.loads((retain / "finetune.json").read_text())
    target_run = json.loads((target / "finetune.json").read_text())
    per_person = len(dataset.items([2]))
    assert retain_run["examples"] == 3 * per_person, "retain: every question of the three kept people"
    assert target_run["examples"] == 2 * per_person, "target: the forget person plus as many replayed"
    assert retain.name.startswith("retain-") and target.name.startswith("target-")
    assert models(2) == (retain, target)
    _, other_target = models(3)
    assert other_target != target


def test_goals_are_judged_from_the_measurements() -> None:
    from oblivio.eval.continual import Measurement
    from oblivio.eval.continual_report import goals

    def measured(request: int, config: str, forget: float, retain: float, utility: float) -> Measurement:
        return Measurement(request, config, forget, 0.0, 0.0, 1.0, 0.5, retain, 0.8, 0.5, 0.5, 0.9, 0.3, utility,
                           0.0, 0.0, 0.0, 1.0)

    rows = [measured(0, "no_unlearning", 0.9, 0.80, 0.50)]
    for request in (1, 2):
        rows += [measured(request, "lora_always_on", 0.0, 0.10, 0.05),
                 measured(request, "o3_sigmoid", 0.04, 0.60, 0.40),
                 measured(request, "oblivio_gate", 0.04, 0.80, 0.50)]
    judged = goals(rows)
    assert len(judged) == 6 and all(ok for _, _, ok in judged), judged
    rows[-1] = measured(2, "oblivio_gate", 0.2, 0.75, 0.45)
    verdicts = [ok for _, _, ok in goals(rows)]
    assert verdicts[0] is False, "20% forget accuracy is not <= 5%"
    assert verdicts[1] is False, "5 points below the target is not within 1"
    assert verdicts[5] is False, "better utility than O3 bought with worse forgetting does not count"
    assert verdicts[4] is True, "MU 0.45 vs 0.05 is still a wide margin (>= 0.25) over LoRA always on"
    rows[1:] = [replace(row, model_utility=0.3) if row.config == "lora_always_on" else row for row in rows[1:]]
    assert goals(rows)[4][2] is False, "0.45 vs 0.3 is not: half the target's 0.5 is 0.25"
    collapsed = [replace(row, model_utility=0.0) for row in rows]
    assert goals(collapsed)[4][2] is False, "no utility anywhere is no margin, even when the target has none"


def test_compared_gate_configurations_are_valid_policies(tmp_path: Path) -> None:
    from oblivio.eval.continual import GATE_CONFIGS
    from oblivio.gateway.config import GateConfig
    from oblivio.gateway.gate.policy_store import PolicyStore

    store = PolicyStore(tmp_path, GateConfig())
    for name, changes in GATE_CONFIGS.items():
        policy = store.update(None, changes)
        assert policy.default.threshold == changes["threshold"], name


def test_quick_run_compares_the_baseline_gates_after_the_last_request_only() -> None:
    """What the goals compare (every gate after the last request, ours after the first) is
    always measured; quick skips only the intermediate baseline measurements."""
    from oblivio.eval.continual import GATE_CONFIGS, RunSettings

    quick, full = RunSettings.quick(), RunSettings()
    assert [quick.configs_after(r) for r in (1, 2, 3)] == [["oblivio_gate"], ["oblivio_gate"], list(GATE_CONFIGS)]
    assert all(full.configs_after(r) == list(GATE_CONFIGS) for r in (1, 2, 3))


def test_registration_stream_sends_header_then_bounded_chunks() -> None:
    from oblivio.eval.server_client import REGISTRATION_CHUNK, _register_stream

    pairs = [(f"q{i}?", f"a{i}.") for i in range(REGISTRATION_CHUNK * 2 + 1)]
    messages = list(_register_stream("request-1", pairs, ["Elena Marwick"], "test"))
    assert messages[0].WhichOneof("item") == "header" and list(messages[0].header.subjects) == ["Elena Marwick"]
    chunks = [m.chunk.examples for m in messages[1:]]
    assert [len(c) for c in chunks] == [REGISTRATION_CHUNK, REGISTRATION_CHUNK, 1]
    assert chunks[2][0].qa.question == pairs[-1][0]
