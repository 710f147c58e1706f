"""Reading ``lora_A`` matrices out of adapters, so a new adapter can be kept orthogonal to them.

Module names are normalised to the base model's own names (``model.layers.3.self_attn.q_proj``)
so the A matrices of a saved peft folder and of a live peft model line up without caring about
peft's prefixes or the adapter's name inside the live model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from oblivio.adapters.losses import normalised_overlap

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_A_SUFFIX = ".lora_A.weight"


def _module_name(key: str) -> str | None:
    """``base_model.model.X.lora_A.weight`` -> ``X``; None for any other tensor."""
    if not key.endswith(_A_SUFFIX):
        return None
    name = key[: -len(_A_SUFFIX)]
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def load_lora_a(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The frozen A matrices of a saved peft adapter folder, keyed by base-model module name."""
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"not a peft adapter folder (no {ADAPTER_WEIGHTS}): {adapter_dir}")
    matrices = {}
    for key, tensor in load_file(str(weights)).items():
        name = _module_name(key)
        if name is not None:
            matrices[name] = tensor.float()
    if not matrices:
        raise ValueError(f"adapter {adapter_dir} holds no lora_A matrices")
    return matrices


def live_lora_a(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The trainable A matrices of a live peft model (views onto the parameters, not copies)."""
    from peft.tuners.lora import LoraLayer

    matrices: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            key = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
            weight = module.lora_A[adapter_name].weight
            assert isinstance(weight, torch.Tensor)  # a Linear's weight; typed Tensor | Module
            matrices[key] = weight
    return matrices


@torch.no_grad()
def orthogonalise_init(current: Mapping[str, torch.Tensor], priors: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Project each fresh A onto the orthogonal complement of the earlier adapters' row spaces.

    The regulariser alone starts from random overlap (about 1/sqrt(d)) and only pushes it down
    slowly; starting in the complement makes the overlap ~0 from step one, and the regulariser
    then keeps it there. Row norms are restored so the effective learning rate is unchanged.
    Skipped for a module when the priors already span (nearly) the whole input space.
    """
    for name, a_t in current.items():
        stacked = [prior[name].to(a_t.dtype) for prior in priors if name in prior]
        if not stacked:
            continue
        basis_rows = torch.cat(stacked, dim=0)
        if basis_rows.shape[0] >= a_t.shape[1] - a_t.shape[0]:
            continue
        q, _ = torch.linalg.qr(basis_rows.T)  # d_in x k orthonormal basis of the prior rows
        norms = a_t.norm(dim=1, keepdim=True)
        projected = a_t - (a_t @ q) @ q.T
        a_t.copy_(projected / projected.norm(dim=1, keepdim=True).clamp(min=1e-12) * norms)


def overlaps(priors: Mapping[str, Mapping[str, torch.Tensor]], current: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Normalised overlap of ``current`` with each named earlier adapter."""
    return {name: normalised_overlap(prior, current) for name, prior in priors.items()}
