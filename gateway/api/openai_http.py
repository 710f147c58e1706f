"""OpenAI-compatible HTTP API over the same ChatCore as gRPC, so an application switches to the
gateway by changing its base URL.

``POST /v1/chat/completions`` (JSON or SSE stream), ``GET /v1/models``, ``GET /health`` and
Prometheus ``/metrics``. Errors use OpenAI's ``{"error": {...}}`` shape so OpenAI clients raise
their usual typed exceptions. The gate decision travels in the ``oblivio`` extension field
(first chunk when streaming) and, compactly, in the ``x-oblivio-decision`` header.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from oblivio.gateway.api import openai_shapes as shapes
from oblivio.gateway.api.auth import AuthError, Scope
from oblivio.gateway.serving.chat_core import (
    FINISH_REFUSED,
    ChatCore,
    ChatInputError,
    GateOutcome,
    Message,
    SamplingRequest,
)
from oblivio.gateway.errors import ServerBusy, error_status

DECISION_HEADER = "x-oblivio-decision"
POLICY_HEADER = "x-oblivio-policy-version"
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
CHAT_ENDPOINT = "http.chat_completions"  # the endpoint label of metrics and logs
# Paths that generate, and so count against server.max_concurrent_requests.
GENERATION_PATHS = frozenset({CHAT_PATH, COMPLETIONS_PATH})
# OpenAI has no "refused by a gateway" reason; content_filter is the one clients already handle.
OPENAI_FINISH = {"stop": "stop", "length": "length", FINISH_REFUSED: "content_filter"}
# JSON's \uD800-\uDFFF escapes decode to lone surrogates: Python strings, but not Unicode text
# that the tokenizer, the engine or a UTF-8 error message can take.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class RequestFieldError(ChatInputError):
    """A request field is invalid (HTTP 400); ``param`` names it, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def to_message(self, index: int) -> Message:
        if self.content is None:
            raise ChatInputError(f"messages[{index}].content is required")
        if isinstance(self.content, str):
            return Message(self.role, self.content)
        if any(part.type != "text" or part.text is None for part in self.content):
            raise ChatInputError(f"messages[{index}].content: only text parts are supported")
        return Message(self.role, "".join(part.text or "" for part in self.content))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request the gateway honours; unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    # Strict: "yes" or "false" as a string must not silently pick a response format.
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @field_validator("seed")
    @classmethod
    def _seed_fits_int64(cls, seed: int | None) -> int | None:
        """The engines take 64-bit seeds; a larger one failed inside generation as a 503 that
        clients retried, so it is refused here as the client's mistake."""
        if seed is not None and not INT64_MIN <= seed <= INT64_MAX:
            raise ValueError(f"must fit in a signed 64-bit integer, [{INT64_MIN}, {INT64_MAX}]")
        return seed

    def sampling(self) -> SamplingRequest:
        if self.n != 1:
            raise ChatInputError("n must be 1: the gateway returns one choice per request")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingRequest(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens,
            stop=stop,
            seed=self.seed,
        )


def error_response(status: int, message: str, *, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def decision_json(outcome: GateOutcome) -> dict[str, Any]:
    """The ``oblivio`` extension field: how the request was served, nothing per forget set.

    Set names, scores and adapter scales would let any chat key confirm a forgotten fact and
    list the forget sets; operators read them from Admin Explain and the server log.
    """
    return {
        "decision": outcome.label,
        "refused": outcome.decision.refuse,
        "policy_version": outcome.decision.policy_version,
        "detector_error": outcome.detector_error is not None,
    }


def decision_header(outcome: GateOutcome) -> str:
    """Compact, greppable form of :func:`decision_json`: ``adapter; policy_version=3``."""
    return f"{outcome.label}; policy_version={outcome.decision.policy_version}"


def error_for(exc: Exception, where: str) -> JSONResponse:
    """``exc`` in OpenAI's error shape, as :func:`oblivio.gateway.errors.error_status` maps it."""
    status = error_status(exc, where)
    return error_response(status.http_status, status.message, kind=status.openai_type, param=status.param,
                          code=status.openai_code)


def _children(value: Any, path: str) -> Iterable[tuple[str, Any]]:
    """(path, item) of a JSON container's items, paths as in error messages: ``messages[0].content``."""
    if isinstance(value, dict):
        return ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    if isinstance(value, list):
        return ((f"{path}[{index}]", item) for index, item in enumerate(value))
    return ()


def _invalid_text_at(value: Any, path: str = "") -> str | None:
    """Where in a decoded JSON body a string (value or key) holds a lone surrogate, else None."""
    if isinstance(value, str):
        return path if LONE_SURROGATE.search(value) else None
    if isinstance(value, dict) and any(LONE_SURROGATE.search(key) for key in value):
        return f"a key of {path or 'the body'}"  # the key itself cannot be printed
    for child_path, item in _children(value, path):
        if (where := _invalid_text_at(item, child_path)) is not None:
            return where
    return None


def _validation_error(error: ValidationError) -> RequestFieldError:
    """The first pydantic error as a message that names the field, like ``stream: ...``."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return RequestFieldError(f"{where}: {first['msg'].removeprefix('Value error, ')}", param=where or None)


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object of Unicode text; every failure is a RequestFieldError (400).

    Strings that are not Unicode text are refused here, naming the field, instead of failing
    later in the tokenizer, the engine or the error response itself.
    """
    try:
        data = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise RequestFieldError("the request body must be a JSON object in UTF-8") from None
    if not isinstance(data, dict):
        raise RequestFieldError("the request body must be a JSON object")
    if (where := _invalid_text_at(data)) is not None:
        raise RequestFieldError(
            f"{where} must be valid Unicode text: it holds a lone surrogate (an unpaired \\uD800-\\uDFFF escape)",
            param=where,
        )
    return data


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat completion body (see :func:`decode_json_object`).

    Done by hand rather than by FastAPI's body parameter so that it runs after authentication:
    an unauthenticated client learns nothing about what a valid body looks like.
    """
    data = decode_json_object(raw)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` before they are buffered in memory.

    A declared Content-Length over the limit is answered at once; a chunked body is counted as
    it arrives and refused when it crosses the limit (raised as an HTTP 413 that the app's
    error handler renders in OpenAI's error shape).
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, self._too_large(), kind="invalid_request_error")
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, self._too_large())
            return message

        await self.app(scope, counting_receive, send)


class ChatConcurrencyLimit:
    """At most ``limit`` generations (chat or text completions) in progress (a stream until its last byte); one more
    gets 503 in OpenAI's error shape at once. Nothing else counts: uvicorn's own limit counted
    every request, so chat load made ``/health`` fail exactly when a replica was busy.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await error_for(ServerBusy(self.limit), scope["path"])(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def auth_denied(authenticator: Any, authorization: str | None, scope: Scope = Scope.CHAT) -> JSONResponse | None:
    """None when ``authorization`` may use ``scope`` (or no authenticator is configured), else
    the 401/403 response in OpenAI's error shape."""
    if authenticator is None:
        return None
    try:
        authenticator.check(scope, authorization)
    except AuthError as exc:
        return error_for(exc, f"{scope.value} auth")
    return None


class HealthAndMetrics:
    """The routes both HTTP front doors share: ``/health``, ``/metrics`` and OpenAI-shaped
    errors for what Starlette answers itself. ``authenticator``
    (oblivio.gateway.api.auth.Authenticator) guards metrics; ``metrics``
    (oblivio.gateway.serving.metrics.GatewayMetrics) is rendered there (None: the process's
    default Prometheus registry)."""

    def __init__(self, chat: ChatCore, *, authenticator: Any = None, metrics: Any = None) -> None:
        self.chat = chat
        self.authenticator = authenticator
        self.metrics = metrics

    def install(self, app: FastAPI) -> None:
        app.exception_handler(StarletteHTTPException)(self.http_error)
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/metrics", self.prometheus, methods=["GET"])

    async def http_error(self, _: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette answers 404 / 405 / 413 with {"detail": ...}; OpenAI clients only
        # understand {"error": {...}}, so keep that shape for every error.
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), kind=kind)

    async def health(self, request: Request) -> JSONResponse:
        enforcement = self.chat.enforcement
        if not enforcement.ready:  # fail closed: chat is refused, so this replica is not ready
            return JSONResponse({"status": "unavailable", "reason": enforcement.summary()}, status_code=503)
        ready = request.app.state.ready and await self.chat.backend.healthy()
        return JSONResponse({"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503)

    async def prometheus(self, request: Request) -> Response:
        # Per-set series are operator data: an admin or metrics token once auth is configured.
        if (denied := auth_denied(self.authenticator, request.headers.get("authorization"), Scope.METRICS)) is not None:
            return denied
        if self.metrics is not None:
            return Response(self.metrics.render(), media_type=self.metrics.content_type)
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def create_base_app(chat: ChatCore, *, authenticator: Any = None, metrics: Any = None,
                    max_body_bytes: int = 4 * 1024 * 1024, max_concurrent_chats: int | None = None) -> FastAPI:
    """What both HTTP front doors share: body and concurrency limits and
    :class:`HealthAndMetrics`. ``max_body_bytes`` bounds what one request may make the server
    buffer; ``max_concurrent_chats`` bounds generations in progress (None = unbounded)."""
    app = FastAPI(title="oblivio", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if max_concurrent_chats is not None:
        app.add_middleware(ChatConcurrencyLimit, limit=max_concurrent_chats)
    app.state.ready = False
    HealthAndMetrics(chat, authenticator=authenticator, metrics=metrics).install(app)
    return app


class OpenAIServingChat:
    """The hand-written OpenAI routes over ChatCore: ``GET /v1/models`` and
    ``POST /v1/chat/completions`` (one object per front door, its routes its methods, as vLLM's
    ``vllm.entrypoints.openai`` serving classes are)."""

    def __init__(self, chat: ChatCore, *, authenticator: Any = None) -> None:
        self.chat = chat
        self.authenticator = authenticator

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        app.add_api_route(CHAT_PATH, self.chat_completions, methods=["POST"])

    def _denied(self, request: Request) -> JSONResponse | None:
        return auth_denied(self.authenticator, request.headers.get("authorization"))

    async def models(self, request: Request) -> JSONResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        return JSONResponse({
            "object": "list",
            "data": [{"id": self.chat.served_model, "object": "model", "created": 0, "owned_by": "oblivio"}],
        })

    async def chat_completions(self, request: Request) -> Any:
        if (denied := self._denied(request)) is not None:
            return denied
        raw = await request.body()  # outside the try: an oversized body's 413 has its own handler
        try:
            body = parse_chat_request(raw)
            messages = [m.to_message(i) for i, m in enumerate(body.messages)]
            session = await self.chat.start(
                messages, body.sampling(), model=body.model, endpoint=CHAT_ENDPOINT
            )
        except Exception as exc:  # noqa: BLE001 - mapped to OpenAI's error shape
            return error_for(exc, CHAT_ENDPOINT)
        headers = {DECISION_HEADER: decision_header(session.outcome), POLICY_HEADER: str(session.outcome.decision.policy_version)}
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                self._sse(session, created, include_usage),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        try:
            text = "".join([chunk.text async for chunk in session.chunks()])
        except Exception as exc:  # noqa: BLE001
            return error_for(exc, CHAT_ENDPOINT)
        finish = OPENAI_FINISH.get(session.finish_reason or "stop", "stop")
        head = {"id": session.request_id, "created": created, "model": self.chat.served_model}
        return JSONResponse(
            shapes.answer("chat", head, [shapes.message_choice(0, text, finish)],
                          usage=shapes.usage(session.prompt_tokens, session.completion_tokens),
                          oblivio=decision_json(session.outcome)),
            headers=headers,
        )

    async def _sse(self, session: Any, created: int, include_usage: bool) -> AsyncIterator[str]:
        head = {"id": session.request_id, "created": created, "model": self.chat.served_model}
        yield shapes.sse(shapes.chunk("chat", head, [shapes.delta_choice(0, {"role": "assistant", "content": ""}, None)],
                                      oblivio=decision_json(session.outcome)))
        try:
            async for piece in session.chunks():
                finish = OPENAI_FINISH.get(piece.finish_reason, "stop") if piece.finish_reason else None
                if piece.text or finish:
                    delta = {"content": piece.text} if piece.text else {}
                    yield shapes.sse(shapes.chunk("chat", head, [shapes.delta_choice(0, delta, finish)]))
        except Exception as exc:  # noqa: BLE001 - headers are sent; report in-band like OpenAI does
            response = error_for(exc, CHAT_ENDPOINT)
            yield f"data: {bytes(response.body).decode()}\n\n"
            return
        if include_usage:
            yield shapes.sse(shapes.chunk("chat", head, [],
                                          usage=shapes.usage(session.prompt_tokens, session.completion_tokens)))
        yield shapes.SSE_DONE


def create_app(chat: ChatCore, *, authenticator: Any = None, metrics: Any = None,
               max_body_bytes: int = 4 * 1024 * 1024, max_concurrent_chats: int | None = None) -> FastAPI:
    """The hand-written OpenAI front door over ChatCore, for the reference backend (its
    exactness tests); the vLLM backend gets vLLM's own (:mod:`oblivio.gateway.api.openai_vllm`).
    Arguments as for :func:`create_base_app`."""
    app = create_base_app(chat, authenticator=authenticator, metrics=metrics,
                          max_body_bytes=max_body_bytes, max_concurrent_chats=max_concurrent_chats)
    OpenAIServingChat(chat, authenticator=authenticator).install(app)
    return app
