"""The multi-node registry backend: a PostgreSQL database shared by every gateway replica.

Why PostgreSQL: SQLite's locks and write-ahead log need every process on one machine (they are
not safe over NFS and most network file systems), so replicas on several nodes need a database
server. The registry's SQL is shared with SQLite (``oblivio.adapters.registry``); what differs:

* **Locking across nodes.** Transactions run at READ COMMITTED and lock what they check:
  a transition or a lease check reads its row ``FOR UPDATE``, so a second replica doing the
  same waits for the first's commit and then sees its result (one lease holder; a deletion is
  never overwritten by a forward step). Creating the tables takes a transaction-scoped advisory
  lock, so replicas starting together do not race on ``CREATE TABLE IF NOT EXISTS``. Locks wait
  at most ``lock_timeout_s``.
* **Connection loss.** One connection per registry, guarded by a lock; a connection the server
  dropped (restart, failover, network) is replaced on the next call, and a call that cannot
  reach the server raises :class:`RegistryUnavailableError` (the pipeline's poll and lease
  renewal retry; the Admin API answers UNAVAILABLE). Calls are synchronous, like SQLite's, and
  the pipeline makes them on the event loop: TCP keepalives and ``tcp_user_timeout`` bound how
  long a vanished server can stall one call (about ``connect_timeout_s``).
* **Deleting text.** PostgreSQL never overwrites a row in place: a DELETE (and every UPDATE
  before it) leaves dead row versions in the table's pages until VACUUM. After a deletion the
  registry runs ``VACUUM FULL`` on its two small tables, which rewrites them (and their indexes
  and TOAST) into new files holding only live rows; the old files are truncated at commit. What
  this does NOT remove: the write-ahead log segments in ``pg_wal`` (recycled after later
  checkpoints), WAL archives, streaming replicas' copies and base backups, which keep the text
  for their own retention; and freed file-system blocks, until reused. Deployments that must
  forget from those too need encrypted storage with key rotation or backup expiry.
* **Secrets.** The password never travels in the URL (the configuration refuses one there): it
  is passed to the driver on its own, and removed from any error text shown to operators.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from oblivio.adapters.registry import SCHEMA, Registry, RegistryUnavailableError, Rows, unusable_registry

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key serialising schema creation across replicas ('oblivio' in ASCII).
_SCHEMA_LOCK_KEY = 0x6F626C6976696F


def display_url(url: str) -> str:
    """``url`` as operators may see it: scheme, user, host and database; no query, no password."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit((parts.scheme, user + netloc[-1], parts.path, "", ""))


class _Statements:
    """The shared SQL's ``?`` placeholders on a psycopg connection (which spells them ``%s``)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows:
        return self._connection.execute(sql.replace("?", "%s"), params)


class PostgresRegistry(Registry):
    """The registry in a PostgreSQL database (tables ``forget_sets`` and ``jobs``)."""

    lock_rows = " FOR UPDATE"

    def __init__(
        self, url: str, *, password: str | None = None, connect_timeout_s: float = 10.0, lock_timeout_s: float = 30.0
    ) -> None:
        """Connect and create the tables if missing; :class:`RegistryStateError` (naming the
        database, never the password) if the server cannot be reached or used."""
        self._url = url
        self._password = password
        self._connect_timeout_s = connect_timeout_s
        self._lock_timeout_s = lock_timeout_s
        self._location = f"PostgreSQL database {display_url(url)}"
        self._lock = threading.RLock()
        self._connection: psycopg.Connection[Any] | None = None
        try:
            with self._tx() as db:
                db.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
                for statement in SCHEMA:
                    db.execute(statement)
        except (psycopg.Error, RegistryUnavailableError) as exc:
            self.close()
            raise unusable_registry(
                self._location, self._without_password(exc),
                "Check registry.url, the password (registry.password_file or OBLIVIO_REGISTRY__PASSWORD), that the "
                "server is reachable and that this role may create tables there; restore the database from a "
                "backup if it was lost, or point registry.url at an empty database",
            ) from None

    @property
    def location(self) -> str:
        return self._location

    @property
    def restore_hint(self) -> str:
        return "restore the registry database from a backup (or point registry.url at the right database)"

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # ---- connection -------------------------------------------------------------------------
    def _without_password(self, exc: BaseException) -> str:
        """The error's text, with the password cut out should a driver message ever echo it."""
        text = str(exc).strip() or type(exc).__name__
        return text.replace(self._password, "<redacted>") if self._password else text

    def _connected(self) -> psycopg.Connection[Any]:
        """The live connection, opened again if the server dropped it. Caller holds the lock."""
        if self._connection is None or self._connection.closed or self._connection.broken:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            try:
                timeout_s = max(1, round(self._connect_timeout_s))
                connection = psycopg.connect(
                    self._url, password=self._password, connect_timeout=timeout_s, autocommit=True,
                    application_name="oblivio-registry",
                    # A server that vanished (a partition, a dead node) fails the call within about
                    # timeout_s instead of the kernel's minutes: registry calls run on the gateway's
                    # event loop.
                    keepalives=1, keepalives_idle=timeout_s, keepalives_interval=1, keepalives_count=3,
                    tcp_user_timeout=timeout_s * 1000,
                )
            except psycopg.OperationalError as exc:
                raise RegistryUnavailableError(
                    f"cannot reach the registry {self._location}: {self._without_password(exc)}") from None
            connection.execute(f"SET lock_timeout = {int(self._lock_timeout_s * 1000)}")
            self._connection = connection
        return self._connection

    @contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        """A connection lost mid-call is :class:`RegistryUnavailableError` (retryable)."""
        try:
            yield
        except psycopg.OperationalError as exc:
            if self._connection is None or not self._connection.broken:
                raise  # the server refused the statement (a lock timeout, ...): not a lost connection
            raise RegistryUnavailableError(
                f"lost the connection to the registry {self._location}: {self._without_password(exc)}") from None

    # ---- the backend seam ---------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[_Statements]:
        with self._lock, self._unavailable_as_error():
            connection = self._connected()
            with connection.transaction():
                yield _Statements(connection)

    @contextmanager
    def _read(self) -> Iterator[_Statements]:
        with self._lock, self._unavailable_as_error():
            yield _Statements(self._connected())

    def _scrub_deleted(self) -> None:
        """Rewrite both tables so their files hold live rows only (see the module docstring for
        what stays in WAL and backups). The tables are a few rows: milliseconds, with other
        replicas' registry calls waiting that long. A failure leaves autovacuum to it, loudly."""
        try:
            with self._lock, self._unavailable_as_error():
                self._connected().execute("VACUUM FULL forget_sets, jobs")
        except (psycopg.Error, RegistryUnavailableError) as exc:
            log.warning("VACUUM FULL of the registry %s failed (%s): a deleted set's old row versions stay in its "
                        "table files until autovacuum reuses the space", self._location, self._without_password(exc))
