"""Who owns a registration job, and when we can PROVE that owner is dead.

Replicas take a lease on a job in the shared registry (see ``Registry.acquire_lease``); the
lease's expiry is the general rule for taking over a job whose owner died. Waiting out the
lease is needless, though, when the owner ran on this very host and its process is gone — the
common case of a single gateway restarted after a crash. Owner ids therefore name the host, the
PID namespace and the PID, and :func:`owner_is_dead` answers True only when that proof exists:

* same hostname AND same PID namespace (so the PID means the same process table; containers
  that share a hostname, e.g. host networking, have different namespaces), and
* that PID no longer runs, or it is this process and the owner id is not one of this process's
  live pipelines (an earlier pipeline of this process that was closed).

Anything else (another host, another namespace, a running PID, an id from an older version)
is not provably dead and must wait for the lease to expire. PID reuse can only make a dead
owner look alive, which errs on the safe side (wait for expiry).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

_SEP = "/"
_live_owners: set[str] = set()
_live_lock = threading.Lock()


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or /proc not mounted: no namespace proof, only expiry applies
        return ""


def new_owner_id() -> str:
    """A fresh owner id for one pipeline: host/pid-namespace/pid/random (unique per lifetime)."""
    host = socket.gethostname().replace(_SEP, "_")
    owner = _SEP.join((host, _pid_namespace(), str(os.getpid()), uuid.uuid4().hex[:12]))
    with _live_lock:
        _live_owners.add(owner)
    return owner


def retire_owner_id(owner: str) -> None:
    """This pipeline has shut down: its leases may be taken over at once on this host."""
    with _live_lock:
        _live_owners.discard(owner)


def owner_is_dead(owner: str) -> bool:
    """True only if ``owner`` provably no longer runs (see the module docstring)."""
    parts = owner.split(_SEP)
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    host, namespace, pid_text, _ = parts
    if host != socket.gethostname().replace(_SEP, "_") or not namespace or namespace != _pid_namespace():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _live_lock:
            return owner not in _live_owners
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False
