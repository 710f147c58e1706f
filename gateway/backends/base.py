"""The one interface every generation backend implements.

The gateway renders the chat template itself and hands backends token ids, so the detector and
the backend always see exactly the same prompt, and the rest of the gateway cannot tell which
backend it talks to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


class BackendError(RuntimeError):
    """The backend failed in a way the caller cannot fix (maps to gRPC UNAVAILABLE)."""


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
