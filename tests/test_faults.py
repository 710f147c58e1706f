"""Fault tests: disk full during registration, corrupted artifacts at start-up, a failing
backend engine. (Detector failure -> fail-closed is covered in tests/test_gated_chat.py.)

Registrations here never train: the test holds the pipeline's trainer queue, so jobs park in
TRAINING ("waiting for the trainer") right after their detector is fitted and published. That
is exactly the state in which the faults below matter, and it costs seconds instead of minutes.
Faults we cannot cause for real on this machine (a full disk, an engine dying mid-forward) are
injected at the lowest layer that would raise them, so everything above runs unmodified.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fixtures_registration import FRANCE, UNRELATED, as_dicts, make_pipeline
from fixtures_reliability import tree_snapshot, user_request
from oblivio.adapters import store as store_module
from oblivio.adapters.registry import State
from oblivio.adapters.forget_set import ForgetExample
from oblivio.gateway.serving.metrics import forget_set_metric_id
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow
UNREADABLE = [
    ForgetExample(question="What is the boiling point of water at sea level?", answer="100 degrees Celsius."),
    ForgetExample(question="At what temperature does water boil?", answer="Water boils at 100 degrees Celsius."),
]


@pytest.fixture(scope="module")
def fault_bank(detector_extractor: Any) -> Any:
    """A private, empty detector bank (the shared ones must not see these test sets)."""
    from oblivio.detector import DetectorBank

    return DetectorBank(detector_extractor)


async def _parked_pipeline(root: Path, model_path: Path, backend: Any, bank: Any) -> Any:
    """A started pipeline whose trainer queue the test holds (jobs stop in TRAINING)."""
    pipeline = make_pipeline(root, model_path, backend, bank)
    await pipeline.steps.train_lock.acquire()  # parks jobs before the trainer starts
    await pipeline.start()
    return pipeline


async def _until(pipeline: Any, name: str, states: set[State], timeout: float = 300) -> Any:
    async def poll() -> Any:
        while (record := pipeline.get(name)).state not in states:
            await asyncio.sleep(0.1)
        return record

    return await asyncio.wait_for(poll(), timeout)


async def _close(pipeline: Any) -> None:
    await pipeline.close()
    if pipeline.steps.train_lock.locked():
        pipeline.steps.train_lock.release()


@dataclass
class DiskFullScenario:
    root: Path
    pipeline: Any
    failed: Any
    keep_files_before: dict[str, str]
    keep_files_after: dict[str, str]
    keep_score_before: float
    keep_score_after: float
    staging_after: list[Path]


@pytest.fixture(scope="module")
async def disk_full(tmp_path_factory, model_path, reference_backend, fault_bank) -> DiskFullScenario:
    """Three sets parked in TRAINING ("keep", "broken", "unreadable"), then a fourth ("full")
    registered while the disk is full (ENOSPC injected where the store fsyncs the new set's
    staging folder). Shared by the disk-full test and the corrupted-start test."""
    root = tmp_path_factory.mktemp("faults")
    pipeline = await _parked_pipeline(root, model_path, reference_backend, fault_bank)
    try:
        await pipeline.register("keep", as_dicts(FRANCE))
        await pipeline.register("broken", as_dicts(UNRELATED))
        await pipeline.register("unreadable", as_dicts(UNREADABLE))
        for name in ("keep", "broken", "unreadable"):
            await _until(pipeline, name, {State.TRAINING})
        keep_files = tree_snapshot(pipeline.store.sets_dir / "keep")
        keep_score = fault_bank.score(["What is the capital of France?"])[0]["keep"]
        real_fsync_tree = store_module.fsync_tree

        def disk_full(path: Path) -> None:
            if Path(path).name.startswith("full-"):  # only the new set's staging folder
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            real_fsync_tree(path)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store_module, "fsync_tree", disk_full)
            await pipeline.register("full", [{"text": "Bananas are yellow fruit."}, {"text": "Apples grow on trees."}])
            failed = await _until(pipeline, "full", {State.FAILED})
        return DiskFullScenario(
            root=root, pipeline=pipeline, failed=failed,
            keep_files_before=keep_files, keep_files_after=tree_snapshot(pipeline.store.sets_dir / "keep"),
            keep_score_before=keep_score,
            keep_score_after=fault_bank.score(["What is the capital of France?"])[0]["keep"],
            staging_after=list(pipeline.store.staging_dir.iterdir()),
        )
    finally:
        await _close(pipeline)


async def test_disk_full_while_publishing_fails_the_job_cleanly(disk_full, fault_bank):
    store, registry = disk_full.pipeline.store, type(disk_full.pipeline.registry)(disk_full.root / "registry.db")
    try:
        assert "No space left on device" in disk_full.failed.error
        assert "full" not in fault_bank.names()  # never enforced from a half-written state
        assert store.versions("full", "detector") == [] and store.current("full", "detector") is None
        assert disk_full.staging_after == []  # staging cleaned up
        # The earlier set is untouched: same files, same scores, still parked in TRAINING.
        assert disk_full.keep_files_after == disk_full.keep_files_before
        assert disk_full.keep_score_after == pytest.approx(disk_full.keep_score_before)
        assert registry.get("keep").state is State.TRAINING
    finally:
        registry.close()


async def test_artifact_root_under_a_file_is_a_clear_error(tmp_path, model_path, reference_backend):
    """An artifact directory that cannot be created (a path below a regular file; chmod does
    not stop root) fails at construction with the path in the message, before serving."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file")
    with pytest.raises(OSError) as err:
        make_pipeline(blocker / "artifacts", model_path, reference_backend, None)
    assert "not-a-dir" in str(err.value)


def _make_live(pipeline: Any, name: str, adapter: Path) -> None:
    """Advance a parked set to LIVE with a given adapter, through the real store and registry
    (what a finished training would have published)."""
    registry = pipeline.registry
    registry.transition(name, State.PUBLISHING)
    published = pipeline.store.publish(name, "adapter", adapter, {"set": name})
    registry.update_set(name, adapter_version=published.version)
    registry.transition(name, State.LOADING)
    registry.transition(name, State.LIVE, fraction=1.0)


def _quarantine_gauge(metrics: Any) -> dict[tuple[str, str], float]:
    """``{(forget_set_id, enforced_by): value}`` of oblivio_forget_set_quarantined, as scraped."""
    return {
        (sample.labels["forget_set_id"], sample.labels["enforced_by"]): sample.value
        for family in metrics.registry.collect() if family.name == "oblivio_forget_set_quarantined"
        for sample in family.samples
    }


async def test_corrupted_artifacts_at_start_quarantine_only_that_set_and_fail_closed(
    disk_full, model_path, reference_backend, lora_adapters, detector_extractor
):
    """On restart: "broken" has a corrupted adapter (its detector is fine), "unreadable" a
    corrupted detector state. Neither stops the gateway; "keep" serves as before; "broken" is
    still enforced, by refusal; "unreadable" cannot be scored, is FAILED and NOT ENFORCED, and
    that is visible in its error and the quarantine gauge. Deleting them clears the gauge."""
    from transformers import AutoTokenizer

    from oblivio.detector import DetectorBank
    from oblivio.gateway.serving.chat_core import ChatCore, Message
    from oblivio.gateway.serving.metrics import GatewayMetrics

    first = make_pipeline(disk_full.root, model_path, reference_backend, None)  # not started
    _make_live(first, "keep", lora_adapters["alpha"])
    _make_live(first, "broken", lora_adapters["beta"])
    _make_live(first, "unreadable", lora_adapters["beta"])
    first.registry.close()
    (first.store.current("broken", "adapter") / "adapter_model.safetensors").write_bytes(b"\x00garbage, not safetensors")
    for path in first.store.current("unreadable", "detector").rglob("*"):
        if path.is_file():
            path.write_bytes(b"corrupt")

    bank, metrics = DetectorBank(detector_extractor), GatewayMetrics()
    second = make_pipeline(disk_full.root, model_path, reference_backend, bank, metrics=metrics)
    chat = ChatCore(tokenizer=AutoTokenizer.from_pretrained(model_path), backend=reference_backend,
                    policy_store=second.policy_store, detector=bank)
    try:
        await second.start()  # must not raise: one bad set may not take the gateway down
        keep, broken, unreadable = second.get("keep"), second.get("broken"), second.get("unreadable")
        assert keep.state is State.LIVE and "keep" in bank.names() and "keep" in reference_backend.list_adapters()
        # Adapter unreadable: FAILED, but the detector still enforces the set (refusal).
        assert broken.state is State.FAILED and "quarantined" in broken.error and "REFUSED" in broken.error, broken
        assert "broken" in bank.names() and "broken" not in reference_backend.list_adapters()
        # Detector unreadable: FAILED and loudly NOT ENFORCED.
        assert unreadable.state is State.FAILED and "NOT ENFORCED" in unreadable.error, unreadable
        assert "unreadable" not in bank.names() and "unreadable" not in reference_backend.list_adapters()
        assert _quarantine_gauge(metrics) == {(forget_set_metric_id("broken"), "refusal"): 1.0,
                                              (forget_set_metric_id("unreadable"), "none"): 1.0}

        # Through the real detector + gate: keep gets its adapter, broken a refusal.
        about_keep = (await chat.evaluate([Message("user", "What is the capital of France?")])).decision
        assert not about_keep.refuse and [n for n, _ in about_keep.adapters] == ["keep"], about_keep
        about_broken = (await chat.evaluate([Message("user", "Who wrote the play Hamlet?")])).decision
        assert about_broken.refuse and not about_broken.adapters, about_broken
        assert any(v.name == "broken" and v.matched for v in about_broken.verdicts)

        await second.delete("unreadable")
        await second.delete("broken")
        assert _quarantine_gauge(metrics) == {}
    finally:
        chat.close()
        for record in second.list():
            await second.delete(record.name)
        await second.close()
    assert "keep" not in reference_backend.list_adapters()


async def test_backend_failure_is_unavailable_then_recovers(serving_gateway, grpc_channel, reference_backend, monkeypatch):
    """An engine that dies mid-forward (injected: the model's forward raises) gives clients
    UNAVAILABLE / HTTP 503 with a readable message; once it works again, so does the gateway."""
    import httpx

    stub = oblivio_pb2_grpc.ChatStub(grpc_channel)
    request = user_request("What is the capital of France?", max_tokens=6)
    before = await stub.Complete(request, timeout=120)

    model = reference_backend._model  # noqa: SLF001 - the engine we break on purpose

    def dead_engine(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device lost (injected)")

    monkeypatch.setattr(model, "forward", dead_engine)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Complete(request, timeout=120)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "device lost" in err.value.details()
    async with httpx.AsyncClient(base_url=serving_gateway.http_url, timeout=120) as http:
        response = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert response.status_code == 503 and response.json()["error"]["code"] == "backend_unavailable"

    monkeypatch.undo()
    after = await stub.Complete(request, timeout=120)
    assert after.text == before.text  # greedy: recovered to exactly the same behaviour
