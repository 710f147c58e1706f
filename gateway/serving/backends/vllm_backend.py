"""Serving backend: one vLLM ``AsyncLLM`` engine with runtime LoRA adapters.

vLLM applies at most one LoRA per request and has no per-request scale, so every distinct
(adapter set, scales) a request asks for becomes its own vLLM adapter -- a *variant*:

- one adapter at scale s: s is rounded UP onto the configured scale grid (never less
  unlearning than the gate asked for) and served by a folder whose adapter_config.json has
  ``lora_alpha * s`` with the weights linked (``oblivio.adapters.variants.build_scaled``); at
  scale 1 the registered folder itself is used;
- several adapters: their exact scaled sum as ONE concatenated adapter of rank sum(r_i)
  (``build_stacked``), which must fit ``max_lora_rank``.

Variants are built lazily on first use, registered with ``add_lora``, cached and evicted LRU
(never while a request is using one). Each variant gets its own ``lora_int_id``, never reused,
so the engine's caches can never confuse two variants. Adapters are added and removed while the
engine runs; removal retires a variant that requests still use and disposes of it when the last
one finishes, so no in-flight request loses its adapter.

On CPU, vLLM's LoRA ops are replaced in the engine's processes (``vllm_cpu_lora``): vLLM's own
gave a request without LoRA (slot -1) the LAST slot's adapter when it was batched with adapter
requests (found by the continual evaluation: kept people's questions answered with the
unlearning refusal while the gate applied nothing), and made every token pay for LoRA once any
adapter was loaded. Base requests run with no LoRA request at all.

The engine runs in vLLM's own EngineCore process (and, on GPUs with tensor parallelism, worker
processes under it). Nothing in vLLM ends that process when the gateway dies without a clean
shutdown (kill -9, OOM kill): it kept running, with its memory, and competed with the restarted
server. So the EngineCore is started through :func:`_engine_core_dying_with`, which watches its
parent and ends the EngineCore (and so its workers, which vLLM ties to it) once the gateway is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oblivio.adapters.precision import announce_serving_dtype, check_adapter_precision, resolve_serving_dtype
from oblivio.adapters.variants import (
    AdapterFormatError,
    build_scaled,
    build_stacked,
    max_rank,
    read_config,
)
from oblivio.gateway.serving.backends.base import (
    AdapterApplication,
    AdapterNotFoundError,
    BackendError,
    GenerationChunk,
    SamplingSettings,
    normalize_application,
    prepare_request,
)
from oblivio.gateway.serving.backends import vllm_cpu_lora
from oblivio.gateway.config import EngineConfig
from oblivio.gateway.errors import InvalidArgument
from oblivio.gateway.gate.scale_grid import round_up_to_grid

log = logging.getLogger(__name__)

# (adapter name, adapter version, grid scale) for each part of a variant, sorted by name.
VariantKey = tuple[tuple[str, int, float], ...]
# How often an orphan-proof EngineCore checks its parent, and how long it may take to shut down
# cleanly (vLLM's SIGTERM handler stops its workers) before it is killed.
PARENT_POLL_S = 0.5
ORPHAN_SHUTDOWN_GRACE_S = 5.0


def _end_when_parent_is_gone(parent: int) -> None:
    """In the EngineCore process: once ``parent`` (the gateway) is gone, SIGTERM ourselves,
    then SIGKILL after :data:`ORPHAN_SHUTDOWN_GRACE_S`.

    A polling thread rather than ``PR_SET_PDEATHSIG``: that signal fires when the parent
    *thread* that started us exits, and the engine is started from a worker thread
    (``asyncio.to_thread``), so it could kill a healthy engine. ``getppid()`` changes exactly when
    the parent process is gone (we are re-parented to init or a subreaper).
    """
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    log.error("the gateway (pid %d) is gone; stopping this vLLM engine process", parent)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_SHUTDOWN_GRACE_S)
    os.kill(os.getpid(), signal.SIGKILL)


def _run_engine_core_watching(parent: int, *args: Any, **kwargs: Any) -> None:
    """The EngineCore process's entry point: arm the parent watch, then run vLLM's own."""
    threading.Thread(target=_end_when_parent_is_gone, args=(parent,), name="oblivio-parent-watch",
                     daemon=True).start()
    from vllm.v1.engine.core import EngineCoreProc

    EngineCoreProc.run_engine_core(*args, **kwargs)


@contextlib.contextmanager
def _engine_core_dying_with(parent: int) -> Iterator[None]:
    """While vLLM starts its EngineCore process, make its entry point
    :func:`_run_engine_core_watching` (``parent`` bound).

    vLLM has no hook for code in that process; it pickles the class's ``run_engine_core`` as
    the spawned process's target, by reference, so a module-level function bound with
    ``functools.partial`` is what the child runs (and it calls the unpatched original there).
    The class is restored as soon as the engine started.
    """
    from vllm.v1.engine.core import EngineCoreProc

    original = EngineCoreProc.__dict__["run_engine_core"]
    EngineCoreProc.run_engine_core = staticmethod(functools.partial(_run_engine_core_watching, parent))
    try:
        yield
    finally:
        EngineCoreProc.run_engine_core = original


@dataclass(frozen=True)
class VariantInfo:
    """A live variant, for metrics and tests: what it applies, its vLLM id, requests using it."""

    key: VariantKey
    lora_id: int
    in_flight: int


@dataclass
class _Adapter:
    name: str
    path: Path
    version: int
    rank: int


@dataclass
class _Variant:
    key: VariantKey
    lora: Any  # vllm.lora.request.LoRARequest
    folder: Path | None  # a folder we built (and delete on eviction); None = registered folder
    in_flight: int = 0
    retired: bool = False
    names: frozenset[str] = field(default_factory=frozenset)


class VLLMBackend:
    """``GenerationBackend`` over one ``vllm.v1.engine.async_llm.AsyncLLM`` with LoRA enabled."""

    def __init__(
        self,
        model_path: Path,
        engine: EngineConfig,
        scale_grid: Sequence[float],
        work_dir: Path,
        *,
        max_model_len: int = 2048,
        engine_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if not scale_grid or any(not (0 < s < float("inf")) for s in scale_grid):
            raise ValueError(f"scale_grid must hold one or more finite scales > 0, got {scale_grid!r}")
        self.model_path = Path(model_path)
        self.engine_config = engine
        self.scale_grid = tuple(sorted(float(s) for s in scale_grid))
        self.work_dir = Path(work_dir)
        self.max_model_len = max_model_len
        self.engine_overrides = dict(engine_overrides or {})
        # Resolved here, never by vLLM, whose "auto" downcasts fp32 (see oblivio.adapters.precision);
        # an override's dtype too, so adapters are always checked against what the engine runs.
        self.serving_dtype = resolve_serving_dtype(self.engine_overrides.get("dtype", engine.dtype))
        self._engine: Any = None
        self._variant_dir: Path | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._versions = itertools.count(1)
        self._lora_ids = itertools.count(1)
        # Live variants, least recently used first.
        self._variants: OrderedDict[VariantKey, _Variant] = OrderedDict()
        self._lock = asyncio.Lock()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def engine_args(self) -> Any:
        """The ``AsyncEngineArgs`` this backend starts vLLM with (EngineConfig + overrides), in
        :attr:`serving_dtype` whatever the overrides say."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        cfg = self.engine_config
        args: dict[str, Any] = dict(
            model=str(self.model_path),
            enable_lora=True,
            max_loras=cfg.max_loras,
            max_cpu_loras=cfg.max_cpu_loras,
            max_lora_rank=cfg.max_lora_rank,
            gpu_memory_utilization=cfg.memory_share,
            max_num_seqs=cfg.max_num_seqs,
            max_model_len=self.max_model_len,
            # On CPU, torch.compile costs minutes at start for little gain on small models.
            enforce_eager=current_platform.is_cpu(),
            disable_log_stats=True,
        )
        if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(cfg.memory_share)
        args.update(self.engine_overrides, dtype=self.serving_dtype)
        return AsyncEngineArgs(**args)

    async def start(self) -> None:
        """Start the engine (about a minute on CPU) without blocking the event loop."""
        if self._engine is not None:
            return
        if self._closed:
            raise BackendError("vLLM backend is closed")
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        # Workers are spawned, not forked: a fork would inherit this process's threads and its
        # memory (models the gateway holds), which vLLM's CPU worker counts against its share.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # A private folder per backend: several servers may share one work_dir.
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._variant_dir = Path(tempfile.mkdtemp(prefix="variants-", dir=self.work_dir))
        args = self.engine_args()
        announce_serving_dtype("vLLM", self.serving_dtype, log)
        if current_platform.is_cpu():
            # The engine's worker processes install the fix through oblivio's vLLM plugin; the
            # check here makes an untested vLLM fail at start, clearly, not in a worker.
            try:
                vllm_cpu_lora.install()
            except vllm_cpu_lora.UnsupportedVLLMError as exc:
                raise BackendError(str(exc)) from exc
            os.environ[vllm_cpu_lora.ENABLE_ENV] = "1"
        try:
            with _engine_core_dying_with(os.getpid()):
                self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        except Exception as exc:  # noqa: BLE001 - any start failure means no backend
            raise BackendError(f"vLLM engine failed to start: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            # Stop the output handler first; otherwise it sees the engine core exit and logs a
            # spurious "EngineDeadError" traceback during a clean shutdown.
            handler = getattr(engine, "output_handler", None)
            if handler is not None and not handler.done():
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await handler
            await asyncio.to_thread(engine.shutdown)
        self._variants.clear()
        if self._variant_dir is not None:
            shutil.rmtree(self._variant_dir, ignore_errors=True)

    async def healthy(self) -> bool:
        engine = self._engine
        if engine is None or self._closed or engine.errored:
            return False
        try:
            await engine.check_health()
        except Exception:  # noqa: BLE001 - unhealthy is the answer, not an error
            return False
        return True

    def num_unfinished_requests(self) -> int:
        """Requests the engine is still working on (aborted ones leave at once)."""
        return self._engine.get_num_unfinished_requests() if self._engine is not None else 0

    @property
    def engine(self) -> Any:
        """The running AsyncLLM, for front doors that submit to it themselves (vLLM's OpenAI app)."""
        return self._require_engine()

    def _require_engine(self) -> Any:
        engine = self._engine
        if engine is None:
            raise BackendError("vLLM backend is closed" if self._closed else "vLLM backend is not started")
        if engine.errored:
            raise BackendError("vLLM engine is dead; restart the server")
        return engine

    # ------------------------------------------------------------------ adapters

    def list_adapters(self) -> list[str]:
        return sorted(self._adapters)

    def live_variants(self) -> list[VariantInfo]:
        """Every variant registered with the engine, least recently used first."""
        return [VariantInfo(key, v.lora.lora_int_id, v.in_flight) for key, v in self._variants.items()]

    async def add_adapter(self, name: str, path: Path) -> None:
        """Register ``path`` under ``name``; an existing ``name`` is replaced by the new version.

        The adapter is loaded into the engine at once (at the grid's largest scale), so an
        adapter vLLM cannot serve fails here, at registration, not in a user's request. So does
        one trained in another precision than the engine serves in (``AdapterPrecisionError``).
        """
        self._require_engine()
        if not name:
            raise ValueError("adapter name must be non-empty")
        path = Path(path).resolve()
        try:
            rank = max_rank(read_config(path))
        except AdapterFormatError as exc:
            raise ValueError(str(exc)) from exc
        check_adapter_precision(name, path, self.serving_dtype)
        if rank > self.engine_config.max_lora_rank:
            raise ValueError(
                f"adapter {name!r} has rank {rank}, above engine max_lora_rank "
                f"{self.engine_config.max_lora_rank}"
            )
        adapter = _Adapter(name=name, path=path, version=next(self._versions), rank=rank)
        async with self._lock:
            previous = self._adapters.get(name)
            key: VariantKey = ((name, adapter.version, self.scale_grid[-1]),)
            self._adapters[name] = adapter
            try:
                await self._create_variant(key)
            except Exception as exc:
                if previous is None:
                    del self._adapters[name]
                else:
                    self._adapters[name] = previous
                self._require_engine()  # a dead engine is the backend's failure, not the adapter's
                raise ValueError(f"vLLM cannot load adapter {name!r} from {path}: {exc}") from exc
            if previous is not None:
                await self._retire(lambda v: name in v.names and v.key != key)

    async def remove_adapter(self, name: str) -> None:
        """Forget ``name``; its variants leave the engine once no request uses them."""
        async with self._lock:
            if self._adapters.pop(name, None) is None:
                raise AdapterNotFoundError(name)
            await self._retire(lambda v: name in v.names)

    async def _retire(self, predicate: Any) -> None:
        for key in [k for k, v in self._variants.items() if predicate(v)]:
            variant = self._variants.pop(key)
            variant.retired = True
            if variant.in_flight == 0:
                await self._dispose(variant)

    async def _dispose(self, variant: _Variant) -> None:
        engine = self._engine
        if engine is not None and not engine.errored:
            try:
                await engine.remove_lora(variant.lora.lora_int_id)
            except Exception:  # noqa: BLE001 - the engine may already have evicted it
                log.debug("remove_lora(%s) failed", variant.lora.lora_int_id, exc_info=True)
        self._delete_folder(variant)

    @staticmethod
    def _delete_folder(variant: _Variant) -> None:
        if variant.folder is not None:
            shutil.rmtree(variant.folder, ignore_errors=True)

    def _variant_key(self, adapters: tuple[tuple[str, float], ...]) -> VariantKey:
        parts = []
        for name, scale in adapters:
            parts.append((name, self._adapters[name].version, round_up_to_grid(scale, self.scale_grid)))
        return tuple(sorted(parts))

    async def _create_variant(self, key: VariantKey) -> _Variant:
        """Build the folder (in a thread), register it with the engine, cache it (lock held)."""
        from vllm.lora.request import LoRARequest

        engine = self._require_engine()
        lora_id = next(self._lora_ids)
        label = "+".join(f"{name}@{scale:g}" for name, _, scale in key)
        assert self._variant_dir is not None
        built = self._variant_dir / f"lora-{lora_id}"
        folder: Path | None = built  # what this variant owns on disk (None: the adapter's own folder)
        if len(key) == 1 and key[0][2] == 1.0:
            path, folder = self._adapters[key[0][0]].path, None
        elif len(key) == 1:
            name, _, scale = key[0]
            path = await asyncio.to_thread(build_scaled, self._adapters[name].path, scale, built)
        else:
            total = sum(self._adapters[name].rank for name, _, _ in key)
            if total > self.engine_config.max_lora_rank:
                raise BackendError(
                    f"applying {label} together needs LoRA rank {total}, above the engine's "
                    f"max_lora_rank {self.engine_config.max_lora_rank}; raise engine.max_lora_rank"
                )
            parts = [(self._adapters[name].path, scale) for name, _, scale in key]
            path = await asyncio.to_thread(
                build_stacked, parts, built, max_lora_rank=self.engine_config.max_lora_rank
            )
        variant = _Variant(
            key=key,
            # An opaque name: vLLM's OpenAI layer shows it to clients (response "model", errors),
            # and a forget set's name would confirm what was forgotten.
            lora=LoRARequest(lora_name=f"oblivio-variant-{lora_id}-{secrets.token_hex(6)}", lora_int_id=lora_id,
                             lora_path=str(path)),
            folder=folder,
            names=frozenset(name for name, _, _ in key),
        )
        try:
            await engine.add_lora(variant.lora)
        except Exception:
            self._delete_folder(variant)
            raise
        self._variants[key] = variant
        await self._evict_over_capacity(keep=key)
        return variant

    async def _evict_over_capacity(self, keep: VariantKey) -> None:
        """Keep at most ``max_cpu_loras`` variants; never evict ``keep`` (the one just built,
        about to be used) nor one that requests are using right now."""
        excess = len(self._variants) - self.engine_config.max_cpu_loras
        for key in [k for k, v in self._variants.items() if v.in_flight == 0 and k != keep]:
            if excess <= 0:
                break
            await self._dispose(self._variants.pop(key))
            excess -= 1

    async def _acquire(self, adapters: tuple[tuple[str, float], ...]) -> _Variant | None:
        if not adapters:
            return None
        async with self._lock:
            for name, _ in adapters:  # removed between the call and now
                if name not in self._adapters:
                    raise AdapterNotFoundError(name)
            key = self._variant_key(adapters)
            variant = self._variants.get(key)
            if variant is None:
                try:
                    variant = await self._create_variant(key)
                except (BackendError, AdapterFormatError):
                    raise
                except Exception as exc:  # noqa: BLE001 - engine-side load failure
                    raise BackendError(f"vLLM could not load adapter variant: {exc}") from exc
            else:
                self._variants.move_to_end(key)
            variant.in_flight += 1
            return variant

    async def _release(self, variant: _Variant | None) -> None:
        if variant is None:
            return
        variant.in_flight -= 1
        if variant.retired and variant.in_flight == 0:
            await self._dispose(variant)

    @contextlib.asynccontextmanager
    async def lease(self, application: AdapterApplication) -> AsyncIterator[Any]:
        """The ``LoRARequest`` serving ``application`` (None for the base model), held live
        until the block exits: for callers that submit to the engine themselves, as vLLM's
        OpenAI serving layer does. Eviction and removal wait for the lease to end."""
        self._require_engine()
        adapters = normalize_application(application, self._adapters)
        self._variant_key(adapters)  # a scale above the grid fails here
        variant = await self._acquire(adapters)
        try:
            yield variant.lora if variant is not None else None
        finally:
            await self._release(variant)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt_token_ids: Sequence[int],
        sampling: SamplingSettings,
        application: AdapterApplication,
        request_id: str,
    ) -> AsyncIterator[GenerationChunk]:
        """Validate now (bad requests fail at the call), then stream DELTA outputs from vLLM."""
        self._require_engine()
        prompt, adapters = prepare_request(prompt_token_ids, sampling, application, self._adapters, self.max_model_len)
        self._variant_key(adapters)  # a scale above the grid fails here, at the call
        return self._stream(prompt, sampling, adapters, request_id)

    def _sampling_params(self, sampling: SamplingSettings) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=sampling.logprobs,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _stream(
        self,
        prompt: list[int],
        sampling: SamplingSettings,
        adapters: tuple[tuple[str, float], ...],
        request_id: str,
    ) -> AsyncIterator[GenerationChunk]:
        engine = self._require_engine()
        params = self._sampling_params(sampling)
        async with self.lease(AdapterApplication(adapters)) as lora:
            async for chunk in self._generate(engine, prompt, params, lora, request_id, sampling.logprobs):
                yield chunk

    async def _generate(
        self, engine: Any, prompt: list[int], params: Any, lora: Any, request_id: str, logprobs: int | None
    ) -> AsyncIterator[GenerationChunk]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        # The caller's id may repeat (retries, several backends); the engine's must not.
        engine_request_id = f"{request_id}-{uuid.uuid4().hex[:12]}"
        finished = False
        completion_tokens = 0
        outputs = engine.generate(
            TokensPrompt(prompt_token_ids=prompt), params, request_id=engine_request_id, lora_request=lora
        )
        try:
            async for output in outputs:
                completion = output.outputs[0]
                completion_tokens += len(completion.token_ids)
                finished = output.finished
                yield GenerationChunk(
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    logprobs=_convert_logprobs(completion.logprobs) if logprobs is not None else None,
                    finish_reason=completion.finish_reason if output.finished else None,
                    prompt_tokens=len(prompt),
                    completion_tokens=completion_tokens,
                )
        except VLLMClientError as exc:  # vLLM's own verdict: the request is at fault
            raise InvalidArgument(str(exc)) from exc
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except ValueError:  # the engine refused a request our checks passed: a server fault (INTERNAL)
            raise
        except Exception as exc:  # noqa: BLE001 - EngineDeadError, EngineGenerateError, ...
            raise BackendError(f"vLLM generation failed: {exc!r}") from exc
        finally:
            # Closing vLLM's generator aborts the request inside the engine.
            await outputs.aclose()
            if not finished and self._engine is not None and not self._engine.errored:
                try:
                    await self._engine.abort(engine_request_id)
                except Exception:  # noqa: BLE001 - already gone is fine
                    log.debug("abort(%s) failed", engine_request_id, exc_info=True)


def cpu_kv_cache_bytes(memory_share: float) -> int:
    """On CPU, ``memory_share`` of the host (NUMA node 0) memory becomes the KV cache.

    vLLM's own reading of ``gpu_memory_utilization`` on CPU is "share of memory the worker may
    hold in all, its resident weights and libraries included", so a small share (0.1) refuses
    to start and the outcome depends on what else the process has loaded. An explicit KV cache
    size is predictable, and it lets vLLM skip its warm-up pass, which starts the engine faster.
    ``VLLM_CPU_KVCACHE_SPACE`` (GiB), vLLM's own setting, still wins when set.
    """
    try:
        from vllm.utils.cpu_resource_utils import get_memory_node_info

        total = get_memory_node_info(0).total_memory
    except (ImportError, OSError, KeyError):
        import psutil

        total = psutil.virtual_memory().total
    return int(memory_share * total)


def _convert_logprobs(entries: Any) -> list[dict[int, float]]:
    """vLLM's per-position {token_id: Logprob} into plain {token_id: logprob} dicts."""
    if entries is None:
        return []
    return [{int(t): float(lp.logprob) for t, lp in (entry or {}).items()} for entry in entries]
