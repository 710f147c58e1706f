"""The live, versioned gate policy: validated updates, atomic swaps, rollback, persistence.

Why versions instead of in-place edits: an operator tuning thresholds in production must be
able to see what changed, and undo it. Every accepted change produces a new immutable
:class:`~oblivio.gateway.gate.decision.GatePolicy` with the next version number; rollback copies an
earlier version's content into a *new* version, so history only ever grows and "what was live
at version N" stays answerable.

Why atomic: :meth:`PolicyStore.current` returns whatever object the ``_current`` attribute
points at; writers build the complete next policy first and then rebind that one attribute
(a single reference assignment, atomic under the GIL). A request calls ``current()`` once and
keeps that object, so it never sees a half-applied change and in-flight requests finish under
the policy they started with.

Persistence: the whole history plus the registered set names, as one JSON document written
to a temp file, fsync'ed, then ``os.replace``'d over the old one (and the directory fsync'ed),
so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from oblivio.adapters.forget_set import UnknownForgetSetError
from oblivio.gateway.config import GateConfig
from oblivio.gateway.errors import NotFound
from oblivio.gateway.gate.decision import (
    DETECTOR_ERROR_POLICIES,
    GatePolicy,
    PolicyValidationError,
    SetPolicy,
)

log = logging.getLogger(__name__)

POLICY_FILENAME = "gate_policy.json"
FORMAT_VERSION = 1
DEFAULT_MAX_HISTORY = 500

SET_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SetPolicy))
GLOBAL_FIELDS: tuple[str, ...] = ("on_detector_error",)


class UnknownPolicyVersionError(NotFound):
    """Rollback to a version that does not exist (or was pruned from history)."""


class PolicyStoreError(RuntimeError):
    """The persisted policy file exists but cannot be read; refuse to start on a silent reset."""


def set_policy_to_dict(policy: SetPolicy) -> dict[str, Any]:
    return asdict(policy)


def set_policy_from_dict(data: Mapping[str, Any], *, where: str = "policy") -> SetPolicy:
    unknown = sorted(set(data) - set(SET_FIELDS))
    if unknown:
        raise PolicyValidationError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(SET_FIELDS)}"
        )
    return SetPolicy(**{key: _coerce(key, value, where) for key, value in data.items()})


def policy_to_dict(policy: GatePolicy) -> dict[str, Any]:
    return {
        "version": policy.version,
        "default": set_policy_to_dict(policy.default),
        "per_set": {name: set_policy_to_dict(p) for name, p in policy.per_set.items()},
        "scale_grid": list(policy.scale_grid),
        "on_detector_error": policy.on_detector_error,
        "created_at": policy.created_at,
    }


def policy_from_dict(data: Mapping[str, Any]) -> GatePolicy:
    return GatePolicy(
        version=int(data["version"]),
        default=set_policy_from_dict(data["default"], where="default"),
        per_set={
            name: set_policy_from_dict(p, where=f"forget set '{name}'")
            for name, p in data.get("per_set", {}).items()
        },
        scale_grid=tuple(float(s) for s in data["scale_grid"]),
        on_detector_error=data.get("on_detector_error", "fail_closed"),
        created_at=float(data.get("created_at", 0.0)),
    )


def _coerce(key: str, value: Any, where: str) -> Any:
    """Numbers arrive as strings from the CLI / env; turn them into the field's type or fail clearly."""
    if key == "mode":
        return str(value)
    if key == "refusal_threshold" and (value is None or value == ""):
        return None
    if isinstance(value, bool):
        raise PolicyValidationError(f"{where}.{key} must be a number (got {value!r})")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PolicyValidationError(f"{where}.{key} must be a number (got {value!r})") from None


def initial_policy(defaults: GateConfig) -> GatePolicy:
    """Version 1, from the server config. max_scale is capped to what the grid can serve."""
    grid = tuple(defaults.scale_grid)
    max_scale = min(1.0, max(grid))
    default = SetPolicy(
        threshold=defaults.default_threshold,
        max_scale=max_scale,
        min_scale=min(SetPolicy.min_scale, max_scale),
    )
    policy = GatePolicy(
        version=1,
        default=default,
        per_set={},
        scale_grid=grid,
        on_detector_error=defaults.on_detector_error,
        created_at=time.time(),
    )
    policy.validate()
    return policy


class PolicyStore:
    """The gateway's live gate policy. Thread-safe; readers never block."""

    def __init__(
        self, path: Path, defaults: GateConfig, *, max_history: int = DEFAULT_MAX_HISTORY
    ) -> None:
        path = Path(path)
        self.path = path / POLICY_FILENAME if path.is_dir() or not path.suffix else path
        self._defaults = defaults
        self._max_history = max(1, max_history)
        self._lock = threading.RLock()  # re-entered when a reload adopts the configured grid
        self._stamp: tuple[int, int, int] | None = None  # the file version this process has read
        self._sets: set[str] = set()
        self._history: list[GatePolicy] = []
        self._current: GatePolicy
        if self.path.exists():
            self._load()
        else:
            self._current = initial_policy(defaults)
            self._history = [self._current]
            self._persist()

    # ---- reads (lock-free) -------------------------------------------------------------
    def current(self) -> GatePolicy:
        """The live policy. Call once per request and keep the object."""
        return self._current

    def history(self) -> list[GatePolicy]:
        """Every retained version, oldest first."""
        return list(self._history)

    def get_version(self, version: int) -> GatePolicy:
        for policy in self._history:
            if policy.version == version:
                return policy
        raise UnknownPolicyVersionError(
            f"gate policy version {version} does not exist; known versions: "
            f"{self._history[0].version}..{self._history[-1].version}"
        )

    def known_sets(self) -> list[str]:
        return sorted(self._sets)

    # ---- forget-set hooks --------------------------------------------------------------
    def register_set(self, name: str) -> None:
        """Make ``name`` a valid target for per-set updates (called when a set is registered)."""
        if not name:
            raise PolicyValidationError("forget set name must not be empty")
        with self._exclusive():
            if name not in self._sets:
                self._sets.add(name)
                self._persist()

    def sync_sets(self, names: Iterable[str]) -> None:
        """Replace the known set names (the registry is the source of truth at start-up)."""
        with self._exclusive():
            self._sets = {n for n in names if n}
            self._persist()

    def forget(self, set_name: str) -> GatePolicy:
        """Unregister a set; if it had an override, a new version without it becomes live."""
        with self._exclusive():
            self._sets.discard(set_name)
            if set_name in self._current.per_set:
                per_set = {k: v for k, v in self._current.per_set.items() if k != set_name}
                self._commit(replace(self._current, per_set=per_set))
            else:
                self._persist()
            return self._current

    # ---- writes --------------------------------------------------------------------------
    def update(self, set_name: str | None, changes: Mapping[str, Any]) -> GatePolicy:
        """Apply ``changes`` to one set's policy (``None`` = the global default); new version.

        A set without an override starts from the current default. ``on_detector_error`` is a
        global field and is only accepted with ``set_name=None``.
        """
        with self._exclusive():
            return self._commit(self._apply(self._current, set_name, changes))

    def propose(self, changes: Sequence[tuple[str | None, Mapping[str, Any]]]) -> GatePolicy:
        """What-if: the current policy with ``changes`` applied, validated but NOT committed.

        The result has version 0 (no committed version is ever 0), so a decision made with it
        can never be mistaken for one made under a live version.
        """
        policy = self._current
        for set_name, set_changes in changes:
            policy = self._apply(policy, set_name, set_changes)
        policy.validate()
        return replace(policy, version=0, created_at=0.0)

    def _apply(
        self, base: GatePolicy, set_name: str | None, changes: Mapping[str, Any]
    ) -> GatePolicy:
        if not changes:
            raise PolicyValidationError("no changes given")
        if set_name is not None and set_name not in self._sets:
            raise UnknownForgetSetError(
                f"forget set '{set_name}' is not registered; known sets: "
                f"{', '.join(sorted(self._sets)) or '(none)'}"
            )
        allowed = SET_FIELDS + (GLOBAL_FIELDS if set_name is None else ())
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            hint = (
                " (on_detector_error is global: update the default policy)"
                if "on_detector_error" in unknown
                else ""
            )
            raise PolicyValidationError(
                f"unknown policy field(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(allowed)}{hint}"
            )
        where = "default" if set_name is None else f"forget set '{set_name}'"
        set_changes = {k: v for k, v in changes.items() if k in SET_FIELDS}
        target = base.default if set_name is None else base.for_set(set_name)
        merged = set_policy_from_dict({**asdict(target), **set_changes}, where=where)
        if set_name is None:
            on_error = str(changes.get("on_detector_error", base.on_detector_error))
            if on_error not in DETECTOR_ERROR_POLICIES:
                raise PolicyValidationError(
                    f"on_detector_error must be one of {', '.join(DETECTOR_ERROR_POLICIES)} "
                    f"(got {on_error!r})"
                )
            return replace(base, default=merged, on_detector_error=on_error)  # type: ignore[arg-type]
        return replace(base, per_set={**base.per_set, set_name: merged})

    def reset_set(self, set_name: str) -> GatePolicy:
        """Drop a set's override so it follows the default again (new version)."""
        with self._exclusive():
            if set_name not in self._current.per_set:
                raise UnknownForgetSetError(f"forget set '{set_name}' has no policy override")
            per_set = {k: v for k, v in self._current.per_set.items() if k != set_name}
            return self._commit(replace(self._current, per_set=per_set))

    def rollback(self, version: int) -> GatePolicy:
        """Make an earlier version's content live again, as a new version.

        Overrides of sets that have since been forgotten are dropped: a set that is re-registered
        later under the same name must not silently inherit a stale override.
        """
        with self._exclusive():
            old = self.get_version(version)
            per_set = {k: v for k, v in old.per_set.items() if k in self._sets}
            candidate = replace(
                old, per_set=per_set, scale_grid=self._current.scale_grid
            )
            return self._commit(candidate)

    # ---- replicas ----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Adopt what another gateway replica committed to the shared policy file.

        Replicas share the artifact directory, so the JSON file is the source of truth: every
        write happens under an advisory file lock after catching up with the file, and readers
        call this periodically (the registration pipeline's replica sync) to pick up changes.
        Returns True when a newer file was loaded.
        """
        with self._lock:
            return self._refresh_locked()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _refresh_locked(self) -> bool:
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        self._load()
        return True

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's lock plus a file lock shared with other replicas; then catch up with
        the file, so a write never overwrites a version another replica committed."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    self._refresh_locked()
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    # ---- internals ---------------------------------------------------------------------
    def _commit(self, candidate: GatePolicy) -> GatePolicy:
        """Validate, number, persist, then swap. Caller holds the lock."""
        new = replace(candidate, version=self._current.version + 1, created_at=time.time())
        new.validate()
        history = (self._history + [new])[-self._max_history :]
        self._write(history, self._sets)  # persist first: a failed write leaves nothing live
        self._history = history
        self._current = new  # the atomic swap readers observe
        return new

    def _persist(self) -> None:
        self._write(self._history, self._sets)

    def _write(self, history: list[GatePolicy], sets: set[str]) -> None:
        document = {
            "format": FORMAT_VERSION,
            "sets": sorted(sets),
            "versions": [policy_to_dict(p) for p in history],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".gate_policy.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = self._file_stamp()
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _load(self) -> None:
        stamp = self._file_stamp()
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT_VERSION:
                raise ValueError(f"unsupported format {document.get('format')!r}")
            history = [policy_from_dict(p) for p in document["versions"]]
            if not history:
                raise ValueError("no policy versions")
            for policy in history:
                policy.validate()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PolicyStoreError(
                f"cannot read gate policy file {self.path}: {exc}. Fix or move the file away "
                "to start from the configured defaults."
            ) from exc
        self._sets = set(document.get("sets", []))
        self._history = history
        self._current = history[-1]
        self._stamp = stamp
        grid = tuple(self._defaults.scale_grid)
        if self._current.scale_grid != grid:
            self._rebase_grid(grid)

    def _rebase_grid(self, grid: tuple[float, ...]) -> None:
        """The backend serves the configured grid; adopt it, capping scales it cannot serve."""
        top = max(grid)

        def cap(p: SetPolicy) -> SetPolicy:
            max_scale = min(p.max_scale, top)
            return replace(p, max_scale=max_scale, min_scale=min(p.min_scale, max_scale))

        old = self._current
        log.warning(
            "gate policy scale grid %s differs from configured grid %s; adopting the configured one",
            list(old.scale_grid),
            list(grid),
        )
        with self._lock:
            self._commit(
                replace(
                    old,
                    scale_grid=grid,
                    default=cap(old.default),
                    per_set={k: cap(v) for k, v in old.per_set.items()},
                )
            )


__all__ = [
    "POLICY_FILENAME",
    "PolicyStore",
    "PolicyStoreError",
    "PolicyValidationError",
    "UnknownPolicyVersionError",
    "initial_policy",
    "policy_from_dict",
    "policy_to_dict",
]
