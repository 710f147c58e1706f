"""The gRPC front door: Chat over the shared ChatCore, the composed Admin servicer, standard
health checking and server reflection, with exceptions turned into status codes by ONE
interceptor.

Why an error-mapping interceptor rather than try/except in every handler: handlers just raise
a member of :mod:`oblivio.gateway.errors`' family and clients get its status with a message a
person can act on; anything else is INTERNAL, and tracebacks go to the log, never to clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from oblivio.gateway.api.admin_service import AdminServicer
from oblivio.gateway.api.auth import CHAT_METHOD_PREFIX, AuthInterceptor, Authenticator, server_credentials
from oblivio.gateway.serving.chat_core import ChatCore
from oblivio.gateway.errors import DeadlineExceeded, InvalidArgument, ServerBusy, error_status
from oblivio.gateway.api.proto_convert import (
    chat_decision_to_proto,
    finish_reason_to_proto,
    messages_from_proto,
    sampling_from_proto,
    usage_to_proto,
)
from oblivio.gateway.serving.runtime import Runtime
from oblivio.v1 import oblivio_pb2 as pb
from oblivio.v1 import oblivio_pb2_grpc

SERVICE_NAMES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Chat", "Admin"))
CHAT_SERVICE, ADMIN_SERVICE = SERVICE_NAMES


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    status = error_status(exc, method)
    await context.abort(status.grpc_code, status.message)


class UndecodableRequestError(InvalidArgument):
    """A request message did not parse (e.g. a string field that is not UTF-8): INVALID_ARGUMENT.

    gRPC itself answers a deserializer's exception with UNKNOWN, which reads like a server
    fault; so the deserializer returns this instead and the handler wrapper raises it.
    """


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return UndecodableRequestError(f"the request message does not parse: {exc}")

    return parse


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, UndecodableRequestError):
            raise request
        yield request


def _checked(request: Any) -> Any:
    """The request, raising if it did not parse (see :func:`_tolerant`); a client stream is
    checked message by message as the handler reads it."""
    if isinstance(request, UndecodableRequestError):
        raise request
    return _checked_stream(request) if hasattr(request, "__aiter__") else request


def _wrap_unary(inner: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            result = inner(_checked(request), context)
            return await result if inspect.isawaitable(result) else result
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status code
            await _abort_for(exc, context, method)

    return handler


def _wrap_stream(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(inner):
        return _wrap_unary(inner, method)  # a coroutine that writes via context.write

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in inner(_checked(request), context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status code
            await _abort_for(exc, context, method)

    return handler


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions escaping any oblivio.v1 handler into a proper status + message."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith("/oblivio.v1."):
            return handler
        method = details.method
        return _rewrap(handler, lambda inner, streams: (_wrap_stream if streams else _wrap_unary)(inner, method),
                       request_deserializer=_tolerant(handler.request_deserializer))


Behaviour = Callable[..., Any]


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour, bool], Behaviour], *,
            request_deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, responses_stream)`` (and its
    request deserializer by ``request_deserializer``, when given)."""
    common = dict(request_deserializer=request_deserializer or handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **common)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True), **common)


class ChatConcurrencyLimit(grpc.aio.ServerInterceptor):
    """At most ``limit`` Chat calls in progress; one more is refused at once with
    RESOURCE_EXHAUSTED. Health, reflection and Admin are not counted.

    Why not grpc's ``maximum_concurrent_rpcs``: it counts every call, so a server full of chat
    streams refused its own health checks and Admin calls, and a Kubernetes probe restarted a
    replica exactly when it was busy. Runs on the server's event loop, so a plain counter is safe.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the chat concurrency limit must be at least 1")
        self.limit = limit
        self.active = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(CHAT_METHOD_PREFIX):
            return handler
        return _rewrap(handler, self._limited)

    def _limited(self, inner: Behaviour, streams: bool) -> Behaviour:
        """``inner`` holding one of the limit's slots from admission until it returns or ends."""
        if streams and inspect.isasyncgenfunction(inner):
            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await self._admit(context)
                try:
                    async for item in inner(request, context):
                        yield item
                finally:
                    self.active -= 1

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context)
            try:
                result = inner(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self.active -= 1

        return unary

    async def _admit(self, context: grpc.aio.ServicerContext) -> None:
        if self.active >= self.limit:
            status = error_status(ServerBusy(self.limit), "gRPC chat admission")
            await context.abort(status.grpc_code, status.message)
        self.active += 1


@contextlib.asynccontextmanager
async def _deadline(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Stop work when the client's deadline passes, even if gRPC has not cancelled us yet."""
    remaining = context.time_remaining()
    deadline = asyncio.timeout(remaining if remaining is not None else None)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if deadline.expired():
            raise DeadlineExceeded("deadline exceeded") from None
        raise


class ChatServicer(oblivio_pb2_grpc.ChatServicer):
    """``oblivio.v1.Chat`` over the shared :class:`ChatCore`."""

    def __init__(self, chat: ChatCore) -> None:
        self.chat = chat

    async def Complete(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        async with _deadline(context):
            result = await self.chat.complete(
                messages_from_proto(request.messages),
                sampling_from_proto(request.sampling),
                model=request.model or None,
                request_id=request.request_id or None,
                endpoint="grpc.Complete",
            )
        return pb.ChatResponse(
            id=result.request_id,
            model=self.chat.served_model,
            text=result.text,
            finish_reason=finish_reason_to_proto(result.finish_reason),
            usage=usage_to_proto(result.prompt_tokens, result.completion_tokens),
            gate=chat_decision_to_proto(result.outcome),
        )

    async def StreamComplete(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        async with _deadline(context):
            session = await self.chat.start(
                messages_from_proto(request.messages),
                sampling_from_proto(request.sampling),
                model=request.model or None,
                request_id=request.request_id or None,
                endpoint="grpc.StreamComplete",
            )
            decision = chat_decision_to_proto(session.outcome)
            sent_decision = finished = False
            async for chunk in session.chunks():
                message = pb.ChatChunk(id=session.request_id, delta=chunk.text)
                if not sent_decision:
                    message.gate.CopyFrom(decision)
                    sent_decision = True
                if chunk.finish_reason is not None:
                    message.finish_reason = finish_reason_to_proto(chunk.finish_reason)
                    message.usage.CopyFrom(usage_to_proto(session.prompt_tokens, session.completion_tokens))
                    finished = True
                yield message
            if not finished:  # a backend that ended without a finish reason still gets a last chunk
                message = pb.ChatChunk(
                    id=session.request_id,
                    finish_reason=finish_reason_to_proto(session.finish_reason),
                    usage=usage_to_proto(session.prompt_tokens, session.completion_tokens),
                )
                if not sent_decision:
                    message.gate.CopyFrom(decision)
                yield message


class GrpcServer:
    """grpc.aio server with Chat, Admin, health and reflection; bind, serve, drain, stop."""

    def __init__(self, runtime: Runtime, *, host: str, port: int, authenticator: Authenticator) -> None:
        self.runtime = runtime
        self.authenticator = authenticator
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self.chat_limit = ChatConcurrencyLimit(runtime.config.server.max_concurrent_requests)

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Outermost first: a call is authenticated before it may take a chat slot."""
        return [AuthInterceptor(self.authenticator), self.chat_limit, ErrorMappingInterceptor()]

    async def start(self) -> int:
        config = self.runtime.config
        server = grpc.aio.server(interceptors=self._interceptors(), options=[("grpc.so_reuseport", 0)])
        oblivio_pb2_grpc.add_ChatServicer_to_server(ChatServicer(self.runtime.chat), server)
        oblivio_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.runtime), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{self.host}:{self.requested_port}"
        credentials = server_credentials(config.auth)
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        await server.start()
        self._server, self.port = server, port
        return port

    async def mark_serving(self) -> None:
        """Report SERVING, then keep readiness following the enforcement guard: while a forget
        set cannot be enforced, the server ("", what a Kubernetes gRPC probe asks) and Chat are
        NOT_SERVING; Admin stays SERVING so an operator can repair or delete the set."""
        await self._apply_readiness()
        self.runtime.enforcement.subscribe(self._readiness_changed)

    async def _apply_readiness(self) -> None:
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        chat = serving if self.runtime.enforcement.ready else not_serving
        await self.health.set(ADMIN_SERVICE, serving)
        for name in ("", CHAT_SERVICE):
            await self.health.set(name, chat)

    def _readiness_changed(self) -> None:
        task = asyncio.get_running_loop().create_task(self._apply_readiness(), name="oblivio-readiness")
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, give in-flight calls ``grace`` seconds."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
