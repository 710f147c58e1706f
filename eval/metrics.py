"""TOFU-style unlearning metrics, computed from generations and answer likelihoods.

Definitions follow TOFU (Maini et al. 2024) so numbers are comparable in spirit:
- accuracy: the generated answer contains the fact's key value (e.g. the birth city);
- ROUGE-L recall of the generated answer against the reference answer;
- truth ratio: length-normalised likelihood of the wrong (perturbed) answers over that of the
  true answer; a model that never knew the person has no preference, about 1;
- Forget Quality: KS-test p-value between the truth-ratio distributions of the unlearned model
  and of a model trained without the forget people, on the forget questions;
- Model Utility: harmonic mean of answer probability, ROUGE-L and truth-ratio score on retained
  knowledge, so one collapsed component drags the whole number down.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import hmean, ks_2samp

_WORD = re.compile(r"[a-z0-9]+")


def mean_or_nan(values: Sequence[float]) -> float:
    """The mean, or NaN for no values (a split with nothing measured, not a zero score)."""
    return float(np.mean(values)) if len(values) else float("nan")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def rouge_l_recall(prediction: str, reference: str) -> float:
    """Longest common subsequence of words over the reference length (TOFU reports recall)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    if not ref:
        return 0.0
    previous = [0] * (len(pred) + 1)
    for ref_word in ref:
        current = [0]
        for j, pred_word in enumerate(pred, start=1):
            current.append(previous[j - 1] + 1 if ref_word == pred_word else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1] / len(ref)


def contains_fact(prediction: str, key_values: Sequence[str]) -> bool:
    """True when any key value (e.g. "Lisbon", "1957") appears in the prediction as words."""
    words = " " + " ".join(_tokens(prediction)) + " "
    return any(f" {' '.join(_tokens(value))} " in words for value in key_values if _tokens(value))


def answer_key_terms(answer: str, question: str, wrong_answers: Sequence[str] = (), paraphrase: str = "") -> set[str]:
    """The words that make an answer right: the reference answer's content words that neither
    the question nor any wrong answer says, and that its paraphrase keeps when there is one.
    TOFU answers restate their question, its wrong answers keep the true one's wording, and its
    paraphrases reword the style, so what is left is the fact (a name, a profession, a year).
    Stop words are scikit-learn's."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    said_elsewhere = set(_tokens(question)).union(*(_tokens(w) for w in wrong_answers))
    terms = {w for w in _tokens(answer) if w not in said_elsewhere and w not in ENGLISH_STOP_WORDS}
    kept = terms & set(_tokens(paraphrase))
    return kept or terms


def knows_answer(prediction: str, answer: str, question: str, wrong_answers: Sequence[str] = (),
                 paraphrase: str = "") -> bool:
    """Accuracy on questions without a single key value (TOFU): the prediction holds at least
    half of the answer's key terms (:func:`answer_key_terms`). When nothing is left to tell the
    answer apart, ROUGE-L recall of one half counts as known."""
    terms = answer_key_terms(answer, question, wrong_answers, paraphrase)
    if not terms:
        return rouge_l_recall(prediction, answer) >= 0.5
    return len(terms & set(_tokens(prediction))) >= len(terms) / 2


def truth_ratio(true_logprob_mean: float, perturbed_logprob_means: Sequence[float]) -> float:
    """P(perturbed)^(1/|a|) averaged geometrically, over P(true)^(1/|a|).

    Inputs are per-token mean log-probabilities, so the ratio is length-normalised as in TOFU.
    """
    if not perturbed_logprob_means:
        raise ValueError("truth ratio needs at least one perturbed answer")
    return math.exp(float(np.mean(perturbed_logprob_means)) - true_logprob_mean)


def truth_ratio_score(ratios: Sequence[float]) -> float:
    """TOFU's utility form on retained data: mean of max(0, 1 - R); higher = prefers truth."""
    return float(np.mean([max(0.0, 1.0 - r) for r in ratios]))


def forget_quality(unlearned_ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> float:
    """KS-test p-value: high when the unlearned model looks like one that never saw the data."""
    if len(unlearned_ratios) < 2 or len(retain_model_ratios) < 2:
        raise ValueError("forget quality needs at least two truth ratios per model")
    return float(ks_2samp(unlearned_ratios, retain_model_ratios).pvalue)


def model_utility(*parts: float) -> float:
    """Harmonic mean of the components (TOFU: probability, ROUGE-L and truth-ratio score on each
    kept split); any component at 0 makes utility 0, as in TOFU."""
    if not parts:
        raise ValueError("model utility needs at least one component")
    if min(parts) <= 0:
        return 0.0
    return float(hmean(parts))


@dataclass(frozen=True)
class SplitScores:
    """Everything measured on one split (forget, retain or general) for one configuration."""

    accuracy: float
    rouge_l: float
    answer_probability: float | None = None
    truth_ratios: tuple[float, ...] = ()

    @property
    def truth_ratio_mean(self) -> float | None:
        return float(np.mean(self.truth_ratios)) if self.truth_ratios else None
