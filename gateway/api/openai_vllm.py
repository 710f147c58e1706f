"""The OpenAI HTTP API of the vLLM backend: vLLM's own serving layer, with oblivio's gate in front.

Why vLLM's layer: it is the OpenAI surface users of ``vllm serve`` already rely on, tested by
vLLM (``n``, logprobs, structured outputs, tools, ``/v1/completions``, ``/tokenize``, client
disconnects aborting the request, ``X-Request-Id``); a hand-written one covered half of it.
It runs in-process on the backend's engine, so it shares the engine with gRPC Chat.

What oblivio adds, as one ASGI app in front of vLLM's (:class:`GatedVLLMApp`):

- only the generating endpoints (chat and text completions) and the read-only ones
  (``/tokenize``, ``/detokenize``, ``/version``) reach vLLM; any other route vLLM has (token-id
  generation, responses, pooling, dev endpoints) is 404, because it would bypass the gate;
- a generating request's text -- everything the model will condition on: every message of every
  role, tool calls and tool definitions, every completion prompt (token ids decoded) -- is
  scored by the detector, and the gate decides as it does for gRPC;
- the decision reaches vLLM through the request's ``model`` field: the served name for the base
  model, or the opaque name of the LoRA variant the gate chose, leased from the backend for the
  request's lifetime and entered in vLLM's table of known LoRAs (``lora_requests``) only while
  leased. Clients cannot name a variant themselves: ``model`` must be the served name;
- a refusal never reaches vLLM: it is answered here as a complete OpenAI response (streamed if
  asked) with ``finish_reason: "content_filter"``;
- responses carry the decision (``oblivio`` field, ``x-oblivio-decision`` header) and the served
  name where vLLM would print the variant's.

Why a body rewrite rather than a LoRA resolver plugin (vLLM's other seam): a resolver is asked
only for names it does not know and keeps what it loaded, with no per-request lifetime; the
lease here is what lets the backend evict and remove variants safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from oblivio.gateway.gate import decision as gate
from oblivio.gateway.serving.backends.base import AdapterApplication
from oblivio.gateway.serving.backends.vllm_version import check_tested
from oblivio.gateway.serving.chat_core import ChatCore, GateOutcome, ModelNotServedError
from oblivio.gateway.api import openai_shapes as shapes
from oblivio.gateway.api.speculation import BaseSpeculation, Message, Receive, Scope, Send, SpeculationOdds
from oblivio.gateway.api.openai_http import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    DECISION_HEADER,
    POLICY_HEADER,
    RequestFieldError,
    error_for,
    auth_denied,
    create_base_app,
    decision_header,
    decision_json,
    decode_json_object,
    error_response,
)

LOG = logging.getLogger(__name__)


READ_ONLY_PATHS = frozenset({"/tokenize", "/detokenize", "/version"})
# Keys of a chat message or tool definition that hold structure, not text the model reads.
STRUCTURAL_KEYS = frozenset({"role", "type", "id", "tool_call_id", "index"})
REFUSAL_FINISH = "content_filter"
# Chat request fields besides messages whose text a chat template can put into the prompt.
TEMPLATE_TEXT_FIELDS = ("tools", "documents", "chat_template_kwargs")


def vllm_serving_flags(model_path: str, served_name: str, max_model_len: int) -> list[str]:
    """The ``vllm serve`` command-line flags whose frontend the gateway builds. With
    ``--enable-request-id-headers`` added (here :class:`RequestIds` does that job for every
    route, oblivio's own included), ``vllm serve`` behaves as this front door does."""
    return [
        "--model", model_path,
        "--served-model-name", served_name,
        "--max-model-len", str(max_model_len),
        "--enable-lora",
        # Tools: vLLM refuses tool_choice "required" and named functions without a parser. The
        # pythonic parser keeps vLLM's generic path for those (JSON constrained by the tools'
        # schemas, which any model can produce); "auto" then works where the chat template
        # knows tools, and otherwise the model answers in text.
        "--enable-auto-tool-choice", "--tool-call-parser", "pythonic",
        "--disable-log-stats",
        "--disable-fastapi-docs",
    ]


async def build_vllm_openai_app(engine: Any, *, model_path: str, served_name: str, max_model_len: int) -> FastAPI:
    """vLLM's OpenAI app, state initialised over the running ``engine`` (an AsyncLLM)."""
    import vllm
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    check_tested(vllm.__version__, "oblivio's HTTP front door (gateway/api/openai_vllm.py)")
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        vllm_serving_flags(model_path, served_name, max_model_len)
    )
    supported_tasks = await engine.get_supported_tasks()
    app = build_app(args, supported_tasks, engine.model_config)
    await init_app_state(engine, app.state, args, supported_tasks)
    return app


# ---------------------------------------------------------------------------- what is scored


def _strings(value: Any) -> Iterator[str]:
    """Every string a JSON value holds, structural keys skipped (depth-first, in order)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in STRUCTURAL_KEYS:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def chat_scored_texts(body: dict[str, Any]) -> list[str]:
    """The one text a chat request is scored on: every message's text (content, content parts,
    tool-call names and arguments) of every role, then whatever else the chat template may
    render (tool definitions, documents, template arguments). For a plain conversation this is
    exactly what gRPC Chat scores (contents joined by newlines)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestFieldError("messages must be a non-empty list of message objects", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestFieldError(f"messages[{index}] must be an object", param=f"messages[{index}]")
    pieces = [text for text in _strings(messages) if text.strip()]
    for field in TEMPLATE_TEXT_FIELDS:
        pieces += [text for text in _strings(body.get(field) or []) if text.strip()]
    return ["\n".join(pieces)]


def completion_scored_texts(body: dict[str, Any], tokenizer: Any) -> list[str]:
    """One text per completion prompt (token-id prompts decoded), suffix included."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise RequestFieldError("prompt must be a string, a list of strings, or token ids", param="prompt")
    texts = []
    for index, item in enumerate(prompts):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            try:
                texts.append(tokenizer.decode(item))
            except (OverflowError, TypeError, ValueError, IndexError) as exc:
                raise RequestFieldError(f"prompt[{index}] holds token ids this model does not have: {exc}",
                                        param="prompt") from None
        else:
            raise RequestFieldError(f"prompt[{index}] must be a string or a list of token ids", param="prompt")
    suffix = body.get("suffix")
    if isinstance(suffix, str) and suffix:
        texts = [f"{text}\n{suffix}" for text in texts]
    return texts


# ---------------------------------------------------------------------------- refusals


def _choice_count(body: dict[str, Any], prompts: int) -> int:
    n = body.get("n")
    return (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1) * prompts


class RefusalWriter:
    """A refused request's complete OpenAI response, in the shape the endpoint promises."""

    def __init__(self, chat: ChatCore, served_name: str) -> None:
        self.chat = chat
        self.served_name = served_name
        self._refusal_tokens = len(chat.tokenizer(gate.REFUSAL_TEXT, add_special_tokens=False)["input_ids"])

    def _prompt_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(self.chat.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)

    async def respond(self, kind: shapes.Kind, body: dict[str, Any], texts: Sequence[str], outcome: GateOutcome,
                      request_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        choices = _choice_count(body, len(texts) if kind == "text" else 1)
        usage = shapes.usage(self._prompt_tokens(texts), choices * self._refusal_tokens)
        head = {"id": request_id, "created": int(time.time()), "model": self.served_name}
        headers = decision_headers(outcome)
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = self._events(kind, head, choices, outcome, usage if include_usage else None)
            await _send_events(send, events, headers)
            return
        refused = [shapes.message_choice(i, gate.REFUSAL_TEXT, REFUSAL_FINISH) if kind == "chat"
                   else shapes.text_choice(i, gate.REFUSAL_TEXT, REFUSAL_FINISH) for i in range(choices)]
        payload = shapes.answer(kind, head, refused, usage=usage, oblivio=decision_json(outcome))
        await JSONResponse(payload, headers=headers)(scope, receive, send)

    @staticmethod
    def _events(kind: shapes.Kind, head: dict[str, Any], choices: int, outcome: GateOutcome,
                usage: dict[str, int] | None) -> list[dict[str, Any]]:
        oblivio = decision_json(outcome)
        if kind == "chat":
            roles = [shapes.delta_choice(i, {"role": "assistant", "content": ""}, None) for i in range(choices)]
            events = [shapes.chunk(kind, head, roles, oblivio=oblivio)]
            events += [shapes.chunk(kind, head, [shapes.delta_choice(i, {"content": gate.REFUSAL_TEXT}, REFUSAL_FINISH)])
                       for i in range(choices)]
        else:
            events = [shapes.chunk(kind, head, [shapes.text_choice(i, gate.REFUSAL_TEXT, REFUSAL_FINISH)],
                                   **({"oblivio": oblivio} if i == 0 else {})) for i in range(choices)]
        if usage is not None:
            events.append(shapes.chunk(kind, head, [], usage=usage))
        return events


async def _send_events(send: Send, events: list[dict[str, Any]], headers: dict[str, str]) -> None:
    raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
    for event in events:
        await send({"type": "http.response.body", "body": shapes.sse(event).encode(), "more_body": True})
    await send({"type": "http.response.body", "body": shapes.SSE_DONE.encode(), "more_body": False})


def decision_headers(outcome: GateOutcome) -> dict[str, str]:
    return {DECISION_HEADER: decision_header(outcome), POLICY_HEADER: str(outcome.decision.policy_version)}


# ---------------------------------------------------------------------------- responses


class DecisionStamp:
    """Wraps ``send`` for one gated request that vLLM answers: adds the decision headers and
    the ``oblivio`` field (the first event of a stream, or the JSON body), and renames the
    variant's opaque name to the served one. A JSON body is held until complete (its length
    changes); a stream passes event by event, and its first event calls ``on_first_body``
    (time to first token)."""

    def __init__(self, send: Send, outcome: GateOutcome, alias: str | None, served_name: str,
                 on_first_body: Callable[[], None]) -> None:
        self._send = send
        self._outcome = outcome
        self._rename = (alias.encode(), served_name.encode()) if alias else None
        self._on_first_body: Callable[[], None] | None = on_first_body
        self._start: Message | None = None
        self._stream = False
        self._stamped = False
        self._buffer = bytearray()

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
            headers += [(k.encode(), v.encode()) for k, v in decision_headers(self._outcome).items()]
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            self._stream = content_type.startswith(b"text/event-stream")
            self._start = {**message, "headers": headers}
            if self._stream:
                await self._send(self._start)
            return
        if kind != "http.response.body":
            await self._send(message)
            return
        body = message.get("body", b"")
        if self._stream:
            if body:
                self._first_body()
            await self._send({**message, "body": self._stamp_events(self._renamed(body))})
            return
        self._buffer.extend(body)
        if message.get("more_body", False):
            return
        patched = self._stamp_json(self._renamed(bytes(self._buffer)))
        assert self._start is not None
        self._start["headers"].append((b"content-length", str(len(patched)).encode()))
        await self._send(self._start)
        await self._send({"type": "http.response.body", "body": patched, "more_body": False})

    def _first_body(self) -> None:
        if self._on_first_body is not None:
            self._on_first_body()
            self._on_first_body = None

    def _renamed(self, body: bytes) -> bytes:
        return body.replace(*self._rename) if self._rename else body

    def _with_decision(self, payload_json: bytes) -> bytes | None:
        """``payload_json`` with the ``oblivio`` field added, or None when it is not an answer
        (not JSON, or an error without ``choices``: no decision to report)."""
        try:
            payload = json.loads(payload_json)
        except ValueError:
            return None
        if not isinstance(payload, dict) or "choices" not in payload:
            return None
        payload["oblivio"] = decision_json(self._outcome)
        return json.dumps(payload).encode()

    def _stamp_json(self, body: bytes) -> bytes:
        return self._with_decision(body) or body

    def _stamp_events(self, body: bytes) -> bytes:
        if self._stamped or not body.startswith(b"data: {"):
            return body
        event, separator, rest = body.partition(b"\n\n")
        stamped = self._with_decision(event[len(b"data: "):])
        if stamped is None:
            return body
        self._stamped = True
        return b"data: " + stamped + separator + rest


# ---------------------------------------------------------------------------- the gate


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away before sending its request")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` that first returns ``body`` whole, then the client's own messages, so
    vLLM still hears the disconnect of a client that goes away (and aborts the request)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def with_content_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return {**scope, "headers": headers + [(b"content-length", str(length).encode())]}


class GatedVLLMApp:
    """ASGI app in front of vLLM's: routes, gates, leases the variant, stamps the decision."""

    def __init__(self, vllm_app: Any, chat: ChatCore, backend: Any, *, served_name: str,
                 authenticator: Any = None, metrics: Any = None, speculate: bool = True) -> None:
        """``speculate``: vLLM starts on the base model while the detector scores, while the
        recent decisions say it pays (``oblivio.gateway.api.speculation``); off, it always waits
        for the decision."""
        self.vllm_app = vllm_app
        self.chat = chat
        self.backend = backend
        self.served_name = served_name
        self.authenticator = authenticator
        self.metrics = metrics
        self.refusals = RefusalWriter(chat, served_name)
        self.speculation_odds = SpeculationOdds() if speculate else None
        self._lora_table: dict[str, Any] = vllm_app.state.openai_serving_models.lora_requests
        self._leases: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        denied = auth_denied(self.authenticator, headers.get("authorization"))
        if path in (CHAT_PATH, COMPLETIONS_PATH) and method == "POST":
            response = denied or await self._gated(path, headers, scope, receive, send)
        elif path in READ_ONLY_PATHS:
            response = denied or await self._read_only(method, scope, receive, send)
        else:
            response = error_response(404, f"{method} {path} is not served by oblivio", kind="invalid_request_error",
                                      code="not_found")
        if response is not None:
            await response(scope, receive, send)

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.served_name:
            raise ModelNotServedError(f"model '{model}' is not served here; available: '{self.served_name}'")

    async def _read_only(self, method: str, scope: Scope, receive: Receive, send: Send) -> JSONResponse | None:
        if method != "POST":
            await self.vllm_app(scope, receive, send)
            return None
        raw = await read_body(receive)
        try:
            self._check_model(decode_json_object(raw))
        except Exception as exc:  # noqa: BLE001 - mapped to OpenAI's error shape
            return error_for(exc, scope["path"])
        await self.vllm_app(scope, replaying(raw, receive), send)
        return None

    async def _gated(self, path: str, headers: dict[str, str], scope: Scope, receive: Receive,
                     send: Send) -> JSONResponse | None:
        kind: shapes.Kind = "chat" if path == CHAT_PATH else "text"
        endpoint = "http.chat_completions" if kind == "chat" else "http.completions"
        started = time.perf_counter()
        raw = await read_body(receive)
        try:
            body = decode_json_object(raw)
            self._check_model(body)
            self.chat.enforcement.check_chat()
            texts = chat_scored_texts(body) if kind == "chat" else completion_scored_texts(body, self.chat.tokenizer)
        except Exception as exc:  # noqa: BLE001 - mapped to OpenAI's error shape
            self._observe(endpoint, type(exc).__name__, started)
            return error_for(exc, endpoint)
        request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{headers['x-request-id']}"  # RequestIds set it
        code = "cancelled"
        odds = self.speculation_odds
        speculation = (BaseSpeculation(self.vllm_app, self._to_vllm(scope, body, None), receive)
                       if odds is not None and odds.worth_it() else None)
        stopping: asyncio.Future[None] | None = None
        try:
            outcome = await self.chat.evaluate_texts(texts)
            if odds is not None:
                odds.observe(outcome.label == "base")
                self._observe_speculation(speculation is not None, outcome.label == "base")
            self.chat.record_decision(request_id, outcome)
            first_token = self._first_token(endpoint, started)
            with self._in_flight(endpoint):
                if speculation is not None and outcome.label == "base":
                    released, speculation = speculation, None
                    await released.release(DecisionStamp(send, outcome, None, self.served_name, first_token))
                else:
                    if speculation is not None:
                        # The base answer stops in the background: the answer that replaces it
                        # does not wait for the engine to abort it (forget traffic's latency).
                        stopping, speculation = asyncio.ensure_future(speculation.discard()), None
                    if outcome.decision.refuse:
                        await self.refusals.respond(kind, body, texts, outcome, request_id, scope, receive, send)
                    else:
                        await self._forward(body, outcome, first_token, scope, receive, send)
            code = "ok"
        except Exception as exc:
            code = type(exc).__name__
            raise
        finally:
            if speculation is not None:
                await speculation.discard()
            if stopping is not None:
                await stopping
            self._observe(endpoint, code, started)
        return None

    def _to_vllm(self, scope: Scope, body: dict[str, Any], alias: str | None) -> tuple[Scope, bytes]:
        """The request as vLLM gets it: ``model`` names the base model or the variant's alias."""
        raw = json.dumps({**body, "model": alias or self.served_name}).encode()
        return with_content_length(scope, len(raw)), raw

    def _observe_speculation(self, started: bool, base: bool) -> None:
        if self.metrics is not None:
            self.metrics.observe_speculation(("released" if base else "discarded") if started else "skipped")

    def _first_token(self, endpoint: str, started: float) -> Callable[[], None]:
        def observe() -> None:
            if self.metrics is not None:
                self.metrics.observe_first_token(endpoint, time.perf_counter() - started)

        return observe

    def _in_flight(self, endpoint: str) -> Any:
        return self.metrics.track_in_flight(endpoint) if self.metrics is not None else contextlib.nullcontext()

    async def _forward(self, body: dict[str, Any], outcome: GateOutcome, first_token: Callable[[], None],
                       scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request to vLLM naming the leased variant (or the base model)."""
        async with self.backend.lease(AdapterApplication(tuple(outcome.decision.adapters))) as lora:
            alias = self._enter(lora)
            try:
                vllm_scope, raw = self._to_vllm(scope, body, alias)
                stamp = DecisionStamp(send, outcome, alias, self.served_name, first_token)
                await self.vllm_app(vllm_scope, replaying(raw, receive), stamp)
            finally:
                self._leave(alias)

    def _enter(self, lora: Any) -> str | None:
        """Make the leased variant known to vLLM under its opaque name (None: base model)."""
        if lora is None:
            return None
        self._leases[lora.lora_name] += 1
        self._lora_table[lora.lora_name] = lora
        return lora.lora_name

    def _leave(self, alias: str | None) -> None:
        if alias is None:
            return
        self._leases[alias] -= 1
        if self._leases[alias] <= 0:
            del self._leases[alias]
            self._lora_table.pop(alias, None)

    def _observe(self, endpoint: str, code: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(endpoint, code, time.perf_counter() - started)


class RequestIds:
    """Every request has an ``X-Request-Id``: the client's, or one minted here before anything
    else sees the request, so vLLM's request id, a refusal's id, the server log and the echoed
    response header are the same string on every route."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k.lower() == b"x-request-id"), None)
        request_id = given or uuid.uuid4().hex.encode()
        if given is None:
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", request_id)]}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BaseModelListing:
    """``GET /v1/models`` from vLLM's own listing (``max_model_len``, permissions), cut to the
    base model: vLLM would also list the variants leased to requests in flight, whose opaque
    names clients must not see or use."""

    def __init__(self, serving_models: Any, served_name: str, authenticator: Any = None) -> None:
        self.serving_models = serving_models
        self.served_name = served_name
        self.authenticator = authenticator

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.models, methods=["GET"])

    async def models(self, request: Request) -> JSONResponse:
        if (denied := auth_denied(self.authenticator, request.headers.get("authorization"))) is not None:
            return denied
        listing = (await self.serving_models.show_available_models()).model_dump()
        listing["data"] = [card for card in listing["data"] if card["id"] == self.served_name]
        return JSONResponse(listing)


async def create_vllm_app(chat: ChatCore, backend: Any, *, served_name: str, model_path: str, max_model_len: int,
                          authenticator: Any = None, metrics: Any = None, max_body_bytes: int = 4 * 1024 * 1024,
                          max_concurrent_chats: int | None = None) -> FastAPI:
    """The vLLM backend's HTTP app: oblivio's health, metrics and limits, the base model alone
    in ``/v1/models`` (vLLM would list leased variants too), the rest through the gate."""
    vllm_app = await build_vllm_openai_app(backend.engine, model_path=model_path, served_name=served_name,
                                           max_model_len=max_model_len)
    app = create_base_app(chat, authenticator=authenticator, metrics=metrics,
                          max_body_bytes=max_body_bytes, max_concurrent_chats=max_concurrent_chats)
    BaseModelListing(vllm_app.state.openai_serving_models, served_name, authenticator).install(app)
    app.mount("/", GatedVLLMApp(vllm_app, chat, backend, served_name=served_name,
                                authenticator=authenticator, metrics=metrics))
    app.add_middleware(RequestIds)
    return app
