"""Live registration of forget sets: background jobs from "forget this" to a live adapter.

Per set: VALIDATING -> FITTING_DETECTOR -> ENFORCING -> TRAINING -> PUBLISHING -> LOADING -> LIVE
(or FAILED; DELETING on delete). Design choices:

* **Enforce at once.** Validation and detector fitting (seconds) run as soon as a set arrives,
  outside the training queue. Once the detector is in the bank and the set known to the policy
  store, the gate refuses matched prompts (the adapter is not live yet), so "forget" takes
  effect before any training starts.
* **Heavy steps off the serving process.** The detector fit
  (``python -m oblivio.adapters.detector_fit``, ``config.detector.fit_threads`` torch threads,
  its own copy of the truncated detector model) and each training
  (``python -m oblivio.adapters.training``, ``config.training.threads``) are child processes
  at a lower CPU priority (``oblivio.adapters.child_process``): serving keeps its cores, its
  GIL, its memory and its detector lock (chat scoring never waits for a fit), and deleting a
  set or shutting down mid-step is a kill. Fits run one at a time, trainings too (FIFO).
* **Bounded input.** A set over ``config.registration`` (examples, characters per example and
  in all: the fit's memory) is refused at registration (``oblivio.adapters.limits``).
* **Durable and resumable.** Every step is a registry transition; examples, checkpoints and the
  training output live in the job's folder. On ``start()`` LIVE sets are restored (detector
  into the bank, adapter into the backend) and unfinished jobs continue from their last step
  (training from its last checkpoint). Artifacts are published through the atomic
  ``ArtifactStore``, so a crash never leaves a half-written version visible.
* **Replicas.** Gateways scale horizontally over ONE shared artifact directory and ONE registry
  (the SQLite file in that directory, or a PostgreSQL database for replicas on several nodes).
  The replica that accepted a registration runs its job; every other replica polls
  the registry every ``sync_interval`` seconds (:meth:`sync_from_registry`) and loads what was
  published elsewhere: a new detector version enters its bank (so its gate refuses matched
  prompts at once), a new adapter version is loaded into its backend once the set is LIVE, and
  a set deleted elsewhere is dropped. Propagation delay is therefore at most one interval.
* **One owner per job.** A job runs only on the replica holding its lease in the registry
  (taken with the registry row at registration, renewed every ``lease_s / 3`` seconds while the
  job runs, released when it ends or the replica shuts down). A replica that restarts, or any
  replica's registry poll, takes over an unfinished job only once its lease is free or expired
  (its owner died), so two replicas never train the same set; an owner that provably died on
  this host (its PID is gone, see ``oblivio.adapters.lease``) is taken over without waiting.
  An owner that loses its lease (it stalled past ``lease_s`` and another replica took the job,
  or the set was deleted elsewhere) stops its copy of the job.
* **Observable.** Every state change and training step is an event; ``watch()`` is an async
  subscription that starts with the current snapshot (used by WatchRegistration).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import shutil
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oblivio.adapters.child_process import run_child
from oblivio.adapters.detector_fit import extractor_settings
from oblivio.adapters.lease import new_owner_id, owner_is_dead, retire_owner_id
from oblivio.adapters.limits import RegistrationLimits
from oblivio.adapters.precision import PRECISION_FIELD, TRAINING_DTYPE
from oblivio.adapters.forget_set import ForgetExample, UnknownForgetSetError, validate_name
from oblivio.adapters.registry import ForgetSetRecord, Registry, RegistryStateError, State
from oblivio.adapters.registry_factory import open_registry
from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore, atomic_write_bytes
from oblivio.adapters.training import METHODS, TrainingSettings
from oblivio.gateway.config import RegistryConfig
from oblivio.gateway.serving.enforcement import EnforcementGuard
from oblivio.gateway.errors import InvalidArgument

log = logging.getLogger(__name__)

REPLICA_SYNC_S = 5.0  # how often a gateway picks up registrations made by other replicas
QUARANTINED = "quarantined"  # prefix of a FAILED set's error when its artifacts did not load
JOB_LEASE_S = 30.0  # a job whose owner stopped renewing this long ago may be taken over
MAX_DESCRIPTION = 2_000
MAX_SUBJECTS = 64
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


@dataclass(frozen=True)
class RegistrationEvent:
    name: str
    job_id: str
    state: State
    fraction: float
    message: str
    time: float
    terminal: bool  # LIVE, FAILED or deleted: a watch ends after this event


def check_stored_state(
    root: Path, *, discard_unregistered: bool = False, registry_config: RegistryConfig | None = None
) -> None:
    """Check the registry (``registry_config``'s, else ``registry.db`` under ``root``) and the
    artifact store under ``root`` against each other, and close.

    A gateway does this before it loads the model, so an unreadable or lost registry stops it
    in seconds with :class:`RegistryStateError` (nothing deleted), not after the engine started.
    """
    registry = open_registry(Path(root), registry_config)
    try:
        sweep_unregistered(ArtifactStore(Path(root) / STORE_SUBDIR), registry, discard_unregistered=discard_unregistered)
    finally:
        registry.close()


def sweep_unregistered(store: ArtifactStore, registry: Registry, *, discard_unregistered: bool = False) -> list[str]:
    """Remove the artifacts of sets the registry does not know; returns their names.

    One such set next to registered ones is a publish that raced its set's deletion: removed,
    with a log line each. But a registry that knows NO set while the store holds sets means the
    registry was lost (a mis-mounted volume, a deleted file): serving would enforce nothing and
    deleting would destroy every set. That refuses to start unless the operator says the
    artifacts are garbage (``recovery.discard_unregistered_artifacts``).
    """
    known = {record.name for record in registry.list()}
    orphans = sorted(set(store.set_names()) - known)
    if orphans and not known and not discard_unregistered:
        raise RegistryStateError(
            f"the registry {registry.location} knows no forget set, but the artifact store {store.root} holds "
            f"{len(orphans)} ({', '.join(orphans)}). The registry was probably lost (a volume not mounted, "
            f"a deleted file, another database): serving would enforce none of them. To fix it, "
            f"{registry.restore_hint} and start again; nothing was deleted. If these artifacts really are "
            "leftovers of deleted sets, set recovery.discard_unregistered_artifacts=true to delete them and start"
        )
    for orphan in orphans:
        log.warning("deleting the artifacts of forget set %r: the registry %s does not know it (a publish that "
                    "raced its deletion, or recovery.discard_unregistered_artifacts)", orphan, registry.location)
        store.delete_set(orphan)
    return orphans


class DetectorPort:
    """The calls the pipeline makes on ``oblivio.detector`` in this process (fits run in a
    child, see ``oblivio.adapters.detector_fit``); imported lazily (torch-heavy)."""

    def __init__(self, bank: Any) -> None:
        self.bank = bank

    def load(self, directory: Path) -> Any:
        from oblivio.detector import ForgetSetScorer

        return ForgetSetScorer.load(directory)


class RegistrationPipeline:
    """Background registration jobs over a store, a registry, the backend, detector and gate."""

    def __init__(
        self,
        *,
        model_path: Path,
        root: Path,
        backend: Any,
        policy_store: Any,
        detector: Any = None,
        training: TrainingSettings | None = None,
        threads: int = 1,
        fit_threads: int = 1,
        nice: int = 10,
        max_attempts: int = 3,
        sync_interval: float | None = None,
        lease_s: float = JOB_LEASE_S,
        owner_id: str | None = None,
        metrics: Any = None,
        enforcement: EnforcementGuard | None = None,
        discard_unregistered: bool = False,
        registry_config: RegistryConfig | None = None,  # the registry shared by the replicas (default: under root)
        limits: RegistrationLimits | None = None,
    ) -> None:
        """``enforcement`` learns which sets cannot be enforced here (chat and readiness fail
        closed on it); ``discard_unregistered`` is the operator's override of
        :func:`sweep_unregistered`'s refusal. ``threads`` / ``fit_threads``: torch threads of
        the trainer / detector-fit child processes; ``limits`` bound each registered set."""
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.model_path = Path(model_path)
        self.root = Path(root)
        self.store = ArtifactStore(self.root / STORE_SUBDIR)
        self.registry: Registry = open_registry(self.root, registry_config)
        self.enforcement = enforcement or EnforcementGuard()
        self.discard_unregistered = discard_unregistered
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.policy_store = policy_store
        self.detector = DetectorPort(detector) if detector is not None else None
        self.training = training or TrainingSettings()
        self.threads = threads
        self.fit_threads = fit_threads
        self.nice = nice
        self.limits = limits or RegistrationLimits()
        self._tokenizer: Any = None  # the served model's, for the token bound (loaded on first use)
        self.max_attempts = max_attempts
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._subscribers: dict[str, set[asyncio.Queue[RegistrationEvent]]] = {}
        self._train_lock = asyncio.Lock()
        self._fit_lock = asyncio.Lock()  # one fit at a time: each holds a model and the set's features
        self._started = False
        self._closed = False
        self.sync_interval = sync_interval
        self._sync_task: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()
        # name -> (detector version, adapter version) this process has loaded (0 = none)
        self._loaded: dict[str, tuple[int, int]] = {}
        self.lease_s = lease_s
        self.metrics = metrics  # oblivio.gateway.serving.metrics.GatewayMetrics (quarantine gauge), optional
        # Unique per pipeline lifetime: a restarted replica must not inherit its old leases.
        self.owner_id = owner_id or new_owner_id()

    @classmethod
    def from_runtime(cls, runtime: Any, **overrides: Any) -> "RegistrationPipeline":
        """The pipeline a gateway process runs, wired to its backend, detector and policy store."""
        config = runtime.config
        training = config.training
        kwargs: dict[str, Any] = dict(
            model_path=config.model_path,
            root=config.artifacts_path,
            backend=runtime.backend,
            policy_store=runtime.policy_store,
            detector=runtime.detector,
            training=TrainingSettings(
                steps=training.steps, epochs=training.epochs, batch_size=training.batch_size,
                max_length=training.max_length,
            ),
            threads=training.threads,
            fit_threads=config.detector.fit_threads,
            limits=RegistrationLimits.from_config(config.registration),
            sync_interval=REPLICA_SYNC_S,
            metrics=runtime.metrics,
            enforcement=runtime.enforcement,
            discard_unregistered=config.recovery.discard_unregistered_artifacts,
            registry_config=config.registry,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    # ---- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore every registered set into the live process and resume unfinished jobs."""
        if self._started:
            return
        self._started = True
        self.store.recover()
        sweep_unregistered(self.store, self.registry, discard_unregistered=self.discard_unregistered)
        for record in self.registry.list():
            if record.state is State.DELETING:
                await self._finish_delete(record.name)
                continue
            try:
                restored = await self._restore(record)
            except Exception as exc:  # noqa: BLE001 - one bad set must not stop the gateway
                await self._quarantine(record, exc, part="artifacts")
                continue
            if restored and not record.state.terminal:
                log.info("resuming registration of %r from %s", record.name, record.state.value)
                self._spawn(record.name)
        self._sync_policy_sets()
        if self.sync_interval:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop(), name="registry-sync")

    async def close(self) -> None:
        """Stop jobs and the registry. Their leases are released, so the next replica to look
        (this one restarted, or any other's registry poll) resumes them from their last step."""
        self._closed = True
        tasks = list(self._tasks.values()) + ([self._sync_task] if self._sync_task is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each job releases its lease
        retire_owner_id(self.owner_id)
        self.registry.close()

    async def _restore(self, record: ForgetSetRecord) -> bool:
        """Put a set's published artifacts back into the bank / backend.

        Returns False if the set had to be quarantined (see :meth:`_quarantine`). A FAILED set
        keeps its detector, so the gate still refuses prompts about it.
        """
        name = record.name
        detector_dir = self.store.current(name, "detector")
        if self.detector is not None and (detector_dir is not None or record.detector_version):
            try:
                if detector_dir is None:  # published once, gone now: as broken as a corrupted file
                    raise FileNotFoundError(f"detector version {record.detector_version} is not in the artifact store")
                scorer = await asyncio.to_thread(self.detector.load, detector_dir)
                self.detector.bank.add(name, scorer)
            except Exception as exc:  # noqa: BLE001 - corrupted, truncated, incompatible, unreadable
                await self._quarantine(record, exc, part="detector")
                return False
            self._note_loaded(name, detector=self.store.current_version(name, "detector"))
        if record.state is State.LIVE:
            adapter_dir = self.store.current(name, "adapter")
            try:
                if adapter_dir is None:
                    raise FileNotFoundError("no published adapter version on disk")
                await self._load_adapter(name, adapter_dir)
            except Exception as exc:  # noqa: BLE001 - the detector alone still enforces the set
                await self._quarantine(record, exc, part="adapter")
                return False
        elif record.state is State.FAILED and record.error.startswith(QUARANTINED):
            self._report_quarantine(name, record.error)  # quarantined on an earlier start: keep the gauge up
        return True

    async def _quarantine(self, record: ForgetSetRecord, exc: Exception, *, part: str) -> None:
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
        self._loaded.pop(name, None)
        if part != "adapter" and self.detector is not None and name in self.detector.bank.names():
            self.detector.bank.remove(name)
        if name in self.backend.list_adapters():
            try:
                await self.backend.remove_adapter(name)
            except Exception:  # noqa: BLE001 - best effort: it was never fully loaded
                log.exception("could not unload the adapter of quarantined set %r", name)
        enforced = self._detector_enforces(name)
        cause = f"{type(exc).__name__}: {exc}"
        # Tracked even when nothing loaded, so a deletion on another replica still clears it here.
        self._loaded[name] = (self.store.current_version(name, "detector") if enforced else 0, 0)
        if enforced:
            error = (f"{QUARANTINED} at start-up: its {part} failed to load ({cause}); matched prompts are "
                     "REFUSED instead (the detector still enforces the set); delete and register it again")
        elif self.enforcement.serve_unenforced:
            error = (f"{QUARANTINED} at start-up: its {part} failed to load ({cause}); the set is NOT ENFORCED "
                     "on this replica and chat is served anyway (recovery.serve_unenforced_sets): prompts about "
                     "it get the base model; restore its artifacts and restart, or delete and register it again")
        else:
            error = (f"{QUARANTINED} at start-up: its {part} failed to load ({cause}); the set is NOT ENFORCED "
                     "on this replica, so chat is refused and readiness is NOT_SERVING; restore its artifacts "
                     "and restart, or delete and register it again")
        self._report_quarantine(name, error)
        log.error("forget set %r: %s", name, error)
        self.registry.transition(name, State.FAILED, message=error, error=error)

    def _report_quarantine(self, name: str, reason: str) -> bool:
        """Set the quarantine gauge for ``name`` and, if nothing enforces it any more, tell the
        enforcement guard (chat and readiness fail closed); True if its detector still enforces it."""
        enforced = self._detector_enforces(name)
        if self.metrics is not None:
            self.metrics.forget_set_quarantined(name, "refusal" if enforced else "none")
        if not enforced:
            self.enforcement.mark_unenforced(name, reason)
        return enforced

    def _detector_enforces(self, name: str) -> bool:
        """Whether a detector for ``name`` is in the bank (the gate can match its prompts)."""
        return self.detector is not None and name in self.detector.bank.names()

    def _clear_quarantine(self, name: str) -> None:
        """``name`` loaded after all, or is gone: no longer quarantined nor unenforced."""
        if self.metrics is not None:
            self.metrics.forget_set_unquarantined(name)
        self.enforcement.clear(name)

    def _sync_policy_sets(self) -> None:
        names = [r.name for r in self.registry.list() if r.state is not State.DELETING]
        self.policy_store.sync_sets(names)

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
        if self._closed:
            raise RuntimeError("registration pipeline is shut down")
        validate_name(name)
        if method not in METHODS:
            raise InvalidArgument(f"unknown training method {method!r}; choose one of {METHODS}")
        if len(description) > MAX_DESCRIPTION:
            raise InvalidArgument(f"description longer than {MAX_DESCRIPTION} characters")
        subjects = [str(s).strip() for s in subjects if str(s).strip()]
        if len(subjects) > MAX_SUBJECTS:
            raise InvalidArgument(f"at most {MAX_SUBJECTS} subjects")
        self.limits.check(examples)
        items = [ex if isinstance(ex, ForgetExample) else ForgetExample.from_mapping(ex) for ex in examples]
        if not items:
            raise InvalidArgument("a forget set needs at least one example")
        if self.detector is not None:  # the token bound is the fit's: a gateway without a detector fits nothing
            await asyncio.to_thread(self.limits.check_tokens, [ex.detector_texts() for ex in items], self._count_tokens)
        self._validate_examples(items)
        if method != "refusal" and all(ex.as_pair(method)[1] is None for ex in items):
            raise InvalidArgument(f"method {method!r} needs question/answer pairs or texts of at least 4 words")
        try:
            self.registry.get(name)
        except UnknownForgetSetError:
            pass
        else:
            from oblivio.adapters.registry import ForgetSetExistsError

            raise ForgetSetExistsError(f"forget set {name!r} already exists; delete it first or pick another name")
        job_id = f"{name}-{int(time.time() * 1000):x}"
        job_dir = self.jobs_dir / job_id
        # Data first, then the registry row: a crash in between leaves only an orphan folder.
        atomic_write_bytes(job_dir / "examples.jsonl", "".join(json.dumps(asdict(ex)) + "\n" for ex in items).encode())
        record, _ = self.registry.create(
            name, method=method, description=description, subjects=subjects, keep_data=keep_data,
            example_count=len(items), job_id=job_id, owner=self.owner_id, lease_s=self.lease_s,
        )
        self.policy_store.register_set(name)
        self._emit(record.name, record.job_id, State.VALIDATING, 0.0, f"accepted {len(items)} examples")
        self._spawn(name)
        return record

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's tokens under the served model's tokenizer (run in a worker thread)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=False).input_ids]

    def list(self) -> list[ForgetSetRecord]:
        return self.registry.list()

    def get(self, name: str) -> ForgetSetRecord:
        return self.registry.get(name)

    async def watch(self, name: str, job_id: str = "") -> AsyncIterator[RegistrationEvent]:
        """Events of the set's current job: a snapshot first, then every change until terminal."""
        record = self.registry.get(name)
        if job_id and job_id != record.job_id:
            job = self.registry.job(job_id)
            yield RegistrationEvent(name, job.id, job.state, job.fraction, job.message, job.updated_at, True)
            return
        queue: asyncio.Queue[RegistrationEvent] = asyncio.Queue()
        self._subscribers.setdefault(name, set()).add(queue)
        try:
            try:
                record = self.registry.get(name)
                job = self.registry.job(record.job_id)
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
        self._emit(name, record.job_id, State.DELETING, 0.0, "deleting")
        async with self._sync_lock:
            self._loaded.pop(name, None)
            await self._finish_delete(name)
        return State.DELETING

    # ---- replicas ---------------------------------------------------------------------------
    def _note_loaded(self, name: str, *, detector: int | None = None, adapter: int | None = None) -> None:
        old_detector, old_adapter = self._loaded.get(name, (0, 0))
        self._loaded[name] = (old_detector if detector is None else detector, old_adapter if adapter is None else adapter)

    async def _sync_loop(self) -> None:
        assert self.sync_interval
        while not self._closed:
            await asyncio.sleep(self.sync_interval)
            try:
                await self.sync_from_registry()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed poll is retried on the next tick
                log.exception("syncing registrations from the shared registry failed")

    async def sync_from_registry(self) -> builtins.list[str]:  # builtins: the class has a list() method
        """Load what other replicas published to the shared store; drop what they deleted.

        Sets with a job running in THIS process are left to that job. FAILED sets are not
        loaded (their artifacts may be what failed). Returns the names that changed here.
        """
        changed: builtins.list[str] = []
        self.policy_store.refresh()  # gate policy changes made on another replica
        async with self._sync_lock:
            records = {r.name: r for r in self.registry.list()}
            for name in [n for n in self._loaded if n not in records and n not in self._tasks]:
                await self._drop_local(name)
                changed.append(name)
            for name, record in records.items():
                if name not in self._tasks and not record.state.terminal and record.state is not State.DELETING \
                        and not self._closed and self._job_lease_free(record.job_id):
                    log.info("taking over the registration of %r (%s): its owner is gone or its lease expired",
                             name, record.state.value)
                    self._spawn(name)
                    changed.append(name)
                if name in self._tasks or record.state in (State.FAILED, State.DELETING, State.VALIDATING):
                    continue
                have_detector, have_adapter = self._loaded.get(name, (0, 0))
                detector_version = self.store.current_version(name, "detector")
                adapter_version = self.store.current_version(name, "adapter") if record.state is State.LIVE else 0
                if detector_version == have_detector and adapter_version in (have_adapter, 0):
                    continue
                try:
                    await self._pick_up(name, detector_version if detector_version != have_detector else 0,
                                        adapter_version if adapter_version != have_adapter else 0)
                except Exception as exc:  # noqa: BLE001 - one unreadable set must not stall the others
                    enforced = self._report_quarantine(
                        name, f"published by another replica, it failed to load here ({type(exc).__name__}: {exc})")
                    log.exception("forget set %r published by another replica failed to load here; %s; "
                                  "retrying on the next poll", name,
                                  "its previous version or a refusal still applies" if enforced else "NOT ENFORCED")
                    continue
                self._clear_quarantine(name)
                log.info("picked up forget set %r from the shared registry (detector v%d, adapter v%d)",
                         name, detector_version, adapter_version)
                changed.append(name)
        return changed

    async def _pick_up(self, name: str, detector_version: int, adapter_version: int) -> None:
        """Load the given new versions (0 = unchanged) of a set another replica published."""
        if detector_version:
            if self.detector is not None:
                path = self.store.path_of(name, "detector", detector_version)
                scorer = await asyncio.to_thread(self.detector.load, path)
                self.detector.bank.add(name, scorer)  # replaces an older version atomically
            self._note_loaded(name, detector=detector_version)
        self.policy_store.register_set(name)
        if adapter_version:
            await self._load_adapter(name, self.store.path_of(name, "adapter", adapter_version))

    def _job_lease_free(self, job_id: str) -> bool:
        try:
            job = self.registry.job(job_id)
        except LookupError:  # deleted meanwhile
            return False
        return job.lease_free() or owner_is_dead(job.owner)

    async def _drop_local(self, name: str) -> None:
        """Unload a set another replica deleted (its files and registry row are already gone)."""
        self._loaded.pop(name, None)
        self._clear_quarantine(name)
        if self.metrics is not None:
            self.metrics.forget_set_removed(name)  # a deleted set's series must not stay forever
        if self.detector is not None and name in self.detector.bank.names():
            self.detector.bank.remove(name)
        if name in self.backend.list_adapters():
            await self.backend.remove_adapter(name)
        try:
            self.policy_store.forget(name)
        except KeyError:
            pass
        log.info("dropped forget set %r: deleted by another replica", name)

    # ---- internals: events ------------------------------------------------------------------
    def _emit(self, name: str, job_id: str, state: State, fraction: float, message: str, terminal: bool | None = None) -> None:
        event = RegistrationEvent(
            name, job_id, state, round(fraction, 4), message, time.time(),
            state.terminal if terminal is None else terminal,
        )
        for queue in list(self._subscribers.get(name, ())):
            queue.put_nowait(event)

    def _advance(self, name: str, state: State, message: str = "", fraction: float | None = None) -> ForgetSetRecord:
        fraction = FRACTION[state] if fraction is None else fraction
        record = self.registry.transition(name, state, fraction=fraction, message=message)
        self._emit(name, record.job_id, state, fraction, message)
        return record

    # ---- internals: the job -------------------------------------------------------------------
    def _spawn(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(name), name=f"register-{name}")
        self._tasks[name] = task

        def forget(done: asyncio.Task[None]) -> None:  # unless a newer job of the set replaced it
            if self._tasks.get(name) is done:
                del self._tasks[name]

        task.add_done_callback(forget)

    async def _run(self, name: str) -> None:
        try:
            job_id = self.registry.get(name).job_id
            acquired = self.registry.acquire_lease(job_id, self.owner_id, self.lease_s, holder_dead=owner_is_dead)
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
            if attempts > self.max_attempts:
                raise RuntimeError(f"gave up after {self.max_attempts} attempts")
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
            message = str(exc) or type(exc).__name__
            self.registry.transition(name, State.FAILED, message=message, error=message)
            self._emit(name, job_id, State.FAILED, current_fraction(self.registry, job_id), message)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            try:  # finished, failed or stopped: another replica may take an unfinished job at once
                self.registry.release_lease(job_id, self.owner_id)
            except Exception:  # noqa: BLE001 - e.g. the registry is closing; the lease then expires
                log.warning("could not release the lease on job %s; it expires in %.0fs", job_id, self.lease_s)

    async def _keep_lease(self, name: str, job_id: str, job_task: asyncio.Task[None]) -> None:
        """Renew the job's lease while it runs; stop the job if the lease is lost.

        Lost means another replica holds it now (this process stalled past ``lease_s``) or the
        set was deleted by another replica: either way this copy must not go on (it would
        publish over the new owner's work, or train a set nobody wants any more).
        """
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                held = self.registry.renew_lease(job_id, self.owner_id, self.lease_s)
            except Exception:  # noqa: BLE001 - a busy/locked database: retry until the lease runs out
                log.exception("renewing the lease on job %s failed", job_id)
                held = time.monotonic() - last_renewed < self.lease_s
            else:
                last_renewed = time.monotonic() if held else last_renewed
            if not held:
                log.error("lost the lease on the registration of %r (job %s); stopping it on this replica",
                          name, job_id)
                job_task.cancel()
                return

    async def _run_steps(self, name: str, job_id: str) -> None:
        record = self.registry.get(name)
        job_dir = self.jobs_dir / job_id
        examples_path = job_dir / "examples.jsonl"
        state = record.state

        if state in (State.VALIDATING, State.FITTING_DETECTOR):
            self._validate_examples(self._load_examples(examples_path))
            await self._fit_detector(name, record)
            record = self.registry.get(name)
            state = record.state

        if state in (State.ENFORCING, State.TRAINING) or (
            state is State.PUBLISHING and not (job_dir / "out" / "training_report.json").is_file()
        ):
            await self._train(name, job_id, record)
            state = State.PUBLISHING
        if state is State.PUBLISHING:
            await self._publish(name, job_id, record)
            state = State.LOADING
        if state is State.LOADING:
            adapter_dir = self.store.current(name, "adapter")
            if adapter_dir is None:
                raise RuntimeError("no published adapter to load")
            await self._load_adapter(name, adapter_dir)
            self._advance(name, State.LIVE, "adapter live: the gate now applies it to matched prompts")

    @staticmethod
    def _load_examples(path: Path) -> builtins.list[ForgetExample]:
        if not path.is_file():
            raise RuntimeError("the forget set's examples were lost before training finished; register it again")
        return [ForgetExample.from_mapping(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    @staticmethod
    def _validate_examples(examples: Sequence[ForgetExample]) -> None:
        """Checks that need the whole set (each example was validated when it was parsed)."""
        distinct = {(ex.question.strip().lower(), ex.answer.strip().lower(), ex.text.strip().lower()) for ex in examples}
        if len(distinct) < 2:
            raise InvalidArgument("a forget set needs at least 2 distinct examples (the detector calibrates on held-out ones)")

    async def _fit_detector(self, name: str, record: ForgetSetRecord) -> None:
        """Fit in a child process (see ``oblivio.adapters.detector_fit``), publish its folder,
        load it into the bank: from then on the gate refuses matched prompts."""
        self._advance(name, State.FITTING_DETECTOR, "fitting the OOD detector")
        if self.detector is None:
            self._advance(name, State.ENFORCING, "no detector in this gateway: nothing is enforced until the adapter is live")
            return
        job_dir = self.jobs_dir / record.job_id
        out_dir = job_dir / "detector"
        async with self._fit_lock:
            shutil.rmtree(out_dir, ignore_errors=True)
            spec = {
                "model_path": str(self.model_path),
                "extractor": extractor_settings(self.detector.bank.extractor),
                "threads": self.fit_threads,
                "examples_path": str(job_dir / "examples.jsonl"),
                "name": name,
                "subjects": list(record.subjects),
                "out_dir": str(out_dir),
            }
            atomic_write_bytes(job_dir / "detector_spec.json", json.dumps(spec).encode())
            await self._run_child(
                name, record.job_id, "oblivio.adapters.detector_fit", job_dir / "detector_spec.json",
                threads=self.fit_threads, state=State.FITTING_DETECTOR, span=FIT_SPAN, what="detector fit",
                describe=lambda message: (float(message["fraction"]), str(message["message"])),
            )
        published = await asyncio.to_thread(self.store.publish, name, "detector", out_dir)
        shutil.rmtree(out_dir, ignore_errors=True)
        (job_dir / "detector_spec.json").unlink(missing_ok=True)
        scorer = await asyncio.to_thread(self.detector.load, published.path)
        self.registry.update_set(name, detector_version=published.version)
        self.detector.bank.add(name, scorer)
        self._note_loaded(name, detector=published.version)
        self.policy_store.register_set(name)
        self._advance(name, State.ENFORCING, "detector live: matched prompts are refused until the adapter is live")

    def _priors(self, name: str) -> dict[str, str]:
        """Every other set's published adapter: the new one is kept orthogonal to all of them."""
        priors = {}
        for other in self.registry.list():
            if other.name == name or other.state is State.DELETING:
                continue
            path = self.store.current(other.name, "adapter")
            if path is not None:
                priors[other.name] = str(path)
        return priors

    async def _train(self, name: str, job_id: str, record: ForgetSetRecord) -> None:
        job_dir = self.jobs_dir / job_id
        if record.state is not State.TRAINING:
            self._advance(name, State.TRAINING, "waiting for the trainer", fraction=TRAINING_SPAN[0])
        async with self._train_lock:
            settings = TrainingSettings(
                **{**asdict(self.training), "method": record.method, "threads": self.threads,
                   "seed": zlib.crc32(name.encode()) % 10_000}
            )
            out_dir = job_dir / "out"
            shutil.rmtree(out_dir, ignore_errors=True)
            spec = {
                "model_path": str(self.model_path),
                "examples_path": str(job_dir / "examples.jsonl"),
                "out_dir": str(out_dir),
                "priors": self._priors(name),
                "settings": asdict(settings),
                "checkpoint_path": str(job_dir / "checkpoint.pt"),
            }
            atomic_write_bytes(job_dir / "spec.json", json.dumps(spec).encode())
            report = await self._run_child(
                name, job_id, "oblivio.adapters.training", job_dir / "spec.json",
                threads=self.threads, state=State.TRAINING, span=TRAINING_SPAN, what="training",
                describe=lambda message: (
                    int(message["step"]) / max(int(message["total"]), 1),
                    f"training step {message['step']}/{message['total']}, loss {message['loss']:.4f}",
                ),
            )
        self.registry.set_job_report(job_id, report)
        self.registry.update_set(name, overlaps=report.get("overlap", {}))

    async def _run_child(
        self, name: str, job_id: str, module: str, spec_path: Path, *, threads: int, state: State,
        span: tuple[float, float], what: str, describe: Callable[[dict[str, Any]], tuple[float, str]],
    ) -> dict[str, Any]:
        """Run one step's child process (``oblivio.adapters.child_process``) for the set's job.

        ``describe`` turns a progress message into (fraction of the step, text); it becomes the
        job's progress within ``span`` and a ``state`` event. The process is tracked in
        ``_procs`` while it runs, so a deletion kills it.
        """
        low, high = span

        def on_progress(message: dict[str, Any]) -> None:
            done, text = describe(message)
            fraction = low + (high - low) * min(max(done, 0.0), 1.0)
            self.registry.set_progress(job_id, fraction, text)
            self._emit(name, job_id, state, fraction, text)

        def on_process(proc: asyncio.subprocess.Process | None) -> None:
            if proc is None:
                self._procs.pop(name, None)
            else:
                self._procs[name] = proc

        return await run_child(module, spec_path, threads=threads, nice=self.nice, on_progress=on_progress,
                               on_process=on_process, what=what)

    async def _publish(self, name: str, job_id: str, record: ForgetSetRecord) -> None:
        job_dir = self.jobs_dir / job_id
        out_dir = job_dir / "out"
        self._advance(name, State.PUBLISHING, "publishing the adapter")
        report = self.registry.job(job_id).report
        published = await asyncio.to_thread(
            self.store.publish, name, "adapter", out_dir,
            {"set": name, "job_id": job_id, "method": record.method, "overlap": report.get("overlap", {}),
             PRECISION_FIELD: report.get(PRECISION_FIELD, TRAINING_DTYPE)},
        )
        await asyncio.to_thread(self.store.prune, name, "adapter", 2)
        self.registry.update_set(name, adapter_version=published.version)
        # Training is over: the raw text is no longer needed (unless the operator kept it).
        keep = self.registry.get(name).keep_data
        for leftover in ("out", "checkpoint.pt", "spec.json") + (() if keep else ("examples.jsonl",)):
            path = job_dir / leftover
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        if not keep:
            self.registry.update_set(name, data_retained=False)
        self._advance(name, State.LOADING, f"loading adapter version {published.version} into the backend")

    async def _load_adapter(self, name: str, path: Path) -> None:
        if name in self.backend.list_adapters():
            await self.backend.remove_adapter(name)
        await self.backend.add_adapter(name, path)
        self._note_loaded(name, adapter=int(path.name[1:]) if path.name.startswith("v") and path.name[1:].isdigit() else -1)

    async def _finish_delete(self, name: str) -> None:
        """Idempotent teardown (also run at start-up for a deletion a crash interrupted)."""
        job_id = ""
        try:
            job_id = self.registry.get(name).job_id
        except UnknownForgetSetError:
            pass
        proc = self._procs.get(name)
        if proc is not None and proc.returncode is None:
            proc.kill()
        task = self._tasks.get(name)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.detector is not None and name in self.detector.bank.names():
            self.detector.bank.remove(name)
        self._clear_quarantine(name)
        if self.metrics is not None:
            self.metrics.forget_set_removed(name)  # a deleted set's series must not stay forever
        try:
            self.policy_store.forget(name)
        except KeyError:
            pass
        if name in self.backend.list_adapters():
            await self.backend.remove_adapter(name)
        await asyncio.to_thread(self.store.delete_set, name)
        for job in self.registry.jobs_for(name):
            shutil.rmtree(self.jobs_dir / job.id, ignore_errors=True)
        try:
            self.registry.remove(name)
        except UnknownForgetSetError:
            pass
        self._emit(name, job_id, State.DELETING, 1.0, "deleted", terminal=True)


def current_fraction(registry: Registry, job_id: str) -> float:
    try:
        return registry.job(job_id).fraction
    except LookupError:
        return 0.0
