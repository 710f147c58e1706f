"""The live parts of one gateway process, built once and shared by every service.

Why one object: gRPC Chat, gRPC Admin (gate + registration mixins) and the OpenAI HTTP app
must act on the SAME backend, detector bank and policy store, or an operator's change would
reach one front door and not the other. Tests build a Runtime around a backend they already
started (the session-scoped reference or vLLM backend) instead of loading a second model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oblivio.gateway.serving.backends.base import GenerationBackend
from oblivio.gateway.serving.chat_core import ChatCore, ScoringBank
from oblivio.gateway.config import OblivioConfig
from oblivio.gateway.serving.enforcement import EnforcementGuard
from oblivio.gateway.gate.policy_store import PolicyStore

if TYPE_CHECKING:  # torch and transformers load only when a detector is really built
    from oblivio.detector import FeatureExtractor

# Sentinel for "build the detector bank from config" (None means "run without a detector").
BUILD_FROM_CONFIG: Any = object()


@dataclass
class Runtime:
    config: OblivioConfig
    tokenizer: Any
    backend: GenerationBackend
    detector: ScoringBank | None
    policy_store: PolicyStore
    metrics: Any
    chat: ChatCore
    enforcement: EnforcementGuard  # sets that cannot be enforced now: chat and readiness follow it
    registration: Any = None  # oblivio.adapters.pipeline.RegistrationPipeline, when started
    owns_backend: bool = True  # close the backend on shutdown (False when a fixture owns it)

    async def close(self) -> None:
        """Stop background work, then the backend (if this runtime started it)."""
        if self.registration is not None:
            await self.registration.close()
        self.chat.close()
        if self.owns_backend:
            await self.backend.close()


def build_feature_extractor(config: OblivioConfig) -> FeatureExtractor:
    """The shared detector forward: hidden states of the base model's early layers, pooled."""
    from oblivio.detector import FeatureExtractor

    return FeatureExtractor.from_pretrained(
        config.model_path,
        layers=tuple(config.detector.layers),
        max_prompt_tokens=config.detector.max_prompt_tokens,
        projection_seed=config.detector.projection_seed,
        threads=config.detector.threads,
        device=config.detector.device,
    )


def build_detector(config: OblivioConfig) -> ScoringBank:
    """The detector bank over :func:`build_feature_extractor`.

    Saved forget-set scorers are loaded into the bank by the registration pipeline on start
    (it owns which sets exist), so a fresh bank starts empty here.
    """
    from oblivio.detector import DetectorBank

    return DetectorBank(build_feature_extractor(config))


def build_metrics() -> Any:
    """This process's Prometheus metrics, in their own registry (see oblivio.gateway.serving.metrics)."""
    from oblivio.gateway.serving.metrics import GatewayMetrics

    return GatewayMetrics()


async def build_runtime(
    config: OblivioConfig,
    *,
    backend: GenerationBackend | None = None,
    detector: Any = BUILD_FROM_CONFIG,
    tokenizer: Any = None,
    registration: bool = True,
) -> Runtime:
    """Assemble (and start) everything a gateway serves from.

    ``backend`` given = already started and owned by the caller; otherwise one is built from
    ``config.engine`` and started here. ``registration`` starts the forget-set registration
    pipeline (restoring registered sets into the detector, backend and gate, resuming jobs).
    """
    if registration:
        check_stored_state(config)
    from transformers import AutoTokenizer

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model_path)
    owns_backend = backend is None
    if backend is None:
        from oblivio.gateway.serving.backends.factory import build_backend

        backend = build_backend(config)
        await backend.start()
    if detector is BUILD_FROM_CONFIG:
        detector = build_detector(config)
    store = PolicyStore(config.artifacts_path / "gate", config.gate)
    metrics = build_metrics()
    enforcement = EnforcementGuard(serve_unenforced=config.recovery.serve_unenforced_sets)
    chat = ChatCore(
        tokenizer=tokenizer,
        backend=backend,
        policy_store=store,
        detector=detector,
        max_model_len=config.model.max_model_len,
        served_model=config.model.served_name,
        metrics=metrics,
        enforcement=enforcement,
    )
    runtime = Runtime(
        config=config,
        tokenizer=tokenizer,
        backend=backend,
        detector=detector,
        policy_store=store,
        metrics=metrics,
        chat=chat,
        enforcement=enforcement,
        owns_backend=owns_backend,
    )
    if registration:
        try:
            runtime.registration = await start_registration(runtime)
        except BaseException:
            await runtime.close()  # e.g. a registry that became unreadable: stop the engine too
            raise
    return runtime


def check_stored_state(config: OblivioConfig) -> None:
    """Refuse to start (``RegistryStateError``) on an unreadable registry, or one that lost
    every set the artifact store still holds, before the model and engine load."""
    from oblivio.adapters.pipeline import check_stored_state as check

    check(config.artifacts_path, discard_unregistered=config.recovery.discard_unregistered_artifacts,
          registry_config=config.registry)


async def start_registration(runtime: Runtime) -> Any:
    """The registration pipeline wired to this runtime, started (restores registered sets)."""
    from oblivio.adapters.pipeline import RegistrationPipeline

    pipeline = RegistrationPipeline.from_runtime(runtime)
    await pipeline.start()
    return pipeline
