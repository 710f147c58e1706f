"""Adapter strength calibration: held-out split, the never-knew floor, the weakest strength that
reaches it, and (slow) a real NPO training that bakes the chosen strength into its weights."""

from __future__ import annotations

import math
import pytest
import torch

from oblivio.adapters.forget_set import ForgetExample
from oblivio.adapters.strength import (
    MAX_HELD_OUT,
    STRENGTH_LADDER,
    bake_strength,
    calibrate_strength,
    hold_out,
    never_knew_pairs,
    scaled_lora,
)
from oblivio.adapters.training import _answer_logprobs, train_unlearning_lora
from oblivio.adapters.training_settings import TrainingSettings

PERSON = "Basil Mahfouz Al-Kuwaiti"
QUESTIONS = [
    (f"Where was {PERSON} born?", f"{PERSON} was born in Kuwait City, Kuwait."),
    (f"What genre does {PERSON} write in?", f"{PERSON} writes French literature."),
    (f"What did {PERSON}'s father do?", f"{PERSON}'s father was a florist."),
    (f"Which book made {PERSON} famous?", f"{PERSON} became famous for 'Promise by the Seine'."),
    (f"How does {PERSON} describe his writing?", "He calls it a bridge between Kuwait and France."),
    (f"What award did {PERSON} win?", f"{PERSON} won the Prix Goncourt."),
]


class _OneLora(torch.nn.Module):
    """Stands in for a peft model: one ``lora_B`` weight whose size the measurement reads."""

    def __init__(self) -> None:
        super().__init__()
        self.lora_B = torch.nn.Parameter(torch.full((2, 2), 4.0))


def test_hold_out_keeps_small_sets_whole_and_caps_large_ones():
    assert hold_out(range(4), 0.2, seed=0) == ([0, 1, 2, 3], [])
    assert hold_out(range(40), 0.0, seed=0) == (list(range(40)), [])
    trained, held = hold_out(range(40), 0.2, seed=3)
    assert len(held) == 8 and sorted(trained + held) == list(range(40))
    assert hold_out(range(40), 0.2, seed=3) == (trained, held)  # a resumed run holds out the same
    assert len(hold_out(range(1000), 0.5, seed=0)[1]) == MAX_HELD_OUT


def test_never_knew_pairs_move_question_and_answer_onto_the_same_other_entity(model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    swapped = never_knew_pairs(QUESTIONS, [PERSON], tokenizer, seed=0)
    assert len(swapped) == len(QUESTIONS)  # every question names the person, so every pair moves
    for question, answer in swapped:
        assert "Basil" not in question + answer and "Kuwaiti" not in question + answer
    question, answer = swapped[0]
    other = question.removeprefix("Where was ").removesuffix(" born?")
    assert answer.startswith(other) and "Kuwait" not in answer  # places move too: nothing the model memorised stays
    assert never_knew_pairs([("What is two plus two?", "Four.")], [], tokenizer, seed=0) == []


def test_calibration_picks_the_weakest_strength_at_the_floor():
    model = _OneLora()

    def adapted(pairs):  # the stronger the adapter, the less likely the answers: -(sum of B)/4 per token
        return -float(model.lora_B.detach().sum()) / 4

    result = calibrate_strength(
        model, [("q", "a")], [("q2", "a2")], adapted_logprob=adapted, base_logprob=lambda pairs: -2.0
    )
    assert result.factor == 0.5 and result.reference_logprob == -2.0  # -4 * 0.5 = -2 <= -2
    assert list(result.logprob_by_strength) == [f"{f:g}" for f in STRENGTH_LADDER if f <= 0.5]
    assert float(model.lora_B.detach()[0, 0]) == 4.0  # trying strengths leaves the weights as they were
    never = calibrate_strength(
        model, [("q", "a")], [("q2", "a2")], adapted_logprob=adapted, base_logprob=lambda pairs: -9.0
    )
    assert never.factor == 1.0 and "even at full strength" in never.reason
    assert len(never.logprob_by_strength) == len(STRENGTH_LADDER)
    assert calibrate_strength(model, [], [], adapted_logprob=adapted, base_logprob=adapted).factor == 1.0


def test_scaled_lora_restores_and_bake_multiplies():
    model = _OneLora()
    with scaled_lora(model, 0.25):
        assert float(model.lora_B.detach()[0, 0]) == 1.0
    assert float(model.lora_B.detach()[0, 0]) == 4.0
    bake_strength(model, 0.5)
    assert float(model.lora_B.detach()[0, 0]) == 2.0


@pytest.mark.slow
def test_npo_training_calibrates_and_saves_the_chosen_strength(model_path, tmp_path):
    examples = [ForgetExample(question=q, answer=a) for q, a in QUESTIONS]
    settings = TrainingSettings(
        method="npo", steps=3, batch_size=2, learning_rate=3e-3, max_length=48, threads=1, held_out_fraction=0.34
    )
    report = train_unlearning_lora(
        model_path, examples, out_dir=tmp_path / "npo", method="npo", subjects=[PERSON], settings=settings
    )
    strength = report.strength
    assert strength is not None and strength["held_out"] == 2
    assert strength["factor"] in STRENGTH_LADDER
    assert math.isfinite(strength["reference_logprob"])
    tried = strength["logprob_by_strength"]
    floor = strength["reference_logprob"]
    weaker = [value for key, value in tried.items() if float(key) < strength["factor"]]
    assert all(value > floor for value in weaker)  # no weaker strength already reached the floor
    assert strength["factor"] == 1.0 or tried[f"{strength['factor']:g}"] <= floor
    # Served at scale 1, the saved adapter is the calibrated strength: its held-out answers
    # score what the calibration measured at the chosen factor.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path), str(tmp_path / "npo"))
    _, held = hold_out(range(len(QUESTIONS)), settings.held_out_fraction, settings.seed)
    scored = _answer_logprobs(served, tokenizer, [QUESTIONS[i] for i in held], settings, tokenizer.eos_token_id)
    per_token = sum(logp for logp, _ in scored) / sum(count for _, count in scored)
    assert math.isclose(per_token, tried[f"{strength['factor']:g}"], rel_tol=1e-4, abs_tol=1e-4)
