"""The forget-set registry: forget sets, their registration jobs and the jobs' leases (the
source of truth at start-up), and the seam its storage backends plug into.

Why one implementation for two databases: the registry's rules (the state machine, one short
transaction per state change so that after a crash the stored state says exactly which step a
job had reached, leases that give each unfinished job ONE owner across replicas) must not drift
between backends. :class:`Registry` therefore implements the whole API once, in SQL that both
SQLite and PostgreSQL accept; a backend supplies only what really differs:

* how a write transaction excludes other writers (:meth:`Registry._tx`): SQLite takes the
  database's write lock at ``BEGIN IMMEDIATE``; PostgreSQL locks the rows a transaction reads
  with ``SELECT ... FOR UPDATE`` (:attr:`Registry.lock_rows`), which holds across nodes;
* what a deletion must do afterwards so the deleted set's text does not linger in the
  database's files (:meth:`Registry._scrub_deleted`);
* where it lives and how an operator restores it (:attr:`Registry.location`,
  :attr:`Registry.restore_hint`), for the fail-closed start-up errors.

Backends: ``registry_sqlite.SqliteRegistry``, the embedded default (one file in the artifact
directory; replicas on one machine), and ``registry_postgres.PostgresRegistry`` (replicas on
several nodes). ``registry_factory.open_registry`` picks one from the configuration.

Leases: a replica runs a job only after taking its lease (``owner`` id + ``lease_until``
wall-clock time) in a write transaction, renews it while the job runs, and another replica may
take the job over only once the lease has expired (its owner died or hung).
"""

from __future__ import annotations

import builtins
import enum
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from oblivio.adapters.forget_set import UnknownForgetSetError, validate_name
from oblivio.gateway.errors import AlreadyExists, NotFound, Unavailable


class State(str, enum.Enum):
    VALIDATING = "VALIDATING"
    FITTING_DETECTOR = "FITTING_DETECTOR"
    ENFORCING = "ENFORCING"
    TRAINING = "TRAINING"
    PUBLISHING = "PUBLISHING"
    LOADING = "LOADING"
    LIVE = "LIVE"
    FAILED = "FAILED"
    DELETING = "DELETING"

    @property
    def terminal(self) -> bool:
        return self in (State.LIVE, State.FAILED)


PIPELINE_ORDER: tuple[State, ...] = (
    State.VALIDATING,
    State.FITTING_DETECTOR,
    State.ENFORCING,
    State.TRAINING,
    State.PUBLISHING,
    State.LOADING,
    State.LIVE,
)

# Forward along the pipeline one step at a time; FAILED from any working state; DELETING from
# anything. Re-entering the same state is allowed (a resumed job repeats its step).
ALLOWED: dict[State, frozenset[State]] = {
    state: frozenset({PIPELINE_ORDER[i + 1], state, State.FAILED, State.DELETING})
    for i, state in enumerate(PIPELINE_ORDER[:-1])
}
# LIVE -> FAILED only at start-up: a live set whose artifacts no longer load is quarantined.
ALLOWED[State.LIVE] = frozenset({State.LIVE, State.FAILED, State.DELETING})
ALLOWED[State.FAILED] = frozenset({State.FAILED, State.DELETING})
ALLOWED[State.DELETING] = frozenset({State.DELETING})


class ForgetSetExistsError(AlreadyExists):
    """A set with this name is already registered."""


class UnknownJobError(NotFound):
    """No registration job with this id."""


class RegistryStateError(RuntimeError):
    """The stored registry cannot be used as it is (unreadable, or lost while the artifact store
    still holds sets). The server refuses to start; the message says what the operator can do."""


class InvalidTransitionError(RuntimeError):
    """A state change the pipeline must never make; a bug, not a user error."""


@dataclass
class ForgetSetRecord:
    name: str
    description: str
    subjects: list[str]
    method: str
    keep_data: bool
    state: State
    example_count: int
    data_retained: bool
    job_id: str
    error: str
    adapter_version: int
    detector_version: int
    overlaps: dict[str, float]
    created_at: float
    updated_at: float


@dataclass
class JobRecord:
    id: str
    set_name: str
    state: State
    fraction: float
    message: str
    attempts: int
    created_at: float
    updated_at: float
    report: dict[str, Any] = field(default_factory=dict)
    owner: str = ""  # replica holding the job's lease ("" = nobody)
    lease_until: float = 0.0  # wall-clock time the lease expires unless renewed

    def lease_free(self, now: float | None = None) -> bool:
        """Nobody holds the lease, or its holder stopped renewing it."""
        return not self.owner or self.lease_until <= (time.time() if now is None else now)


class RegistryUnavailableError(Unavailable, ConnectionError):
    """The registry's database cannot be reached right now (a network database restarting or
    unreachable); the call may be retried. A ConnectionError too, so that start-up reports it
    in one line like any other unreachable service."""


def unusable_registry(location: str, cause: object, advice: str) -> RegistryStateError:
    """The start-up error for a registry that cannot be opened or read: what failed, why the
    server does not start without it, and the backend's ``advice`` to the operator."""
    return RegistryStateError(
        f"the registry {location} cannot be used: {cause}. It records which forget sets exist, so the server does "
        f"not start without it. {advice} (the server then refuses to start while the artifact store still holds "
        "sets, unless recovery.discard_unregistered_artifacts=true)"
    )


# Columns typed so one text creates the same tables in SQLite and PostgreSQL (DOUBLE PRECISION:
# PostgreSQL's REAL is 4 bytes, too coarse for timestamps; SQLite reads either as REAL).
# "overlaps" is quoted everywhere: it is a reserved word (an operator) in PostgreSQL.
SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS forget_sets (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        subjects TEXT NOT NULL DEFAULT '[]',
        method TEXT NOT NULL,
        keep_data INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        example_count INTEGER NOT NULL DEFAULT 0,
        data_retained INTEGER NOT NULL DEFAULT 1,
        job_id TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL DEFAULT '',
        adapter_version INTEGER NOT NULL DEFAULT 0,
        detector_version INTEGER NOT NULL DEFAULT 0,
        "overlaps" TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        set_name TEXT NOT NULL,
        state TEXT NOT NULL,
        fraction DOUBLE PRECISION NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        report TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        owner TEXT NOT NULL DEFAULT '',
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_set ON jobs(set_name)",
)

_SET_FIELDS = (
    "name, description, subjects, method, keep_data, state, example_count, data_retained, job_id, "
    'error, adapter_version, detector_version, "overlaps", created_at, updated_at'
)
_JOB_FIELDS = "id, set_name, state, fraction, message, attempts, created_at, updated_at, report, owner, lease_until"


def _set_row(record: ForgetSetRecord) -> tuple[Any, ...]:
    """The stored columns (``_SET_FIELDS`` order) of a record; the inverse of _set_from_row."""
    return (record.name, record.description, json.dumps(list(record.subjects)), record.method,
            int(record.keep_data), record.state.value, record.example_count, int(record.data_retained),
            record.job_id, record.error, record.adapter_version, record.detector_version,
            json.dumps(record.overlaps), record.created_at, record.updated_at)


def _job_row(job: JobRecord) -> tuple[Any, ...]:
    """The stored columns (``_JOB_FIELDS`` order) of a job; the inverse of _job_from_row."""
    return (job.id, job.set_name, job.state.value, job.fraction, job.message, job.attempts, job.created_at,
            job.updated_at, json.dumps(job.report), job.owner, job.lease_until)


_INSERT_SET = f"INSERT INTO forget_sets ({_SET_FIELDS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_JOB = f"INSERT INTO jobs ({_JOB_FIELDS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"


def _set_from_row(row: Sequence[Any]) -> ForgetSetRecord:
    return ForgetSetRecord(
        name=row[0], description=row[1], subjects=json.loads(row[2]), method=row[3],
        keep_data=bool(row[4]), state=State(row[5]), example_count=row[6], data_retained=bool(row[7]),
        job_id=row[8], error=row[9], adapter_version=row[10], detector_version=row[11],
        overlaps=json.loads(row[12]), created_at=row[13], updated_at=row[14],
    )


def _job_from_row(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=row[0], set_name=row[1], state=State(row[2]), fraction=row[3], message=row[4],
        attempts=row[5], created_at=row[6], updated_at=row[7], report=json.loads(row[8]),
        owner=row[9], lease_until=row[10],
    )


class Rows(Protocol):
    """The result of one statement (a DB-API cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Sequence[Any] | None: ...

    def fetchall(self) -> list[Any]: ...


class Statements(Protocol):
    """Runs one SQL statement with ``?`` placeholders on a backend's connection."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Rows: ...


class Registry(ABC):
    """Forget sets + jobs + leases over one SQL database; thread-safe (the backend serialises
    its connection). Subclasses implement the seam: ``_tx``, ``_read``, ``_scrub_deleted``,
    ``close``, ``location`` and ``restore_hint``."""

    #: Appended to a SELECT inside a write transaction to lock the rows it read until commit,
    #: so a read-check-write (a transition, taking a lease) is atomic against other writers.
    #: Empty where the transaction already holds a lock on the whole database (SQLite).
    lock_rows: ClassVar[str] = ""

    # ---- the backend seam ---------------------------------------------------------------------
    @property
    @abstractmethod
    def location(self) -> str:
        """Where the registry lives, for operators' messages (never a secret)."""

    @property
    @abstractmethod
    def restore_hint(self) -> str:
        """What an operator does to get a lost or damaged registry back (one clause)."""

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Statements]:
        """A write transaction: committed on exit, rolled back on an exception."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Statements]:
        """One read of committed data, outside any write transaction."""

    @abstractmethod
    def _scrub_deleted(self) -> None:
        """After :meth:`remove` committed: make the storage drop the deleted rows' old bytes."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; the object is unusable afterwards."""

    # ---- creation ---------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        method: str,
        description: str = "",
        subjects: Sequence[str] = (),
        keep_data: bool = False,
        example_count: int = 0,
        job_id: str | None = None,
        owner: str = "",
        lease_s: float = 0.0,
    ) -> tuple[ForgetSetRecord, JobRecord]:
        """A new set in VALIDATING with its first job; ALREADY_EXISTS if the name is taken.

        ``owner`` takes the job's lease in the same transaction, so no other replica can grab a
        job between its creation and the first step of the replica that accepted it. The insert
        itself decides a race for the name (``ON CONFLICT DO NOTHING``: on PostgreSQL the loser
        waits for the winner's commit and then inserts nothing).
        """
        validate_name(name)
        now = time.time()
        job_id = job_id or uuid.uuid4().hex[:16]
        record = ForgetSetRecord(
            name=name, description=description, subjects=list(subjects), method=method, keep_data=keep_data,
            state=State.VALIDATING, example_count=example_count, data_retained=True, job_id=job_id, error="",
            adapter_version=0, detector_version=0, overlaps={}, created_at=now, updated_at=now,
        )
        job = JobRecord(id=job_id, set_name=name, state=State.VALIDATING, fraction=0.0, message="accepted",
                        attempts=0, created_at=now, updated_at=now, owner=owner,
                        lease_until=now + lease_s if owner else 0.0)
        with self._tx() as db:
            inserted = db.execute(_INSERT_SET + " ON CONFLICT (name) DO NOTHING", _set_row(record))
            if inserted.rowcount == 0:
                raise ForgetSetExistsError(f"forget set {name!r} already exists; delete it first or pick another name")
            db.execute(_INSERT_JOB, _job_row(job))
        return self.get(name), self.job(job_id)

    def copy_from(self, source: Registry) -> tuple[int, int]:
        """Copy every set and job of ``source`` into this registry, which must know no set (moving
        from the embedded SQLite file to PostgreSQL; the gateways are stopped meanwhile). One
        transaction, so a failed copy leaves this registry empty. Returns (sets, jobs) copied."""
        sets = source.list()
        jobs = [job for record in sets for job in source.jobs_for(record.name)]
        with self._tx() as db:
            if db.execute("SELECT name FROM forget_sets LIMIT 1").fetchone():
                raise RegistryStateError(f"the registry {self.location} already knows forget sets; "
                                         "copy only into an empty registry")
            for record in sets:
                db.execute(_INSERT_SET, _set_row(record))
            for job in jobs:
                db.execute(_INSERT_JOB, _job_row(job))
        return len(sets), len(jobs)

    # ---- reads ------------------------------------------------------------------------------
    def get(self, name: str) -> ForgetSetRecord:
        with self._read() as db:
            row = db.execute(f"SELECT {_SET_FIELDS} FROM forget_sets WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownForgetSetError(f"no forget set named {name!r}")
        return _set_from_row(row)

    def list(self) -> list[ForgetSetRecord]:
        with self._read() as db:
            rows = db.execute(f"SELECT {_SET_FIELDS} FROM forget_sets ORDER BY created_at, name").fetchall()
        return [_set_from_row(row) for row in rows]

    def job(self, job_id: str) -> JobRecord:
        with self._read() as db:
            row = db.execute(f"SELECT {_JOB_FIELDS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no registration job with id {job_id!r}")
        return _job_from_row(row)

    def jobs_for(self, name: str) -> builtins.list[JobRecord]:  # builtins: the class has a list() method
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_JOB_FIELDS} FROM jobs WHERE set_name = ? ORDER BY created_at", (name,)
            ).fetchall()
        return [_job_from_row(row) for row in rows]

    def unfinished(self) -> builtins.list[ForgetSetRecord]:
        """Sets whose latest job stopped before a terminal state (to resume at start-up)."""
        return [record for record in self.list() if not record.state.terminal]

    # ---- updates ----------------------------------------------------------------------------
    def transition(
        self, name: str, state: State, *, fraction: float | None = None, message: str = "", error: str = ""
    ) -> ForgetSetRecord:
        """Move the set and its current job to ``state``; refuses transitions the pipeline never
        makes. The set's row stays locked from the check to the write, so a concurrent
        DeleteForgetSet on another replica is never overwritten by a forward step."""
        state = State(state)
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                f"SELECT state, job_id FROM forget_sets WHERE name = ?{self.lock_rows}", (name,)
            ).fetchone()
            if row is None:
                raise UnknownForgetSetError(f"no forget set named {name!r}")
            current, job_id = State(row[0]), row[1]
            if state not in ALLOWED[current]:
                raise InvalidTransitionError(f"forget set {name!r}: {current.value} -> {state.value} is not allowed")
            db.execute(
                "UPDATE forget_sets SET state = ?, error = ?, updated_at = ? WHERE name = ?",
                (state.value, error, now, name),
            )
            if fraction is None:
                db.execute(
                    "UPDATE jobs SET state = ?, message = ?, updated_at = ? WHERE id = ?",
                    (state.value, message, now, job_id),
                )
            else:
                db.execute(
                    "UPDATE jobs SET state = ?, message = ?, fraction = ?, updated_at = ? WHERE id = ?",
                    (state.value, message, float(fraction), now, job_id),
                )
        return self.get(name)

    def set_progress(self, job_id: str, fraction: float, message: str = "") -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET fraction = ?, message = ?, updated_at = ? WHERE id = ?",
                (float(fraction), message, time.time(), job_id),
            )

    def bump_attempts(self, job_id: str) -> int:
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempts = attempts + 1, updated_at = ? WHERE id = ?", (time.time(), job_id))
            row = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(f"no registration job with id {job_id!r}")
        return int(row[0])

    def update_set(self, name: str, **fields: Any) -> ForgetSetRecord:
        """Record artifact versions, overlaps, data retention, example count."""
        allowed = {"adapter_version", "detector_version", "overlaps", "data_retained", "example_count", "error"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update forget set fields {sorted(unknown)}")
        encoded = {k: (json.dumps(v) if k == "overlaps" else int(v) if k == "data_retained" else v) for k, v in fields.items()}
        assignments = ", ".join(f'"{key}" = ?' for key in encoded)
        with self._tx() as db:
            cursor = db.execute(
                f"UPDATE forget_sets SET {assignments}, updated_at = ? WHERE name = ?",
                (*encoded.values(), time.time(), name),
            )
            if cursor.rowcount == 0:
                raise UnknownForgetSetError(f"no forget set named {name!r}")
        return self.get(name)

    # ---- job leases (one owner per unfinished job across replicas) --------------------------
    def acquire_lease(
        self, job_id: str, owner: str, lease_s: float, *, holder_dead: Callable[[str], bool] | None = None
    ) -> bool:
        """Take (or extend) the job's lease for ``owner`` if it is free, expired or already
        ours; False while another owner's lease is live. Atomic across processes and nodes: the
        job's row stays locked from the check to the write.

        ``holder_dead(holder)`` may prove a live-looking holder dead (same-host crash) so its
        job need not wait for the lease to expire.
        """
        if not owner:
            raise ValueError("a lease owner id is required")
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT owner, lease_until FROM jobs WHERE id = ?{self.lock_rows}", (job_id,)).fetchone()
            if row is None:
                raise UnknownJobError(f"no registration job with id {job_id!r}")
            holder, until = row
            if holder and holder != owner and until > now and not (holder_dead and holder_dead(holder)):
                return False
            db.execute("UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ?", (owner, now + lease_s, job_id))
        return True

    def renew_lease(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Push our lease forward; False if it is no longer ours (taken over, or the job is gone)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ?", (time.time() + lease_s, job_id, owner)
            )
            renewed = cursor.rowcount == 1
        return renewed

    def release_lease(self, job_id: str, owner: str) -> None:
        """Give the job up at once (finished, or this replica shuts down); no-op if not ours."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET owner = '', lease_until = 0 WHERE id = ? AND owner = ?", (job_id, owner))

    def set_job_report(self, job_id: str, report: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET report = ?, updated_at = ? WHERE id = ?", (json.dumps(report), time.time(), job_id))

    def remove(self, name: str) -> None:
        """Forget the set and its jobs entirely (the last step of a deletion), then let the
        backend scrub what its storage still holds of them (see :meth:`_scrub_deleted`)."""
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE set_name = ?", (name,))
            cursor = db.execute("DELETE FROM forget_sets WHERE name = ?", (name,))
            if cursor.rowcount == 0:
                raise UnknownForgetSetError(f"no forget set named {name!r}")
        self._scrub_deleted()
