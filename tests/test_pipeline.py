"""RegistrationPipeline on the real reference backend, detector and policy store (tiny training)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures_registration import FRANCE, UNRELATED, make_pipeline, tiny_training
from oblivio.adapters.forget_set import UnknownForgetSetError
from oblivio.adapters.registry import ForgetSetExistsError, State
from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings

pytestmark = pytest.mark.slow
WORKING_STATES = [
    State.VALIDATING, State.FITTING_DETECTOR, State.ENFORCING, State.TRAINING,
    State.PUBLISHING, State.LOADING, State.LIVE,
]


async def _collect(pipeline, name):
    return [event async for event in pipeline.watch(name)]


async def _answer(backend, tokenizer, question, adapters=()):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    text = ""
    async for chunk in backend.generate(ids, SamplingSettings(max_tokens=16), AdapterApplication(tuple(adapters)), f"t-{question}"):
        text += chunk.text
    return text


@pytest.fixture(scope="module")
async def pipeline(tmp_path_factory, model_path, reference_backend, registration_detector_bank):
    pipe = make_pipeline(tmp_path_factory.mktemp("pipeline"), model_path, reference_backend, registration_detector_bank)
    await pipe.start()
    yield pipe
    for record in pipe.list():
        await pipe.delete(record.name)
    await pipe.close()


async def test_register_runs_every_state_to_live(pipeline, reference_backend, registration_detector_bank, model_path):
    from transformers import AutoTokenizer

    record = await pipeline.register("france", FRANCE, description="capital of France", subjects=["Paris"])
    assert record.state is State.VALIDATING
    events = await asyncio.wait_for(_collect(pipeline, "france"), timeout=600)
    states = [e.state for e in events]
    assert states[-1] is State.LIVE and events[-1].terminal, events[-1]
    firsts = [s for i, s in enumerate(states) if s not in states[:i]]
    assert firsts == WORKING_STATES[WORKING_STATES.index(states[0]):]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert sum(1 for e in events if e.state is State.TRAINING and "step" in e.message) == 6

    final = pipeline.get("france")
    assert final.adapter_version == 1 and final.detector_version == 1
    metadata = json.loads((pipeline.store.current("france", "adapter") / "metadata.json").read_text())
    assert metadata["training_dtype"] == "float32"  # the precision it is served in (issue 15)
    assert not final.data_retained and not (pipeline.jobs_dir / final.job_id / "examples.jsonl").exists()
    assert "france" in reference_backend.list_adapters()
    assert "france" in registration_detector_bank.names()
    assert "france" in pipeline.policy_store.known_sets()
    score_in, score_out = (s["france"] for s in registration_detector_bank.score(
        ["Which city is the capital of France?", "How do I bake sourdough bread?"]))
    assert score_in > score_out

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = await _answer(reference_backend, tokenizer, "Which city is the capital of France?")
    forgotten = await _answer(reference_backend, tokenizer, "Which city is the capital of France?", [("france", 1.0)])
    assert "Paris" in base and "Paris" not in forgotten, (base, forgotten)


async def test_second_set_reports_overlap_and_keeps_data(pipeline):
    await pipeline.register("bard", UNRELATED, method="refusal", keep_data=True)
    final = await pipeline.wait("bard", timeout=600)
    assert final.state is State.LIVE
    assert set(final.overlaps) == {"france"}
    assert 0.0 <= final.overlaps["france"] < 0.02  # orthogonal init + regulariser
    assert final.data_retained and (pipeline.jobs_dir / final.job_id / "examples.jsonl").is_file()
    # A finished watch is a single terminal snapshot.
    events = [e async for e in pipeline.watch("bard")]
    assert len(events) == 1 and events[0].state is State.LIVE and events[0].terminal


async def test_bad_registrations_are_rejected_at_once(pipeline):
    with pytest.raises(ValueError, match="invalid forget set name"):
        await pipeline.register("../etc", FRANCE)
    with pytest.raises(ValueError, match="at least one example"):
        await pipeline.register("empty", [])
    with pytest.raises(ValueError, match="2 distinct"):
        await pipeline.register("single", FRANCE[:1] * 3)
    with pytest.raises(ValueError, match="unknown training method"):
        await pipeline.register("method", FRANCE, method="gradient_ascent")
    with pytest.raises(ValueError):
        await pipeline.register("fields", [{"question": "q", "bogus": "x"}, {"text": "t"}])
    with pytest.raises(ForgetSetExistsError):
        await pipeline.register("france", FRANCE)
    with pytest.raises(UnknownForgetSetError):
        pipeline.get("never-registered")


async def test_delete_removes_everywhere(pipeline, reference_backend, registration_detector_bank):
    await pipeline.register("doomed", UNRELATED)
    # Delete while the job is still working (enforcing or training): it must stop cleanly.
    async for event in pipeline.watch("doomed"):
        if event.state in (State.ENFORCING, State.TRAINING):
            break
    watcher = asyncio.ensure_future(_collect(pipeline, "doomed"))
    await asyncio.sleep(0)
    assert await pipeline.delete("doomed") is State.DELETING
    tail = await asyncio.wait_for(watcher, timeout=60)
    assert tail[-1].terminal and tail[-1].message == "deleted"
    assert "doomed" not in registration_detector_bank.names()
    assert "doomed" not in reference_backend.list_adapters()
    assert "doomed" not in pipeline.policy_store.known_sets()
    assert "doomed" not in pipeline.store.set_names()
    assert not any(p.name.startswith("doomed-") for p in pipeline.jobs_dir.iterdir())
    with pytest.raises(UnknownForgetSetError):
        pipeline.get("doomed")
    with pytest.raises(UnknownForgetSetError):
        await pipeline.delete("doomed")


_RUN_UNTIL_KILLED = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from fixtures_registration import FRANCE, make_pipeline, tiny_training
    from oblivio.detector import DetectorBank, FeatureExtractor
    from oblivio.gateway.serving.backends.reference import ReferenceBackend
    from oblivio.gateway.config import DetectorConfig

    async def main():
        model = Path(sys.argv[2])
        backend = ReferenceBackend(model)
        await backend.start()
        cfg = DetectorConfig()
        bank = DetectorBank(FeatureExtractor.from_pretrained(
            model, layers=cfg.layers, max_prompt_tokens=cfg.max_prompt_tokens, threads=cfg.threads))
        pipe = make_pipeline(Path(sys.argv[1]), model, backend, bank, training=tiny_training(steps=6))
        await pipe.start()
        await pipe.register("resumable", FRANCE)
        async for event in pipe.watch("resumable"):
            print(event.state.value, event.message, flush=True)
        print("FINISHED", flush=True)

    asyncio.run(main())
    """
)


async def test_killed_during_training_resumes_after_restart(
    tmp_path, model_path, reference_backend, registration_detector_bank
):
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_UNTIL_KILLED, str(root), str(model_path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if line.startswith("TRAINING training step 3/"):  # a checkpoint exists after step 2
                break
        assert seen and seen[-1].startswith("TRAINING training step 3/"), seen
        proc.send_signal(signal.SIGKILL)  # the server process dies; its trainer dies with it
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.sleep(1.0)  # let the orphaned-parent signal reach the trainer

    # Restart: a fresh pipeline over the same folder, in this process.
    pipe = make_pipeline(root, model_path, reference_backend, registration_detector_bank, training=tiny_training(steps=6))
    assert pipe.get("resumable").state is State.TRAINING
    await pipe.start()
    try:
        final = await pipe.wait("resumable", timeout=600)
        assert final.state is State.LIVE, final.error
        report = pipe.registry.job(final.job_id).report
        # Resumed from a checkpoint (every 2 steps; the trainer may finish one more before dying).
        assert report["resumed_from_step"] in (2, 4) and report["steps"] == 6
        assert len(report["losses"]) == 6
        assert pipe.store.versions("resumable", "adapter") == [1]
        assert pipe.store.versions("resumable", "detector") == [1]
        assert list(pipe.store.staging_dir.iterdir()) == []
        assert "resumable" in reference_backend.list_adapters()
        assert json.loads((pipe.store.current("resumable", "adapter") / "adapter_config.json").read_text())["r"] == 8
    finally:
        await pipe.delete("resumable")
        await pipe.close()
