"""The OpenAI response bodies oblivio writes itself: every answer of the reference backend's
hand-written front door, and refusals on vLLM's. One module, so that both front doors answer in
the same shape and a field OpenAI adds is added once.
"""

from __future__ import annotations

import json
from typing import Any, Literal

Kind = Literal["chat", "text"]
OBJECTS: dict[Kind, tuple[str, str]] = {  # (whole answer, stream chunk)
    "chat": ("chat.completion", "chat.completion.chunk"),
    "text": ("text_completion", "text_completion"),
}
SSE_DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer(kind: Kind, head: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A whole (non-streamed) answer; ``head`` holds ``id``, ``created`` and ``model``."""
    return {**head, "object": OBJECTS[kind][0], "choices": choices, **extra}


def chunk(kind: Kind, head: dict[str, Any], choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One streamed event's payload."""
    return {**head, "object": OBJECTS[kind][1], "choices": choices, **extra}


def message_choice(index: int, content: str, finish_reason: str) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": content}, "logprobs": None,
            "finish_reason": finish_reason}


def text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def delta_choice(index: int, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def sse(payload: dict[str, Any]) -> str:
    """A server-sent event as OpenAI streams them."""
    return f"data: {json.dumps(payload)}\n\n"
