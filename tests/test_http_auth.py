"""The HTTP door with auth configured, over a real socket: credentials are checked before the
body is even parsed, and /metrics is an authenticated endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fixtures_serving import serving_config, started_gateway

pytestmark = pytest.mark.slow

ADMIN = "admin-token-0123456789abcdef"
CHAT = "chat-key-0123456789abcdef"
METRICS = "metrics-token-0123456789abcdef"


@pytest.fixture(scope="module", params=["reference", "vllm"])
def front_door(request: pytest.FixtureRequest) -> str:
    """Both HTTP front doors: the hand-written one (reference backend) and vLLM's behind the gate."""
    return request.param


@pytest.fixture(scope="module")
async def authed_http(front_door: str, model_path: Path, reference_backend: Any, vllm_backend: Any,
                      tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    backend = vllm_backend if front_door == "vllm" else reference_backend
    config = serving_config(model_path, tmp_path_factory.mktemp("authed_home"),
                            **{"auth.admin_tokens": [ADMIN], "auth.chat_api_keys": [CHAT],
                               "auth.metrics_tokens": [METRICS], "engine.backend": front_door})
    async with started_gateway(config, backend) as gateway:
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=60) as client:
            yield client


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("body", [b"not json", b'{"messages": []}', b'{"model": "\\ud800", "messages": []}'],
                         ids=["not-json", "invalid", "surrogate"])
async def test_credentials_are_checked_before_the_body(authed_http: httpx.AsyncClient, body: bytes) -> None:
    """Without credentials a bad body is 401, not 400: the body is not looked at."""
    response = await authed_http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    with_key = await authed_http.post("/v1/chat/completions", content=body,
                                      headers={"content-type": "application/json", **_bearer(CHAT)})
    assert with_key.status_code == 400


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (_bearer("wrong-token-0123456789"), 401), (_bearer(CHAT), 403), (_bearer(METRICS), 200), (_bearer(ADMIN), 200)],
    ids=["none", "wrong", "chat-key", "metrics-token", "admin-token"],
)
async def test_metrics_need_a_metrics_or_admin_token(authed_http: httpx.AsyncClient, headers: dict[str, str], status: int) -> None:
    response = await authed_http.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert "# TYPE oblivio_gate_latency_seconds histogram" in response.text
    else:
        assert response.json()["error"]["message"]


async def test_a_metrics_token_opens_nothing_else(authed_http: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    response = await authed_http.post("/v1/chat/completions", json=body, headers=_bearer(METRICS))
    assert response.status_code == 403 and "may not use chat" in response.json()["error"]["message"]


@pytest.mark.parametrize("front_door", ["vllm"], indirect=True)  # text completions, tokenize: vLLM's door only
async def test_every_route_to_vllm_needs_a_chat_key(authed_http: httpx.AsyncClient) -> None:
    for path, body in [("/v1/completions", {"prompt": "Hi", "max_tokens": 1}), ("/tokenize", {"prompt": "Hi"}),
                       ("/v1/models", None)]:
        response = await (authed_http.get(path) if body is None else authed_http.post(path, json=body))
        assert response.status_code == 401, path
        with_key = await (authed_http.get(path, headers=_bearer(CHAT)) if body is None
                          else authed_http.post(path, json=body, headers=_bearer(CHAT)))
        assert with_key.status_code == 200, path
