"""Bounds on what one forget-set registration may hold (config section ``registration``).

Why: the detector fit keeps hidden states of every text of a set and of its swapped near
misses, so a set's size is its fit's memory and time (TOFU forget10, 103k characters: 3.3 GB
peak and 3 min on one thread). An unbounded upload (a 10 MB set) grew a server by 9 GB and
starved chat for minutes. Refusing
it up front with INVALID_ARGUMENT naming the bound and the offending example is cheap; the
counting is incremental so the Admin API can stop reading a stream as soon as a bound is
crossed, without buffering the rest. Characters alone do not bound the fit: English is about
0.26 tokens a character, but text in scripts the vocabulary covers poorly is up to 4, so the
detector texts' tokens are bounded too (counted with the served model's tokenizer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from oblivio.gateway.errors import InvalidArgument

MAX_TEXT_CHARS = 8_000  # hard cap on one question, answer or text (ForgetExample enforces it)
DEFAULT_MAX_EXAMPLES = 2_000
DEFAULT_MAX_EXAMPLE_CHARS = 2_000
DEFAULT_MAX_TOTAL_CHARS = 250_000
DEFAULT_MAX_TOTAL_TOKENS = 75_000
_SHOWN_CHARS = 40  # how much of an offending example an error message quotes


class RegistrationLimitError(InvalidArgument):
    """A forget set exceeds a configured bound: the client's to fix, so not RESOURCE_EXHAUSTED
    (that would invite retrying the same set)."""


@dataclass(frozen=True)
class RegistrationLimits:
    """The bounds; field names match ``registration.*`` in the config, which errors cite."""

    max_examples: int = DEFAULT_MAX_EXAMPLES
    max_example_chars: int = DEFAULT_MAX_EXAMPLE_CHARS
    max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS
    max_total_tokens: int = DEFAULT_MAX_TOTAL_TOKENS

    @classmethod
    def from_config(cls, config: Any) -> "RegistrationLimits":
        """From ``oblivio.gateway.config.RegistrationConfig``."""
        return cls(config.max_examples, config.max_example_chars, config.max_total_chars, config.max_total_tokens)

    def counter(self) -> "LimitCounter":
        return LimitCounter(self)

    def check(self, examples: Any) -> None:
        """Raise :class:`RegistrationLimitError` for the first example that crosses a bound.

        ``examples`` are ``ForgetExample``s or mappings with question/answer/text."""
        counter = self.counter()
        for example in examples:
            counter.add(example)

    def check_tokens(self, detector_texts: Sequence[Sequence[str]], count: Callable[[list[str]], list[int]]) -> None:
        """Raise :class:`RegistrationLimitError` at the example whose detector texts (one list
        per example) take the set over ``max_total_tokens``; ``count`` gives each text's tokens."""
        counts = iter(count([text for texts in detector_texts for text in texts]))
        total = 0
        for index, texts in enumerate(detector_texts, 1):
            total += sum(next(counts) for _ in texts)
            if total > self.max_total_tokens:
                raise RegistrationLimitError(
                    f"forget set refused: at example {index} ({_shown(texts[-1])}) the texts the detector is fitted "
                    f"on hold {total} tokens, over registration.max_total_tokens = {self.max_total_tokens} (text "
                    f"the model's vocabulary covers poorly takes up to 4 tokens a character){_RAISE}")


class LimitCounter:
    """Counts a set's examples as they arrive and refuses the first one over a bound."""

    def __init__(self, limits: RegistrationLimits) -> None:
        self.limits = limits
        self.examples = 0
        self.chars = 0

    def add(self, example: Any) -> None:
        parts = [_field(example, key) for key in ("question", "answer", "text")]
        size = sum(len(part) for part in parts)
        self.examples += 1
        self.chars += size
        limits = self.limits
        where = f"example {self.examples} ({_shown(' '.join(p for p in parts if p))})"
        if self.examples > limits.max_examples:
            raise RegistrationLimitError(
                f"forget set refused: {where} is one more than registration.max_examples = {limits.max_examples}"
                f"{_RAISE}")
        if size > limits.max_example_chars:
            raise RegistrationLimitError(
                f"forget set refused: {where} has {size} characters, over registration.max_example_chars = "
                f"{limits.max_example_chars} (question, answer and text together){_RAISE}")
        if self.chars > limits.max_total_chars:
            raise RegistrationLimitError(
                f"forget set refused: at {where} the set holds {self.chars} characters, over "
                f"registration.max_total_chars = {limits.max_total_chars}{_RAISE}")


_RAISE = ("; split the set, or raise the bound in the config if the host has the memory (the detector fit "
          "needs roughly 3 GB per 100,000 characters)")


def _field(example: Any, key: str) -> str:
    value = example.get(key) if isinstance(example, dict) else getattr(example, key, "")
    return value if isinstance(value, str) else ""


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")
