"""What a registration pipeline is told by the process that runs it.

Why a dataclass of its own: the gateway turns its configuration into one of these
(``oblivio.gateway.serving.runtime``), so registration never reads the gateway's config shape,
and a benchmark or test states exactly the knobs it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from oblivio.adapters.limits import RegistrationLimits
from oblivio.adapters.training_settings import TrainingSettings
from oblivio.gateway.config import RegistryConfig

REPLICA_SYNC_S = 5.0  # how often a gateway picks up registrations made by other replicas
JOB_LEASE_S = 30.0  # a job whose owner stopped renewing this long ago may be taken over


@dataclass(frozen=True)
class RegistrationSettings:
    """Paths, training and bounds of one pipeline.

    ``training.threads`` / ``fit_threads``: torch threads of the trainer / detector-fit child
    processes, which run at ``nice``; ``sync_interval`` None: no replica polling;
    ``discard_unregistered`` is the operator's override of ``stored_state.sweep_unregistered``'s
    refusal; ``registry`` names the registry the replicas share (None: SQLite under ``root``),
    handed to ``oblivio.adapters.registry_factory`` as it is.
    """

    model_path: Path
    root: Path
    training: TrainingSettings = field(default_factory=TrainingSettings)
    fit_threads: int = 1
    nice: int = 10
    max_attempts: int = 3
    sync_interval: float | None = None
    lease_s: float = JOB_LEASE_S
    limits: RegistrationLimits = field(default_factory=RegistrationLimits)
    discard_unregistered: bool = False
    registry: RegistryConfig | None = None

    def __post_init__(self) -> None:
        if self.lease_s <= 0:
            raise ValueError("lease_s must be positive")
