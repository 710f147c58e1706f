"""Fail closed on broken stored state (issue 17): a trusted server never serves forgotten data,
and never deletes stored artifacts, because its own state is broken.

* A registered set whose detector file is truncated (or lost) cannot be enforced: chat is refused
  (UNAVAILABLE / 503 naming the set and the operator's options) and readiness is NOT_SERVING
  (gRPC health "" and Chat, HTTP /health), while Admin stays up to repair it. Before, the set
  was quarantined as NOT ENFORCED and its prompts got the base model.
* ``recovery.serve_unenforced_sets`` is the explicit override.
* A missing / empty registry while the store holds sets refuses to start and deletes nothing
  (before: the server served everything and deleted every set's artifacts, silently).
* A garbage registry.db is one clear start-up error, not a traceback.
* A deleted set's description and subjects are gone from registry.db and its -wal / -shm files
  (PostgreSQL's counterpart is in test_registry_postgres.py).
* The registry checks run on both backends (SQLite and a real PostgreSQL server).

Real parts throughout: files on disk, SQLite, the detector, gRPC and HTTP over sockets, and
``oblivio serve`` as a process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fixtures_registration import FRANCE, SECRET_BYTES, SECRET_SET, record_secret_set
from fixtures_reliability import tree_snapshot, user_request
from fixtures_serving import serving_config, started_gateway
from oblivio.adapters.registration.stored_state import check_stored_state
from oblivio.adapters.registry import RegistryStateError, State
from oblivio.adapters.registry_factory import open_registry
from oblivio.adapters.registry_sqlite import REGISTRY_FILE, SqliteRegistry
from oblivio.adapters.store import STORE_SUBDIR, ArtifactStore
from oblivio.gateway.gate.decision import REFUSAL_TEXT
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

BROKEN = "quillon"
QUESTION = "What is the capital of France?"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# ---- a registered set with a truncated detector ------------------------------------------------
@pytest.fixture(scope="module")
def saved_detector(detector_extractor: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fitted detector for the FRANCE set, saved once for the module."""
    from oblivio.detector import fit_forget_set

    texts = [text for example in FRANCE for text in example.detector_texts()]
    directory = tmp_path_factory.mktemp("saved_detector")
    fit_forget_set(detector_extractor, texts, name=BROKEN).save(directory)
    return directory


def _truncate_state(detector: Path) -> None:
    state = detector / "state.npz"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def _lose_the_set_folder(detector: Path) -> None:
    """The registry says a detector was published, but the set's folder is gone (a store
    restored from an older backup than the registry)."""
    shutil.rmtree(detector.parent.parent)


def _register_broken(artifacts: Path, saved: Path, damage: Callable[[Path], None] = _truncate_state) -> None:
    """What the pipeline leaves after fitting ``BROKEN`` (detector published, ENFORCING), then
    ``damage`` done to the published detector folder."""
    store = ArtifactStore(artifacts / STORE_SUBDIR)
    published = store.publish(BROKEN, "detector", lambda stage: shutil.copytree(saved, stage, dirs_exist_ok=True))
    registry = SqliteRegistry(artifacts / REGISTRY_FILE)
    try:
        registry.create(BROKEN, method="refusal", description="the capital of France", example_count=len(FRANCE))
        registry.transition(BROKEN, State.FITTING_DETECTOR)
        registry.update_set(BROKEN, detector_version=published.version)
        registry.transition(BROKEN, State.ENFORCING)
    finally:
        registry.close()
    damage(published.path)


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return reply.status


async def _chat_error(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await oblivio_pb2_grpc.ChatStub(channel).Complete(user_request(QUESTION), timeout=120)
    return err.value


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncate_state, _lose_the_set_folder], ids=["truncated", "lost"])
async def test_a_broken_detector_refuses_chat_and_readiness_until_the_set_is_deleted(
    model_path, reference_backend, detector_extractor, saved_detector, tmp_path, damage
):
    from oblivio.detector import DetectorBank

    config = serving_config(model_path, tmp_path)
    _register_broken(config.artifacts_path, saved_detector, damage)
    stored = tree_snapshot(config.artifacts_path / STORE_SUBDIR)
    async with started_gateway(config, reference_backend, DetectorBank(detector_extractor)) as gateway, \
            grpc.aio.insecure_channel(gateway.grpc_target) as channel, \
            httpx.AsyncClient(base_url=gateway.http_url, timeout=120) as http:
        # Chat: refused on both doors, naming the set and what the operator can do.
        err = await _chat_error(channel)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert repr(BROKEN) in err.details() and "recovery.serve_unenforced_sets" in err.details(), err.details()
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4}
        response = await http.post("/v1/chat/completions", json=body)
        assert response.status_code == 503 and repr(BROKEN) in response.json()["error"]["message"], response.text
        # Readiness: NOT_SERVING for the server and Chat; Admin stays up for the repair.
        assert await _health(channel, "") == NOT_SERVING
        assert await _health(channel, "oblivio.v1.Chat") == NOT_SERVING
        assert await _health(channel, "oblivio.v1.Admin") == SERVING
        ready = await http.get("/health")
        assert ready.status_code == 503 and "cannot be enforced" in ready.json()["reason"], ready.text
        assert BROKEN not in ready.text  # an unauthenticated probe does not learn set names
        admin = oblivio_pb2_grpc.AdminStub(channel)
        (listed,) = (await admin.ListForgetSets(pb.ListForgetSetsRequest(), timeout=30)).forget_sets
        assert listed.state == pb.REGISTRATION_STATE_FAILED and "NOT ENFORCED" in listed.error, listed
        assert "chat is refused" in listed.error, listed.error
        assert tree_snapshot(config.artifacts_path / STORE_SUBDIR) == stored  # nothing stored was touched

        # The operator deletes the set: ready again, chat served.
        await admin.DeleteForgetSet(pb.DeleteForgetSetRequest(name=BROKEN), timeout=60)
        for _ in range(100):  # readiness follows on the event loop
            if await _health(channel, "") == SERVING:
                break
            await asyncio.sleep(0.05)
        assert await _health(channel, "oblivio.v1.Chat") == SERVING
        assert (await http.get("/health")).status_code == 200
        answer = await oblivio_pb2_grpc.ChatStub(channel).Complete(user_request(QUESTION), timeout=120)
        assert answer.usage.completion_tokens >= 1


@pytest.mark.slow
async def test_the_operator_override_serves_with_an_unenforced_set(
    model_path, reference_backend, detector_extractor, saved_detector, tmp_path
):
    from oblivio.detector import DetectorBank

    config = serving_config(model_path, tmp_path, **{"recovery.serve_unenforced_sets": True})
    _register_broken(config.artifacts_path, saved_detector)
    async with started_gateway(config, reference_backend, DetectorBank(detector_extractor)) as gateway, \
            grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        answer = await oblivio_pb2_grpc.ChatStub(channel).Complete(user_request(QUESTION), timeout=120)
        assert answer.usage.completion_tokens >= 1 and answer.text != REFUSAL_TEXT, answer  # served, not refused
        assert await _health(channel, "") == SERVING
        (listed,) = gateway.runtime.registration.list()
        assert "NOT ENFORCED" in listed.error and "served anyway" in listed.error, listed.error
        await gateway.runtime.registration.delete(BROKEN)


# ---- a lost or garbage registry ----------------------------------------------------------------
def _store_with_sets(artifacts: Path, names: tuple[str, ...]) -> ArtifactStore:
    store = ArtifactStore(artifacts / STORE_SUBDIR)
    for name in names:
        store.publish(name, "detector", lambda stage: (stage / "state.npz").write_bytes(b"fitted state"))
    return store


async def _serve_until_exit(model_path: Path, home: Path, **env: str) -> tuple[int, str]:
    """Run ``oblivio serve`` on ``home`` (reference backend, ``env`` added) until it exits;
    (code, output)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oblivio.gateway.cli", "serve", "--backend", "reference",
        "--model", str(model_path), "--grpc-port", "0", "--http-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "OBLIVIO_HOME": str(home), **env},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, output.decode(errors="replace")


async def test_lost_registry_refuses_to_start_and_deletes_nothing(model_path, tmp_path):
    """registry.db missing (a volume not mounted) while the store holds two sets."""
    artifacts = tmp_path / "artifacts"
    _store_with_sets(artifacts, ("alpha", "beta"))
    before = tree_snapshot(artifacts / STORE_SUBDIR)
    code, output = await _serve_until_exit(model_path, tmp_path)
    assert code == 1, output
    assert "knows no forget set" in output and "alpha, beta" in output, output
    assert "recovery.discard_unregistered_artifacts" in output and "Traceback" not in output, output
    assert tree_snapshot(artifacts / STORE_SUBDIR) == before
    # The registry the failed start left behind is empty: a second start still refuses.
    code, output = await _serve_until_exit(model_path, tmp_path)
    assert code == 1 and "knows no forget set" in output, output
    assert tree_snapshot(artifacts / STORE_SUBDIR) == before


async def test_garbage_registry_is_a_clear_start_error(model_path, tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    garbage = os.urandom(64 * 1024)
    (artifacts / REGISTRY_FILE).write_bytes(garbage)
    code, output = await _serve_until_exit(model_path, tmp_path)
    assert code == 1, output
    assert "cannot start the gateway: the registry" in output and "file is not a database" in output, output
    assert "Restore registry.db" in output and "Traceback" not in output, output
    assert (artifacts / REGISTRY_FILE).read_bytes() == garbage


async def test_unreachable_postgres_registry_is_a_clear_start_error_without_the_password(model_path, tmp_path):
    """registry.url names a PostgreSQL server nobody runs (a wrong host, a database down)."""
    code, output = await _serve_until_exit(
        model_path, tmp_path, OBLIVIO_REGISTRY__URL="postgresql://oblivio@127.0.0.1:1/oblivio",
        OBLIVIO_REGISTRY__PASSWORD="never-printed-secret", OBLIVIO_REGISTRY__CONNECT_TIMEOUT_S="2",
    )
    assert code == 1, output
    assert "cannot start the gateway: the registry PostgreSQL database postgresql://oblivio@127.0.0.1:1/oblivio" \
        in output and "cannot reach the registry" in output, output
    assert "never-printed-secret" not in output and "Traceback" not in output, output


def test_the_discard_override_deletes_unregistered_sets_and_logs_each(tmp_path, caplog, registry_config):
    store = _store_with_sets(tmp_path, ("alpha", "beta"))
    open_registry(tmp_path, registry_config).close()  # empty: as if it were lost
    with pytest.raises(RegistryStateError, match="knows no forget set") as refused:
        check_stored_state(tmp_path, registry_config=registry_config)
    assert "alpha, beta" in str(refused.value) and "nothing was deleted" in str(refused.value)
    assert store.set_names() == ["alpha", "beta"]
    with caplog.at_level(logging.WARNING, logger="oblivio.adapters.registration.stored_state"):
        check_stored_state(tmp_path, discard_unregistered=True, registry_config=registry_config)
    assert store.set_names() == []
    removed = [r.getMessage() for r in caplog.records if "deleting the artifacts" in r.getMessage()]
    assert len(removed) == 2 and "'alpha'" in removed[0] and "'beta'" in removed[1], removed


def test_an_orphan_next_to_registered_sets_is_removed_with_a_log_line(tmp_path, caplog, registry_config):
    """A publish that raced its set's deletion: the registry knows other sets, so the store's
    extra set is a leftover; it is removed, and the removal is logged."""
    store = _store_with_sets(tmp_path, ("kept", "raced"))
    registry = open_registry(tmp_path, registry_config)
    registry.create("kept", method="refusal")
    registry.close()
    with caplog.at_level(logging.WARNING, logger="oblivio.adapters.registration.stored_state"):
        check_stored_state(tmp_path, registry_config=registry_config)
    assert store.set_names() == ["kept"]
    assert any("'raced'" in r.getMessage() and "deleting the artifacts" in r.getMessage() for r in caplog.records)


# ---- what a deletion leaves in the registry's files ------------------------------------------
def test_a_deleted_set_leaves_nothing_in_the_registry_files(tmp_path):
    """The description, subjects and job messages of a deleted set must not survive in
    registry.db, registry.db-wal or registry.db-shm (before: many copies in the -wal)."""
    registry = SqliteRegistry(tmp_path / REGISTRY_FILE)
    try:
        record_secret_set(registry)
        registry.transition(SECRET_SET, State.DELETING)
        registry.remove(SECRET_SET)
        files = sorted(tmp_path.glob(f"{REGISTRY_FILE}*"))
        assert {f.name for f in files} >= {REGISTRY_FILE, f"{REGISTRY_FILE}-wal"}
        for path in files:
            raw = path.read_bytes()
            assert not [s for s in SECRET_BYTES if s in raw], path.name
        assert [r.name for r in registry.list()] == ["other-set"]  # the rest is intact
    finally:
        registry.close()
