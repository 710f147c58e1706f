"""The CPU LoRA ops oblivio installs into vLLM: the same result as vLLM's own for requests with an
adapter, exactly nothing for requests without one (slot -1), and a clear refusal on an untested
vLLM release."""

from __future__ import annotations

import pytest
import torch

from oblivio.gateway.serving.backends import vllm_cpu_lora as ours


def _pristine_vllm_ops():  # type: ignore[no-untyped-def]
    """vLLM's own ops, loaded from their file as a fresh module: the imported one may already
    have been patched by a backend another test started in this process."""
    import importlib.util

    installed = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    spec = importlib.util.spec_from_file_location("vllm_lora_ops_pristine", installed.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


theirs = _pristine_vllm_ops()

SLOTS, RANK, IN, OUT, TOKENS = 3, 8, 64, 96, 11


def _weights(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("four_d", [False, True])
def test_tokens_with_an_adapter_get_what_vllm_computes(four_d: bool) -> None:
    x = _weights(0, (TOKENS, IN))
    a = _weights(1, (SLOTS, 1, RANK, IN) if four_d else (SLOTS, RANK, IN))
    b = _weights(2, (SLOTS, 1, OUT, RANK) if four_d else (SLOTS, OUT, RANK))
    idx = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 2])
    shrunk = {}
    for name, impl in (("ours", ours), ("theirs", theirs)):
        s = torch.zeros(TOKENS, RANK)
        impl.bgmv_shrink(x, a, s, idx, 0.5)
        y = torch.ones(TOKENS, OUT)
        impl.bgmv_expand(s, b, y, idx, add_inputs=True)
        z = torch.zeros(TOKENS, OUT + 4)
        impl.bgmv_expand_slice(s, b, z, idx, 2, OUT, add_inputs=False)
        shrunk[name] = (s, y, z)
    for got, want in zip(shrunk["ours"], shrunk["theirs"]):
        torch.testing.assert_close(got, want)


def test_tokens_without_an_adapter_get_exactly_nothing() -> None:
    x = _weights(0, (TOKENS, IN))
    a, b = _weights(1, (SLOTS, RANK, IN)), _weights(2, (SLOTS, OUT, RANK))
    idx = torch.tensor([0, -1, 2, -1, -1, 1, -1, 0, -1, -1, 2])
    s = torch.full((TOKENS, RANK), 7.0)
    ours.bgmv_shrink(x, a, s, idx, 1.0)
    base = _weights(3, (TOKENS, OUT))
    y = base.clone()
    ours.bgmv_expand(s, b, y, idx, add_inputs=True)
    without = idx < 0
    assert torch.equal(s[without], torch.zeros_like(s[without]))
    assert torch.equal(y[without], base[without]), "a base token's output must be untouched"
    assert not torch.equal(y[~without], base[~without])
    # vLLM's own op gives the base tokens the LAST slot's adapter: the fault this fixes
    leaked = base.clone()
    theirs.bgmv_expand(s, b, leaked, idx, add_inputs=True)
    s_theirs = torch.zeros(TOKENS, RANK)
    theirs.bgmv_shrink(x, a, s_theirs, idx, 1.0)
    assert not torch.equal(s_theirs[without], torch.zeros_like(s_theirs[without]))


@pytest.mark.parametrize("slot", [1, -1])
def test_a_batch_on_one_slot_takes_the_direct_product(slot: int) -> None:
    """One stream's decode step: every token on one adapter (the direct product, no gather) or
    on none (nothing added, and a written output is zero)."""
    x = _weights(0, (TOKENS, IN))
    a, b = _weights(1, (SLOTS, RANK, IN)), _weights(2, (SLOTS, OUT, RANK))
    idx = torch.full((TOKENS,), slot)
    s = torch.full((TOKENS, RANK), 7.0)
    ours.bgmv_shrink(x, a, s, idx, 0.5)
    base = _weights(3, (TOKENS, OUT))
    added, written = base.clone(), base.clone()
    ours.bgmv_expand(s, b, added, idx, add_inputs=True)
    ours.bgmv_expand_slice(s, b, written, idx, 0, OUT, add_inputs=False)
    if slot < 0:
        assert torch.equal(s, torch.zeros_like(s)) and torch.equal(added, base)
        assert torch.equal(written, torch.zeros_like(written))
    else:
        torch.testing.assert_close(s, 0.5 * x @ a[slot].T)
        torch.testing.assert_close(added, base + s @ b[slot].T)
        torch.testing.assert_close(written, s @ b[slot].T)


def test_prefill_ops_explode_per_sequence_slots() -> None:
    x = _weights(0, (7, IN))
    a, b = _weights(1, (SLOTS, RANK, IN)), _weights(2, (SLOTS, OUT, RANK))
    seq_lens, seq_slots = torch.tensor([3, 4]), torch.tensor([1, -1])
    s = torch.zeros(7, RANK)
    ours.sgmv_shrink(x, a, s, torch.tensor([0, 3]), seq_lens, seq_slots, 2, 4, 7, 1.0)
    y = torch.zeros(7, OUT)
    ours.sgmv_expand(s, b, y, torch.tensor([0, 3]), seq_lens, seq_slots, 2, 4, 7, add_inputs=True)
    torch.testing.assert_close(y[:3], x[:3] @ a[1].T @ b[1].T)
    assert torch.equal(y[3:], torch.zeros(4, OUT))


def test_untested_vllm_release_is_refused_with_a_clear_message() -> None:
    originals = {name: getattr(theirs, name) for name in ours._REPLACEMENTS}
    with pytest.raises(ours.UnsupportedVLLMError, match=r"vLLM 0\.99\.1 is installed.*tested with vLLM >=0\.32,<0\.33 only"):
        ours._check("0.99.1", originals)
    ours._check("0.32.0", originals)  # the pinned release passes


def test_install_replaces_the_ops_vllm_cpu_calls() -> None:
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    ours.install()
    ours.install()  # idempotent
    assert punica_cpu.bgmv_shrink is ours.bgmv_shrink and punica_cpu.sgmv_expand is ours.sgmv_expand


def test_vllm_finds_the_fix_as_a_general_plugin() -> None:
    """vLLM builds the model in worker processes it spawns; its general plugins are the hook it
    runs there, so the fix must be registered as one (pyproject.toml entry point)."""
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("oblivio_cpu_lora") == "oblivio.gateway.serving.backends.vllm_cpu_lora:register"


def test_the_switch_for_engine_processes_is_not_taken_for_configuration(tmp_path) -> None:
    """The backend sets the switch in its own environment, which its children (trainer, fit)
    inherit and read their config from: it must not be an unknown config field there."""
    from oblivio.gateway.config import load_config

    config = load_config(environ={"OBLIVIO_HOME": str(tmp_path), ours.ENABLE_ENV: "1"})
    assert config.home == tmp_path
