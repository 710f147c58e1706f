"""ArtifactStore atomicity (real process kills mid-write) and Registry CRUD / state machine
(on each registry backend: the embedded SQLite file and a real PostgreSQL server)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from oblivio.adapters.forget_set import UnknownForgetSetError, validate_name
from oblivio.adapters.registry import (
    ForgetSetExistsError,
    InvalidTransitionError,
    State,
)
from oblivio.adapters.registry_factory import open_registry
from oblivio.adapters.store import ArtifactStore


def _writer(text: str):
    def write(stage: Path) -> None:
        (stage / "weights.bin").write_text(text)

    return write


def test_publish_versions_and_current(tmp_path):
    store = ArtifactStore(tmp_path)
    assert store.current("alpha", "adapter") is None
    first = store.publish("alpha", "adapter", _writer("one"), metadata={"steps": 1})
    second = store.publish("alpha", "adapter", _writer("two"))
    assert (first.version, second.version) == (1, 2)
    assert store.current("alpha", "adapter") == second.path
    assert (second.path / "weights.bin").read_text() == "two"
    assert '"steps": 1' in (first.path / "metadata.json").read_text()
    assert store.versions("alpha", "adapter") == [1, 2]
    assert store.current("alpha", "detector") is None
    store.publish("alpha", "adapter", _writer("three"))
    assert store.prune("alpha", "adapter", keep=1) == [1, 2]
    assert store.versions("alpha", "adapter") == [3]


def test_a_reader_opens_a_store_without_creating_anything(tmp_path):
    with pytest.raises(FileNotFoundError, match="no artifact store"):
        ArtifactStore(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    ArtifactStore(tmp_path / "server").publish("alpha", "adapter", _writer("one"))
    reader = ArtifactStore(tmp_path / "server", create=False)
    assert reader.current_version("alpha", "adapter") == 1


def test_publish_from_folder_and_failures_leave_previous_version(tmp_path):
    store = ArtifactStore(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "adapter_config.json").write_text("{}")
    published = store.publish("beta", "adapter", source)
    assert (published.path / "adapter_config.json").is_file()

    def broken(stage: Path) -> None:
        (stage / "half.bin").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.publish("beta", "adapter", broken)
    assert store.current("beta", "adapter") == published.path
    assert list(store.staging_dir.iterdir()) == []
    with pytest.raises(ValueError, match="empty"):
        store.publish("beta", "adapter", lambda stage: None)
    with pytest.raises(FileNotFoundError):
        store.publish("beta", "adapter", tmp_path / "missing")


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "UPPER", ".hidden", "x" * 64, "a b", "-lead", "é"])
def test_names_are_strict(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid forget set name"):
        validate_name(bad)
    with pytest.raises(ValueError):
        ArtifactStore(tmp_path).publish(bad, "adapter", _writer("x"))


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from oblivio.adapters.store import ArtifactStore

    class Crashing(ArtifactStore):
        def _crash_point(self, where):
            if sys.argv[2] == "after_rename":
                os.kill(os.getpid(), signal.SIGKILL)

    store = Crashing(Path(sys.argv[1]))
    def slow(stage):
        with open(stage / "weights.bin", "w") as handle:
            handle.write("new-partial")
            handle.flush()
            print("WRITING", flush=True)
            time.sleep(60)
    def fast(stage):
        (stage / "weights.bin").write_text("new-complete")
    store.publish("gamma", "adapter", slow if sys.argv[2] == "mid_write" else fast)
    """
)


@pytest.mark.parametrize("where", ["mid_write", "after_rename"])
def test_killed_writer_leaves_previous_version_intact(tmp_path, where):
    store = ArtifactStore(tmp_path)
    old = store.publish("gamma", "adapter", _writer("old-complete"))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path), where], stdout=subprocess.PIPE, text=True
    )
    if where == "mid_write":
        assert proc.stdout.readline().strip() == "WRITING"
        proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -9
    # The reader's view is still the complete old version.
    assert store.current("gamma", "adapter") == old.path
    assert (old.path / "weights.bin").read_text() == "old-complete"
    leftovers = store.recover(older_than_s=0)
    assert leftovers, "the killed write should have left something to clean"
    assert store.versions("gamma", "adapter") == [1]
    assert list(store.staging_dir.iterdir()) == []
    again = store.publish("gamma", "adapter", _writer("retry"))
    assert again.version == 2 and store.current("gamma", "adapter") == again.path


def test_recovery_spares_what_another_replica_is_publishing(tmp_path):
    """Replicas share the store: one starting (recover) while another publishes must leave the
    fresh staging folder and the fresh version folder not yet CURRENT alone; the same leftovers
    once old are a crash's and are removed."""
    store = ArtifactStore(tmp_path)
    store.publish("epsilon", "adapter", _writer("one"))
    staging = Path(tempfile.mkdtemp(dir=store.staging_dir, prefix="epsilon-adapter-"))
    (staging / "weights.bin").write_text("being written")
    renamed = store.path_of("epsilon", "adapter", 2)  # renamed in, CURRENT not switched yet
    renamed.mkdir()
    (renamed / "weights.bin").write_text("two")
    assert store.recover() == []  # by default, anything touched in the last hour is spared
    assert staging.is_dir() and renamed.is_dir() and store.current_version("epsilon", "adapter") == 1
    an_hour_ago = time.time() - 3600
    for path in (staging, renamed):
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert sorted(store.recover()) == sorted([staging, renamed])
    assert store.versions("epsilon", "adapter") == [1]


def test_delete_set_removes_everything(tmp_path):
    store = ArtifactStore(tmp_path)
    store.publish("delta", "adapter", _writer("a"))
    store.publish("delta", "detector", _writer("d"))
    assert store.set_names() == ["delta"]
    assert store.delete_set("delta") is True
    assert store.set_names() == [] and not (store.sets_dir / "delta").exists()
    assert store.delete_set("delta") is False


# ---------- registry ------------------------------------------------------------------------


def test_registry_crud_and_transitions(tmp_path, registry_config):
    registry = open_registry(tmp_path, registry_config)
    record, job = registry.create("people", method="refusal", description="d", subjects=["Ann"], example_count=3)
    assert record.state is State.VALIDATING and record.job_id == job.id and record.subjects == ["Ann"]
    with pytest.raises(ForgetSetExistsError):
        registry.create("people", method="refusal")
    with pytest.raises(ValueError):
        registry.create("../x", method="refusal")
    for state in (State.FITTING_DETECTOR, State.ENFORCING, State.TRAINING):
        registry.transition("people", state, fraction=0.5, message=state.value)
    registry.transition("people", State.TRAINING, fraction=0.6)  # a resumed step repeats itself
    with pytest.raises(InvalidTransitionError):
        registry.transition("people", State.LIVE)  # cannot skip publishing and loading
    registry.transition("people", State.PUBLISHING)
    registry.update_set("people", adapter_version=1, overlaps={"other": 0.01}, data_retained=False)
    registry.transition("people", State.LOADING)
    final = registry.transition("people", State.LIVE, fraction=1.0)
    assert final.state.terminal and final.adapter_version == 1 and final.overlaps == {"other": 0.01}
    assert not final.data_retained
    assert registry.job(job.id).fraction == 1.0 and registry.job(job.id).state is State.LIVE
    with pytest.raises(InvalidTransitionError):
        registry.transition("people", State.TRAINING)
    assert registry.unfinished() == []
    with pytest.raises(ValueError):
        registry.update_set("people", state="LIVE")
    registry.transition("people", State.DELETING)
    registry.remove("people")
    with pytest.raises(UnknownForgetSetError):
        registry.get("people")
    assert registry.jobs_for("people") == []


def test_registry_survives_reopen_and_reports_unfinished(tmp_path, registry_config):
    registry = open_registry(tmp_path, registry_config)
    registry.create("a", method="refusal")
    registry.create("b", method="npo")
    registry.transition("b", State.FAILED, error="boom")
    registry.close()
    reopened = open_registry(tmp_path, registry_config)
    assert [r.name for r in reopened.list()] == ["a", "b"]
    assert [r.name for r in reopened.unfinished()] == ["a"]
    assert reopened.get("b").error == "boom"
    assert reopened.bump_attempts(reopened.get("a").job_id) == 1
    with pytest.raises(LookupError):
        reopened.transition("zzz", State.FAILED)
