"""vLLM's CPU LoRA ops, fixed so that a request without LoRA contributes nothing and costs nothing.

vLLM's CPU build runs LoRA through ``vllm/lora/ops/torch_ops``, which gathers one weight matrix
*per token* (``lora_b_weights[lora_indices]``) and multiplies token by token. Two faults follow:

* a request without LoRA has slot index -1, which torch indexing turns into the LAST slot, so a
  base request batched with adapter requests silently got that slot's adapter;
* every token pays for the gather and the per-token products, LoRA or not: measured on a
  2-core CPU, base traffic ran at 9.8 tokens/s once an adapter was loaded, against 72.8 without.

The replacements here group the tokens by slot and run one matrix product per slot actually in
use; slot -1 rows get exactly zero. A batch with no LoRA request does no LoRA work beyond
writing zeros. The CUDA build does not use these ops (its Triton kernels skip slot -1).

The ops' signatures are vLLM's; :func:`install` checks the vLLM version and the functions it
replaces, and refuses to start on a release it was not tested with instead of guessing.

Where it runs: vLLM builds the model in worker processes it spawns itself, so the fix is a vLLM
*general plugin* (an entry point in pyproject.toml, which vLLM loads in every process it starts).
:func:`register` only installs when the oblivio backend set ``ENABLE_ENV`` for the engine it
starts, so a plain ``vllm serve`` in the same environment (the benchmark baseline) is untouched.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import torch

from oblivio.gateway.serving.backends.vllm_version import TESTED_VLLM, UnsupportedVLLMError, check_tested
from oblivio.gateway.config import VLLM_CPU_LORA_ENV as ENABLE_ENV

__all__ = ["ENABLE_ENV", "TESTED_VLLM", "install", "register", "UnsupportedVLLMError"]

_PATCHED_MODULES = ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.ops.torch_ops", "vllm.lora.punica_wrapper.punica_cpu")


def _per_slot(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``inputs[t] @ weights[indices[t]].T`` for every token ``t``, zero where ``indices[t] < 0``;
    None when no token uses a slot (there is nothing to add).

    ``weights`` is (slots, out, in) or (slots, 1, out, in), as vLLM stacks them. Every module of
    every layer calls this for every step, so the common batches take one product: all tokens on
    one adapter (a decode step of one stream) multiply directly, without gathering rows."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    if indices.numel() == 0:
        return None
    low, high = (int(v) for v in torch.aminmax(indices))
    if high < 0:
        return None
    x = inputs.to(dtype)
    if low == high:
        return x @ weights[high].to(dtype).T
    out = torch.zeros((x.shape[0], weights.shape[1]), dtype=dtype, device=x.device)
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero(as_tuple=True)[0]
        out[rows] = x[rows] @ weights[slot].to(dtype).T
    return out


def _store(view: torch.Tensor, values: torch.Tensor | None, add_inputs: bool) -> None:
    """Add ``values`` into ``view`` or overwrite it; ``None`` (no token on a slot) adds nothing
    and overwrites with zeros."""
    if values is None:
        if not add_inputs:
            view.zero_()
    elif add_inputs:
        view += values
    else:
        view.copy_(values)


def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _store(output_tensor[:, : lora_b_weights.shape[-2]], None if outputs is None else scaling * outputs, add_inputs=False)


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])  # adapter and model may pad differently
    if outputs is not None:
        limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
        outputs = outputs[:limit, :common]
    _store(output_tensor[:, :common], outputs, add_inputs)


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _store(output_tensor[:, slice_offset : slice_offset + slice_size], outputs, add_inputs)


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor, b_seq_start_loc: torch.Tensor,
                seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor, batches: int, max_seq_length: int,
                token_nums: int, scaling: float) -> None:
    bgmv_shrink(inputs, lora_a_weights, output_tensor, torch.repeat_interleave(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor, b_seq_start_loc: torch.Tensor,
                seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor, batches: int, max_seq_length: int,
                token_nums: int, add_inputs: bool = False) -> None:
    bgmv_expand(inputs, lora_b_weights, output_tensor, torch.repeat_interleave(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor, b_seq_start_loc: torch.Tensor,
                      seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor, batches: int, max_seq_length: int,
                      token_nums: int, slice_offset: int, slice_size: int, add_inputs: bool = False) -> None:
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, torch.repeat_interleave(lora_indices_tensor, seq_len_tensor),
                      slice_offset, slice_size, add_inputs)


_REPLACEMENTS: dict[str, Callable[..., None]] = {
    f.__name__: f for f in (bgmv_shrink, bgmv_expand, bgmv_expand_slice, sgmv_shrink, sgmv_expand, sgmv_expand_slice)
}


def _check(version: str, originals: dict[str, Callable[..., object]]) -> None:
    check_tested(version, "oblivio's CPU LoRA fix (gateway/serving/backends/vllm_cpu_lora.py)")
    for name, ours in _REPLACEMENTS.items():
        theirs = list(inspect.signature(originals[name]).parameters)
        if theirs != list(inspect.signature(ours).parameters):
            raise UnsupportedVLLMError(f"vLLM {version}'s torch_ops.{name} takes {theirs}; the CPU LoRA fix expects another signature")


def install() -> None:
    """Replace vLLM's CPU LoRA ops in this process (call before the engine builds its model).
    Idempotent. Raises UnsupportedVLLMError outside the tested vLLM range."""
    import vllm

    modules = [importlib.import_module(m) for m in _PATCHED_MODULES]
    originals = {name: getattr(modules[0], name) for name in _REPLACEMENTS}
    if all(originals[name] is ours for name, ours in _REPLACEMENTS.items()):
        return
    _check(vllm.__version__, originals)
    for module in modules:
        for name, ours in _REPLACEMENTS.items():
            setattr(module, name, ours)


def register() -> None:
    """vLLM general-plugin entry point: install on CPU when the oblivio backend asked for it."""
    import os

    if os.environ.get(ENABLE_ENV) != "1":
        return
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        install()
