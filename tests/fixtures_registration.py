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

from oblivio.adapters.training import ForgetExample, TrainingSettings

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
    **options: Any,
) -> Any:
    """A pipeline with its own policy store under ``root`` (callers ``await .start()``);
    ``options`` go to RegistrationPipeline (e.g. ``sync_interval``, ``lease_s``)."""
    from oblivio.adapters.pipeline import RegistrationPipeline
    from oblivio.gateway.config import GateConfig
    from oblivio.gateway.policy_store import PolicyStore

    return RegistrationPipeline(
        model_path=model_path,
        root=root,
        backend=backend,
        policy_store=PolicyStore(root / "gate", GateConfig()),
        detector=detector,
        training=training or tiny_training(),
        threads=1,
        **options,
    )


def as_dicts(examples: Sequence[ForgetExample]) -> list[dict[str, str]]:
    return [{k: v for k, v in vars(ex).items() if v} for ex in examples]


@asynccontextmanager
async def gateway_with_registration(config: Any, backend: Any, detector: Any, training: TrainingSettings) -> AsyncIterator[Any]:
    """A started Gateway whose registration pipeline trains with ``training``; every set it
    registered is deleted on exit, so the shared backend and detector bank come back clean."""
    from oblivio.adapters.pipeline import RegistrationPipeline
    from oblivio.gateway.server import Gateway

    gateway = await Gateway.create(config, backend=backend, detector=detector, registration=False)
    pipeline = RegistrationPipeline.from_runtime(gateway.runtime, training=training)
    gateway.runtime.registration = pipeline
    await pipeline.start()
    await gateway.start()
    try:
        yield gateway
    finally:
        for record in pipeline.list():
            await pipeline.delete(record.name)
        await gateway.stop(grace=1)
