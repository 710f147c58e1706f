"""The auth interceptor over a real socket, for every streaming shape the contract uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from oblivio.gateway.api.auth import AuthInterceptor, Authenticator
from oblivio.gateway.config import AuthConfig
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc as pb_grpc

ADMIN = "admin-token-0123456789abcdef"
CHAT = "chat-key-0123456789abcdef"


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    authenticator = Authenticator.from_config(AuthConfig(admin_tokens=(ADMIN,), chat_api_keys=(CHAT,)))
    server = grpc.aio.server(interceptors=[AuthInterceptor(authenticator)])
    # The generated base servicers answer UNIMPLEMENTED: reaching them proves auth let us through.
    pb_grpc.add_AdminServicer_to_server(pb_grpc.AdminServicer(), server)
    pb_grpc.add_ChatServicer_to_server(pb_grpc.ChatServicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _code(call_result) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        await call_result
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_admin_unary_needs_an_admin_token(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        request = pb.ListForgetSetsRequest()
        assert await _code(admin.ListForgetSets(request)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(admin.ListForgetSets(request, metadata=_bearer("x" * 20))) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(admin.ListForgetSets(request, metadata=_bearer(CHAT))) == grpc.StatusCode.PERMISSION_DENIED
        assert await _code(admin.ListForgetSets(request, metadata=_bearer(ADMIN))) == grpc.StatusCode.UNIMPLEMENTED


async def test_streaming_admin_calls_are_denied_too(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        header = pb.RegisterForgetSetRequest(header=pb.ForgetSetHeader(name="alice"))
        denied = admin.RegisterForgetSet(iter([header]))
        assert await _code(denied) == grpc.StatusCode.UNAUTHENTICATED
        watch = admin.WatchRegistration(pb.WatchRegistrationRequest(name="alice"), metadata=_bearer(CHAT))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in watch:
                pass
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert ADMIN not in (error.value.details() or "") and CHAT not in (error.value.details() or "")


async def test_chat_needs_a_key_when_keys_are_configured(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        chat = pb_grpc.ChatStub(channel)
        request = pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")])
        assert await _code(chat.Complete(request)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(chat.Complete(request, metadata=_bearer(CHAT))) == grpc.StatusCode.UNIMPLEMENTED
        assert await _code(chat.Complete(request, metadata=_bearer(ADMIN))) == grpc.StatusCode.UNIMPLEMENTED


async def test_health_checks_need_no_credentials(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING
