"""Calibrating a likelihood-lowering adapter's strength on held-out examples of its forget set.

Why: NPO and IHL lower the forgotten answers' likelihood with nothing that says "enough".
Trained at full strength they overshoot: the answers end up *less* likely than under a model
that never learned them, and that gap is itself a tell (a membership-inference signal; on
TOFU it is what Forget Quality measures, and NPO at full strength fell to FQ 0.0025 after two
requests).

The floor is what the model assigns to the same kind of answer about someone it never knew.
Each held-out example is moved onto another entity altogether
(:class:`~oblivio.detector.swaps.EntitySwapper`, ``ALL``: other names, places, dates and
titles), and the base model's per-token log-likelihood of those swapped answers is where "never
knew it" sits. Why every entity and not the name only: measured on TOFU's fine-tuned target
(24 forget05 answers, nats/token), the retain model, which never saw these authors, scores the
true answers at -2.10; the target scores them at -0.33, name-swapped copies at -0.82 (the
places and titles it memorised still give them away) and fully swapped copies at -2.58, the
closest and slightly on the side of forgetting more. The adapter's strength
is the smallest multiple of its weights at which the held-out answers are no more likely than
that. Held-out, because the trained answers fall faster than the paraphrases users send; the
held-out answers are the ones whose likelihood the calibration measures without having trained
on them.

The factor is baked into the saved weights (``lora_B`` times the factor), so scale 1 at the
gate is the calibrated strength and the gate's policy stays the operator's to tune.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from oblivio.detector.swaps import EntitySwapper, SwapKind, find_entities
from oblivio.detector.vocabulary import CommonWords, entity_vocabulary

QAPair = tuple[str, str]
MeanLogprob = Callable[[Sequence[QAPair]], float]  # per-token log p(answer | question), token-weighted

CALIBRATED_METHODS: frozenset[str] = frozenset({"npo", "ihl"})  # refusal teaches an answer, no floor needed
MIN_EXAMPLES_TO_HOLD_OUT = 5  # below this every example is needed for training
MAX_HELD_OUT = 32
# Strengths tried, weakest first, finer where a small step changes much (measured: 12 NPO steps
# on six answers put them 5 nats/token below the floor already at strength 1/4). The floor of
# 1/16 keeps an adapter whose answers the model barely knew from being switched off altogether.
STRENGTH_LADDER: tuple[float, ...] = (0.0625, 0.125, 0.1875, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
_JOIN = "\n\u241e\n"  # keeps question and answer one text, so a name is swapped the same in both


@dataclass
class StrengthCalibration:
    """What the calibration chose and saw; published in the adapter's training report."""

    factor: float  # multiple of the trained weights that was saved
    held_out: int  # examples held out of training and measured
    reference_logprob: float | None  # per-token log p of the swapped answers, base model
    logprob_by_strength: dict[str, float] = field(default_factory=dict)  # held-out answers, per factor tried
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def hold_out(usable: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(trained, held out) indices; nothing is held out of a set too small to spare any."""
    items = list(usable)
    if fraction <= 0 or len(items) < MIN_EXAMPLES_TO_HOLD_OUT:
        return items, []
    count = min(MAX_HELD_OUT, max(1, round(fraction * len(items))))
    held = set(random.Random(f"held-out:{seed}").sample(items, count))
    return [i for i in items if i not in held], [i for i in items if i in held]


def never_knew_pairs(pairs: Sequence[QAPair], subjects: Sequence[str], tokenizer: Any, seed: int) -> list[QAPair]:
    """The same questions and answers about other entities; pairs where none was found are dropped."""
    common = CommonWords(tokenizer)
    joined = [f"{q}{_JOIN}{a}" for q, a in pairs]
    entities = find_entities(joined, subjects, common)
    swapper = EntitySwapper(entity_vocabulary("calibration"), subjects, common, entities)
    rng = random.Random(f"never-knew:{seed}")
    out: list[QAPair] = []
    for text in joined:
        swapped = swapper.swap(text, rng, SwapKind.ALL)
        if swapped != text and swapped.count(_JOIN) == 1:
            question, answer = swapped.split(_JOIN)
            out.append((question, answer))
    return out


@contextmanager
def scaled_lora(model: torch.nn.Module, factor: float) -> Iterator[None]:
    """The model with its LoRA update multiplied by ``factor`` (restored on exit)."""
    originals = [(p, p.detach().clone()) for name, p in model.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for param, _ in originals:
            param.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            for param, original in originals:
                param.copy_(original)


@torch.no_grad()
def bake_strength(model: torch.nn.Module, factor: float) -> None:
    """Multiply the LoRA update by ``factor`` for good (before the adapter is saved)."""
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.mul_(factor)


def calibrate_strength(
    model: torch.nn.Module,
    held_out: Sequence[QAPair],
    never_knew: Sequence[QAPair],
    *,
    adapted_logprob: MeanLogprob,
    base_logprob: MeanLogprob,
    ladder: Sequence[float] = STRENGTH_LADDER,
) -> StrengthCalibration:
    """The weakest strength on ``ladder`` at which the held-out answers sit at or below the floor.

    ``adapted_logprob`` measures under the adapter as the model currently holds it,
    ``base_logprob`` with the adapter off. When even full strength stays above the floor the
    adapter is kept at 1: it forgets less than a model that never knew, and more training (not
    a larger factor, which would leave the trained range) is the remedy the report points to.
    """
    if not held_out:
        return StrengthCalibration(1.0, 0, None, reason="no held-out examples: kept at full strength")
    if not never_knew:
        return StrengthCalibration(
            1.0, len(held_out), None, reason="no name to swap in the held-out examples: kept at full strength"
        )
    floor = base_logprob(never_knew)
    tried: dict[str, float] = {}
    for factor in sorted(ladder):
        with scaled_lora(model, factor):
            tried[f"{factor:g}"] = value = adapted_logprob(held_out)
        if value <= floor:
            return StrengthCalibration(
                factor, len(held_out), floor, tried,
                reason=f"held-out answers at {value:.3f} nats/token <= {floor:.3f} (never knew) at strength {factor:g}",
            )
    return StrengthCalibration(
        1.0, len(held_out), floor, tried,
        reason=f"held-out answers stay above the never-knew floor {floor:.3f} nats/token even at full strength",
    )
