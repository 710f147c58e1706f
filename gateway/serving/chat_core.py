"""The one chat core behind both front doors (gRPC ``Chat`` and the OpenAI-compatible HTTP API).

Per request: validate the conversation, render it with the model's chat template to token ids,
score the whole conversation's text with the detector bank (in a worker thread, micro-batched across concurrent
requests so N waiting prompts cost one feature forward), let the gate decide with the policy
read ONCE from the policy store, then either answer with the refusal text or stream from the
backend with the chosen adapters. Keeping all of this in one place is what guarantees the two
protocols cannot drift apart in what they enforce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from oblivio.gateway.gate import decision as gate
from oblivio.gateway.serving.backends.base import (
    AdapterApplication,
    AdapterNotFoundError,
    BackendError,
    GenerationBackend,
    GenerationChunk,
    SamplingSettings,
)
from oblivio.gateway.serving.enforcement import EnforcementGuard
from oblivio.gateway.errors import InvalidArgument, NotFound

LOG = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_TOKENS = 128
MAX_STOP_SEQUENCES = 8
# Input bounds checked BEFORE tokenizing: rendering and tokenizing are linear in the text, so
# without them a client could make the server tokenize megabytes only to be told "too long".
MAX_MESSAGES = 256
# No real token of the served tokenizers is near this many characters, so a conversation over
# max_model_len * MAX_CHARS_PER_TOKEN characters can never fit in the context anyway.
MAX_CHARS_PER_TOKEN = 32
# Finish reason of a refused request; the HTTP layer maps it onto OpenAI's "content_filter".
FINISH_REFUSED = "refused"


class ChatInputError(InvalidArgument):
    """The request is malformed; says what to fix."""


class ModelNotServedError(NotFound):
    """The request names a model this gateway does not serve."""

    param = "model"
    openai_code = "model_not_found"


class ScoringBank(Protocol):
    """What the chat core needs from ``oblivio.detector.DetectorBank``."""

    def names(self) -> list[str]: ...

    def score(self, prompts: Sequence[str]) -> list[dict[str, float]]: ...


class PolicySource(Protocol):
    def current(self) -> gate.GatePolicy: ...


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingRequest:
    """Sampling as the client sent it; ``None`` means "server default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision plus what led to it (for responses, explain and logs)."""

    decision: gate.GateDecision
    scored_text: str
    detector_error: str | None = None
    detector_ms: float = 0.0

    @property
    def label(self) -> str:
        return self.decision.label


@dataclass
class ChatSession:
    """A validated, gated request ready to stream. Iterate :meth:`chunks` exactly once."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingSettings
    outcome: GateOutcome
    _backend: GenerationBackend
    endpoint: str = "chat"
    metrics: Any = None
    started_at: float = field(default_factory=time.perf_counter)
    completion_tokens: int = 0
    finish_reason: str | None = None
    _consumed: bool = field(default=False, repr=False)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    async def chunks(self) -> AsyncIterator[GenerationChunk]:
        """Yield output pieces; the last carries ``finish_reason``.

        Leaving the loop early (client cancelled, deadline) closes the backend iterator, which
        aborts the request inside the engine instead of letting it generate for nobody.
        """
        if self._consumed:
            raise RuntimeError("a chat session can be streamed only once")
        self._consumed = True
        code = "cancelled"
        in_flight = self.metrics.track_in_flight(self.endpoint) if self.metrics is not None else contextlib.nullcontext()
        try:
            with in_flight:
                first = True
                async for chunk in self._generate():
                    if first and self.metrics is not None:
                        self.metrics.observe_first_token(self.endpoint, time.perf_counter() - self.started_at)
                    first = False
                    yield chunk
            code = "ok"
        except Exception as exc:
            code = type(exc).__name__
            raise
        finally:
            if self.metrics is not None:
                self.metrics.observe_request(self.endpoint, code, time.perf_counter() - self.started_at)
                self.metrics.add_tokens(self.endpoint, self.prompt_tokens, self.completion_tokens)

    async def _generate(self) -> AsyncIterator[GenerationChunk]:
        if self.outcome.decision.refuse:
            self.finish_reason = FINISH_REFUSED
            yield GenerationChunk(text=gate.REFUSAL_TEXT, finish_reason=FINISH_REFUSED,
                                  prompt_tokens=self.prompt_tokens)
            return
        application = AdapterApplication(adapters=tuple(self.outcome.decision.adapters))
        try:
            stream = self._backend.generate(self.prompt_token_ids, self.sampling, application, self.request_id)
            async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    self.completion_tokens = max(
                        self.completion_tokens + len(chunk.token_ids), chunk.completion_tokens
                    )
                    if chunk.finish_reason is not None:
                        self.finish_reason = chunk.finish_reason
                    yield chunk
        except AdapterNotFoundError as exc:
            # The gate saw the adapter live a moment ago; it was unloaded since (deletion race).
            # That is the server's transient state, not the client's mistake: retryable.
            raise BackendError(f"adapter {exc} was unloaded while the request started; retry") from exc


@dataclass(frozen=True)
class ChatResult:
    request_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    outcome: GateOutcome


class DetectorRunner:
    """Runs ``bank.score`` off the event loop, batching prompts that wait at the same time.

    One worker thread: the detector is a torch forward that already uses the cores it is given,
    so parallel forwards would only contend. Requests that arrive while a batch runs are scored
    together in the next one, so throughput grows with load instead of queueing linearly.
    """

    def __init__(self, bank: ScoringBank, *, max_batch: int = 32) -> None:
        self._bank = bank
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oblivio-detector")
        self._pending: list[tuple[str, asyncio.Future[dict[str, float]]]] = []
        self._drainer: asyncio.Task[None] | None = None

    @property
    def bank(self) -> ScoringBank:
        return self._bank

    async def score(self, text: str) -> dict[str, float]:
        future: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="oblivio-detector-drain")
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch:]
            live = [(text, fut) for text, fut in batch if not fut.done()]  # skip cancelled waiters
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._bank.score, [t for t, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"detector returned {len(results)} results for {len(live)} prompts")
            except Exception as exc:  # noqa: BLE001 - every waiter must learn of the failure
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), scores in zip(live, results):
                if not fut.done():
                    fut.set_result(dict(scores))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _parse_messages(
    messages: Sequence[Message | Mapping[str, Any]], max_chars: int | None = None
) -> tuple[Message, ...]:
    if not messages:
        raise ChatInputError("messages must contain at least one message")
    if len(messages) > MAX_MESSAGES:
        raise ChatInputError(f"a conversation may have at most {MAX_MESSAGES} messages (got {len(messages)})")
    parsed = []
    for index, item in enumerate(messages):
        role, content = (item.role, item.content) if isinstance(item, Message) else (item.get("role"), item.get("content"))
        if role not in ROLES:
            raise ChatInputError(
                f"messages[{index}].role must be one of {', '.join(ROLES)} (got {role!r})"
            )
        if not isinstance(content, str):
            raise ChatInputError(f"messages[{index}].content must be a string")
        parsed.append(Message(role=role, content=content))
    total = sum(len(m.content) for m in parsed)
    if max_chars is not None and total > max_chars:
        raise ChatInputError(
            f"the conversation is {total} characters; at most {max_chars} are accepted "
            "(it could not fit in the model's context)"
        )
    if not any(m.role == "user" and m.content.strip() for m in parsed):
        raise ChatInputError("messages must include at least one non-empty user message")
    return tuple(parsed)


def conversation_text(messages: Sequence[Message]) -> str:
    """What the detector scores: every message the model conditions on, of every role, joined
    by newlines. Scoring only user turns let a forgotten question ride in the system prompt or
    in a made-up earlier assistant turn while the user turn said "go on"."""
    return "\n".join(m.content for m in messages if m.content.strip())


def _log_decision(request_id: str, outcome: GateOutcome) -> None:
    """Per-set detail of a chat decision, for operators: chat responses carry only the coarse
    decision (base / adapter / refusal), so the server log is where a decision is traced. Sets
    that matched (or a detector error) are logged at INFO, plain base decisions at DEBUG."""
    decision = outcome.decision
    matched = [v for v in decision.verdicts if v.matched]
    level = logging.INFO if matched or outcome.detector_error else logging.DEBUG
    if not LOG.isEnabledFor(level):
        return
    verdicts = ", ".join(f"{v.name}={v.score:.3f}:{v.action}" for v in (matched or decision.verdicts)) or "no sets"
    LOG.log(level, "request %s: %s (policy v%d; %s)%s", request_id, decision.label, decision.policy_version,
            verdicts, f"; detector error: {outcome.detector_error}" if outcome.detector_error else "")


class ChatCore:
    """Validation, rendering, detection, gating and generation for one chat request."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        backend: GenerationBackend,
        policy_store: PolicySource,
        detector: ScoringBank | None = None,
        max_model_len: int = 2048,
        served_model: str = "oblivio-default",
        metrics: Any = None,
        enforcement: EnforcementGuard | None = None,
    ) -> None:
        """``enforcement``: while it reports a set that cannot be enforced, chat is refused
        (fail closed) instead of answering that set's prompts with the base model."""
        self.tokenizer = tokenizer
        self.backend = backend
        self.policy_store = policy_store
        self.max_model_len = max_model_len
        self.served_model = served_model
        self.metrics = metrics
        self.enforcement = enforcement or EnforcementGuard()
        self._detector = DetectorRunner(detector) if detector is not None else None

    @property
    def detector(self) -> ScoringBank | None:
        return self._detector.bank if self._detector is not None else None

    # ----- validation and rendering -------------------------------------------------------

    def check_model(self, model: str | None) -> None:
        if model and model != self.served_model:
            raise ModelNotServedError(
                f"model '{model}' is not served here; available: '{self.served_model}'"
            )

    def render(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the conversation under the model's chat template, generation prompt added."""
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises on conversations the template forbids
            raise ChatInputError(f"the model's chat template rejected the conversation: {exc}") from exc
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= self.max_model_len:
            raise ChatInputError(
                f"the conversation is {len(ids)} tokens; this model accepts at most "
                f"{self.max_model_len - 1} prompt tokens (max_model_len {self.max_model_len})"
            )
        return ids

    def resolve_sampling(self, request: SamplingRequest, prompt_tokens: int) -> SamplingSettings:
        room = self.max_model_len - prompt_tokens
        if request.temperature is not None and (not math.isfinite(request.temperature) or not 0 <= request.temperature <= 2):
            raise ChatInputError(f"temperature must be in [0, 2] (got {request.temperature})")
        if request.top_p is not None and (not math.isfinite(request.top_p) or not 0 < request.top_p <= 1):
            raise ChatInputError(f"top_p must be in (0, 1] (got {request.top_p})")
        if request.max_tokens is not None:
            if request.max_tokens < 1:
                raise ChatInputError(f"max_tokens must be >= 1 (got {request.max_tokens})")
            if request.max_tokens > room:
                raise ChatInputError(
                    f"max_tokens {request.max_tokens} plus the {prompt_tokens}-token prompt exceeds "
                    f"the context length {self.max_model_len}; ask for at most {room}"
                )
            max_tokens = request.max_tokens
        else:
            max_tokens = min(DEFAULT_MAX_TOKENS, room)
        stop = tuple(request.stop)
        if len(stop) > MAX_STOP_SEQUENCES or any(not s for s in stop):
            raise ChatInputError(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings")
        return SamplingSettings(
            max_tokens=max_tokens,
            temperature=0.0 if request.temperature is None else float(request.temperature),
            top_p=1.0 if request.top_p is None else float(request.top_p),
            stop=stop,
            seed=request.seed,
        )

    # ----- detection and gating -----------------------------------------------------------

    def _live_adapters(self) -> Collection[str]:
        return set(self.backend.list_adapters())

    async def evaluate(
        self, messages: Sequence[Message | Mapping[str, Any]], policy: gate.GatePolicy | None = None
    ) -> GateOutcome:
        """Detector + gate for a conversation. ``policy`` overrides the store (what-if explain)."""
        parsed = _parse_messages(messages, self.max_model_len * MAX_CHARS_PER_TOKEN)
        return await self.evaluate_texts([conversation_text(parsed)], policy)

    async def evaluate_texts(self, texts: Sequence[str], policy: gate.GatePolicy | None = None) -> GateOutcome:
        """Detector + gate for prompts served by ONE generation request (a batch of completion
        prompts, or one conversation's text). Each text is scored on its own and a set keeps
        its highest score: joining them would let unrelated prompts dilute a forgotten one."""
        policy = policy if policy is not None else self.policy_store.current()
        texts = [text for text in texts if text.strip()]
        scored_text = "\n".join(texts)
        started = time.perf_counter()
        if self._detector is None:
            decision = gate.decide({}, policy, self._live_adapters())
            return GateOutcome(decision=decision, scored_text=scored_text)
        try:
            names = self._detector.bank.names()
            scores = await self._highest_scores(texts) if names else {}
        except Exception as exc:  # noqa: BLE001 - the gate's fail-open/closed policy handles it
            LOG.exception("detector failed; applying on_detector_error=%s", policy.on_detector_error)
            try:
                names = self._detector.bank.names()
            except Exception:  # noqa: BLE001
                names = []
            decision = gate.decide_on_detector_error(names, policy, self._live_adapters())
            elapsed = (time.perf_counter() - started) * 1000
            return GateOutcome(decision, scored_text, detector_error=f"{type(exc).__name__}: {exc}", detector_ms=elapsed)
        decision = gate.decide(scores, policy, self._live_adapters())
        elapsed = (time.perf_counter() - started) * 1000
        return GateOutcome(decision=decision, scored_text=scored_text, detector_ms=elapsed)

    async def _highest_scores(self, texts: Sequence[str]) -> dict[str, float]:
        assert self._detector is not None
        highest: dict[str, float] = {}
        for scores in await asyncio.gather(*(self._detector.score(text) for text in texts)):
            for name, score in scores.items():
                highest[name] = max(score, highest.get(name, score))
        return highest

    async def explain(self, messages: Sequence[Message | Mapping[str, Any]]) -> gate.GateDecision:
        """The decision a chat request with these messages would get, without generating."""
        return (await self.evaluate(messages)).decision

    def record_decision(self, request_id: str, outcome: GateOutcome) -> None:
        """Metrics and the operator's log line for one gated request (both front doors)."""
        _log_decision(request_id, outcome)
        if self.metrics is None:
            return
        try:
            self.metrics.observe_decision(
                outcome.decision, outcome.detector_ms / 1000.0, detector_error=outcome.detector_error is not None
            )
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            LOG.exception("recording metrics failed")

    # ----- chat ---------------------------------------------------------------------------

    async def start(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        sampling: SamplingRequest = SamplingRequest(),
        *,
        model: str | None = None,
        request_id: str | None = None,
        endpoint: str = "chat",
    ) -> ChatSession:
        """Validate, render and gate; the returned session streams the answer."""
        started = time.perf_counter()
        try:
            self.enforcement.check_chat()
            self.check_model(model)
            parsed = _parse_messages(messages, self.max_model_len * MAX_CHARS_PER_TOKEN)
            prompt_ids = self.render(parsed)
            settings = self.resolve_sampling(sampling, len(prompt_ids))
            outcome = await self.evaluate_texts([conversation_text(parsed)])  # parsed once, above
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.observe_request(endpoint, type(exc).__name__, time.perf_counter() - started)
            raise
        request_id = request_id or f"chatcmpl-{uuid.uuid4().hex}"
        self.record_decision(request_id, outcome)
        return ChatSession(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            sampling=settings,
            outcome=outcome,
            _backend=self.backend,
            endpoint=endpoint,
            metrics=self.metrics,
            started_at=started,
        )

    async def complete(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        sampling: SamplingRequest = SamplingRequest(),
        *,
        model: str | None = None,
        request_id: str | None = None,
        endpoint: str = "chat",
    ) -> ChatResult:
        session = await self.start(messages, sampling, model=model, request_id=request_id, endpoint=endpoint)
        pieces = [chunk.text async for chunk in session.chunks()]
        return ChatResult(
            request_id=session.request_id,
            text="".join(pieces),
            finish_reason=session.finish_reason or "stop",
            prompt_tokens=session.prompt_tokens,
            completion_tokens=session.completion_tokens,
            outcome=session.outcome,
        )

    def close(self) -> None:
        if self._detector is not None:
            self._detector.close()
