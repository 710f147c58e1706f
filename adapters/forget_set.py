"""The forget-set model every part shares: what a set's name may be, the error for a name
nothing is registered under, and one forget example.

One name rule for every part that handles names (registration, the artifact store, the
detector, the gate policy): a name doubles as a folder name, an engine adapter name and a
metric label, so it is kept boring. Torch-free, so the gateway, the CLI and the detector can
import it cheaply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oblivio.adapters.limits import MAX_TEXT_CHARS
from oblivio.gateway.errors import InvalidArgument, NotFound

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class UnknownForgetSetError(NotFound):
    """No forget set (or no policy override, or no detector) is registered under this name."""


def validate_name(name: object) -> str:
    """``name`` if it follows the rule; InvalidArgument naming the rule otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"invalid forget set name {name!r}: use 1-63 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ForgetExample:
    """One forget-set item: a question with its (forgotten) answer, or a plain text."""

    question: str = ""
    answer: str = ""
    text: str = ""

    def __post_init__(self) -> None:
        has_qa = bool(self.question.strip())
        has_text = bool(self.text.strip())
        if has_qa == has_text:
            raise InvalidArgument("a forget example is either a question (with optional answer) or a plain text")
        if self.answer.strip() and not has_qa:
            raise InvalidArgument("an answer needs a question")
        for part in (self.question, self.answer, self.text):
            if len(part) > MAX_TEXT_CHARS:
                raise InvalidArgument(f"forget example longer than {MAX_TEXT_CHARS} characters")

    @classmethod
    def from_mapping(cls, item: Mapping[str, Any]) -> "ForgetExample":
        unknown = set(item) - {"question", "answer", "text"}
        if unknown:
            raise InvalidArgument(f"unknown forget example fields: {sorted(unknown)}")
        return cls(
            question=str(item.get("question") or ""),
            answer=str(item.get("answer") or ""),
            text=str(item.get("text") or ""),
        )

    def detector_texts(self) -> list[str]:
        """What the OOD detector is fitted on: the user-side text plus the forgotten content."""
        if self.text:
            return [self.text]
        return [self.question] + ([f"{self.question} {self.answer}"] if self.answer else [])

    def as_pair(self, method: str) -> tuple[str, str | None]:
        """(user message, forgotten answer) for the preference losses; ``None`` = none given."""
        if self.text:
            words = self.text.split()
            if method == "refusal" or len(words) < 4:
                return self.text, None
            cut = max(1, len(words) // 2)
            return " ".join(words[:cut]), " ".join(words[cut:])
        return self.question, self.answer or None


def read_examples(path: Path) -> list[ForgetExample]:
    """A job's stored examples (``examples.jsonl``, one example per line, as the pipeline wrote
    them): the pipeline, the trainer and the detector fit all read the job's folder through this."""
    return [ForgetExample.from_mapping(json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]
