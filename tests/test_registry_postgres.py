"""The PostgreSQL registry as several nodes use it, on a real server the tests start
(``fixtures_postgres``). The registry's contract itself (CRUD, state machine, leases, the
fail-closed start) runs on both backends in test_store_registry.py, test_job_leases.py and
test_fail_closed.py; here is what only a shared network database has:

* two "nodes" (separate connections) see each other's registrations, and of several racing
  for one job's lease exactly one wins; a name registered twice at once is taken once;
* two registration pipelines over one database: the one that accepted a set owns its job, the
  other sees the set but does not run it, and takes the job over once the owner shuts down;
* a deleted set's text is gone from the tables' files (VACUUM FULL), not only from queries;
* a server that cannot be reached or refuses the password is one clear start-up error that
  never prints the password; a dropped connection is one retryable error, then reconnects;
* the configuration refuses a password inside the URL without printing it;
* ``oblivio registry copy`` moves a SQLite registry into an empty database, which the
  fail-closed start then accepts next to the artifact store.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from fixtures_postgres import PASSWORD, PASSWORD_ROLE, PostgresServer
from fixtures_registration import FRANCE, SECRET_BYTES, SECRET_SET, as_dicts, make_pipeline, record_secret_set
from oblivio.adapters.registration.stored_state import check_stored_state
from oblivio.adapters.registry import (
    ForgetSetExistsError,
    Registry,
    RegistryStateError,
    RegistryUnavailableError,
    State,
)
from oblivio.adapters.registry_factory import open_registry
from oblivio.adapters.registry_sqlite import REGISTRY_FILE, SqliteRegistry
from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore
from oblivio.gateway.cli.main import main as oblivio_cli
from oblivio.gateway.config import ConfigError, RegistryConfig, load_config


@pytest.fixture
def config(postgres_server: PostgresServer, postgres_database: str) -> RegistryConfig:
    return RegistryConfig(url=postgres_server.url(postgres_database))


def _race(count: int, config: RegistryConfig, tmp_path: Path, action: Callable[[Registry, int], Any]) -> list[Any]:
    """``action(registry, i)`` on ``count`` nodes at once, each with its own connection; the
    results (or the exceptions raised) in node order."""
    nodes = [open_registry(tmp_path, config) for _ in range(count)]
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = action(nodes[index], index)
        except Exception as exc:  # noqa: BLE001 - the race's loser raises; compared by the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for node in nodes:
        node.close()
    return results


def test_two_nodes_see_each_other_and_one_holds_a_lease(tmp_path, config):
    node_a, node_b = open_registry(tmp_path / "a", config), open_registry(tmp_path / "b", config)
    try:
        _, job = node_a.create("people", method="refusal", subjects=["Ann"])
        assert [r.name for r in node_b.list()] == ["people"] and node_b.job(job.id).owner == ""
        node_b.transition("people", State.FITTING_DETECTOR, message="fitting on B")
        assert node_a.get("people").state is State.FITTING_DETECTOR
        assert node_a.job(job.id).message == "fitting on B"

        owners = [f"node-{i}" for i in range(8)]
        won = _race(8, config, tmp_path, lambda node, i: node.acquire_lease(job.id, owners[i], 30))
        assert won.count(True) == 1 and won.count(False) == 7, won
        holder = owners[won.index(True)]
        assert node_a.job(job.id).owner == holder and node_b.job(job.id).owner == holder
        assert not node_a.renew_lease(job.id, "node-x", 30) and node_b.renew_lease(job.id, holder, 30)
        node_b.transition("people", State.DELETING)
        node_a.remove("people")
        assert node_b.list() == [] and node_b.jobs_for("people") == []
    finally:
        node_a.close()
        node_b.close()


def test_one_name_registered_on_two_nodes_at_once_is_taken_once(tmp_path, config):
    outcomes = _race(4, config, tmp_path, lambda node, i: node.create("same-name", method="refusal", job_id=f"job-{i}"))
    created = [o for o in outcomes if isinstance(o, tuple)]
    assert len(created) == 1 and all(isinstance(o, ForgetSetExistsError) for o in outcomes if o not in created)
    registry = open_registry(tmp_path, config)
    try:
        (record,) = registry.list()
        assert record.job_id == created[0][1].id and [j.id for j in registry.jobs_for("same-name")] == [record.job_id]
    finally:
        registry.close()


def _table_files(server: PostgresServer, database: str) -> list[Path]:
    """The files of the registry's tables, their TOAST tables and every index, after a
    checkpoint wrote what the server held in memory."""
    import psycopg

    with server.admin() as admin:
        admin.execute("CHECKPOINT")
    with psycopg.connect(server.url(database), autocommit=True) as db:
        rows = db.execute(
            """SELECT pg_relation_filepath(c.oid) FROM pg_class c
               WHERE c.oid IN (SELECT oid FROM pg_class WHERE relname IN ('forget_sets', 'jobs')
                               UNION SELECT reltoastrelid FROM pg_class WHERE relname IN ('forget_sets', 'jobs')
                               UNION SELECT indexrelid FROM pg_index WHERE indrelid IN
                                     (SELECT oid FROM pg_class WHERE relname IN ('forget_sets', 'jobs')))"""
        ).fetchall()
    files = [server.data_dir / path for (path,) in rows if path]
    assert len(files) >= 5, files  # two tables, one TOAST table at least, their indexes
    return files


def _secrets_in(files: Sequence[Path]) -> list[tuple[str, bytes]]:
    found = []
    for path in files:
        raw = path.read_bytes() if path.exists() else b""
        found += [(path.name, secret) for secret in SECRET_BYTES if secret in raw]
    return found


def test_a_deleted_set_leaves_no_row_versions_in_the_table_files(tmp_path, postgres_server, postgres_database, config):
    """DELETE only hides rows; every UPDATE before it left another dead copy of the set's row.
    After remove() the table, TOAST and index files hold no byte of it. (pg_wal, WAL archives
    and backups still do, for their retention: deploy/README.md says so.)"""
    registry = open_registry(tmp_path, config)
    try:
        record_secret_set(registry)
        assert _secrets_in(_table_files(postgres_server, postgres_database)), "the check must see stored rows"
        registry.transition(SECRET_SET, State.DELETING)
        registry.remove(SECRET_SET)
        assert _secrets_in(_table_files(postgres_server, postgres_database)) == []
        assert [r.name for r in registry.list()] == ["other-set"]  # the rest is intact
    finally:
        registry.close()


def test_refused_or_unreachable_server_is_one_start_error_without_the_password(
    tmp_path, postgres_server, postgres_database
):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong-but-secret-password\n")
    url = postgres_server.tcp_url(postgres_database)
    refused = RegistryConfig(url=url, password_file=wrong)
    with pytest.raises(RegistryStateError) as err:
        check_stored_state(tmp_path, registry_config=refused)
    message = str(err.value)
    assert "password authentication failed" in message and f"/{postgres_database}" in message, message
    assert "wrong-but-secret-password" not in message and "registry.password_file" in message

    right = tmp_path / "password"
    right.write_text(PASSWORD + "\n")
    allowed = RegistryConfig(url=url, password_file=right)
    with pytest.raises(RegistryStateError, match="permission denied for schema public") as err:
        open_registry(tmp_path, allowed)  # the role may log in but not create the tables
    assert PASSWORD not in str(err.value) and "may create tables" in str(err.value)
    with postgres_server.admin() as admin:
        admin.execute(f"ALTER DATABASE {postgres_database} OWNER TO {PASSWORD_ROLE}")
    open_registry(tmp_path, allowed).close()  # the database's owner may
    inline = RegistryConfig(url=url, password=PASSWORD)
    open_registry(tmp_path, inline).close()

    nobody_listens = RegistryConfig(url=f"postgresql://{PASSWORD_ROLE}@127.0.0.1:1/{postgres_database}",
                                    password=PASSWORD, connect_timeout_s=2)
    with pytest.raises(RegistryStateError, match="cannot reach the registry") as err:
        check_stored_state(tmp_path, registry_config=nobody_listens)
    assert PASSWORD not in str(err.value)


def test_a_dropped_connection_is_one_retryable_error_then_reconnects(tmp_path, postgres_server, config):
    registry = open_registry(tmp_path, config)
    try:
        registry.create("survivor", method="refusal")
        with postgres_server.admin() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'oblivio-registry'")
        with pytest.raises(RegistryUnavailableError, match="lost the connection"):
            registry.list()
        assert [r.name for r in registry.list()] == ["survivor"]
    finally:
        registry.close()


def test_a_password_in_the_url_is_refused_without_printing_it():
    for url in ("postgresql://oblivio:hunter2-secret@db:5432/oblivio",
                "postgresql://oblivio@db/oblivio?password=hunter2-secret"):
        with pytest.raises(ConfigError) as err:
            load_config(environ={"OBLIVIO_REGISTRY__URL": url})
        assert "registry.url" in str(err.value) and "hunter2-secret" not in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="postgresql://"):
        load_config(environ={"OBLIVIO_REGISTRY__URL": "mysql://db/oblivio"})
    with pytest.raises(ConfigError) as err:
        load_config(environ={"OBLIVIO_REGISTRY__PASSWORD": "hunter2-secret"})  # no URL to use it for
    assert "hunter2-secret" not in str(err.value)
    config = load_config(environ={"OBLIVIO_REGISTRY__URL": "postgresql://oblivio@db:5432/oblivio",
                                  "OBLIVIO_REGISTRY__PASSWORD": "hunter2-secret"})
    assert config.registry.password == "hunter2-secret"


def test_registry_copy_moves_a_sqlite_registry_into_an_empty_database(tmp_path, config, monkeypatch, capsys):
    sqlite = SqliteRegistry(tmp_path / REGISTRY_FILE)
    sqlite.create("alpha", method="refusal", description="d", subjects=["Ann"], example_count=3)
    sqlite.create("beta", method="npo", owner="replica-a", lease_s=30)
    for state in (State.FITTING_DETECTOR, State.ENFORCING):
        sqlite.transition("alpha", state, fraction=0.1, message=state.value)
    sqlite.update_set("alpha", detector_version=1, overlaps={"beta": 0.02})
    sqlite.set_job_report(sqlite.get("alpha").job_id, {"steps": 2})
    expected = [(r, sqlite.jobs_for(r.name)) for r in sqlite.list()]
    sqlite.close()
    store = ArtifactStore(tmp_path / STORE_SUBDIR)
    for name in ("alpha", "beta"):
        store.publish(name, "detector", lambda stage: (stage / "state.npz").write_bytes(b"fitted"))
    with pytest.raises(RegistryStateError, match="knows no forget set"):  # pointed at the empty database
        check_stored_state(tmp_path, registry_config=config)

    monkeypatch.setenv("OBLIVIO_REGISTRY__URL", config.url)
    assert oblivio_cli(["registry", "copy", "--artifacts-dir", str(tmp_path)]) == 0
    assert "copied 2 forget sets and 2 registration jobs" in capsys.readouterr().out
    copied = open_registry(tmp_path, config)
    try:
        assert [(r, copied.jobs_for(r.name)) for r in copied.list()] == expected
    finally:
        copied.close()
    check_stored_state(tmp_path, registry_config=config)  # starts, and deletes nothing
    assert store.set_names() == ["alpha", "beta"]
    assert oblivio_cli(["registry", "copy", "--artifacts-dir", str(tmp_path)]) == 1  # not into a full one
    assert "already knows forget sets" in capsys.readouterr().err


class _NoAdapters:
    """A backend that never holds an adapter: these pipelines never get as far as training."""

    def list_adapters(self) -> list[str]:
        return []

    async def add_adapter(self, name: str, path: Path) -> None:
        raise AssertionError("no adapter is loaded in this test")

    async def remove_adapter(self, name: str) -> None:
        return None


async def _until(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    return value


async def test_two_pipelines_on_one_database_run_each_job_once(tmp_path, config):
    """Two gateways' registration pipelines over one PostgreSQL database (and one artifact
    volume): B sees A's registration at once and leaves its job to A, whose lease is live; when
    A shuts down, B's registry poll takes the job over. Training is parked on both."""
    name = "two-node-france"
    options: dict[str, Any] = dict(registry=config, lease_s=30.0)
    node_a = make_pipeline(tmp_path, tmp_path / "no-model", _NoAdapters(), None, **options)
    node_b = make_pipeline(tmp_path, tmp_path / "no-model", _NoAdapters(), None, **options)
    for node in (node_a, node_b):
        await node.steps.train_lock.acquire()  # park jobs before the trainer
        await node.start()
    try:
        record = await node_a.register(name, as_dicts(FRANCE))
        assert [r.name for r in node_b.list()] == [name]
        await _until(lambda: node_b.get(name).state is State.TRAINING)
        await node_b.sync_from_registry()
        assert name not in node_b.jobs.tasks  # A holds the lease
        job = node_b.registry.job(record.job_id)
        assert job.owner == node_a.owner_id and job.attempts == 1

        await node_a.close()  # releases the lease
        await node_b.sync_from_registry()
        job = await _until(lambda: (j := node_b.registry.job(record.job_id)).owner == node_b.owner_id and j)
        assert job.attempts == 2 and node_b.get(name).state is State.TRAINING
        await node_b.delete(name)
        assert node_b.list() == []
    finally:
        for node in (node_a, node_b):
            await node.close()
            node.steps.train_lock.release()
