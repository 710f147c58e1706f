"""The registration pipeline: the one object the gateway's Admin service and CLI talk to.

Why a facade: callers register, list, watch and delete sets; which parts do the work (checks,
jobs, steps, live sets, replica sync, events; see the package's docstring) is nobody's
business but this module's, which builds them over one store, one registry and the runtime.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from oblivio.adapters.forget_set import ForgetExample, UnknownForgetSetError
from oblivio.adapters.lease import new_owner_id, retire_owner_id
from oblivio.adapters.registration.events import EventHub, RegistrationEvent
from oblivio.adapters.registration.jobs import JobRunner
from oblivio.adapters.registration.live_sets import LiveSets
from oblivio.adapters.registration.ports import RegistrationRuntime
from oblivio.adapters.registration.processes import StepProcesses
from oblivio.adapters.registration.progress import JobProgress
from oblivio.adapters.registration.replicas import ReplicaSync
from oblivio.adapters.registration.settings import RegistrationSettings
from oblivio.adapters.registration.steps import EXAMPLES_FILE, JobSteps
from oblivio.adapters.registration.stored_state import sweep_unregistered
from oblivio.adapters.registration.validation import RegistrationChecks
from oblivio.adapters.registry import ForgetSetExistsError, ForgetSetRecord, Registry, State
from oblivio.adapters.registry_factory import open_registry
from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore, atomic_write_bytes

log = logging.getLogger(__name__)


class RegistrationPipeline:
    """Background registration jobs over a store, a registry and the runtime's backend, detector and gate."""

    def __init__(self, runtime: RegistrationRuntime, settings: RegistrationSettings, *, owner_id: str | None = None) -> None:
        """Opens the store and the registry under ``settings.root`` (``start()`` restores the sets).

        ``owner_id`` names this pipeline in job leases; unique per pipeline lifetime by default,
        since a restarted replica must not inherit its old leases.
        """
        self.settings = settings
        self.runtime = runtime
        self.store = ArtifactStore(settings.root / STORE_SUBDIR)
        self.registry: Registry = open_registry(settings.root, settings.registry)
        self.jobs_dir = settings.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.policy_store = runtime.policy_store
        self.limits = settings.limits
        self.owner_id = owner_id or new_owner_id()
        self.checks = RegistrationChecks(settings.model_path, settings.limits, count_tokens=runtime.detector is not None)
        self.events = EventHub()
        self.progress = JobProgress(self.registry, self.events)
        self.live = LiveSets(runtime, self.store, self.registry)
        self.processes = StepProcesses(self.progress, nice=settings.nice)
        self.steps = JobSteps(settings, runtime, registry=self.registry, store=self.store, jobs_dir=self.jobs_dir,
                              live=self.live, progress=self.progress, processes=self.processes)
        self.jobs = JobRunner(settings, self.registry, self.steps, self.progress, owner_id=self.owner_id)
        self.replicas = ReplicaSync(self.registry, self.store, self.live, self.jobs)
        self._started = False

    # ---- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore every registered set into the live process and resume unfinished jobs."""
        if self._started:
            return
        self._started = True
        self.store.recover()
        sweep_unregistered(self.store, self.registry, discard_unregistered=self.settings.discard_unregistered)
        for record in self.registry.list():
            if record.state is State.DELETING:
                await self._finish_delete(record.name)
                continue
            try:
                restored = await self.live.restore(record)
            except Exception as exc:  # noqa: BLE001 - one bad set must not stop the gateway
                await self.live.quarantine(record, exc, part="artifacts")
                continue
            if restored and not record.state.terminal:
                log.info("resuming registration of %r from %s", record.name, record.state.value)
                self.jobs.spawn(record.name)
        self.policy_store.sync_sets([r.name for r in self.registry.list() if r.state is not State.DELETING])
        if self.settings.sync_interval:
            self.replicas.start(self.settings.sync_interval)

    async def close(self) -> None:
        """Stop jobs and the registry. Their leases are released, so the next replica to look
        (this one restarted, or any other's registry poll) resumes them from their last step."""
        self.jobs.closed = True
        tasks = [*self.jobs.tasks.values(), *self.replicas.task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each job releases its lease
        retire_owner_id(self.owner_id)
        self.registry.close()

    # ---- public API ---------------------------------------------------------------------------
    async def register(
        self,
        name: str,
        examples: Sequence[ForgetExample | Mapping[str, Any]],
        *,
        description: str = "",
        subjects: Sequence[str] = (),
        method: str = "refusal",
        keep_data: bool = False,
    ) -> ForgetSetRecord:
        """Accept a set (cheap checks only) and start its job; returns at once (VALIDATING).

        Raises InvalidArgument for bad input and ForgetSetExistsError for a taken name.
        """
        if self.jobs.closed:
            raise RuntimeError("registration pipeline is shut down")
        items, subjects = await self.checks.check(name, examples, description=description, subjects=subjects,
                                                  method=method)
        try:
            self.registry.get(name)
        except UnknownForgetSetError:
            pass
        else:
            raise ForgetSetExistsError(f"forget set {name!r} already exists; delete it first or pick another name")
        job_id = f"{name}-{int(time.time() * 1000):x}"
        # Data first, then the registry row: a crash in between leaves only an orphan folder.
        atomic_write_bytes(self.jobs_dir / job_id / EXAMPLES_FILE,
                           "".join(json.dumps(asdict(ex)) + "\n" for ex in items).encode())
        record, _ = self.registry.create(
            name, method=method, description=description, subjects=subjects, keep_data=keep_data,
            example_count=len(items), job_id=job_id, owner=self.owner_id, lease_s=self.settings.lease_s,
        )
        self.policy_store.register_set(name)
        self.events.emit(record.name, record.job_id, State.VALIDATING, 0.0, f"accepted {len(items)} examples")
        self.jobs.spawn(name)
        return record

    def list(self) -> list[ForgetSetRecord]:
        return self.registry.list()

    def get(self, name: str) -> ForgetSetRecord:
        return self.registry.get(name)

    def watch(self, name: str, job_id: str = "") -> AsyncIterator[RegistrationEvent]:
        """Events of the set's current job: a snapshot first, then every change until terminal."""
        return self.events.watch(self.registry, name, job_id)

    async def wait(self, name: str, timeout: float | None = None) -> ForgetSetRecord:
        """Until the set's job reaches LIVE or FAILED (for tests, benchmarks and the CLI)."""

        async def _until_terminal() -> None:
            async for event in self.watch(name):
                if event.terminal:
                    return

        await asyncio.wait_for(_until_terminal(), timeout)
        return self.registry.get(name)

    async def delete(self, name: str) -> State:
        """Remove the set from gate, detector bank, backend and disk; stops its job if running."""
        record = self.registry.get(name)
        self.registry.transition(name, State.DELETING, message="deleting")
        self.events.emit(name, record.job_id, State.DELETING, 0.0, "deleting")
        async with self.replicas.lock:
            await self._finish_delete(name)
        return State.DELETING

    async def sync_from_registry(self) -> builtins.list[str]:  # builtins: the class has a list() method
        """Load what other replicas published; drop what they deleted (see ``replicas``)."""
        return await self.replicas.sync()

    async def _finish_delete(self, name: str) -> None:
        """Idempotent teardown (also run at start-up for a deletion a crash interrupted)."""
        job_id = ""
        try:
            job_id = self.registry.get(name).job_id
        except UnknownForgetSetError:
            pass
        self.processes.kill(name)
        await self.jobs.stop(name)
        await self.live.unload(name)
        await asyncio.to_thread(self.store.delete_set, name)
        for job in self.registry.jobs_for(name):
            shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)
        try:
            self.registry.remove(name)
        except UnknownForgetSetError:
            pass
        self.events.emit(name, job_id, State.DELETING, 1.0, "deleted", terminal=True)
