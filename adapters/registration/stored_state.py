"""The registry and the artifact store, checked against each other before anything is served.

Why before the model loads: an unreadable or lost registry must stop a gateway in seconds,
with nothing deleted, not after its engine started.
"""

from __future__ import annotations

import logging
from pathlib import Path

from oblivio.adapters.registry import Registry, RegistryStateError
from oblivio.adapters.registry_factory import open_registry
from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore
from oblivio.gateway.config import RegistryConfig

log = logging.getLogger(__name__)


def check_stored_state(
    root: Path, *, discard_unregistered: bool = False, registry_config: RegistryConfig | None = None
) -> None:
    """Check the registry (``registry_config``'s, else ``registry.db`` under ``root``) and the
    artifact store under ``root`` against each other, and close.

    Raises :class:`RegistryStateError` (nothing deleted) for an unreadable or lost registry.
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
