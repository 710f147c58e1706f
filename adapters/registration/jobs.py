"""The job state machine: one task per set that takes its lease and runs its steps in order.

Why apart: which step comes next is decided from the registry alone (the job's last recorded
state), which is what makes a job resumable after a crash and movable to another replica; the
steps themselves (``steps``) know nothing of leases, attempts or tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time

from oblivio.adapters.forget_set import UnknownForgetSetError
from oblivio.adapters.lease import owner_is_dead
from oblivio.adapters.registration.progress import JobProgress
from oblivio.adapters.registration.settings import RegistrationSettings
from oblivio.adapters.registration.steps import EXAMPLES_FILE, JobSteps
from oblivio.adapters.registration.validation import check_whole_set, load_job_examples
from oblivio.adapters.registry import Registry, State

log = logging.getLogger(__name__)


class JobRunner:
    """Runs this process's registration jobs (``tasks``: set name -> its running job)."""

    def __init__(
        self, settings: RegistrationSettings, registry: Registry, steps: JobSteps, progress: JobProgress,
        *, owner_id: str,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.steps = steps
        self.progress = progress
        self.owner_id = owner_id
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closed = False  # shutting down: no job starts any more

    def spawn(self, name: str) -> None:
        """Start (or take over) the set's job in the background."""
        task = asyncio.get_running_loop().create_task(self._run(name), name=f"register-{name}")
        self.tasks[name] = task

        def forget(done: asyncio.Task[None]) -> None:  # unless a newer job of the set replaced it
            if self.tasks.get(name) is done:
                del self.tasks[name]

        task.add_done_callback(forget)

    async def stop(self, name: str) -> None:
        """Cancel the set's job and wait for it (a job deleting its own set is not waited for)."""
        task = self.tasks.get(name)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def lease_free(self, job_id: str) -> bool:
        """Whether another replica's job may be taken over: its lease is free or expired, or its
        owner provably died on this host."""
        try:
            job = self.registry.job(job_id)
        except LookupError:  # deleted meanwhile
            return False
        return job.lease_free() or owner_is_dead(job.owner)

    async def _run(self, name: str) -> None:
        try:
            job_id = self.registry.get(name).job_id
            acquired = self.registry.acquire_lease(job_id, self.owner_id, self.settings.lease_s,
                                                   holder_dead=owner_is_dead)
        except LookupError:  # deleted (by another replica) before the job got going
            return
        if not acquired:
            log.info("registration of %r (job %s) is owned by another replica; not running it here", name, job_id)
            return
        job_task = asyncio.current_task()
        assert job_task is not None
        heartbeat = asyncio.get_running_loop().create_task(self._keep_lease(name, job_id, job_task),
                                                           name=f"lease-{name}")
        try:
            attempts = self.registry.bump_attempts(job_id)
            if attempts > self.settings.max_attempts:
                raise RuntimeError(f"gave up after {self.settings.max_attempts} attempts")
            await self._run_steps(name, job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure becomes the set's FAILED state
            log.exception("registration of %r failed", name)
            try:
                current = self.registry.get(name)
            except UnknownForgetSetError:
                return
            if current.state is State.DELETING:
                return
            self.progress.fail(name, job_id, str(exc) or type(exc).__name__)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            try:  # finished, failed or stopped: another replica may take an unfinished job at once
                self.registry.release_lease(job_id, self.owner_id)
            except Exception:  # noqa: BLE001 - e.g. the registry is closing; the lease then expires
                log.warning("could not release the lease on job %s; it expires in %.0fs", job_id, self.settings.lease_s)

    async def _keep_lease(self, name: str, job_id: str, job_task: asyncio.Task[None]) -> None:
        """Renew the job's lease while it runs; stop the job if the lease is lost.

        Lost means another replica holds it now (this process stalled past ``lease_s``) or the
        set was deleted by another replica: either way this copy must not go on (it would
        publish over the new owner's work, or train a set nobody wants any more).
        """
        lease_s = self.settings.lease_s
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                held = self.registry.renew_lease(job_id, self.owner_id, lease_s)
            except Exception:  # noqa: BLE001 - a busy/locked database: retry until the lease runs out
                log.exception("renewing the lease on job %s failed", job_id)
                held = time.monotonic() - last_renewed < lease_s
            else:
                last_renewed = time.monotonic() if held else last_renewed
            if not held:
                log.error("lost the lease on the registration of %r (job %s); stopping it on this replica",
                          name, job_id)
                job_task.cancel()
                return

    async def _run_steps(self, name: str, job_id: str) -> None:
        """From the job's last recorded state to LIVE."""
        record = self.registry.get(name)
        state = record.state
        if state in (State.VALIDATING, State.FITTING_DETECTOR):
            check_whole_set(load_job_examples(self.steps.jobs_dir / job_id / EXAMPLES_FILE))
            await self.steps.fit_detector(name, record)
            record = self.registry.get(name)
            state = record.state
        if state in (State.ENFORCING, State.TRAINING) or (state is State.PUBLISHING and not self.steps.trained(job_id)):
            await self.steps.train(name, job_id, record)
            state = State.PUBLISHING
        if state is State.PUBLISHING:
            await self.steps.publish(name, job_id, record)
            state = State.LOADING
        if state is State.LOADING:
            await self.steps.load(name)
