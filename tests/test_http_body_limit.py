"""The HTTP door refuses oversized bodies before buffering them, declared or chunked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


async def test_declared_oversized_body_is_refused_in_openai_shape(serving_gateway: Any) -> None:
    limit = serving_gateway.runtime.config.server.max_request_bytes
    body = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * limit + b'"}]}'
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{serving_gateway.http_url}/v1/chat/completions", content=body,
                                   headers={"content-type": "application/json"}, timeout=60)
        assert response.status_code == 413
        assert f"exceeds {limit} bytes" in response.json()["error"]["message"]
        assert (await http.get(f"{serving_gateway.http_url}/health", timeout=30)).status_code == 200


async def test_chunked_oversized_body_is_refused_while_streaming_in(serving_gateway: Any) -> None:
    limit = serving_gateway.runtime.config.server.max_request_bytes

    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}]}'

    async with httpx.AsyncClient() as http:
        response = await http.post(f"{serving_gateway.http_url}/v1/chat/completions", content=chunks(),
                                   headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
