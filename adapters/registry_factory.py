"""Open the registry the configuration names: the embedded SQLite file, or PostgreSQL.

One place decides, so the gateway's start-up check, its registration pipeline and the CLI all
open the same registry. psycopg is imported only when a PostgreSQL URL is configured.
"""

from __future__ import annotations

from pathlib import Path

from oblivio.adapters.registry import Registry
from oblivio.adapters.registry_sqlite import REGISTRY_FILE, SqliteRegistry
from oblivio.gateway.config import ConfigError, RegistryConfig

__all__ = ["REGISTRY_FILE", "open_registry", "registry_password"]


def registry_password(config: RegistryConfig) -> str | None:
    """The configured database password (inline, or the first line of ``password_file``);
    None lets libpq use ``PGPASSWORD`` / ``~/.pgpass``. Errors name the file, never its text."""
    if config.password_file is None:
        return config.password
    try:
        lines = Path(config.password_file).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read registry.password_file {config.password_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"registry.password_file {config.password_file} is not valid UTF-8 text") from None
    if not lines or not lines[0].strip():
        raise ConfigError(f"registry.password_file {config.password_file}: the first line is empty")
    return lines[0].strip()


def open_registry(root: Path, config: RegistryConfig | None = None) -> Registry:
    """The registry for the artifact directory ``root``: ``registry.db`` there unless
    ``config.url`` names a PostgreSQL database. Raises ``RegistryStateError`` if it cannot be
    opened (the server does not start without it)."""
    if config is None or not config.url:
        return SqliteRegistry(Path(root) / REGISTRY_FILE)
    from oblivio.adapters.registry_postgres import PostgresRegistry

    return PostgresRegistry(config.url, password=registry_password(config), connect_timeout_s=config.connect_timeout_s)
