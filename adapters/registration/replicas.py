"""Replica sync: pick up what other gateway replicas published to the shared registry and store.

Why a poll: replicas share nothing but the artifact directory and the registry, so each one
looks every ``sync_interval`` seconds; propagation delay is at most one interval. A new
detector version enters the bank (so the gate refuses matched prompts at once), a new adapter
version is loaded once the set is LIVE, a set deleted elsewhere is dropped, and a job whose
owner died is taken over.
"""

from __future__ import annotations

import asyncio
import logging

from oblivio.adapters.registration.jobs import JobRunner
from oblivio.adapters.registration.live_sets import LiveSets
from oblivio.adapters.registry import Registry, State
from oblivio.adapters.store import ArtifactStore

log = logging.getLogger(__name__)


class ReplicaSync:
    """Polls the shared registry; ``lock`` is held while a poll or a local deletion changes live sets."""

    def __init__(self, registry: Registry, store: ArtifactStore, live: LiveSets, jobs: JobRunner) -> None:
        self.registry = registry
        self.store = store
        self.live = live
        self.jobs = jobs
        self.lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(interval), name="registry-sync")

    def task(self) -> list[asyncio.Task[None]]:
        """The polling task, if started (for shutdown)."""
        return [self._task] if self._task is not None else []

    async def _loop(self, interval: float) -> None:
        while not self.jobs.closed:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed poll is retried on the next tick
                log.exception("syncing registrations from the shared registry failed")

    async def sync(self) -> list[str]:
        """Load what other replicas published to the shared store; drop what they deleted.

        Sets with a job running in THIS process are left to that job. FAILED sets are not
        loaded (their artifacts may be what failed). Returns the names that changed here.
        """
        changed: list[str] = []
        self.live.runtime.policy_store.refresh()  # gate policy changes made on another replica
        running = self.jobs.tasks
        async with self.lock:
            records = {r.name: r for r in self.registry.list()}
            for name in [n for n in self.live.loaded if n not in records and n not in running]:
                await self.live.unload(name)
                log.info("dropped forget set %r: deleted by another replica", name)
                changed.append(name)
            for name, record in records.items():
                if name not in running and not record.state.terminal and record.state is not State.DELETING \
                        and not self.jobs.closed and self.jobs.lease_free(record.job_id):
                    log.info("taking over the registration of %r (%s): its owner is gone or its lease expired",
                             name, record.state.value)
                    self.jobs.spawn(name)
                    changed.append(name)
                if name in running or record.state in (State.FAILED, State.DELETING, State.VALIDATING):
                    continue
                have_detector, have_adapter = self.live.loaded.get(name, (0, 0))
                detector_version = self.store.current_version(name, "detector")
                adapter_version = self.store.current_version(name, "adapter") if record.state is State.LIVE else 0
                if detector_version == have_detector and adapter_version in (have_adapter, 0):
                    continue
                try:
                    await self._pick_up(name, detector_version if detector_version != have_detector else 0,
                                        adapter_version if adapter_version != have_adapter else 0)
                except Exception as exc:  # noqa: BLE001 - one unreadable set must not stall the others
                    enforced = self.live.report_quarantine(
                        name, f"published by another replica, it failed to load here ({type(exc).__name__}: {exc})")
                    log.exception("forget set %r published by another replica failed to load here; %s; "
                                  "retrying on the next poll", name,
                                  "its previous version or a refusal still applies" if enforced else "NOT ENFORCED")
                    continue
                self.live.clear_quarantine(name)
                log.info("picked up forget set %r from the shared registry (detector v%d, adapter v%d)",
                         name, detector_version, adapter_version)
                changed.append(name)
        return changed

    async def _pick_up(self, name: str, detector_version: int, adapter_version: int) -> None:
        """Load the given new versions (0 = unchanged) of a set another replica published."""
        if detector_version:
            await self.live.load_detector(name, self.store.path_of(name, "detector", detector_version), detector_version)
        self.live.runtime.policy_store.register_set(name)
        if adapter_version:
            await self.live.load_adapter(name, self.store.path_of(name, "adapter", adapter_version))
