"""The vLLM releases oblivio is tested against, checked once at start.

oblivio reaches into vLLM in two places whose contracts vLLM does not keep stable: its CPU LoRA
ops (``vllm_cpu_lora``) and its OpenAI serving layer (``oblivio.gateway.api.openai_vllm``, which
builds vLLM's app and steers its LoRA lookup). Outside the tested range either can break
quietly, so the server refuses to start instead; ``./deploy/setup.sh`` installs a tested release.
"""

from __future__ import annotations

# (major, minor) releases both integrations were tested with.
TESTED_VLLM = ((0, 32),)
TESTED_RANGE = ">=0.32,<0.33"


class UnsupportedVLLMError(RuntimeError):
    """The installed vLLM is outside the range oblivio's integrations were tested with."""


def check_tested(version: str, component: str) -> None:
    """Raise UnsupportedVLLMError naming ``component`` unless ``version`` is a tested release."""
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor not in TESTED_VLLM:
        raise UnsupportedVLLMError(
            f"vLLM {version} is installed; {component} is tested with vLLM {TESTED_RANGE} only. "
            "Install a tested release (./deploy/setup.sh pins one)"
        )
