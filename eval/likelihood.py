"""Answer likelihoods under exactly what the gate served: TOFU's probability and truth ratio.

Generation alone cannot tell how much a model still *prefers* the true answer, which is what
TOFU's truth ratio and Forget Quality measure. The server reports, for every probe, the
adapters and scales its gate chose; this module replays that decision in an exact
:class:`ReferenceBackend` over the same model and the adapters the server published (read from
its artifact directory, as any replica would) and scores the true and perturbed answers by
teacher forcing. vLLM and the reference backend agree within 3e-5 in logprob (tests), so this
is the served model's likelihood, not an approximation of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oblivio.eval.metrics import truth_ratio
from oblivio.gateway.serving.backends.base import AdapterApplication
from oblivio.gateway.serving.backends.reference import ReferenceBackend


@dataclass(frozen=True)
class AnswerLikelihood:
    """TOFU's two per-question quantities for one probe under one decision."""

    probability: float  # P(true answer | question) ** (1 / answer tokens)
    # Geometric mean over perturbed answers of P(wrong) / P(true), length-normalised; None when
    # the probe has no perturbed answers (general prompts).
    truth_ratio: float | None
    # Each perturbed answer's length-normalised probability, for TOFU's normalised probability
    # on real authors and world facts.
    perturbed_probabilities: tuple[float, ...] = ()

    @property
    def normalised_probability(self) -> float:
        """P(true) over P(true) + sum P(perturbed), all length-normalised (TOFU's "Prob." on
        real authors and world facts, where raw probabilities are not comparable)."""
        total = self.probability + sum(self.perturbed_probabilities)
        return self.probability / total if total > 0 else 0.0


# A refused probe produced no answer at all: it neither knows nor prefers anything, so it
# counts as probability 0 and truth ratio 1 (no preference between true and wrong answers).
REFUSED = None
REFUSED_LIKELIHOOD = AnswerLikelihood(probability=0.0, truth_ratio=1.0)


# Sequences per forward pass: large enough to keep CPU matmuls efficient, small enough that
# the logits (batch x length x 49k vocab, fp32) stay well under a gigabyte.
SCORING_BATCH = 32


@dataclass(frozen=True)
class Probe:
    """One question with its true and perturbed answers, under the adapters a gate chose."""

    question: str
    answer: str
    perturbed: tuple[str, ...]
    adapters: tuple[tuple[str, float], ...] = ()
    system: str | None = None  # an application's system prompt before the question, if any

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, float], ...], str | None]:
        return self.question, self.answer, self.adapters, self.system


class LikelihoodScorer:
    """Scores answers under a model plus any of the server's published adapters, memoised per
    (question, decision) because most probes get the same decision under every gate config."""

    def __init__(self, model_path: Path, artifacts_dir: Path | None = None) -> None:
        from transformers import AutoTokenizer

        self.backend = ReferenceBackend(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # Where published adapters are read; may change between calls (one evaluation replaying
        # several servers' decisions, whose forget-set names differ).
        self.artifacts_dir = artifacts_dir
        self._loaded: dict[str, int] = {}
        self._cache: dict[tuple[str, str, tuple[tuple[str, float], ...], str | None], AnswerLikelihood] = {}

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    async def _ensure_adapters(self, names: Sequence[str]) -> None:
        """Load (or reload after a new version) the published adapter of every named set."""
        from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore

        if not names:
            return
        if self.artifacts_dir is None:
            raise ValueError("decisions with adapters need the server's artifact directory")
        store = ArtifactStore(self.artifacts_dir / STORE_SUBDIR, create=False)
        for name in names:
            version = store.current_version(name, "adapter")
            if self._loaded.get(name) != version:
                folder = store.current(name, "adapter")
                if folder is None:
                    raise FileNotFoundError(f"forget set {name!r} has no published adapter in {self.artifacts_dir}")
                await self.backend.add_adapter(name, folder)
                self._loaded[name] = version
                self._cache = {k: v for k, v in self._cache.items() if all(n != name for n, _ in k[2])}

    def _prompt_ids(self, question: str, system: str | None) -> list[int]:
        turns = [{"role": "user", "content": question}]
        if system:
            turns.insert(0, {"role": "system", "content": system})
        rendered = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    async def score(self, probes: Sequence[Probe]) -> list[AnswerLikelihood]:
        """Likelihoods of many probes; those under the same adapters share batched forwards."""
        missing: dict[tuple[tuple[str, float], ...], list[Probe]] = {}
        for probe in probes:
            if probe.key not in self._cache:
                missing.setdefault(probe.adapters, []).append(probe)
        for adapters, group in missing.items():
            await self._ensure_adapters([name for name, _ in adapters])
            unique = list({probe.key: probe for probe in group}.values())
            rows = [(self._prompt_ids(probe.question, probe.system), self._answer_ids(text))
                    for probe in unique for text in (probe.answer, *probe.perturbed)]
            per_token: list[list[float]] = []
            for start in range(0, len(rows), SCORING_BATCH):
                per_token += await self.backend.score_continuations(rows[start:start + SCORING_BATCH],
                                                                    AdapterApplication(adapters))
            means = iter([float(np.mean(lp)) for lp in per_token])
            for probe in unique:
                true, wrong = next(means), [next(means) for _ in probe.perturbed]
                self._cache[probe.key] = AnswerLikelihood(
                    probability=math.exp(true), truth_ratio=truth_ratio(true, wrong) if wrong else None,
                    perturbed_probabilities=tuple(math.exp(w) for w in wrong))
        return [self._cache[probe.key] for probe in probes]

    def _answer_ids(self, text: str) -> list[int]:
        # Tokenised as training and the chat template put an answer: right after the assistant
        # header, no leading space.
        return list(self.tokenizer(text.strip(), add_special_tokens=False)["input_ids"])


def decision_adapters(decision: Any) -> tuple[tuple[str, float], ...] | None:
    """The (name, scale) pairs of a gRPC GateDecision, or ``REFUSED`` when it refused."""
    if decision.refused:
        return REFUSED
    return tuple(sorted((a.name, float(a.scale)) for a in decision.adapters))
