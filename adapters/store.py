"""Versioned, crash-safe storage of each forget set's artifacts (adapter, detector state, metadata).

Layout under ``root``::

    sets/<name>/<kind>/v000001/...     immutable once published
    sets/<name>/<kind>/CURRENT         "v000001": the version readers use
    .staging/<random>/                 where a version is written before it is published
    .trash/                            sets being deleted (renamed away first, then removed)

Why this shape: a version is written completely in ``.staging`` (same filesystem), every file
fsynced, then renamed into place in one ``rename`` and only then is ``CURRENT`` switched by an
atomic ``os.replace`` of a small fsynced file. A crash at any point leaves ``CURRENT`` naming a
complete older version (or nothing, for a first publish); leftovers are cleaned by
``recover()``. Published versions are never modified, so a backend that loaded one keeps a
consistent folder underneath it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oblivio.adapters.forget_set import NAME_PATTERN, validate_name

KINDS = ("adapter", "detector")
_VERSION = re.compile(r"^v(\d{6})$")
CURRENT = "CURRENT"


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; expected one of {KINDS}")
    return kind


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (a rename is durable only once its parent is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for dirpath, _, filenames in os.walk(path):
        for filename in filenames:
            with open(Path(dirpath) / filename, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so readers see either the old or the new content, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())


# Leftovers younger than this may be another replica's publish in progress (see recover()).
RECOVERY_GRACE_S = 3600.0

@dataclass(frozen=True)
class Published:
    name: str
    kind: str
    version: int
    path: Path


# Where a server keeps its forget-set store inside its artifact directory; readers outside the
# server (replicas' tools, the evaluation) find published artifacts through this.
STORE_SUBDIR = "forget_sets"


class ArtifactStore:
    """Atomic, versioned artifacts per forget set. Safe for one writer per set at a time."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        """``create=False`` opens an existing store to read (a tool looking at a server's
        artifacts must not leave folders behind where it looked)."""
        self.root = Path(root)
        self.sets_dir = self.root / "sets"
        self.staging_dir = self.root / ".staging"
        self.trash_dir = self.root / ".trash"
        if not create:
            if not self.sets_dir.is_dir():
                raise FileNotFoundError(f"no artifact store at {self.root}")
            return
        for directory in (self.sets_dir, self.staging_dir, self.trash_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # ---- paths ----------------------------------------------------------------------------
    def _kind_dir(self, name: str, kind: str) -> Path:
        return self.sets_dir / validate_name(name) / _check_kind(kind)

    def versions(self, name: str, kind: str) -> list[int]:
        directory = self._kind_dir(name, kind)
        if not directory.is_dir():
            return []
        found = (_VERSION.match(child.name) for child in directory.iterdir() if child.is_dir())
        return sorted(int(match.group(1)) for match in found if match)

    def current_version(self, name: str, kind: str) -> int:
        """The published version readers should use; 0 when none was published."""
        pointer = self._kind_dir(name, kind) / CURRENT
        try:
            match = _VERSION.match(pointer.read_text().strip())
        except FileNotFoundError:
            return 0
        return int(match.group(1)) if match else 0

    def current(self, name: str, kind: str) -> Path | None:
        version = self.current_version(name, kind)
        return self.path_of(name, kind, version) if version else None

    def path_of(self, name: str, kind: str, version: int) -> Path:
        return self._kind_dir(name, kind) / f"v{version:06d}"

    def set_names(self) -> list[str]:
        return sorted(p.name for p in self.sets_dir.iterdir() if p.is_dir() and NAME_PATTERN.fullmatch(p.name))

    # ---- writes ---------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        kind: str,
        write: Callable[[Path], None] | Path,
        metadata: dict[str, Any] | None = None,
    ) -> Published:
        """Publish a new version of ``kind`` for ``name``.

        ``write`` is either a function that fills the (empty) staging folder it is given, or an
        existing folder whose contents are copied in. ``metadata`` lands in ``metadata.json``.
        """
        kind_dir = self._kind_dir(name, kind)
        stage = Path(tempfile.mkdtemp(dir=self.staging_dir, prefix=f"{name}-{kind}-"))
        try:
            if callable(write):
                write(stage)
            else:
                source = Path(write)
                if not source.is_dir():
                    raise FileNotFoundError(f"nothing to publish: {source} is not a folder")
                shutil.copytree(source, stage, dirs_exist_ok=True)
            if metadata is not None:
                (stage / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
            if not any(stage.iterdir()):
                raise ValueError(f"refusing to publish an empty {kind} for {name}")
            fsync_tree(stage)
            kind_dir.mkdir(parents=True, exist_ok=True)
            version = max(self.versions(name, kind) + [self.current_version(name, kind)]) + 1
            target = self.path_of(name, kind, version)
            os.rename(stage, target)
            fsync_dir(kind_dir)
            self._crash_point("after_rename")
            atomic_write_bytes(kind_dir / CURRENT, f"v{version:06d}\n".encode())
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return Published(name=name, kind=kind, version=version, path=target)

    def _crash_point(self, where: str) -> None:
        """Test hook: lets a test fail a publish between its steps (a crash we cannot cause)."""

    def prune(self, name: str, kind: str, keep: int = 2) -> list[int]:
        """Remove all but the newest ``keep`` versions (never the current one)."""
        current = self.current_version(name, kind)
        versions = self.versions(name, kind)
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
        for version in doomed:
            self._remove_tree(self.path_of(name, kind, version))
        return doomed

    def delete_set(self, name: str) -> bool:
        """Remove every artifact of ``name``: renamed away atomically first, then deleted."""
        source = self.sets_dir / validate_name(name)
        if not source.exists():
            return False
        self._remove_tree(source)
        fsync_dir(self.sets_dir)
        return True

    def _remove_tree(self, path: Path) -> None:
        doomed = self.trash_dir / f"{path.name}-{uuid.uuid4().hex}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def recover(self, *, older_than_s: float = RECOVERY_GRACE_S) -> list[Path]:
        """Clean what a crash left behind: staging folders, trash, unpublished version folders.

        ``older_than_s`` spares anything modified more recently: replicas share the store, and
        a replica starting while another publishes must not delete that publish's staging
        folder, or its version folder in the moment between the rename and the CURRENT switch.
        A crash's leftovers are invisible to readers, so they can wait for a later start.
        """
        removed: list[Path] = []
        cutoff = time.time() - older_than_s

        def stale(path: Path) -> bool:
            try:
                return path.lstat().st_mtime <= cutoff
            except FileNotFoundError:  # its publisher finished (or removed it) meanwhile
                return False

        for directory in (self.staging_dir, self.trash_dir):
            for leftover in directory.iterdir():
                if not stale(leftover):
                    continue
                shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
                removed.append(leftover)
        for name in self.set_names():
            for kind in KINDS:
                current = self.current_version(name, kind)
                for version in self.versions(name, kind):
                    path = self.path_of(name, kind, version)
                    if version > current and stale(path):  # renamed in, but CURRENT never switched to it
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
        return removed
