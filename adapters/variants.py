"""Scaled and stacked variants of peft LoRA folders, for engines without per-request scaling.

vLLM applies ``(lora_alpha / r) * B A`` read from a folder's adapter_config.json and has neither a
per-request scale nor a way to apply two adapters to one request. Both are expressible as
ordinary adapter folders, which is what this module builds (pure file operations, no engine):

- scaled variant at scale s: the same weights (hard-linked, or symlinked across file systems --
  never copied) with ``lora_alpha`` (and every ``alpha_pattern`` value) multiplied by s;
- stacked variant of adapters i at scales s_i: ONE adapter of rank sum(r_i) whose A is the
  row-wise concatenation of the A_i and whose B is the column-wise concatenation of
  ``s_i * scaling_i * B_i``. Then B A = sum_i s_i scaling_i B_i A_i exactly, and the folder's
  own config uses lora_alpha == r so the engine's alpha/r factor is 1.

Folders are written to a temporary sibling and renamed into place, so a reader never sees a
half-written variant.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>[AB])(?:\.[^.]+)?\.weight$")


class AdapterFormatError(ValueError):
    """The folder is not a LoRA adapter this module can scale or stack (message says why)."""


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's adapter_config.json, checked to be a plain LoRA with safetensors weights."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterFormatError(f"{folder} has no {CONFIG_NAME}")
    if not (folder / WEIGHTS_NAME).is_file():
        raise AdapterFormatError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{config_path} is not valid JSON: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{folder} is a {config.get('peft_type')} adapter, not LoRA")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise AdapterFormatError(f"{folder}: 'r' must be a positive integer")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise AdapterFormatError(f"{folder}: 'lora_alpha' must be a number")
    if config.get("use_dora"):
        raise AdapterFormatError(f"{folder}: DoRA adapters cannot be scaled or stacked by config")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise AdapterFormatError(f"{folder}: LoRA bias terms are not supported")
    if config.get("modules_to_save"):
        raise AdapterFormatError(f"{folder}: modules_to_save are not supported")
    return config


def max_rank(config: dict[str, Any]) -> int:
    """The largest rank any module of this adapter has (what an engine's max rank must hold)."""
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def _link_or_symlink(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a symlink still avoids a copy
        os.symlink(source.resolve(), target)


def _publish(build_dir: Path, dest: Path) -> Path:
    """Rename the finished build into place; if another builder won the race, keep theirs."""
    try:
        os.rename(build_dir, dest)
    except OSError:
        if (dest / CONFIG_NAME).is_file():
            shutil.rmtree(build_dir, ignore_errors=True)
        else:
            raise
    return dest


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))


def build_scaled(source: Path, scale: float, dest: Path) -> Path:
    """Write ``dest``: ``source`` with its LoRA delta multiplied by ``scale`` (weights linked)."""
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    source, dest = Path(source), Path(dest)
    config = read_config(source)
    config["lora_alpha"] = config["lora_alpha"] * scale
    if config.get("alpha_pattern"):
        config["alpha_pattern"] = {k: v * scale for k, v in config["alpha_pattern"].items()}
    # Modules listed in rank_pattern without their own alpha use lora_alpha, scaled above.
    dest.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _link_or_symlink(source / WEIGHTS_NAME, build_dir / WEIGHTS_NAME)
        _write_config(build_dir, config)
        return _publish(build_dir, dest)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise


def _pattern_value(pattern: dict[str, Any], module: str) -> Any:
    """peft's rule: a key matches a module whose dotted name ends with it (regex allowed)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def module_scaling(config: dict[str, Any], module: str) -> float:
    """``alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA) that peft and vLLM apply to ``module``."""
    rank = _pattern_value(config.get("rank_pattern") or {}, module) or config["r"]
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
    alpha = config["lora_alpha"] if alpha is None else alpha
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _load_pairs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{module: {"A": tensor, "B": tensor}}`` from a peft safetensors file."""
    from safetensors.torch import load_file

    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(folder / WEIGHTS_NAME).items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise AdapterFormatError(f"{folder}: unexpected tensor {key!r} (only lora_A/lora_B supported)")
        pairs.setdefault(match["module"], {})[match["kind"]] = tensor
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise AdapterFormatError(f"{folder}: module {module} lacks lora_A or lora_B")
    return pairs


def _runtime_module_name(saved_module: str) -> str:
    """Saved keys start with ``base_model.model.``; patterns match the model's own module names."""
    prefix = "base_model.model."
    return saved_module[len(prefix):] if saved_module.startswith(prefix) else saved_module


def build_stacked(parts: Sequence[tuple[Path, float]], dest: Path, *, max_lora_rank: int | None = None) -> Path:
    """Write ``dest``: ONE adapter equal to ``sum_i scale_i * delta(parts[i])``, exactly.

    Every module gets rank ``sum_i max_rank(part_i)``: a part that lacks the module, or has a
    smaller rank there, is padded with zero rows/columns, which add nothing to B A. That keeps
    the folder's config to a single ``r`` (no per-module patterns an engine might read
    differently). Raises ValueError when the combined rank exceeds ``max_lora_rank``.
    """
    import torch

    if len(parts) < 2:
        raise ValueError("stacking needs at least two adapters")
    dest = Path(dest)
    configs = [read_config(Path(folder)) for folder, _ in parts]
    for (folder, scale) in parts:
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale of {folder} must be a finite number > 0, got {scale}")
    ranks = [max_rank(c) for c in configs]
    total = sum(ranks)
    if max_lora_rank is not None and total > max_lora_rank:
        raise ValueError(
            f"stacking {len(parts)} adapters needs rank {total}, above max_lora_rank {max_lora_rank}"
        )
    loaded = [_load_pairs(Path(folder)) for folder, _ in parts]
    modules = sorted(set().union(*loaded))
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        reference = next(p[module] for p in loaded if module in p)
        out_features, in_features = reference["B"].shape[0], reference["A"].shape[1]
        dtype = torch.float32
        a_blocks, b_blocks = [], []
        for pairs, config, rank, (_, scale) in zip(loaded, configs, ranks, parts):
            a_block = torch.zeros(rank, in_features, dtype=dtype)
            b_block = torch.zeros(out_features, rank, dtype=dtype)
            if module in pairs:
                a, b = pairs[module]["A"].to(dtype), pairs[module]["B"].to(dtype)
                if a.shape[1] != in_features or b.shape[0] != out_features:
                    raise AdapterFormatError(f"adapters disagree on the shape of {module}")
                factor = scale * module_scaling(config, _runtime_module_name(module))
                a_block[: a.shape[0]] = a
                b_block[:, : b.shape[1]] = b * factor
            a_blocks.append(a_block)
            b_blocks.append(b_block)
        out_dtype = reference["A"].dtype
        tensors[f"{module}.lora_A.weight"] = torch.cat(a_blocks, dim=0).to(out_dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(b_blocks, dim=1).to(out_dtype).contiguous()

    config = dict(configs[0])
    # The modules actually present (a part's target_modules may be a regex: not reusable as is).
    targets = {_runtime_module_name(m).rsplit(".", 1)[-1] for m in modules}
    config.update(
        r=total,
        lora_alpha=total,  # alpha / r == 1: every scale is already folded into B
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        target_modules=sorted(targets),
        layers_to_transform=None,
        layers_pattern=None,
    )
    return _write_adapter(tensors, config, dest)


def _write_adapter(tensors: dict[str, Any], config: dict[str, Any], dest: Path) -> Path:
    """Save weights and config into a fresh folder and publish it at ``dest`` atomically."""
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        save_file(tensors, str(build_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        _write_config(build_dir, config)
        return _publish(build_dir, dest)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
