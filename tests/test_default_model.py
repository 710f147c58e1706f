"""The converted default model is a working chat model under plain transformers."""

import json
from pathlib import Path

import pytest

from oblivio.gateway.serving.model_fetch import MARKER_FILE, fetch_default_model, greedy_chat_answer

pytestmark = pytest.mark.slow


def test_converted_model_is_unquantised_llama_with_chat_template(model_path: Path) -> None:
    config = json.loads((model_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert "quantization_config" not in config
    assert (model_path / "model.safetensors").stat().st_size > 100_000_000
    assert (model_path / MARKER_FILE).exists()


def test_greedy_chat_answer_is_sensible(model_path: Path) -> None:
    answer = greedy_chat_answer(model_path, "What is the capital of France?")
    assert "Paris" in answer


def test_fetch_is_a_no_op_when_present(model_path: Path) -> None:
    before = (model_path / "model.safetensors").stat().st_mtime_ns
    assert fetch_default_model(model_path) == model_path
    assert (model_path / "model.safetensors").stat().st_mtime_ns == before
