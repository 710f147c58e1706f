"""A job's progress: each state's place between 0 and 1, recorded in the registry and emitted.

Why together: a watcher that joins late reads progress from the registry, one that is already
watching gets it as an event; both must say the same, so one call does both.
"""

from __future__ import annotations

from oblivio.adapters.registration.events import EventHub
from oblivio.adapters.registry import ForgetSetRecord, Registry, State

FRACTION = {
    State.VALIDATING: 0.0,
    State.FITTING_DETECTOR: 0.02,
    State.ENFORCING: 0.1,
    State.TRAINING: 0.1,
    State.PUBLISHING: 0.92,
    State.LOADING: 0.96,
    State.LIVE: 1.0,
}
FIT_SPAN = (FRACTION[State.FITTING_DETECTOR], FRACTION[State.ENFORCING])
TRAINING_SPAN = (0.1, 0.9)


class JobProgress:
    """Moves jobs through their states in the registry and tells the watchers."""

    def __init__(self, registry: Registry, events: EventHub) -> None:
        self.registry = registry
        self.events = events

    def advance(self, name: str, state: State, message: str = "", fraction: float | None = None) -> ForgetSetRecord:
        """Move the set and its job to ``state`` (at that state's fraction unless given)."""
        fraction = FRACTION[state] if fraction is None else fraction
        record = self.registry.transition(name, state, fraction=fraction, message=message)
        self.events.emit(name, record.job_id, state, fraction, message)
        return record

    def report(self, name: str, job_id: str, state: State, fraction: float, message: str) -> None:
        """Progress within the job's present ``state``."""
        self.registry.set_progress(job_id, fraction, message)
        self.events.emit(name, job_id, state, fraction, message)

    def fail(self, name: str, job_id: str, message: str) -> None:
        """The job failed: the set is FAILED with ``message`` as its error."""
        self.registry.transition(name, State.FAILED, message=message, error=message)
        self.events.emit(name, job_id, State.FAILED, self.current_fraction(job_id), message)

    def current_fraction(self, job_id: str) -> float:
        try:
            return self.registry.job(job_id).fraction
        except LookupError:
            return 0.0
