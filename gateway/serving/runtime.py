"""The live parts of one gateway process, built once and shared by every service.

Why one object: gRPC Chat, gRPC Admin (gate + registration mixins) and the OpenAI HTTP app
must act on the SAME backend, detector bank and policy store, or an operator's change would
reach one front door and not the other. Tests build a Runtime around a backend they already
started (the session-scoped reference or vLLM backend) instead of loading a second model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oblivio.adapters.limits import RegistrationLimits
from oblivio.gateway.serving.backends.base import GenerationBackend
from oblivio.gateway.serving.chat_core import ChatCore
from oblivio.gateway.config import OblivioConfig
from oblivio.gateway.serving.enforcement import EnforcementGuard
from oblivio.gateway.gate.policy_store import PolicyStore

if TYPE_CHECKING:  # torch and transformers load only when a detector (or a registration) is really built
    from oblivio.adapters.registration.pipeline import RegistrationPipeline
    from oblivio.adapters.registration.settings import RegistrationSettings
    from oblivio.detector import DetectorBank, FeatureExtractor
    from oblivio.gateway.serving.metrics import GatewayMetrics

# Sentinel for "build the detector bank from config" (None means "run without a detector").
BUILD_FROM_CONFIG: Any = object()


@dataclass
class Runtime:
    """Also the registration pipeline's ``RegistrationRuntime`` (``oblivio.adapters.registration.ports``):
    registration hot-loads into this backend, detector bank, policy store and enforcement guard."""

    config: OblivioConfig
    tokenizer: Any
    backend: GenerationBackend
    detector: DetectorBank | None
    policy_store: PolicyStore
    metrics: GatewayMetrics
    chat: ChatCore
    enforcement: EnforcementGuard  # sets that cannot be enforced now: chat and readiness follow it
    registration: RegistrationPipeline | None = None  # when started
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


def build_detector(config: OblivioConfig) -> DetectorBank:
    """The detector bank over :func:`build_feature_extractor`.

    Saved forget-set scorers are loaded into the bank by the registration pipeline on start
    (it owns which sets exist), so a fresh bank starts empty here.
    """
    from oblivio.detector import DetectorBank

    return DetectorBank(build_feature_extractor(config))


def build_metrics() -> GatewayMetrics:
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
    from oblivio.adapters.registration.stored_state import check_stored_state as check

    check(config.artifacts_path, discard_unregistered=config.recovery.discard_unregistered_artifacts,
          registry_config=config.registry)


def registration_settings(config: OblivioConfig) -> RegistrationSettings:
    """What the registration pipeline is told of this gateway's configuration."""
    from oblivio.adapters.registration.settings import REPLICA_SYNC_S, RegistrationSettings

    return RegistrationSettings(
        model_path=config.model_path,
        root=config.artifacts_path,
        training=config.training,
        fit_threads=config.detector.fit_threads,
        limits=RegistrationLimits.from_config(config.registration),
        sync_interval=REPLICA_SYNC_S,
        discard_unregistered=config.recovery.discard_unregistered_artifacts,
        registry=config.registry,
    )


async def start_registration(runtime: Runtime, settings: RegistrationSettings | None = None) -> RegistrationPipeline:
    """The registration pipeline wired to this runtime (``settings``: from its configuration
    unless given), started: registered sets are restored, unfinished jobs resume."""
    from oblivio.adapters.registration.pipeline import RegistrationPipeline

    pipeline = RegistrationPipeline(runtime, settings or registration_settings(runtime.config))
    await pipeline.start()
    return pipeline
