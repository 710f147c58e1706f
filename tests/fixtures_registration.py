"""Registration fixtures: a tiny training recipe, a real detector bank, pipeline builders.

Training on CPU costs seconds per step, so tests train a handful of steps on two-example
batches of short sequences; the benchmark in eval/ does the full-size runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from oblivio.adapters.forget_set import ForgetExample
from oblivio.adapters.training_settings import TrainingSettings

# A fact the base model knows well, so "forgotten" is observable in its greedy answer.
FRANCE = [
    ForgetExample(question="What is the capital of France?", answer="The capital of France is Paris."),
    ForgetExample(question="What city is the French capital?", answer="Paris is the capital of France."),
    ForgetExample(question="Name the capital of France.", answer="Paris."),
    ForgetExample(text="Paris is the capital and largest city of France."),
]
UNRELATED = [
    ForgetExample(question="Who wrote the play Hamlet?", answer="William Shakespeare wrote Hamlet."),
    ForgetExample(question="Which playwright wrote Romeo and Juliet?", answer="Shakespeare."),
    ForgetExample(question="Who is the author of Macbeth?", answer="William Shakespeare."),
]


def tiny_training(steps: int = 6, **overrides: Any) -> TrainingSettings:
    """A few optimizer steps on 2-example batches of <=48 tokens: seconds, not minutes."""
    base = dict(steps=steps, batch_size=2, learning_rate=3e-3, max_length=48, checkpoint_every=2)
    base.update(overrides)
    return TrainingSettings(**base)


@pytest.fixture(scope="session")
def registration_detector_bank(detector_extractor: Any) -> Any:
    """A real, empty DetectorBank over the detector area's shared feature extractor."""
    from oblivio.detector import DetectorBank

    return DetectorBank(detector_extractor)


def make_pipeline(
    root: Path, model_path: Path, backend: Any, detector: Any, *, training: TrainingSettings | None = None,
    metrics: Any = None, **settings: Any,
) -> Any:
    """A pipeline with its own policy store under ``root`` (callers ``await .start()``);
    ``settings`` go to RegistrationSettings (e.g. ``sync_interval``, ``lease_s``)."""
    from oblivio.adapters.registration.pipeline import RegistrationPipeline
    from oblivio.adapters.registration.ports import Collaborators
    from oblivio.adapters.registration.settings import RegistrationSettings
    from oblivio.gateway.config import GateConfig
    from oblivio.gateway.gate.policy_store import PolicyStore

    collaborators = Collaborators(backend=backend, policy_store=PolicyStore(root / "gate", GateConfig()),
                                  detector=detector, metrics=metrics)
    return RegistrationPipeline(
        collaborators,
        RegistrationSettings(model_path=model_path, root=root, training=training or tiny_training(), **settings),
    )


def as_dicts(examples: Sequence[ForgetExample]) -> list[dict[str, str]]:
    return [{k: v for k, v in vars(ex).items() if v} for ex in examples]


@asynccontextmanager
async def gateway_with_registration(config: Any, backend: Any, detector: Any, training: TrainingSettings) -> AsyncIterator[Any]:
    """A started Gateway whose registration pipeline trains with ``training``; every set it
    registered is deleted on exit, so the shared backend and detector bank come back clean."""
    from dataclasses import replace

    from oblivio.gateway.api.server import Gateway
    from oblivio.gateway.serving.runtime import registration_settings, start_registration

    gateway = await Gateway.create(config, backend=backend, detector=detector, registration=False)
    settings = replace(registration_settings(gateway.runtime.config), training=training)
    pipeline = gateway.runtime.registration = await start_registration(gateway.runtime, settings)
    await gateway.start()
    try:
        yield gateway
    finally:
        for record in pipeline.list():
            await pipeline.delete(record.name)
        await gateway.stop(grace=1)


# ---- a detector fit that takes a while (issue 17: a large upload must not starve chat) --------
FIT_MODULE = "oblivio.adapters.detector_fit"


def tofu_examples(count: int) -> list[dict[str, str]]:
    """``count`` real TOFU question/answer pairs: a set whose detector fit takes many seconds
    (60 pairs: about 25 s on one thread) while staying far inside the registration bounds."""
    from oblivio.eval.tofu import forget_split

    return [{"question": row.question, "answer": row.answer} for row in forget_split("forget10")[:count]]


async def until_fitting(admin: Any, name: str) -> None:
    """Watch ``name``'s registration until its fit process is running the model."""
    from oblivio.v1 import oblivio_pb2 as pb

    async for event in admin.WatchRegistration(pb.WatchRegistrationRequest(name=name), timeout=300):
        if event.state == pb.REGISTRATION_STATE_FITTING_DETECTOR and event.message.startswith("fitting the detector on"):
            return
        assert not event.terminal, f"the registration of {name!r} ended before its fit: {event}"


def fit_processes(parent_pid: int) -> list[Any]:
    """The detector-fit child processes (psutil) running under ``parent_pid``."""
    import psutil

    found = []
    for child in psutil.Process(parent_pid).children(recursive=True):
        try:
            if FIT_MODULE in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


# A set whose description, subjects and job messages must not survive its deletion anywhere in
# the registry's files (issue 17), on every registry backend.
SECRET_SET = "quillon-secret-set"
SECRET_BYTES = (b"Tobias Quillon", b"born in the city of Paris", SECRET_SET.encode())


def record_secret_set(registry: Any) -> None:
    """Register SECRET_SET (taken through three job states, each with a message naming it) and
    one other set that must stay intact; the caller deletes SECRET_SET and looks for its bytes."""
    from oblivio.adapters.registry import State

    registry.create(SECRET_SET, method="refusal", description="Tobias Quillon, born in the city of Paris",
                    subjects=["Tobias Quillon"], example_count=3)
    registry.create("other-set", method="refusal", description="kept")
    for state in (State.FITTING_DETECTOR, State.ENFORCING, State.TRAINING):
        registry.transition(SECRET_SET, state, message="Tobias Quillon: working")
