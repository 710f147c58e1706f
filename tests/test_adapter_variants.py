"""Scaled and stacked adapter folders: exact algebra on small folders, then on the real model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oblivio.adapters.variants import (
    AdapterFormatError,
    build_scaled,
    build_stacked,
    max_rank,
    module_scaling,
    read_config,
)
from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings
from oblivio.gateway.gate.scale_grid import round_up_to_grid

PREFIX = "base_model.model.model.layers"


def write_adapter(folder: Path, *, rank: int, alpha: float, modules: dict[str, tuple[int, int]],
                  seed: int, **config_extra) -> Path:
    """A peft-format LoRA folder with random A and B for the given {module: (in, out)}."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    tensors = {}
    for module, (fan_in, fan_out) in modules.items():
        r = config_extra.get("rank_pattern", {}).get(module.rsplit(".", 1)[-1], rank)
        tensors[f"{PREFIX}.{module}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen)
        tensors[f"{PREFIX}.{module}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"],
              "bias": "none", "task_type": "CAUSAL_LM", **config_extra}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def deltas(folder: Path) -> dict[str, torch.Tensor]:
    """The weight delta each module of a folder applies: scaling * B @ A."""
    config = read_config(folder)
    result = {}
    for key, a in load_file(folder / "adapter_model.safetensors").items():
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0]
            b = load_file(folder / "adapter_model.safetensors")[module + ".lora_B.weight"]
            name = module.removeprefix("base_model.model.")
            result[module] = module_scaling(config, name) * (b @ a)
    return result


MODULES = {"0.self_attn.q_proj": (6, 6), "0.self_attn.v_proj": (6, 4)}


def test_round_up_to_grid():
    grid = (0.25, 0.5, 1.0)
    assert round_up_to_grid(0.3, grid) == 0.5
    assert round_up_to_grid(0.5, grid) == 0.5
    assert round_up_to_grid(0.01, grid) == 0.25
    assert round_up_to_grid(1.0 + 1e-12, grid) == 1.0
    for bad in (0.0, -1.0, float("nan"), 1.5):
        with pytest.raises(ValueError):
            round_up_to_grid(bad, grid)


def test_scaled_variant_links_weights_and_scales_alpha(tmp_path):
    source = write_adapter(tmp_path / "src", rank=4, alpha=8, modules=MODULES, seed=1,
                           alpha_pattern={"v_proj": 2.0})
    scaled = build_scaled(source, 0.5, tmp_path / "variants" / "half")
    config = read_config(scaled)
    assert config["lora_alpha"] == 4 and config["alpha_pattern"] == {"v_proj": 1.0}
    weights = scaled / "adapter_model.safetensors"
    assert os.path.samefile(weights, source / "adapter_model.safetensors")  # linked, not copied
    for module, delta in deltas(source).items():
        assert torch.allclose(deltas(scaled)[module], 0.5 * delta)
    assert not [p for p in (tmp_path / "variants").iterdir() if p.name.startswith(".")]


def test_stacked_variant_is_the_exact_scaled_sum(tmp_path):
    first = write_adapter(tmp_path / "a", rank=4, alpha=8, modules=MODULES, seed=1)
    # Different rank, rsLoRA, and a module the first one lacks: all must still sum exactly.
    second = write_adapter(tmp_path / "b", rank=2, alpha=3, seed=2, use_rslora=True,
                           modules={**MODULES, "1.mlp.down_proj": (8, 6)})
    stacked = build_stacked([(first, 0.5), (second, 0.75)], tmp_path / "stack", max_lora_rank=8)
    config = read_config(stacked)
    assert config["r"] == 6 and config["lora_alpha"] == 6 and not config["use_rslora"]
    assert max_rank(config) == 6
    d1, d2, ds = deltas(first), deltas(second), deltas(stacked)
    assert set(ds) == set(d1) | set(d2)
    for module, delta in ds.items():
        expected = 0.5 * d1.get(module, 0) + 0.75 * d2.get(module, 0)
        assert torch.allclose(delta, expected, atol=1e-5)
    assert "down_proj" in config["target_modules"]


def test_stacking_respects_max_rank_and_bad_input(tmp_path):
    first = write_adapter(tmp_path / "a", rank=8, alpha=16, modules=MODULES, seed=1)
    second = write_adapter(tmp_path / "b", rank=16, alpha=16, modules=MODULES, seed=2)
    with pytest.raises(ValueError, match="max_lora_rank"):
        build_stacked([(first, 1.0), (second, 1.0)], tmp_path / "s", max_lora_rank=16)
    with pytest.raises(ValueError):
        build_stacked([(first, 1.0)], tmp_path / "s")
    with pytest.raises(ValueError):
        build_stacked([(first, 1.0), (second, -1.0)], tmp_path / "s")
    with pytest.raises(ValueError):
        build_scaled(first, math.inf, tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFormatError):
        build_scaled(tmp_path / "empty", 0.5, tmp_path / "y")
    dora = write_adapter(tmp_path / "dora", rank=4, alpha=4, modules=MODULES, seed=3, use_dora=True)
    with pytest.raises(AdapterFormatError, match="DoRA"):
        build_scaled(dora, 0.5, tmp_path / "z")


def test_existing_variant_is_kept_when_two_builders_race(tmp_path):
    source = write_adapter(tmp_path / "src", rank=4, alpha=8, modules=MODULES, seed=1)
    dest = tmp_path / "v"
    build_scaled(source, 0.5, dest)
    build_scaled(source, 0.5, dest)  # second builder finds the published folder and keeps it
    assert read_config(dest)["lora_alpha"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
async def test_variants_reproduce_peft_scaling_on_the_real_model(
    reference_backend, lora_adapters, chat_prompt, tmp_path
):
    """A peft model loading the stacked folder at scale 1 equals peft's own 0.5*alpha + beta."""
    backend = reference_backend
    stacked = build_stacked([(lora_adapters["alpha"], 0.5), (lora_adapters["beta"], 1.0)], tmp_path / "stack")
    scaled = build_scaled(lora_adapters["alpha"], 0.5, tmp_path / "half")
    names = {"v_alpha": lora_adapters["alpha"], "v_beta": lora_adapters["beta"], "v_stack": stacked, "v_half": scaled}
    for name, path in names.items():
        await backend.add_adapter(name, path)
    try:
        ids = chat_prompt("Name three colours.")
        sampling = SamplingSettings(max_tokens=6, logprobs=5)

        async def run(*adapters):
            return [c async for c in backend.generate(ids, sampling, AdapterApplication(adapters), "v")]

        pairs = [
            (await run(("v_alpha", 0.5), ("v_beta", 1.0)), await run(("v_stack", 1.0),)),
            (await run(("v_alpha", 0.5),), await run(("v_half", 1.0),)),
        ]
        for exact, variant in pairs:
            assert [c.token_ids for c in exact] == [c.token_ids for c in variant]
            for a, b in zip(exact, variant):
                (la,), (lb,) = a.logprobs, b.logprobs
                assert la.keys() == lb.keys()
                assert all(abs(la[t] - lb[t]) < 1e-3 for t in la)
    finally:
        for name in names:
            await backend.remove_adapter(name)
