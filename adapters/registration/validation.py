"""The checks a registration passes before it is accepted, and again before its job fits.

Why here and cheap: a registration answers at once (its job runs in the background), so
everything that makes a set unusable must be refused in the call itself, with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oblivio.adapters.forget_set import ForgetExample, read_examples, validate_name
from oblivio.adapters.limits import RegistrationLimits
from oblivio.adapters.training_settings import METHODS
from oblivio.gateway.errors import InvalidArgument

MAX_DESCRIPTION = 2_000
MAX_SUBJECTS = 64


def check_whole_set(examples: Sequence[ForgetExample]) -> None:
    """Checks that need the whole set (each example was validated when it was parsed)."""
    distinct = {(ex.question.strip().lower(), ex.answer.strip().lower(), ex.text.strip().lower()) for ex in examples}
    if len(distinct) < 2:
        raise InvalidArgument("a forget set needs at least 2 distinct examples (the detector calibrates on held-out ones)")


def load_job_examples(path: Path) -> list[ForgetExample]:
    """A job's stored examples; lost ones fail the job (there is nothing left to train on)."""
    if not path.is_file():
        raise RuntimeError("the forget set's examples were lost before training finished; register it again")
    return read_examples(path)


class RegistrationChecks:
    """Validates one registration request against the name rule, the methods and ``limits``.

    ``count_tokens``: also bound the set's detector texts in tokens of the served model at
    ``model_path`` (the fit's bound; a gateway without a detector fits nothing).
    """

    def __init__(self, model_path: Path, limits: RegistrationLimits, *, count_tokens: bool) -> None:
        self.model_path = model_path
        self.limits = limits
        self.count_tokens = count_tokens
        self._tokenizer: Any = None  # the served model's (transformers, untyped), loaded on first use

    async def check(
        self, name: str, examples: Sequence[ForgetExample | Mapping[str, Any]], *, description: str,
        subjects: Sequence[str], method: str,
    ) -> tuple[list[ForgetExample], list[str]]:
        """The request's examples and subjects, cleaned; raises InvalidArgument for bad input."""
        validate_name(name)
        if method not in METHODS:
            raise InvalidArgument(f"unknown training method {method!r}; choose one of {METHODS}")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description longer than {MAX_DESCRIPTION} characters")
        cleaned = [str(s).strip() for s in subjects if str(s).strip()]
        if len(cleaned) > MAX_SUBJECTS:
            raise InvalidArgument(f"at most {MAX_SUBJECTS} subjects")
        self.limits.check(examples)
        items = [ex if isinstance(ex, ForgetExample) else ForgetExample.from_mapping(ex) for ex in examples]
        if not items:
            raise InvalidArgument("a forget set needs at least one example")
        if self.count_tokens:
            await asyncio.to_thread(self.limits.check_tokens, [ex.detector_texts() for ex in items], self._token_counts)
        check_whole_set(items)
        if method != "refusal" and all(ex.as_pair(method)[1] is None for ex in items):
            raise InvalidArgument(f"method {method!r} needs question/answer pairs or texts of at least 4 words")
        return items, cleaned

    def _token_counts(self, texts: list[str]) -> list[int]:
        """Each text's tokens under the served model's tokenizer (run in a worker thread)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=False).input_ids]
