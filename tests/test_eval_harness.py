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
