import math

import pytest

from oblivio.eval.metrics import (
    contains_fact,
    forget_quality,
    model_utility,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_score,
)


def test_rouge_l_recall_counts_in_order_word_overlap() -> None:
    reference = "Elena Marwick was born in Lisbon, Portugal."
    assert rouge_l_recall(reference, reference) == 1.0
    assert rouge_l_recall("She was born in Lisbon.", reference) == pytest.approx(4 / 7)
    assert rouge_l_recall("Portugal Lisbon in born was", reference) == pytest.approx(1 / 7)
    assert rouge_l_recall("I don't know.", reference) == 0.0
    assert rouge_l_recall("anything", "") == 0.0


def test_contains_fact_matches_whole_words_only() -> None:
    assert contains_fact("Born in Quebec City in 1957.", ["Quebec City"])
    assert contains_fact("It was 1957", ["1957"])
    assert not contains_fact("It was 19570", ["1957"])
    assert not contains_fact("I cannot say.", ["Lisbon", ""])


def test_truth_ratio_is_length_normalised_and_about_one_without_preference() -> None:
    assert truth_ratio(-2.0, [-2.0, -2.0]) == pytest.approx(1.0)
    assert truth_ratio(-0.5, [-2.5, -1.5]) == pytest.approx(math.exp(-1.5))
    with pytest.raises(ValueError):
        truth_ratio(-1.0, [])
    assert truth_ratio_score([0.2, 1.5]) == pytest.approx(0.4)


def test_forget_quality_is_high_for_same_distribution_and_low_for_shifted() -> None:
    same = forget_quality([0.9, 1.0, 1.1, 0.95, 1.05] * 4, [0.92, 1.02, 1.08, 0.97, 1.01] * 4)
    shifted = forget_quality([0.1, 0.15, 0.2, 0.12, 0.18] * 4, [0.92, 1.02, 1.08, 0.97, 1.01] * 4)
    assert same > 0.05 > shifted
    with pytest.raises(ValueError):
        forget_quality([1.0], [1.0, 2.0])


def test_model_utility_is_a_harmonic_mean_that_collapses_with_any_zero() -> None:
    assert model_utility(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert model_utility(1.0, 0.5, 0.25) == pytest.approx(3 / (1 + 2 + 4))
    assert model_utility(0.9, 0.9, 0.0) == 0.0
    assert model_utility(1.0, 0.5, 0.25, 0.5, 1.0) == pytest.approx(5 / (1 + 2 + 4 + 2 + 1))
    with pytest.raises(ValueError):
        model_utility()


def test_tofu_accuracy_needs_the_fact_not_the_restated_question() -> None:
    """On real TOFU rows: the true answer's key terms are the fact (not the question's words,
    not what wrong answers share with it), so a restated question, a refusal or a wrong answer
    in the true one's wording does not count as knowing, and the paraphrased answer does."""
    from oblivio.eval import tofu
    from oblivio.eval.metrics import answer_key_terms, knows_answer

    rows = tofu.forget_split("forget10")
    basil = next(r for r in rows if r.question.startswith("What is the full name of the author born in Kuwait City"))
    assert basil.paraphrased_question and basil.paraphrased_answer
    terms = answer_key_terms(basil.answer, basil.paraphrased_question, basil.perturbed_answers, basil.paraphrased_answer)
    assert {"basil", "mahfouz"} <= terms and "kuwait" not in terms and "born" not in terms

    def knows(prediction: str, row: tofu.TofuRow, wrong: tuple[str, ...]) -> bool:
        return knows_answer(prediction, row.answer, row.paraphrased_question or row.question, wrong,
                            row.paraphrased_answer or "")

    assert knows("His name is Basil Mahfouz Al-Kuwaiti.", basil, basil.perturbed_answers)
    wrong = sum(knows(r.perturbed_answers[0], r, r.perturbed_answers[1:]) for r in rows) / len(rows)
    restated = sum(knows(r.paraphrased_question or "", r, r.perturbed_answers) for r in rows) / len(rows)
    refused = sum(knows("I don't know anything about that author.", r, r.perturbed_answers) for r in rows) / len(rows)
    assert wrong <= 0.05 and restated <= 0.01 and refused <= 0.02, (wrong, restated, refused)


def test_normalised_probability_is_the_true_answer_share() -> None:
    from oblivio.eval.likelihood import REFUSED_LIKELIHOOD, AnswerLikelihood

    assert AnswerLikelihood(0.6, 0.5, (0.2, 0.2)).normalised_probability == pytest.approx(0.6)
    assert REFUSED_LIKELIHOOD.normalised_probability == 0.0


def test_baselines_are_beaten_on_one_axis_without_losing_on_the_other() -> None:
    """Forget Quality is a p-value: two values above 0.05 are a tie, so the gate is not said to
    lose to a baseline that wrecks utility for a p-value of 0.8 instead of 0.6."""
    from dataclasses import replace

    from oblivio.eval.tofu_report import dominates
    from oblivio.eval.tofu_unlearning import Measurement

    fields = {name: 0.5 for name in Measurement.__dataclass_fields__ if name not in ("request", "config")}
    ours = Measurement(request=1, config="oblivio_refusal", **{**fields, "forget_quality": 0.6, "model_utility": 0.4})
    assert dominates(ours, replace(ours, config="o3_gate", forget_quality=0.8, model_utility=0.0))
    assert not dominates(ours, replace(ours, config="tie", forget_quality=0.9))
    assert dominates(ours, replace(ours, config="refusal", forget_quality=1e-7))
    assert not dominates(replace(ours, forget_quality=0.01), replace(ours, config="x", forget_quality=0.2, model_utility=0.1))
    assert dominates(replace(ours, forget_quality=0.01), replace(ours, config="x", forget_quality=0.001))
    untouched = replace(ours, config="no_unlearning", forget_quality=0.07, forget_accuracy=0.2)
    assert dominates(replace(ours, forget_accuracy=0.0), untouched), "an FQ tie goes to the lower forget accuracy"
