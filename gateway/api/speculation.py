"""Speculative base answers: vLLM starts on the base model while the detector still scores.

Why: nearly all traffic is base traffic, and scoring before generating put the detector's whole
latency (its queue under load included) in front of every first token. Started together, the
two overlap, and nothing of the speculative answer reaches the client unless the gate decides
"base". When it does not, the speculation was pure cost: a prefill thrown away and, on a CPU
machine, cores the detector needed while it scored. :class:`SpeculationOdds` keeps that cost
to runs of traffic where speculation pays.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

# ASGI types as Starlette declares them (starlette.types), so these apps plug into its stack.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# How long a discarded speculative answer may take to stop after its disconnect (then: cancelled).
SPECULATION_STOP_S = 1.0


class SpeculationOdds:
    """Whether the next request should speculate, from the gate's recent decisions.

    Speculation wins the detector's latency when the gate decides "base" and loses a prefill
    (and, on CPU, the detector's cores) when it does not. So it is on while at least
    ``min_base_share`` of the last ``window`` decisions were "base", which holds for ordinary
    traffic, and off during a run of forget traffic, whose answers then start as soon as the
    gate decided instead of after a discarded base prefill. A run of forget traffic can thus
    turn speculation off for everyone; what the others pay then is the detector's latency, the
    same as without speculation, and a window of base decisions turns it back on.
    """

    def __init__(self, window: int = 8, min_base_share: float = 0.5) -> None:
        if window < 1 or not 0.0 <= min_base_share <= 1.0:
            raise ValueError("window must be >= 1 and min_base_share in [0, 1]")
        self.min_base_share = min_base_share
        self._recent: deque[bool] = deque(maxlen=window)

    def worth_it(self) -> bool:
        """Speculate on the next request? Yes until decisions say otherwise."""
        if not self._recent:
            return True
        return sum(self._recent) >= self.min_base_share * len(self._recent)

    def observe(self, base: bool) -> None:
        """Record one gate decision (``base``: the request went to the untouched base model)."""
        self._recent.append(base)


class BaseSpeculation:
    """vLLM's base answer to one request, started before the gate decided.

    Every message vLLM sends is held here until :meth:`release` passes them on;
    :meth:`discard` (adapter or refusal) makes vLLM see a client disconnect, so it aborts the
    request in the engine, and drops what was held.
    """

    def __init__(self, vllm_app: Any, request: tuple[Scope, bytes], receive: Receive) -> None:
        scope, raw = request
        self._client_receive = receive
        self._body: bytes | None = raw
        self._stop = asyncio.Event()
        self._held: list[Message] = []
        self._target: Send | None = None
        self._task = asyncio.ensure_future(vllm_app(scope, self._receive, self._send))

    async def _receive(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        if self._stop.is_set():  # discarded: the client's own messages belong to the answer that replaced this one
            return {"type": "http.disconnect"}
        client = asyncio.ensure_future(self._client_receive())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({client, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (client, stop):
                task.cancel()
        return client.result() if client in done else {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if self._target is None:
            self._held.append(message)
        else:
            await self._target(message)

    async def release(self, send: Send) -> None:
        """Pass on what vLLM sent so far, in order, then the rest as it comes; wait for the end."""
        while self._held:
            await send(self._held.pop(0))
        self._target = send
        await self._task

    async def discard(self) -> None:
        """Stop vLLM's base answer (a disconnect, so the engine aborts it) and drop it."""
        self._stop.set()
        self._held.clear()
        self._target = _nowhere
        if not self._task.done():
            await asyncio.wait({self._task}, timeout=SPECULATION_STOP_S)
            self._task.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._task


async def _nowhere(message: Message) -> None:
    """Where a discarded speculative answer's remaining messages go."""
