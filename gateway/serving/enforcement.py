"""Fail closed while a registered forget set cannot be enforced.

A set whose detector state does not load (truncated, corrupted, missing) cannot be scored, so
the gate would never match its prompts and they would get the base model: the forgotten facts
would be served again. A trusted server never does that because its own state is broken. The
registration pipeline reports such sets here; while any is reported, chat is refused with
UNAVAILABLE / HTTP 503 naming the set and the operator's options, and readiness (gRPC health,
HTTP ``/health``) is NOT_SERVING. Admin stays up, so the operator can delete the set.

``recovery.serve_unenforced_sets = true`` is the explicit override: chat is served (prompts
about the broken sets get the base model) and readiness stays SERVING; the sets stay loud in
logs, ListForgetSets and the quarantine gauge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from oblivio.gateway.serving.backends.base import BackendError

LOG = logging.getLogger(__name__)

OVERRIDE = "recovery.serve_unenforced_sets"


class UnenforcedSetsError(BackendError):
    """Chat is refused: a registered forget set cannot be enforced (a BackendError: UNAVAILABLE / 503)."""


class EnforcementGuard:
    """The registered sets this process cannot enforce now, and what that means for serving."""

    def __init__(self, *, serve_unenforced: bool = False) -> None:
        self.serve_unenforced = serve_unenforced
        self._broken: dict[str, str] = {}
        self._listeners: list[Callable[[], None]] = []

    def mark_unenforced(self, name: str, reason: str) -> None:
        """``name`` cannot be scored any more (``reason`` says why); idempotent."""
        if self._broken.get(name) == reason:
            return
        self._broken[name] = reason
        if self.serve_unenforced:
            LOG.warning("forget set %r is not enforced, and chat is served anyway (%s=true): %s",
                        name, OVERRIDE, reason)
        else:
            LOG.error("forget set %r cannot be enforced; chat is refused and readiness is NOT_SERVING "
                      "until it is fixed: %s", name, reason)
        self._notify()

    def clear(self, name: str) -> None:
        """``name`` is enforced again (it loaded after all) or no longer exists (deleted)."""
        if self._broken.pop(name, None) is not None:
            LOG.info("forget set %r is enforced again or gone", name)
            self._notify()

    def unenforced(self) -> dict[str, str]:
        """``{name: reason}`` of every set that cannot be enforced now."""
        return dict(self._broken)

    @property
    def ready(self) -> bool:
        """Whether chat may be served (nothing broken, or the operator's override is set)."""
        return self.serve_unenforced or not self._broken

    def reason(self) -> str:
        """Why chat is refused: the broken sets and what an operator can do ("" when ready)."""
        if self.ready:
            return ""
        names = ", ".join(repr(name) for name in sorted(self._broken))
        return (
            f"forget set(s) {names} cannot be enforced on this server (their stored detector failed to load; "
            "see ListForgetSets or the server log), so chat is refused rather than serve what they forget. "
            "Operator: restore the set's artifacts and restart, or delete the set and register it again, "
            f"or set {OVERRIDE}=true to serve anyway"
        )

    def summary(self) -> str:
        """:meth:`reason` without set names, for unauthenticated readiness probes ("" when ready)."""
        if self.ready:
            return ""
        return (f"{len(self._broken)} registered forget set(s) cannot be enforced, so chat is refused; an operator "
                "must restore or delete them (see ListForgetSets or the server log)")

    def check_chat(self) -> None:
        """Raise :class:`UnenforcedSetsError` unless chat may be served."""
        if not self.ready:
            raise UnenforcedSetsError(self.reason())

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change (readiness follows it)."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
