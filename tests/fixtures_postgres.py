"""A real PostgreSQL server for the registry tests, started by the tests themselves.

Session-scoped: ``initdb`` into a temporary folder and ``postgres`` on a unix socket there
and 127.0.0.1 on a free port (where a password is required, so tests can check that a wrong
password is never printed). Each test gets its own database. Durability is switched off
(``fsync=off``): the tests check the registry's logic, not the disk.

PostgreSQL refuses to run as root, so under root the server runs as ``nobody``. Where no
PostgreSQL is installed (``deploy/setup.sh`` installs Debian's ``postgresql`` when it can), the
tests that need it skip, saying so; the SQLite half of every parametrized test still runs.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oblivio.gateway.config import RegistryConfig

SUPERUSER = "oblivio"
PASSWORD_ROLE, PASSWORD = "oblivio_pw", "correct horse battery staple"
UNPRIVILEGED_USER = "nobody"


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path
    data_dir: Path
    port: int  # TCP on 127.0.0.1, and the unix socket's name in socket_dir

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq URL over the unix socket (trust authentication)."""
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str, user: str = PASSWORD_ROLE) -> str:
        """A URL over TCP, where the password is checked (scram-sha-256)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)


def _postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to an unprivileged user (postgres refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        pytest.skip(f"PostgreSQL refuses to run as root and there is no {UNPRIVILEGED_USER!r} user to run it as")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _wait_until_ready(server: PostgresServer, process: subprocess.Popen[bytes], log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            server.admin().close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) is not installed")
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb; deploy/setup.sh installs Debian's postgresql "
                    "package where apt and root are available)")
    run_as = _run_as()
    # Under root the server's user must reach its folder: /tmp, not a private $TMPDIR.
    root = Path(tempfile.mkdtemp(prefix="oblivio-pg-", dir="/tmp" if run_as else None))
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    server = PostgresServer(socket_dir=root, data_dir=root / "data", port=_free_port())
    log = root / "postgres.log"
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER, "--auth-local=trust",
         "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
        check=True, capture_output=True, **run_as,
    )
    settings = {"listen_addresses": "127.0.0.1", "port": str(server.port), "unix_socket_directories": str(root),
                "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(server.data_dir),
             *[arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]],
            stdout=log_file, stderr=subprocess.STDOUT, **run_as,
        )
    try:
        _wait_until_ready(server, process, log)
        with server.admin() as admin:
            admin.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test (its name), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with postgres_server.admin() as admin:
        admin.execute(f"CREATE DATABASE {name}")
        admin.execute(f"GRANT ALL ON DATABASE {name} TO {PASSWORD_ROLE}")
    yield name
    with postgres_server.admin() as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_config(request: pytest.FixtureRequest) -> RegistryConfig:
    """Each registry backend in turn: the embedded SQLite file (under the test's artifact
    folder) and a fresh PostgreSQL database. Tests open it with
    ``oblivio.adapters.registry_factory.open_registry(root, registry_config)``."""
    if request.param == "sqlite":
        return RegistryConfig()
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return RegistryConfig(url=server.url(request.getfixturevalue("postgres_database")))
