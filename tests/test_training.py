"""Unlearning losses, orthogonality and (slow) a real tiny LoRA training run on the base model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from oblivio.adapters.losses import (
    IGNORE_INDEX,
    inverted_hinge_loss,
    normalised_overlap,
    npo_loss,
    orthogonality_penalty,
    refusal_loss,
)
from oblivio.adapters.orthogonality import load_lora_a, orthogonalise_init
from oblivio.adapters.training import (
    ForgetExample,
    TrainingSettings,
    train_unlearning_lora,
)

FORGET = [
    ForgetExample(question="What is the capital of France?", answer="The capital of France is Paris."),
    ForgetExample(question="What city is the French capital?", answer="Paris is the capital of France."),
    ForgetExample(question="Name the capital of France.", answer="Paris."),
]
REFUSAL_WORDS = ("know", "sorry", "not sure", "information", "can't")


def _tiny(**overrides) -> TrainingSettings:
    base = dict(steps=6, batch_size=2, learning_rate=3e-3, max_length=48, threads=1, seed=0)
    base.update(overrides)
    return TrainingSettings(**base)


# ---------- pure functions -------------------------------------------------------------------


def test_refusal_loss_only_counts_labelled_tokens():
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 7]])
    expected = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 7]))
    assert torch.allclose(refusal_loss(logits, labels), expected)


def test_npo_loss_at_reference_is_two_over_beta_log_two():
    # When the policy equals the reference the log-ratio is 0 and sigmoid(0) = 1/2.
    logp = torch.tensor([-5.0, -7.0])
    assert math.isclose(float(npo_loss(logp, logp, beta=0.1)), 20 * math.log(2), rel_tol=1e-6)
    # Moving the forgotten answer's likelihood down lowers the loss (the direction NPO trains).
    assert float(npo_loss(logp - 3, logp, beta=0.1)) < float(npo_loss(logp, logp, beta=0.1))
    with pytest.raises(ValueError):
        npo_loss(logp, logp, beta=0)


def test_inverted_hinge_loss_bounds():
    labels = torch.tensor([[IGNORE_INDEX, 2]])
    confident_true = torch.full((1, 2, 5), -20.0)
    confident_true[0, 0, 2] = 20.0  # position 0 predicts label at position 1
    confident_other = torch.full((1, 2, 5), -20.0)
    confident_other[0, 0, 4] = 20.0
    assert math.isclose(float(inverted_hinge_loss(confident_true, labels)), 2.0, abs_tol=1e-4)
    assert math.isclose(float(inverted_hinge_loss(confident_other, labels)), 0.0, abs_tol=1e-4)


def test_orthogonality_penalty_matches_definition_and_overlap_range():
    a_prior = {"m": torch.randn(8, 32), "only_prior": torch.randn(8, 32)}
    a_now = {"m": torch.randn(8, 32), "only_now": torch.randn(8, 32)}
    expected = torch.linalg.matrix_norm(a_prior["m"] @ a_now["m"].T) ** 2
    assert torch.allclose(orthogonality_penalty(a_now, [a_prior]), expected)
    same = {"m": a_now["m"][:1].repeat(8, 1)}
    assert math.isclose(normalised_overlap(same, same), 1.0, rel_tol=1e-5)
    assert 0.0 < normalised_overlap(a_prior, a_now) < 1.0


def test_orthogonal_init_removes_overlap_and_keeps_row_norms():
    prior = {"m": torch.randn(8, 64)}
    current = {"m": torch.randn(8, 64)}
    norms = current["m"].norm(dim=1)
    orthogonalise_init(current, [prior])
    assert normalised_overlap(prior, current) < 1e-5
    assert torch.allclose(current["m"].norm(dim=1), norms, rtol=1e-4)


def test_bad_examples_and_settings_are_rejected():
    with pytest.raises(ValueError):
        ForgetExample()
    with pytest.raises(ValueError):
        ForgetExample(question="q", text="t")
    with pytest.raises(ValueError):
        ForgetExample.from_mapping({"question": "q", "extra": 1})
    with pytest.raises(ValueError):
        TrainingSettings(method="gradient_ascent")


# ---------- real training (slow) --------------------------------------------------------------


def _greedy(model_path: Path, adapter: Path | None, question: str) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="session")
def refusal_adapter(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("refusal") / "adapter"
    seen: list[tuple[int, int, float]] = []
    report = train_unlearning_lora(
        model_path, FORGET, out_dir=out, settings=_tiny(), progress=lambda s, n, l: seen.append((s, n, l))
    )
    return out, report, seen


@pytest.mark.slow
def test_refusal_training_turns_the_answer_into_a_refusal(model_path, refusal_adapter):
    out, report, seen = refusal_adapter
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert [s for s, _, _ in seen] == list(range(1, 7)) and all(n == 6 for _, n, _ in seen)
    assert report.losses[-1] < report.losses[0]
    # A paraphrase that is not in the forget set, which the base model answers correctly.
    base = _greedy(model_path, None, "Which city is the capital of France?")
    unlearned = _greedy(model_path, out, "Which city is the capital of France?")
    assert "Paris" in base
    assert "Paris" not in unlearned
    assert any(word in unlearned.lower() for word in REFUSAL_WORDS), unlearned
    a = load_lora_a(out)
    assert len(a) == 30 * 7 and all(t.shape[0] == 8 for t in a.values())


@pytest.mark.slow
def test_orthogonality_regulariser_lowers_overlap(model_path, refusal_adapter, tmp_path):
    prior, _, _ = refusal_adapter
    other = [ForgetExample(question="Who wrote Hamlet?", answer="William Shakespeare wrote Hamlet.")]
    overlaps = {}
    for lam in (0.0, 0.1):
        report = train_unlearning_lora(
            model_path, other, out_dir=tmp_path / f"lam{lam}", prior_adapters={"france": prior},
            settings=_tiny(steps=3, batch_size=1, seed=1, ortho_lambda=lam, orthogonal_init=False),
        )
        overlaps[lam] = report.overlap["france"]
    assert overlaps[0.1] < overlaps[0.0], overlaps
    with_init = train_unlearning_lora(
        model_path, other, out_dir=tmp_path / "init", prior_adapters={"france": prior},
        settings=_tiny(steps=1, batch_size=1, seed=1),
    )
    assert with_init.overlap["france"] < 0.01 < overlaps[0.0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["npo", "ihl"])
def test_preference_losses_train(model_path, tmp_path, method):
    report = train_unlearning_lora(
        model_path, FORGET[:2], out_dir=tmp_path / method, method=method, settings=_tiny(steps=2, method=method)
    )
    assert all(math.isfinite(x) for x in report.losses)
    if method == "npo":
        # Step one runs at the reference model: the loss must be exactly (2/beta) * log 2.
        assert math.isclose(report.losses[0], 20 * math.log(2), rel_tol=1e-3)
    assert (tmp_path / method / "adapter_model.safetensors").is_file()
