"""The embedded registry backend: one SQLite file in the artifact directory (the default).

WAL mode so the gateway's readers (List/Get) never wait on the pipeline's writes. A write
transaction is ``BEGIN IMMEDIATE``: SQLite's write lock makes every read-check-write (a
transition, taking a lease) atomic across the processes sharing the file. That lock, and the
WAL's shared memory, need POSIX locks and shared memory between the processes, so this backend
serves replicas on ONE machine; replicas on several nodes use ``registry_postgres``.

Files written before leases existed are migrated in place on open (the columns are added with
"no owner" defaults).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from oblivio.adapters.registry import SCHEMA, Registry, unusable_registry

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.db"  # the embedded registry's file name in the artifact directory

# Columns added after the first release: (table, column, declaration). Added on open if missing.
_MIGRATIONS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "lease_until", "REAL NOT NULL DEFAULT 0"),
)


class SqliteRegistry(Registry):
    """The registry in one SQLite file; one connection guarded by a lock."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Deleted rows (a forgotten set's subjects and description) are overwritten with zeros,
            # not left in free pages; see _scrub_deleted() for the write-ahead log.
            self._db.execute("PRAGMA secure_delete=ON")
            with self._tx() as db:
                for statement in SCHEMA:
                    db.execute(statement)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise unusable_registry(
                str(self.db_path), exc,
                f"Restore {REGISTRY_FILE} (and its -wal file) from a backup, or move it aside to start with an "
                "empty registry",
            ) from exc

    @property
    def location(self) -> str:
        return str(self.db_path)

    @property
    def restore_hint(self) -> str:
        return f"restore the registry ({REGISTRY_FILE} and its -wal file)"

    def _migrate(self) -> None:
        """Add columns a registry file written by an older version lacks (idempotent; the check
        and the ALTER share one write transaction, so two replicas opening it cannot race)."""
        with self._tx() as db:
            for table, column, declaration in _MIGRATIONS:
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def _scrub_deleted(self) -> None:
        """``secure_delete`` zeroes the deleted rows in the database file, but every earlier
        version of their pages (the set's description and subjects, each job message) is still a
        frame of the write-ahead log: checkpoint the log into the database and truncate it."""
        with self._lock:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # another replica's connection is reading; its next checkpoint finishes the job
            log.warning("the registry's write-ahead log %s-wal could not be truncated (busy); deleted rows may "
                        "linger there until the next checkpoint", self.db_path)
