"""Exact reference backend: transformers + peft in this process.

Why it exists: vLLM has no per-request LoRA scale and no adapter stacking, so the vLLM backend
approximates both (scale rounded onto a grid, stacks concatenated into one adapter). This backend
computes them exactly -- every LoRA layer runs ``W0 x + sum_i s_i (alpha_i / r_i) B_i A_i x`` with
the request's own scales -- so tests can check the vLLM path against it, and it serves where vLLM
cannot run. It generates one request at a time (the model is a shared mutable object: the active
adapters and their scales are set per request), in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from oblivio.adapters.precision import announce_serving_dtype, check_adapter_precision
from oblivio.gateway.serving.backends.base import (
    AdapterApplication,
    AdapterNotFoundError,
    BackendError,
    GenerationChunk,
    SamplingSettings,
    normalize_application,
    prepare_request,
)

log = logging.getLogger(__name__)

_DONE = object()


def check_adapter_folder(path: Path) -> Path:
    """A peft LoRA folder needs its config and weights; fail before touching the model."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ValueError(f"{path} is not a peft adapter folder (no adapter_config.json)")
    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ValueError(f"{path} has no adapter weights (adapter_model.safetensors)")
    return path


class StopStringTracker:
    """Turns the growing decoded text into deltas, cutting at the first stop string.

    Text that could still turn out to be the start of a stop string is held back, so a client
    never receives characters that a later token would have to take back. vLLM does the same.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = 0
        self.stopped = False

    def update(self, text: str, final: bool) -> str:
        """Return the new text to send given the full text so far; sets ``stopped`` on a hit."""
        search_from = max(0, self.sent - self.hold)
        hits = [i for i in (text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            text = text[: min(hits)]
            self.stopped = True
            final = True
        # An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives.
        end = len(text) if final else len(text.rstrip("\ufffd")) - self.hold
        end = max(end, self.sent)
        delta = text[self.sent : end]
        self.sent = end
        return delta


class ReferenceBackend:
    """``GenerationBackend`` over transformers + peft with exact scaling and stacking."""

    def __init__(
        self,
        model_path: Path,
        *,
        max_model_len: int = 2048,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model_path = Path(model_path)
        self.max_model_len = max_model_len
        self.dtype = dtype
        self._model: Any = None  # the base model, or a PeftModel once an adapter was added
        self._tokenizer: Any = None
        self._eos_ids: set[int] = set()
        # Public name -> peft adapter name. peft names become nn.ModuleDict keys, which may not
        # contain dots, so forget-set names are never used there directly.
        self._adapters: dict[str, str] = {}
        self._counter = 0
        self._lock = asyncio.Lock()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def serving_dtype(self) -> str:
        """The precision this backend serves in, by name ("float32"), as adapters record it."""
        return str(self.dtype).removeprefix("torch.")

    async def start(self) -> None:
        if self._model is None:
            announce_serving_dtype("reference", self.serving_dtype, log)
            await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load model from {self.model_path}: {exc}") from exc
        model.eval()
        eos: set[int] = set()
        with contextlib.suppress(OSError):
            configured = GenerationConfig.from_pretrained(self.model_path).eos_token_id
            eos.update([configured] if isinstance(configured, int) else configured or [])
        if self._tokenizer.eos_token_id is not None:
            eos.add(self._tokenizer.eos_token_id)
        self._eos_ids = eos
        self._model = model

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._model = None

    async def healthy(self) -> bool:
        return self._model is not None and not self._closed

    def _require_started(self) -> None:
        if self._model is None:
            state = "closed" if self._closed else "not started"
            raise BackendError(f"reference backend is {state}")

    # ------------------------------------------------------------------ adapters

    def list_adapters(self) -> list[str]:
        return sorted(self._adapters)

    async def add_adapter(self, name: str, path: Path) -> None:
        """Load ``path`` under ``name``; an existing ``name`` is replaced (a new version). An
        adapter trained in another precision than this backend serves in is refused
        (``AdapterPrecisionError``)."""
        self._require_started()
        if not name:
            raise ValueError("adapter name must be non-empty")
        path = check_adapter_folder(path)
        check_adapter_precision(name, path, self.serving_dtype)
        async with self._lock:
            await asyncio.to_thread(self._load_adapter, name, path)

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        self._counter += 1
        internal = f"adapter{self._counter}"
        try:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(path), adapter_name=internal, is_trainable=False)
            else:
                self._model = PeftModel.from_pretrained(
                    self._model, str(path), adapter_name=internal, is_trainable=False
                )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"cannot load adapter {name!r} from {path}: {exc}") from exc
        old = self._adapters.get(name)
        self._adapters[name] = internal
        if old is not None:
            self._model.delete_adapter(old)
        self._model.eval()

    async def remove_adapter(self, name: str) -> None:
        if name not in self._adapters:
            raise AdapterNotFoundError(name)
        async with self._lock:
            internal = self._adapters.pop(name, None)
            if internal is not None:
                await asyncio.to_thread(self._delete_adapter, internal)

    def _delete_adapter(self, internal: str) -> None:
        if self._adapters:
            self._model.delete_adapter(internal)
        else:
            # peft leaves a PeftModel without adapters in a broken state (stale active adapter
            # names); unwrapping restores the plain base model, and the next add wraps it again.
            self._model = self._model.unload()
            self._model.eval()

    def _activate(self, adapters: tuple[tuple[str, float], ...]) -> contextlib.AbstractContextManager:
        """Point every LoRA layer at exactly this request's adapters and scales."""
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        if not adapters:
            if isinstance(self._model, PeftModel):
                return self._model.disable_adapter()
            return contextlib.nullcontext()
        internals = [self._adapters[name] for name, _ in adapters]
        for module in self._model.modules():
            if isinstance(module, LoraLayer):
                for (_, scale), internal in zip(adapters, internals):
                    module.set_scale(internal, scale)
        self._model.base_model.set_adapter(internals, inference_mode=True)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSettings,
        application: AdapterApplication,
        request_id: str,
    ) -> AsyncIterator[GenerationChunk]:
        """Validate now (so bad requests fail at the call), then stream from a worker thread."""
        self._require_started()
        prompt, adapters = prepare_request(prompt_token_ids, sampling, application, self._adapters, self.max_model_len)
        return self._stream(prompt, sampling, adapters, request_id)

    async def score_continuations(
        self,
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        application: AdapterApplication,
    ) -> list[list[float]]:
        """Log-probability of every continuation token after its prompt (teacher forcing), for
        each ``(prompt ids, continuation ids)`` pair, all under the same adapters and scales.

        Why here: TOFU's truth ratio and answer probability need the likelihood of *given*
        answers under exactly the adapters and scales a gate chose, which sampling cannot give.
        The pairs share one right-padded forward pass, which is what makes scoring hundreds of
        answers affordable on a CPU.
        """
        self._require_started()
        adapters = normalize_application(application, self._adapters)
        rows = [([int(t) for t in prompt], [int(t) for t in tail]) for prompt, tail in pairs]
        if not rows or any(not prompt or not tail for prompt, tail in rows):
            raise ValueError("scoring needs non-empty prompts and non-empty continuations")
        if max(len(prompt) + len(tail) for prompt, tail in rows) > self.max_model_len:
            raise ValueError(f"a prompt plus its continuation exceeds max_model_len {self.max_model_len}")
        async with self._lock:
            self._require_started()
            return await asyncio.to_thread(self._score, rows, adapters)

    def _score(
        self, rows: list[tuple[list[int], list[int]]], adapters: tuple[tuple[str, float], ...]
    ) -> list[list[float]]:
        width = max(len(prompt) + len(tail) for prompt, tail in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, tail) in enumerate(rows):
            ids[row, : len(prompt) + len(tail)] = torch.tensor(prompt + tail)
            mask[row, : len(prompt) + len(tail)] = 1
        with torch.inference_mode(), self._activate(adapters):
            logits = self._model(input_ids=ids, attention_mask=mask).logits
        scores = []
        for row, (prompt, tail) in enumerate(rows):
            # Position p predicts token p + 1: the continuation is predicted from positions
            # len(prompt) - 1 ... len(prompt) + len(tail) - 2.
            predicting = logits[row, len(prompt) - 1 : len(prompt) + len(tail) - 1].float()
            logprobs = torch.log_softmax(predicting, dim=-1)
            scores.append(logprobs[torch.arange(len(tail)), torch.tensor(tail)].tolist())
        return scores

    async def _stream(
        self,
        prompt: list[int],
        sampling: SamplingSettings,
        adapters: tuple[tuple[str, float], ...],
        request_id: str,
    ) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async with self._lock:
            if any(name not in self._adapters for name, _ in adapters):
                missing = next(name for name, _ in adapters if name not in self._adapters)
                raise AdapterNotFoundError(missing)
            self._require_started()
            worker = loop.run_in_executor(
                None, self._run, prompt, sampling, adapters, emit, cancel
            )
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancel.set()
                await asyncio.shield(worker)
                log.debug("request %s finished", request_id)

    def _run(
        self,
        prompt: list[int],
        sampling: SamplingSettings,
        adapters: tuple[tuple[str, float], ...],
        emit: Callable[[Any], None],
        cancel: threading.Event,
    ) -> None:
        try:
            with torch.inference_mode(), self._activate(adapters):
                self._decode(prompt, sampling, emit, cancel)
        except Exception as exc:  # noqa: BLE001 - any model failure is the backend's failure
            emit(exc if isinstance(exc, (ValueError, BackendError)) else BackendError(f"generation failed: {exc}"))
        finally:
            emit(_DONE)

    def _decode(
        self,
        prompt: list[int],
        sampling: SamplingSettings,
        emit: Callable[[Any], None],
        cancel: threading.Event,
    ) -> None:
        generator = torch.Generator()
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        budget = min(sampling.max_tokens, self.max_model_len - len(prompt))
        tracker = StopStringTracker(sampling.stop)
        generated: list[int] = []
        past = None
        step_input = torch.tensor([prompt], dtype=torch.long)
        for step in range(budget):
            if cancel.is_set():
                return
            out = self._model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            token = self._choose(logits, sampling, generator)
            generated.append(token)
            logprobs = None
            if sampling.logprobs is not None:
                logprobs = [top_logprobs(logits, sampling.logprobs, token)]
            is_eos = token in self._eos_ids
            final = is_eos or step == budget - 1
            text_ids = generated[:-1] if is_eos else generated
            text = self._tokenizer.decode(text_ids, skip_special_tokens=True)
            delta = tracker.update(text, final)
            finish = None
            if tracker.stopped or is_eos:
                finish = "stop"
            elif final:
                finish = "length"
            emit(
                GenerationChunk(
                    text=delta,
                    token_ids=[token],
                    logprobs=logprobs,
                    finish_reason=finish,
                    prompt_tokens=len(prompt),
                    completion_tokens=len(generated),
                )
            )
            if finish is not None:
                return
            step_input = torch.tensor([[token]], dtype=torch.long)

    @staticmethod
    def _choose(logits: torch.Tensor, sampling: SamplingSettings, generator: torch.Generator) -> int:
        if sampling.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs[before >= sampling.top_p] = 0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logits: torch.Tensor, k: int, chosen: int) -> dict[int, float]:
    """The k most likely tokens' log-probabilities plus the chosen token's (as vLLM reports them:
    computed from the raw logits, before temperature and top-p)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    result: dict[int, float] = {}
    if k > 0:
        values, indices = torch.topk(logprobs, k)
        result = {int(i): float(v) for i, v in zip(indices, values)}
    result[chosen] = float(logprobs[chosen])
    return result
