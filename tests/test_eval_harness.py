"""Pieces of the evaluation harness that can run at test size: fact keys and the cached
fine-tune that produces the target / retain models."""

from pathlib import Path

import pytest

from oblivio.eval.entity_data import build_dataset
from oblivio.eval.facts import item_key_values, key_values
from oblivio.eval.metrics import contains_fact
from oblivio.eval.target_model import FinetuneSettings, cache_key, cached_finetune


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
    built = cached_finetune(model_path, dataset, [0], tmp_path, "target", settings, lambda s, t, loss: progress.append(s))
    assert progress == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(built)
    assert not any("lora" in name for name in model.state_dict()), "the LoRA must be merged into the weights"
    again = cached_finetune(model_path, dataset, [0], tmp_path, "target", settings, lambda s, t, loss: progress.append(s))
    assert again == built and progress == [1, 2], "a second call must reuse the cached model"
    assert cache_key(model_path, dataset, [1], settings) not in built.name, "other people, other model"


def test_compared_gate_configurations_are_valid_policies(tmp_path: Path) -> None:
    from oblivio.eval.continual import GATE_CONFIGS
    from oblivio.gateway.config import GateConfig
    from oblivio.gateway.policy_store import PolicyStore

    store = PolicyStore(tmp_path, GateConfig())
    for name, changes in GATE_CONFIGS.items():
        policy = store.update(None, changes)
        assert policy.default.threshold == changes["threshold"], name


def test_registration_stream_sends_header_then_bounded_chunks() -> None:
    from oblivio.eval.server_client import REGISTRATION_CHUNK, _register_stream

    pairs = [(f"q{i}?", f"a{i}.") for i in range(REGISTRATION_CHUNK * 2 + 1)]
    messages = list(_register_stream("request-1", pairs, ["Elena Marwick"], "test"))
    assert messages[0].WhichOneof("item") == "header" and list(messages[0].header.subjects) == ["Elena Marwick"]
    chunks = [m.chunk.examples for m in messages[1:]]
    assert [len(c) for c in chunks] == [REGISTRATION_CHUNK, REGISTRATION_CHUNK, 1]
    assert chunks[2][0].qa.question == pairs[-1][0]
