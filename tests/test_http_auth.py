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


@pytest.fixture(scope="module")
async def authed_http(model_path: Path, reference_backend: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    config = serving_config(model_path, tmp_path_factory.mktemp("authed_home"),
                            **{"auth.admin_tokens": [ADMIN], "auth.chat_api_keys": [CHAT]})
    async with started_gateway(config, reference_backend) as gateway:
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
