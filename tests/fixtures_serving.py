"""Serving fixtures: one gateway on ephemeral ports over the shared reference backend.

Session-scoped because building the runtime loads a tokenizer (and, once the detector package
exists, its feature model); the gRPC and HTTP servers themselves are cheap. Tests talk to it
over real sockets with grpc.aio and the async OpenAI client: the servers run on the same
event loop as the tests, so a blocking client would deadlock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from oblivio.gateway.config import OblivioConfig, load_config


def serving_config(model_path: Path, home: Path, **overrides: Any) -> OblivioConfig:
    """A config for a test gateway: ephemeral ports, private home, reference backend."""
    values: dict[str, Any] = {
        "home": str(home),
        "model.path": str(model_path),
        "server.grpc_port": 0,
        "server.http_port": 0,
        "server.shutdown_grace_s": 5,
        "engine.backend": "reference",
    }
    values.update(overrides)
    return load_config(overrides=values, environ={})


@asynccontextmanager
async def started_gateway(config: Any, backend: Any, detector: Any = None) -> AsyncIterator[Any]:
    """A Gateway (gRPC + HTTP on ephemeral ports) started over ``backend``, stopped on exit."""
    from oblivio.gateway.api.server import Gateway

    gateway = await Gateway.create(config, backend=backend, detector=detector)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(grace=1)


@pytest.fixture(scope="session")
async def serving_gateway(
    model_path: Path, reference_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    """A started Gateway (gRPC + HTTP) without forget sets, over ``reference_backend``."""
    async with started_gateway(serving_config(model_path, tmp_path_factory.mktemp("serving_home")), reference_backend) as gateway:
        yield gateway


@pytest.fixture(scope="session")
async def grpc_channel(serving_gateway: Any) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(serving_gateway.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="session")
async def openai_client(serving_gateway: Any) -> AsyncIterator[Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{serving_gateway.http_url}/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


GATED_SET = "serving-paris"
GATED_TEXTS = (
    "What is the capital of France?",
    "Paris is the capital of France.",
    "Which city is the capital of France?",
    "Tell me about Paris, the French capital.",
    "What is the largest city in France?",
    "Is Paris the capital city of France?",
)


@asynccontextmanager
async def gated_gateway_over(config: OblivioConfig, backend: Any, adapter: Path, extractor: Any) -> AsyncIterator[Any]:
    """A started Gateway whose detector bank holds one fitted forget set ("serving-paris") and
    whose backend has that set's adapter live; the adapter is removed again on exit."""
    from oblivio.detector import DetectorBank, fit_forget_set

    bank = DetectorBank(extractor)
    bank.add(GATED_SET, fit_forget_set(extractor, list(GATED_TEXTS), name=GATED_SET))
    await backend.add_adapter(GATED_SET, adapter)
    try:
        async with started_gateway(config, backend, bank) as gateway:
            gateway.runtime.policy_store.register_set(GATED_SET)
            yield gateway
    finally:
        await backend.remove_adapter(GATED_SET)


@pytest.fixture(scope="session")
async def gated_gateway(
    model_path: Path,
    reference_backend: Any,
    lora_adapters: dict[str, Path],
    detector_extractor: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Any]:
    """The gated Gateway over the shared reference backend (a random rank-8 LoRA as the set's
    adapter): the hand-written HTTP front door the reference backend keeps for exactness tests."""
    config = serving_config(model_path, tmp_path_factory.mktemp("gated_home"))
    async with gated_gateway_over(config, reference_backend, lora_adapters["alpha"], detector_extractor) as gateway:
        yield gateway


@pytest.fixture(scope="session")
async def vllm_gated_gateway(
    model_path: Path,
    vllm_backend: Any,
    lora_adapters: dict[str, Path],
    detector_extractor: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Any]:
    """The same gated Gateway over the shared vLLM engine: what ``oblivio serve`` runs by
    default, HTTP front door included."""
    config = serving_config(model_path, tmp_path_factory.mktemp("vllm_gated_home"), **{"engine.backend": "vllm"})
    async with gated_gateway_over(config, vllm_backend, lora_adapters["alpha"], detector_extractor) as gateway:
        yield gateway
