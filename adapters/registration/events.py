"""Registration events and their subscribers (WatchRegistration, ``wait``, the CLI's ``--wait``).

Why apart: every step emits events, but only watchers hold queues; the hub keeps the queues so
the steps only say what happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from oblivio.adapters.registry import Registry, State


@dataclass(frozen=True)
class RegistrationEvent:
    name: str
    job_id: str
    state: State
    fraction: float
    message: str
    time: float
    terminal: bool  # LIVE, FAILED or deleted: a watch ends after this event


class EventHub:
    """Fans each set's events out to the watchers subscribed to it."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[RegistrationEvent]]] = {}

    def emit(self, name: str, job_id: str, state: State, fraction: float, message: str,
             terminal: bool | None = None) -> None:
        """Tell ``name``'s watchers; ``terminal`` defaults to whether ``state`` ends a job."""
        event = RegistrationEvent(
            name, job_id, state, round(fraction, 4), message, time.time(),
            state.terminal if terminal is None else terminal,
        )
        for queue in list(self._subscribers.get(name, ())):
            queue.put_nowait(event)

    async def watch(self, registry: Registry, name: str, job_id: str = "") -> AsyncIterator[RegistrationEvent]:
        """Events of the set's current job: a snapshot first, then every change until terminal.

        An older ``job_id`` of the set gets that job's last state alone.
        """
        record = registry.get(name)
        if job_id and job_id != record.job_id:
            job = registry.job(job_id)
            yield RegistrationEvent(name, job.id, job.state, job.fraction, job.message, job.updated_at, True)
            return
        queue: asyncio.Queue[RegistrationEvent] = asyncio.Queue()
        self._subscribers.setdefault(name, set()).add(queue)
        try:
            try:
                record = registry.get(name)
                job = registry.job(record.job_id)
            except LookupError:  # deleted between the two reads
                yield RegistrationEvent(name, job_id or record.job_id, State.DELETING, 1.0, "deleted", time.time(), True)
                return
            terminal = record.state.terminal
            yield RegistrationEvent(
                name, job.id, record.state, job.fraction, record.error or job.message, job.updated_at, terminal
            )
            while not terminal:
                event = await queue.get()
                terminal = event.terminal
                yield event
        finally:
            self._subscribers.get(name, set()).discard(queue)
