"""The pipeline's side of the trainer: write a :class:`TrainingSpec`, run the trainer, read its progress.

Why a client of its own: what the trainer is told and what its progress lines mean are the
trainer's protocol (``trainer_messages``); the training step only says which set to train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oblivio.adapters.registration.processes import StepProcesses
from oblivio.adapters.registration.progress import TRAINING_SPAN
from oblivio.adapters.registration.trainer_messages import TrainingProgress, TrainingSpec
from oblivio.adapters.registry import State
from oblivio.adapters.store import atomic_write_bytes

TRAINER_MODULE = "oblivio.adapters.training"


async def run_trainer(processes: StepProcesses, name: str, job_id: str, spec: TrainingSpec, spec_path: Path) -> dict[str, Any]:
    """Train ``name``'s adapter in a child process; returns the trainer's report.

    The spec is written atomically to ``spec_path`` first, so a crash never leaves a
    half-written one for the next attempt.
    """
    atomic_write_bytes(spec_path, json.dumps(spec.to_json()).encode())
    return await processes.run(
        name, job_id, TRAINER_MODULE, spec_path, threads=spec.settings.threads, state=State.TRAINING,
        span=TRAINING_SPAN, what="training", describe=lambda message: TrainingProgress.from_message(message).describe(),
    )
