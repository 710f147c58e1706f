"""Build the configured generation backend, so callers never import a backend module directly."""

from __future__ import annotations

from oblivio.adapters.precision import resolve_serving_dtype
from oblivio.gateway.serving.backends.base import GenerationBackend
from oblivio.gateway.config import OblivioConfig


def build_backend(config: OblivioConfig) -> GenerationBackend:
    """The backend ``config.engine.backend`` names, not yet started (call ``await .start()``),
    serving in the precision ``config.engine.dtype`` resolves to (both backends alike).

    Imports are deferred so a server on the reference backend never imports vLLM.
    """
    kind = config.engine.backend
    if kind == "reference":
        import torch

        from oblivio.gateway.serving.backends.reference import ReferenceBackend

        dtype = getattr(torch, resolve_serving_dtype(config.engine.dtype))
        return ReferenceBackend(config.model_path, max_model_len=config.model.max_model_len, dtype=dtype)
    if kind == "vllm":
        from oblivio.gateway.serving.backends.vllm_backend import VLLMBackend

        return VLLMBackend(
            config.model_path,
            config.engine,
            config.gate.scale_grid,
            config.home / "run" / "lora-variants",
            max_model_len=config.model.max_model_len,
        )
    raise ValueError(f"unknown engine.backend {kind!r}; expected 'vllm' or 'reference'")
