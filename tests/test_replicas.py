"""Propagation across replicas sharing ONE artifact directory (store + SQLite registry).

Two pipelines stand for two gateway replicas: each has its own detector bank, its own backend
(the shared reference backend for replica A, a second ReferenceBackend for B) and its own policy
store object over the shared directory; only the disk is shared. A registration accepted by A
must become visible AND enforced on B by B's registry poll alone: first the detector (B's gate
refuses matched prompts), then the adapter once the set is LIVE, and a deletion on A must
unload the set on B. Training is skipped by parking A's trainer queue (see test_faults.py) and
publishing a ready adapter through the real store, which is what a finished training does.

The same propagation between two real ``oblivio serve`` processes is tested over sockets in
test_replica_processes.py; this in-process version pins down what that one cannot time
deterministically: B refuses while A's job is still parked before training (nothing LIVE
anywhere), and it checks B's own state (bank, backend, registry) directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from fixtures_registration import FRANCE, as_dicts, make_pipeline
from oblivio.adapters.registry import State
from oblivio.gateway.serving.chat_core import ChatCore, Message
from oblivio.gateway.serving.metrics import forget_set_metric_id

pytestmark = pytest.mark.slow
SYNC_S = 0.2
QUESTION = [Message("user", "What is the capital of France?")]


async def _eventually(check: Callable[[], bool], timeout: float = 60) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def test_registration_on_one_replica_is_enforced_on_the_other(
    tmp_path, model_path, reference_backend, lora_adapters, detector_extractor
):
    from transformers import AutoTokenizer

    from oblivio.detector import DetectorBank
    from oblivio.gateway.serving.backends.reference import ReferenceBackend

    bank_a, bank_b = DetectorBank(detector_extractor), DetectorBank(detector_extractor)
    backend_b = ReferenceBackend(model_path, max_model_len=2048)
    await backend_b.start()
    replica_a = make_pipeline(tmp_path, model_path, reference_backend, bank_a)
    replica_b = make_pipeline(tmp_path, model_path, backend_b, bank_b, sync_interval=SYNC_S)
    await replica_a.steps.train_lock.acquire()  # park A's job before training
    await replica_a.start()
    await replica_b.start()
    chat_b = ChatCore(tokenizer=AutoTokenizer.from_pretrained(model_path), backend=backend_b,
                      policy_store=replica_b.policy_store, detector=bank_b)
    try:
        assert (await chat_b.evaluate(QUESTION)).decision.label == "base"

        await replica_a.register("replica-france", as_dicts(FRANCE))
        detector_delay = await _eventually(lambda: "replica-france" in bank_b.names())
        # B enforces it: the adapter is not live anywhere yet, so a matched prompt is refused.
        outcome = await chat_b.evaluate(QUESTION)
        assert outcome.decision.refuse, outcome.decision
        assert replica_b.get("replica-france").state is State.TRAINING

        # A's training "finishes": the adapter is published and the set goes LIVE.
        await replica_a.close()
        replica_a.steps.train_lock.release()
        replica_a = make_pipeline(tmp_path, model_path, reference_backend, bank_a)
        registry = replica_a.registry
        registry.transition("replica-france", State.PUBLISHING)
        published = replica_a.store.publish("replica-france", "adapter", lora_adapters["alpha"], {"set": "replica-france"})
        registry.update_set("replica-france", adapter_version=published.version)
        registry.transition("replica-france", State.LOADING)
        registry.transition("replica-france", State.LIVE, fraction=1.0)
        adapter_delay = await _eventually(lambda: "replica-france" in backend_b.list_adapters())
        outcome = await chat_b.evaluate(QUESTION)
        assert not outcome.decision.refuse and [n for n, _ in outcome.decision.adapters] == ["replica-france"]

        # A deletes it: B unloads it.
        await replica_a.start()
        await replica_a.delete("replica-france")
        delete_delay = await _eventually(lambda: "replica-france" not in bank_b.names()
                                         and "replica-france" not in backend_b.list_adapters())
        assert (await chat_b.evaluate(QUESTION)).decision.label == "base"
        print(f"propagation delays (poll {SYNC_S}s): detector {detector_delay:.2f}s, "
              f"adapter {adapter_delay:.2f}s, delete {delete_delay:.2f}s")
    finally:
        chat_b.close()
        await replica_b.close()
        await replica_a.close()
        if "replica-france" in reference_backend.list_adapters():
            await reference_backend.remove_adapter("replica-france")
        await backend_b.close()


def _publish_live(pipeline, name: str, adapter) -> None:  # type: ignore[no-untyped-def]
    """What replica A's finished job leaves behind: a LIVE row and a published adapter."""
    registry = pipeline.registry
    if name not in [r.name for r in registry.list()]:
        registry.create(name, method="refusal")
        for state in (State.FITTING_DETECTOR, State.ENFORCING, State.TRAINING, State.PUBLISHING):
            registry.transition(name, state)
    published = pipeline.store.publish(name, "adapter", adapter, {"set": name})
    registry.update_set(name, adapter_version=published.version)
    if registry.get(name).state is State.PUBLISHING:
        registry.transition(name, State.LOADING)
        registry.transition(name, State.LIVE, fraction=1.0)


async def test_a_set_that_fails_to_load_on_a_poll_does_not_hold_up_the_others(
    tmp_path, model_path, reference_backend, lora_adapters
):
    """B's poll meets a corrupted adapter published by A: the other set still loads, the bad
    one is counted in the quarantine gauge and retried, and a fixed version clears it."""
    from oblivio.gateway.serving.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    replica_a = make_pipeline(tmp_path, model_path, reference_backend, None)  # only writes the disk
    replica_b = make_pipeline(tmp_path, model_path, reference_backend, None, metrics=metrics)
    await replica_b.start()
    try:
        _publish_live(replica_a, "poll-bad", lora_adapters["alpha"])
        _publish_live(replica_a, "poll-good", lora_adapters["beta"])
        (replica_a.store.current("poll-bad", "adapter") / "adapter_model.safetensors").write_bytes(b"not weights")

        assert await replica_b.sync_from_registry() == ["poll-good"]
        assert "poll-good" in reference_backend.list_adapters()
        assert "poll-bad" not in reference_backend.list_adapters()
        gauge = {(s.labels["forget_set_id"], s.labels["enforced_by"]): s.value
                 for f in metrics.registry.collect() if f.name == "oblivio_forget_set_quarantined" for s in f.samples}
        assert gauge == {(forget_set_metric_id("poll-bad"), "none"): 1.0}  # no detector in this replica: not enforced

        _publish_live(replica_a, "poll-bad", lora_adapters["alpha"])  # A publishes a good version 2
        assert await replica_b.sync_from_registry() == ["poll-bad"]
        assert "poll-bad" in reference_backend.list_adapters()
        assert not next(f for f in metrics.registry.collect() if f.name == "oblivio_forget_set_quarantined").samples
    finally:
        await replica_b.close()
        replica_a.registry.close()
        for name in ("poll-bad", "poll-good"):
            if name in reference_backend.list_adapters():
                await reference_backend.remove_adapter(name)
