"""ReferenceBackend on the real default model and real peft adapters: scaling, stacking, streaming."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from oblivio.gateway.serving.backends.base import (
    AdapterApplication,
    AdapterNotFoundError,
    GenerationBackend,
    SamplingSettings,
)

QUESTION = "What is the capital of France?"


async def collect(backend, ids, sampling, application=AdapterApplication()):
    chunks = [c async for c in backend.generate(ids, sampling, application, "test")]
    return "".join(c.text for c in chunks), chunks


def step_logprobs(chunks):
    return [lp for c in chunks for lp in c.logprobs]


# Runs of the same fp32 model differ in the last bits across code paths (peft with adapters
# disabled vs the plain model) and thread scheduling: about 1e-5 in logprob was seen. An adapter
# at any scale used here moves logprobs by far more than this tolerance.
SAME_MODEL_LOGPROB_TOL = 1e-4


def assert_same_logprobs(left, right):
    left, right = step_logprobs(left), step_logprobs(right)
    assert [sorted(step) for step in left] == [sorted(step) for step in right], "different top tokens"
    for a, b in zip(left, right):
        assert a == pytest.approx(b, abs=SAME_MODEL_LOGPROB_TOL)


@pytest.fixture(scope="module")
async def loaded(reference_backend, lora_adapters):
    """alpha and beta, plus alpha again as "alpha_twin" (for exact-linearity checks)."""
    await reference_backend.add_adapter("alpha", lora_adapters["alpha"])
    await reference_backend.add_adapter("alpha_twin", lora_adapters["alpha"])
    await reference_backend.add_adapter("beta", lora_adapters["beta"])
    yield reference_backend
    for name in ("alpha", "alpha_twin", "beta"):
        if name in reference_backend.list_adapters():
            await reference_backend.remove_adapter(name)


def test_stop_strings_are_cut_and_never_half_sent():
    from oblivio.gateway.serving.backends.reference import StopStringTracker

    tracker = StopStringTracker(["END"])
    sent = [tracker.update(text, final=False) for text in ("Hello E", "Hello EN", "Hello ENDING")]
    assert "".join(sent) == "Hello " and tracker.stopped  # "E", "EN" held back, then cut
    plain = StopStringTracker([])
    assert plain.update("caf\ufffd", final=False) == "caf"  # incomplete UTF-8 waits
    assert plain.update("café!", final=True) == "é!"
    held = StopStringTracker(["STOP"])
    assert held.update("aSTO", final=False) == "a" and held.update("aSTO", final=True) == "STO"


async def test_unstarted_backend_reports_itself(tmp_path):
    from oblivio.gateway.serving.backends.base import BackendError
    from oblivio.gateway.serving.backends.reference import ReferenceBackend

    backend = ReferenceBackend(tmp_path / "model")
    assert not await backend.healthy()
    with pytest.raises(BackendError, match="not started"):
        backend.generate([1], SamplingSettings(), AdapterApplication(), "x")
    with pytest.raises(BackendError, match="not started"):
        await backend.add_adapter("a", tmp_path)


@pytest.mark.slow
async def test_implements_the_interface(reference_backend):
    assert isinstance(reference_backend, GenerationBackend)
    assert await reference_backend.healthy()


@pytest.mark.slow
async def test_greedy_base_answer_streams_and_stops_at_eos(loaded, chat_prompt):
    ids = chat_prompt(QUESTION)
    text, chunks = await collect(loaded, ids, SamplingSettings(max_tokens=30))
    assert "Paris" in text
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].completion_tokens == len(chunks) == sum(len(c.token_ids) for c in chunks)
    assert chunks[-1].prompt_tokens == len(ids)


@pytest.mark.slow
async def test_adapter_changes_output_and_scale_zero_is_base(loaded, chat_prompt):
    ids = chat_prompt(QUESTION)
    sampling = SamplingSettings(max_tokens=12, logprobs=3)
    base_text, base = await collect(loaded, ids, sampling)
    lora_text, lora = await collect(loaded, ids, sampling, AdapterApplication((("alpha", 1.0),)))
    zero_text, zero = await collect(loaded, ids, sampling, AdapterApplication((("alpha", 0.0),)))
    assert lora_text != base_text
    assert zero_text == base_text
    assert_same_logprobs(zero, base)


@pytest.mark.slow
async def test_scaling_and_stacking_are_exact(loaded, chat_prompt):
    """alpha + alpha_twin at 0.5 each is exactly alpha at 1.0: scaling and summing are linear."""
    ids = chat_prompt(QUESTION)
    sampling = SamplingSettings(max_tokens=8, logprobs=5)
    _, single = await collect(loaded, ids, sampling, AdapterApplication((("alpha", 1.0),)))
    _, stacked = await collect(
        loaded, ids, sampling, AdapterApplication((("alpha", 0.5), ("alpha_twin", 0.5)))
    )
    assert [c.token_ids for c in single] == [c.token_ids for c in stacked]
    for a, b in zip(step_logprobs(single), step_logprobs(stacked)):
        assert a.keys() == b.keys()
        assert all(math.isclose(a[t], b[t], abs_tol=1e-4) for t in a)
    # Half the scale is measurably between base and full.
    _, half = await collect(loaded, ids, sampling, AdapterApplication((("alpha", 0.5),)))
    assert step_logprobs(half)[0] != step_logprobs(single)[0]


@pytest.mark.slow
async def test_two_adapters_differ_from_each_alone(loaded, chat_prompt):
    ids = chat_prompt(QUESTION)
    sampling = SamplingSettings(max_tokens=4, logprobs=1)
    runs = {}
    for key, app in {
        "alpha": (("alpha", 1.0),),
        "beta": (("beta", 1.0),),
        "both": (("alpha", 1.0), ("beta", 1.0)),
    }.items():
        _, chunks = await collect(loaded, ids, sampling, AdapterApplication(app))
        runs[key] = step_logprobs(chunks)[0]
    assert runs["both"] != runs["alpha"] and runs["both"] != runs["beta"]


@pytest.mark.slow
async def test_logprobs_top_k_and_chosen_token(loaded, chat_prompt):
    _, chunks = await collect(loaded, chat_prompt(QUESTION), SamplingSettings(max_tokens=5, logprobs=4))
    for chunk in chunks:
        (lp,) = chunk.logprobs
        (token,) = chunk.token_ids
        assert len(lp) == 4  # greedy: the chosen token is the top-1, already among the 4
        assert max(lp, key=lp.get) == token
        assert all(v <= 0 for v in lp.values())


@pytest.mark.slow
@pytest.mark.parametrize("application", [AdapterApplication(), AdapterApplication((("alpha", 0.5), ("beta", 1.0)))])
async def test_teacher_forced_scores_match_what_generation_reported(loaded, chat_prompt, application):
    """Scoring the greedy answer token by token must give the logprobs generation reported for
    it, under the same adapters and scales; a second, different continuation scores lower."""
    prompt = chat_prompt(QUESTION)
    _, chunks = await collect(loaded, prompt, SamplingSettings(max_tokens=6, logprobs=0), application)
    answer = [c.token_ids[0] for c in chunks]
    reported = [c.logprobs[0][t] for c, t in zip(chunks, answer)]
    wrong = answer[:1] + [answer[1] + 1] + answer[2:]
    other = chat_prompt("Name a famous painter.")  # a longer or shorter row pads the batch
    scored, scored_wrong, _ = await loaded.score_continuations(
        [(prompt, answer), (prompt, wrong), (other, answer[:2])], application)
    assert scored == pytest.approx(reported, abs=SAME_MODEL_LOGPROB_TOL)
    assert scored_wrong[0] == pytest.approx(scored[0], abs=SAME_MODEL_LOGPROB_TOL)
    assert scored_wrong[1] < scored[1]
    with pytest.raises(ValueError, match="non-empty"):
        await loaded.score_continuations([(prompt, [])], application)


@pytest.mark.slow
async def test_stop_string_and_max_tokens(loaded, chat_prompt):
    ids = chat_prompt(QUESTION)
    text, chunks = await collect(loaded, ids, SamplingSettings(max_tokens=30, stop=("Paris",)))
    assert "Paris" not in text and text.strip().endswith("is")
    assert chunks[-1].finish_reason == "stop"
    _, chunks = await collect(loaded, ids, SamplingSettings(max_tokens=3))
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 3


@pytest.mark.slow
async def test_seeded_sampling_is_reproducible(loaded, chat_prompt):
    ids = chat_prompt("Write a short poem about the sea.")
    sampling = SamplingSettings(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    first, _ = await collect(loaded, ids, sampling)
    second, _ = await collect(loaded, ids, sampling)
    assert first == second


@pytest.mark.slow
async def test_closing_early_stops_generation(loaded, chat_prompt):
    ids = chat_prompt("Tell me a long story about a dragon.")
    stream = loaded.generate(ids, SamplingSettings(max_tokens=500), AdapterApplication(), "early")
    first = await stream.__anext__()
    assert first.finish_reason is None
    started = time.monotonic()
    await stream.aclose()
    # The worker stopped at its next step (not after 500 tokens) and released the model.
    assert time.monotonic() - started < 5
    text, _ = await asyncio.wait_for(collect(loaded, ids, SamplingSettings(max_tokens=2)), 30)
    assert text


@pytest.mark.slow
async def test_bad_requests_fail_at_the_call(loaded, chat_prompt):
    ids = chat_prompt(QUESTION)
    with pytest.raises(AdapterNotFoundError):
        loaded.generate(ids, SamplingSettings(), AdapterApplication((("nope", 1.0),)), "x")
    for scale in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            loaded.generate(ids, SamplingSettings(), AdapterApplication((("alpha", scale),)), "x")
    with pytest.raises(ValueError):
        loaded.generate(ids, SamplingSettings(), AdapterApplication((("alpha", 1.0), ("alpha", 0.5))), "x")
    for bad in (SamplingSettings(max_tokens=0), SamplingSettings(top_p=0), SamplingSettings(temperature=-1)):
        with pytest.raises(ValueError):
            loaded.generate(ids, bad, AdapterApplication(), "x")
    with pytest.raises(ValueError):
        loaded.generate([], SamplingSettings(), AdapterApplication(), "x")


@pytest.mark.slow
async def test_add_replace_and_remove_at_run_time(reference_backend, lora_adapters, chat_prompt, tmp_path):
    ids = chat_prompt(QUESTION)
    sampling = SamplingSettings(max_tokens=3, logprobs=1)
    await reference_backend.add_adapter("temp", lora_adapters["alpha"])
    _, as_alpha = await collect(reference_backend, ids, sampling, AdapterApplication((("temp", 1.0),)))
    await reference_backend.add_adapter("temp", lora_adapters["beta"])  # new version replaces
    _, as_beta = await collect(reference_backend, ids, sampling, AdapterApplication((("temp", 1.0),)))
    assert step_logprobs(as_alpha) != step_logprobs(as_beta)
    await reference_backend.remove_adapter("temp")
    assert "temp" not in reference_backend.list_adapters()
    with pytest.raises(AdapterNotFoundError):
        reference_backend.generate(ids, sampling, AdapterApplication((("temp", 1.0),)), "x")
    with pytest.raises(AdapterNotFoundError):
        await reference_backend.remove_adapter("temp")
    with pytest.raises(ValueError):
        await reference_backend.add_adapter("broken", tmp_path)


@pytest.mark.slow
async def test_removing_every_adapter_restores_the_base_model(loaded, lora_adapters, chat_prompt):
    ids = chat_prompt(QUESTION)
    sampling = SamplingSettings(max_tokens=4, logprobs=2)
    _, before = await collect(loaded, ids, sampling)
    for name in loaded.list_adapters():
        await loaded.remove_adapter(name)
    _, after = await collect(loaded, ids, sampling)
    assert_same_logprobs(after, before)
    await loaded.add_adapter("again", lora_adapters["alpha"])
    _, adapted = await collect(loaded, ids, sampling, AdapterApplication((("again", 1.0),)))
    assert step_logprobs(adapted) != step_logprobs(before)
    await loaded.remove_adapter("again")
