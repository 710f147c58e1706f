"""What this process serves of each registered set, and the sets whose artifacts failed to load.

Why one place: a set enters the detector bank, the backend and the gate at registration, at
start-up (restore), and when another replica published it; it leaves all three at deletion,
when another replica deleted it, and (partly) when its artifacts are broken. Each of those
paths goes through here, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from oblivio.adapters.registration.ports import RegistrationRuntime
from oblivio.adapters.registry import ForgetSetRecord, Registry, State
from oblivio.adapters.store import ArtifactStore

if TYPE_CHECKING:
    from oblivio.detector import ForgetSetScorer

log = logging.getLogger(__name__)

QUARANTINED = "quarantined"  # prefix of a FAILED set's error when its artifacts did not load


async def read_scorer(directory: Path) -> ForgetSetScorer:
    """A published detector folder, loaded off the event loop (torch-heavy, imported lazily)."""
    from oblivio.detector import ForgetSetScorer

    return await asyncio.to_thread(ForgetSetScorer.load, directory)


class LiveSets:
    """Loads sets into (and out of) the runtime's detector bank, backend and gate, and
    remembers which versions this process loaded (``loaded``: name -> (detector, adapter), 0 = none)."""

    def __init__(self, runtime: RegistrationRuntime, store: ArtifactStore, registry: Registry) -> None:
        self.runtime = runtime
        self.store = store
        self.registry = registry
        self.loaded: dict[str, tuple[int, int]] = {}

    # ---- loading ------------------------------------------------------------------------------
    def note_loaded(self, name: str, *, detector: int | None = None, adapter: int | None = None) -> None:
        old_detector, old_adapter = self.loaded.get(name, (0, 0))
        self.loaded[name] = (old_detector if detector is None else detector, old_adapter if adapter is None else adapter)

    def add_detector(self, name: str, scorer: ForgetSetScorer, version: int) -> None:
        """Put (or replace, atomically) the set's detector in the bank: the gate matches it from now on."""
        bank = self.runtime.detector
        if bank is not None:
            bank.add(name, scorer)
        self.note_loaded(name, detector=version)

    async def load_detector(self, name: str, directory: Path, version: int) -> None:
        if self.runtime.detector is not None:
            self.add_detector(name, await read_scorer(directory), version)
        else:
            self.note_loaded(name, detector=version)

    async def load_adapter(self, name: str, path: Path) -> None:
        """Hot-load the adapter folder ``path`` (a store version ``v<N>``), replacing a loaded one."""
        backend = self.runtime.backend
        if name in backend.list_adapters():
            await backend.remove_adapter(name)
        await backend.add_adapter(name, path)
        self.note_loaded(name, adapter=int(path.name[1:]) if path.name.startswith("v") and path.name[1:].isdigit() else -1)

    async def restore(self, record: ForgetSetRecord) -> bool:
        """Put a set's published artifacts back into the bank / backend (start-up).

        Returns False if the set had to be quarantined (see :meth:`quarantine`). A FAILED set
        keeps its detector, so the gate still refuses prompts about it.
        """
        name = record.name
        detector_dir = self.store.current(name, "detector")
        if self.runtime.detector is not None and (detector_dir is not None or record.detector_version):
            try:
                if detector_dir is None:  # published once, gone now: as broken as a corrupted file
                    raise FileNotFoundError(f"detector version {record.detector_version} is not in the artifact store")
                await self.load_detector(name, detector_dir, self.store.current_version(name, "detector"))
            except Exception as exc:  # noqa: BLE001 - corrupted, truncated, incompatible, unreadable
                await self.quarantine(record, exc, part="detector")
                return False
        if record.state is State.LIVE:
            adapter_dir = self.store.current(name, "adapter")
            try:
                if adapter_dir is None:
                    raise FileNotFoundError("no published adapter version on disk")
                await self.load_adapter(name, adapter_dir)
            except Exception as exc:  # noqa: BLE001 - the detector alone still enforces the set
                await self.quarantine(record, exc, part="adapter")
                return False
        elif record.state is State.FAILED and record.error.startswith(QUARANTINED):
            self.report_quarantine(name, record.error)  # quarantined on an earlier start: keep the gauge up
        return True

    async def unload(self, name: str) -> None:
        """Take the set out of the bank, the backend, the gate and the metrics (deleted here or elsewhere)."""
        self.loaded.pop(name, None)
        self.clear_quarantine(name)
        if self.runtime.metrics is not None:
            self.runtime.metrics.forget_set_removed(name)  # a deleted set's series must not stay forever
        bank = self.runtime.detector
        if bank is not None and name in bank.names():
            bank.remove(name)
        if name in self.runtime.backend.list_adapters():
            await self.runtime.backend.remove_adapter(name)
        try:
            self.runtime.policy_store.forget(name)
        except KeyError:
            pass

    # ---- quarantine ---------------------------------------------------------------------------
    async def quarantine(self, record: ForgetSetRecord, exc: Exception, *, part: str) -> None:
        """A set whose stored artifacts cannot be loaded (corrupted, truncated, unreadable) is
        marked FAILED; every other set keeps serving. It fails CLOSED where it can:

        * adapter unreadable, detector fine: the detector stays in the bank, so the gate still
          matches prompts about the set and, with no live adapter, refuses them (the same
          fallback as while a registration trains);
        * detector unreadable (or missing): nothing can score prompts against the set, so it is
          NOT enforced here. Then chat is refused and readiness is NOT_SERVING (see
          ``oblivio.gateway.serving.enforcement``) unless the operator set
          ``recovery.serve_unenforced_sets``; it is loud either way: an ERROR log line, the
          FAILED state with a "NOT ENFORCED" error in ListForgetSets / GetForgetSet, and the
          ``oblivio_forget_set_quarantined`` gauge with ``enforced_by="none"``.

        Its name stays known to the gate and the registry keeps the row, so an operator can
        delete and register it again.
        """
        name = record.name
        self.loaded.pop(name, None)
        bank = self.runtime.detector
        if part != "adapter" and bank is not None and name in bank.names():
            bank.remove(name)
        if name in self.runtime.backend.list_adapters():
            try:
                await self.runtime.backend.remove_adapter(name)
            except Exception:  # noqa: BLE001 - best effort: it was never fully loaded
                log.exception("could not unload the adapter of quarantined set %r", name)
        enforced = self.detector_enforces(name)
        cause = f"{type(exc).__name__}: {exc}"
        # Tracked even when nothing loaded, so a deletion on another replica still clears it here.
        self.loaded[name] = (self.store.current_version(name, "detector") if enforced else 0, 0)
        if enforced:
            error = (f"{QUARANTINED} at start-up: its {part} failed to load ({cause}); matched prompts are "
                     "REFUSED instead (the detector still enforces the set); delete and register it again")
        elif self.runtime.enforcement.serve_unenforced:
            error = (f"{QUARANTINED} at start-up: its {part} failed to load ({cause}); the set is NOT ENFORCED "
                     "on this replica and chat is served anyway (recovery.serve_unenforced_sets): prompts about "
                     "it get the base model; restore its artifacts and restart, or delete and register it again")
        else:
            error = (f"{QUARANTINED} at start-up: its {part} failed to load ({cause}); the set is NOT ENFORCED "
                     "on this replica, so chat is refused and readiness is NOT_SERVING; restore its artifacts "
                     "and restart, or delete and register it again")
        self.report_quarantine(name, error)
        log.error("forget set %r: %s", name, error)
        self.registry.transition(name, State.FAILED, message=error, error=error)

    def report_quarantine(self, name: str, reason: str) -> bool:
        """Set the quarantine gauge for ``name`` and, if nothing enforces it any more, tell the
        enforcement guard (chat and readiness fail closed); True if its detector still enforces it."""
        enforced = self.detector_enforces(name)
        if self.runtime.metrics is not None:
            self.runtime.metrics.forget_set_quarantined(name, "refusal" if enforced else "none")
        if not enforced:
            self.runtime.enforcement.mark_unenforced(name, reason)
        return enforced

    def detector_enforces(self, name: str) -> bool:
        """Whether a detector for ``name`` is in the bank (the gate can match its prompts)."""
        bank = self.runtime.detector
        return bank is not None and name in bank.names()

    def clear_quarantine(self, name: str) -> None:
        """``name`` loaded after all, or is gone: no longer quarantined nor unenforced."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.forget_set_unquarantined(name)
        self.runtime.enforcement.clear(name)
