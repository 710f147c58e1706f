"""The one interface every generation backend implements.

The gateway renders the chat template itself and hands backends token ids, so the detector and
the backend always see exactly the same prompt, and the rest of the gateway cannot tell which
backend it talks to.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from oblivio.gateway.errors import InvalidArgument, Unavailable


class BackendError(Unavailable):
    """The backend failed in a way the caller cannot fix; retrying later may work."""

    openai_code = "backend_unavailable"


class AdapterNotFoundError(KeyError):
    """A generation asked for an adapter that was never registered with the backend."""


@dataclass(frozen=True)
class AdapterApplication:
    """Which unlearning adapters a request runs with, each at a scale in (0, max].

    An empty tuple means the untouched base model. Several entries mean their exact sum: the
    effective weight delta is sum_i scale_i * (alpha_i / r_i) * B_i A_i.
    """

    adapters: tuple[tuple[str, float], ...] = ()

    @property
    def is_base(self) -> bool:
        return not self.adapters


@dataclass(frozen=True)
class SamplingSettings:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None


@dataclass
class GenerationChunk:
    """An incremental piece of output; the last chunk of a stream carries ``finish_reason``."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    # For each new token: {token_id: logprob} over the top-k requested in SamplingSettings.logprobs.
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


# Upper bound on top-k logprobs per token; vLLM's default ``max_logprobs`` is 20.
MAX_LOGPROBS = 20


def normalize_application(
    application: AdapterApplication, known: Collection[str]
) -> tuple[tuple[str, float], ...]:
    """Validate a request's adapters and drop the ones at scale 0 (scale 0 means "no adapter").

    Both backends call this first, so a bad request fails the same way whichever one serves it:
    ``InvalidArgument`` for a negative, non-finite or duplicated entry, ``AdapterNotFoundError`` for a
    name the backend was never given.
    """
    seen: set[str] = set()
    kept: list[tuple[str, float]] = []
    for name, scale in application.adapters:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"adapter name must be a non-empty string, got {name!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise InvalidArgument(f"scale of adapter {name!r} must be a finite number, got {scale!r}")
        if scale < 0:
            raise InvalidArgument(f"scale of adapter {name!r} must be >= 0, got {scale}")
        if name in seen:
            raise InvalidArgument(f"adapter {name!r} appears twice in one request")
        seen.add(name)
        if name not in known:
            raise AdapterNotFoundError(name)
        if scale > 0:
            kept.append((name, float(scale)))
    return tuple(kept)


def validate_sampling(sampling: SamplingSettings) -> None:
    """Reject settings no backend can honour, with a message naming the field."""
    if sampling.max_tokens < 1:
        raise InvalidArgument(f"max_tokens must be >= 1, got {sampling.max_tokens}")
    if not math.isfinite(sampling.temperature) or sampling.temperature < 0:
        raise InvalidArgument(f"temperature must be a finite number >= 0, got {sampling.temperature}")
    if not (0 < sampling.top_p <= 1):
        raise InvalidArgument(f"top_p must lie in (0, 1], got {sampling.top_p}")
    if any(not isinstance(s, str) or not s for s in sampling.stop):
        raise InvalidArgument("stop strings must be non-empty strings")
    if sampling.logprobs is not None and not (0 <= sampling.logprobs <= MAX_LOGPROBS):
        raise InvalidArgument(f"logprobs must lie in [0, {MAX_LOGPROBS}], got {sampling.logprobs}")


def prepare_request(
    prompt_token_ids: Sequence[int],
    sampling: SamplingSettings,
    application: AdapterApplication,
    known_adapters: Collection[str],
    max_model_len: int,
) -> tuple[list[int], tuple[tuple[str, float], ...]]:
    """The checks every backend runs before it queues a generation, in one place so a bad
    request fails identically (same exception, same message) whichever backend serves it.

    Returns the prompt as plain ints and the adapters left after :func:`normalize_application`.
    """
    validate_sampling(sampling)
    adapters = normalize_application(application, known_adapters)
    prompt = [int(t) for t in prompt_token_ids]
    if not prompt:
        raise InvalidArgument("prompt must contain at least one token")
    if len(prompt) >= max_model_len:
        raise InvalidArgument(f"prompt has {len(prompt)} tokens; max_model_len is {max_model_len}")
    return prompt, adapters


@runtime_checkable
class GenerationBackend(Protocol):
    """Async generation over one base model with runtime-registered LoRA adapters."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add_adapter(self, name: str, path: Path) -> None:
        """Make a peft adapter folder available under ``name`` without restarting anything."""

    async def remove_adapter(self, name: str) -> None:
        """Unload ``name`` and every derived (scaled, stacked) variant of it."""

    def list_adapters(self) -> list[str]: ...

    def generate(
        self,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSettings,
        application: AdapterApplication,
        request_id: str,
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the completion; closing the iterator early aborts the request in the engine."""

    async def healthy(self) -> bool: ...
