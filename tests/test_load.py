"""Bounded load tests on loopback (CI size); ``python -m oblivio.eval.bench_load`` is the full size.

Every streamed answer is compared with the same prompt answered alone (greedy), so "zero lost
or wrong" is checked per response, also while a forget set is registered through the Admin
API (detector fit and LoRA training compete with serving; tests/test_registration_e2e.py checks
what that registration then does to matching prompts). The bounded queue is exercised as well.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from fixtures_registration import gateway_with_registration, tiny_training
from fixtures_reliability import user_request
from fixtures_serving import serving_config
from oblivio.eval.bench_load import load_with_registration, render_markdown, run_load
from oblivio.v1 import oblivio_pb2_grpc

pytestmark = pytest.mark.slow

CI_STREAMS = 8
CI_TOKENS = 4


async def test_concurrent_streams_none_lost_or_wrong(serving_gateway, tmp_path) -> None:
    report, results = await run_load(
        serving_gateway.grpc_target, serving_gateway.http_url, streams=CI_STREAMS, max_tokens=CI_TOKENS
    )
    (tmp_path / "load.md").write_text(render_markdown(report, "reference"))
    (tmp_path / "load.json").write_text(json.dumps(asdict(report)))
    print(render_markdown(report, "reference"))  # visible with -s: the CI-size latency table
    assert report.failures == [] and report.clean
    assert report.completed == CI_STREAMS and report.queue_refused == 0
    assert {r.protocol for r in results} == {"grpc", "http"}
    assert all(r.text for r in results)
    assert 0 < report.latency_s["p50"] <= report.latency_s["p90"] <= report.latency_s["max"]


@pytest.fixture(scope="module")
async def registering_gateway(model_path: Path, reference_backend: Any, registration_detector_bank: Any,
                              tmp_path_factory: pytest.TempPathFactory):
    """A gateway with a real detector bank and registration pipeline (2 training steps)."""
    config = serving_config(model_path, tmp_path_factory.mktemp("load_home"))
    async with gateway_with_registration(config, reference_backend, registration_detector_bank,
                                         tiny_training(steps=2)) as gateway:
        yield gateway


async def test_streams_none_lost_or_wrong_while_a_registration_runs(registering_gateway) -> None:
    report, results = await load_with_registration(
        registering_gateway.grpc_target, registering_gateway.http_url, streams=CI_STREAMS, max_tokens=CI_TOKENS
    )
    assert report.failures == [] and report.clean and report.completed == CI_STREAMS
    timing = report.registration_s
    assert 0 < timing["enforcing"] <= timing["live"], timing  # it really went through to LIVE
    assert "Registration in flight" in render_markdown(report, "reference")
    live = [r.name for r in registering_gateway.runtime.registration.list()]
    assert live == ["load-test-person"]


@pytest.fixture(scope="module")
async def small_queue_gateway(model_path: Path, reference_backend: Any, tmp_path_factory: pytest.TempPathFactory):
    """A gateway that admits only 2 concurrent gRPC calls (and 4 HTTP connections)."""
    from oblivio.gateway.api.server import Gateway

    config = serving_config(model_path, tmp_path_factory.mktemp("queue_home"), **{"server.max_concurrent_requests": 2})
    gateway = await Gateway.create(config, backend=reference_backend, detector=None, registration=False)
    await gateway.start()
    yield gateway
    await gateway.stop(grace=1)


async def test_full_queue_refuses_with_resource_exhausted_and_loses_nothing(small_queue_gateway) -> None:
    report, results = await run_load(
        small_queue_gateway.grpc_target, small_queue_gateway.http_url, streams=8, max_tokens=CI_TOKENS
    )
    refused = [r for r in results if r.queue_refused]
    assert refused, "8 streams against a queue of 2 must refuse some"
    assert any(r.error.startswith("RESOURCE_EXHAUSTED") for r in refused)
    # Refused is deliberate and visible; everything admitted completed with the right answer.
    assert report.lost == 0 and report.wrong == 0, report.failures
    assert report.completed + report.queue_refused == 8 and report.completed >= 2
    # The server is fine afterwards.
    async with __import__("grpc").aio.insecure_channel(small_queue_gateway.grpc_target) as channel:
        answer = await oblivio_pb2_grpc.ChatStub(channel).Complete(user_request("Say hi.", max_tokens=2), timeout=60)
    assert answer.usage.completion_tokens >= 1
