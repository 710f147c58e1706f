"""Serving precision (issue 15): adapters record the precision they were trained in, "auto"
serves in it, and an adapter recorded at another precision is refused at load, naming both.

The default-config comparison of vLLM with the reference backend is in test_backend_vllm.py
(it needs the shared engine); the vLLM backend's own refusal is there too.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fixtures_registration import make_pipeline
from oblivio.adapters.precision import (
    PRECISION_FIELD,
    TRAINING_DTYPE,
    AdapterPrecisionError,
    adapter_precision,
    announce_serving_dtype,
    check_adapter_precision,
    resolve_serving_dtype,
)
from oblivio.adapters.registry import State
from oblivio.adapters.training import TrainingReport
from oblivio.gateway.serving.backends.factory import build_backend
from oblivio.gateway.config import EngineConfig, load_config


def with_metadata(adapter: Path, folder: Path, metadata: object) -> Path:
    """A copy of ``adapter`` whose metadata.json holds ``metadata``."""
    shutil.copytree(adapter, folder)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_auto_serves_in_the_training_precision_and_explicit_dtypes_are_kept():
    assert TRAINING_DTYPE == "float32"
    assert resolve_serving_dtype(EngineConfig().dtype) == TRAINING_DTYPE
    assert resolve_serving_dtype("bfloat16") == "bfloat16"


def test_the_training_report_records_the_precision():
    report = TrainingReport(method="refusal", steps=1, examples=1, final_loss=0.0, losses=[0.0], overlap={}, seconds=0.0)
    assert report.to_json()[PRECISION_FIELD] == TRAINING_DTYPE


def test_recorded_missing_and_unreadable_precisions(tmp_path):
    """No metadata.json, or one without the field (published before it existed): fp32, which
    is all training ever ran in. A metadata file that cannot be read is an error, not fp32."""
    assert adapter_precision(tmp_path) == "float32"
    (tmp_path / "metadata.json").write_text(json.dumps({"set": "old"}))
    assert adapter_precision(tmp_path) == "float32"
    (tmp_path / "metadata.json").write_text(json.dumps({"set": "new", PRECISION_FIELD: "bfloat16"}))
    assert adapter_precision(tmp_path) == "bfloat16"
    for garbage in ("{not json", "[1, 2]"):
        (tmp_path / "metadata.json").write_text(garbage)
        with pytest.raises(AdapterPrecisionError, match="metadata"):
            adapter_precision(tmp_path)


def test_a_mismatch_is_refused_naming_both_precisions(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({PRECISION_FIELD: "bfloat16"}))
    check_adapter_precision("france", tmp_path, "bfloat16")
    with pytest.raises(AdapterPrecisionError, match="'france'.*trained in bfloat16 .*serves in float32") as err:
        check_adapter_precision("france", tmp_path, "float32")
    assert isinstance(err.value, ValueError)  # what backends raise for an adapter they cannot serve


def test_the_reference_backend_serves_in_the_configured_precision(tmp_path):
    env = {"OBLIVIO_HOME": str(tmp_path)}
    assert build_backend(load_config(overrides={"engine.backend": "reference"}, environ=env)).serving_dtype == "float32"
    pinned = load_config(overrides={"engine.backend": "reference", "engine.dtype": "bfloat16"}, environ=env)
    assert build_backend(pinned).serving_dtype == "bfloat16"


@pytest.mark.slow
async def test_reference_backend_refuses_an_adapter_of_another_precision(reference_backend, lora_adapters, tmp_path):
    folder = with_metadata(lora_adapters["alpha"], tmp_path / "bf16", {PRECISION_FIELD: "bfloat16"})
    with pytest.raises(AdapterPrecisionError, match="bfloat16.*float32"):
        await reference_backend.add_adapter("bf16", folder)
    assert "bf16" not in reference_backend.list_adapters()


def _publish_live(pipeline, name: str, adapter: Path, metadata: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """A LIVE row and a published adapter with ``metadata``: what a finished job leaves."""
    registry = pipeline.registry
    registry.create(name, method="refusal")
    for state in (State.FITTING_DETECTOR, State.ENFORCING, State.TRAINING, State.PUBLISHING):
        registry.transition(name, state)
    published = pipeline.store.publish(name, "adapter", adapter, metadata)
    registry.update_set(name, adapter_version=published.version)
    registry.transition(name, State.LOADING)
    registry.transition(name, State.LIVE, fraction=1.0)


@pytest.mark.slow
async def test_start_quarantines_a_set_whose_adapter_was_trained_in_another_precision(
    tmp_path, model_path, reference_backend, lora_adapters
):
    """At start, an fp32 server loads an old artifact (no recorded precision: fp32) and one
    recorded as fp32, and quarantines one recorded as bfloat16 with both precisions named."""
    writer = make_pipeline(tmp_path, model_path, reference_backend, None)  # only writes the disk
    _publish_live(writer, "old", lora_adapters["alpha"], {"set": "old"})
    _publish_live(writer, "fp32", lora_adapters["beta"], {"set": "fp32", PRECISION_FIELD: "float32"})
    _publish_live(writer, "bf16", lora_adapters["beta"], {"set": "bf16", PRECISION_FIELD: "bfloat16"})
    writer.registry.close()

    pipeline = make_pipeline(tmp_path, model_path, reference_backend, None)
    try:
        await pipeline.start()
        assert pipeline.get("old").state is State.LIVE and pipeline.get("fp32").state is State.LIVE
        refused = pipeline.get("bf16")
        assert refused.state is State.FAILED and "quarantined" in refused.error, refused
        assert "AdapterPrecisionError" in refused.error and "trained in bfloat16" in refused.error, refused
        assert "serves in float32" in refused.error, refused
        assert set(reference_backend.list_adapters()) >= {"old", "fp32"}
        assert "bf16" not in reference_backend.list_adapters()
    finally:
        for name in ("old", "fp32", "bf16"):
            await pipeline.delete(name)
        await pipeline.close()


def test_the_serving_precision_is_logged_and_a_mismatch_with_training_warned(caplog):
    with caplog.at_level(logging.INFO, logger="oblivio.test"):
        announce_serving_dtype("vLLM", "float32", logging.getLogger("oblivio.test"))
        announce_serving_dtype("vLLM", "bfloat16", logging.getLogger("oblivio.test"))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert infos == ["vLLM backend serves in float32 (adapters are trained in float32)",
                     "vLLM backend serves in bfloat16 (adapters are trained in float32)"]
    assert len(warnings) == 1 and "bfloat16" in warnings[0] and "will be refused" in warnings[0]
