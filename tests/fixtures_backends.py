"""Shared backend fixtures: small random LoRA adapters, the reference backend, ONE vLLM engine.

Other areas reuse ``vllm_backend`` and ``reference_backend``; both are session-scoped because a
model load (seconds) and a vLLM engine start (about a minute on CPU) are the expensive parts of the
suite. The vLLM engine's configuration is deliberately generic (small memory share, two LoRA
slots, rank up to 32) so any area's test can use it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# std of the random lora_B entries: large enough that an adapter visibly changes greedy output,
# small enough that the model still produces a peaked, meaningful distribution to compare.
LORA_B_STD = 0.1


def make_random_lora(model_path: Path, out_dir: Path, *, seed: int, rank: int = 8) -> Path:
    """Save a peft LoRA (all seven projections) whose B is non-zero, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, LORA_B_STD)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def chat_prompt(model_path: Path):
    """``chat_prompt(text) -> token ids`` of a one-turn chat, rendered as the gateway renders it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    return encode


@pytest.fixture(scope="session")
def lora_adapters(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two rank-8 random adapters, ``{"alpha": path, "beta": path}``."""
    root = tmp_path_factory.mktemp("lora_adapters")
    return {
        name: make_random_lora(model_path, root / name, seed=seed)
        for name, seed in (("alpha", 11), ("beta", 23))
    }


@pytest.fixture(scope="session")
async def reference_backend(model_path: Path) -> AsyncIterator:
    """A started ReferenceBackend with no adapters; tests add and remove their own."""
    from oblivio.gateway.serving.backends.reference import ReferenceBackend

    backend = ReferenceBackend(model_path, max_model_len=2048)
    await backend.start()
    yield backend
    await backend.close()


# The scale grid the shared engine's backend serves (the GateConfig default).
SCALE_GRID = (0.25, 0.5, 0.75, 1.0)
# Share of host memory for the shared engine's KV cache (~0.6 GB on a 12 GB node, ~13k tokens).
VLLM_MEMORY_SHARE = 0.05


@pytest.fixture(scope="session")
async def vllm_backend(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator:
    """ONE vLLM engine for the whole session (about a minute to start on CPU), no adapters.

    The default ``engine.dtype`` (not a pinned one), so every comparison with the reference
    backend checks the precision ``oblivio serve`` really serves in (issue 15: "auto" once let
    vLLM pick bfloat16); two LoRA slots per batch, rank up to 32 (two stacked rank-8 adapters
    fit), a small share of host memory.
    """
    from oblivio.gateway.serving.backends.vllm_backend import VLLMBackend
    from oblivio.gateway.config import EngineConfig

    engine = EngineConfig(
        backend="vllm", max_loras=2, max_cpu_loras=8, max_lora_rank=32,
        memory_share=VLLM_MEMORY_SHARE, max_num_seqs=16,
    )
    backend = VLLMBackend(model_path, engine, SCALE_GRID, tmp_path_factory.mktemp("vllm_work"), max_model_len=2048)
    await backend.start()
    yield backend
    await backend.close()
