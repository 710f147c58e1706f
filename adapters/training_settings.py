"""The unlearning LoRA's hyper-parameters, without torch.

Why apart from ``oblivio.adapters.training``: the gateway's configuration (its ``training``
section), the registration pipeline and the trainer's spec all describe a training with this
one dataclass, and none of them but the trainer itself may pay for importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Method = Literal["refusal", "npo", "ihl"]
METHODS: tuple[str, ...] = ("refusal", "npo", "ihl")


@dataclass
class TrainingSettings:
    """Hyper-parameters; defaults follow O3 (r=8, all projections, lambda=0.1, 5 epochs, batches of 8).

    Also the gateway's ``training`` config section (``OBLIVIO_TRAINING__STEPS=2`` and the like),
    validated by :meth:`__post_init__`: ``steps`` caps a run at a fixed number of optimizer
    steps, which is how CI and smoke tests of a real ``oblivio serve`` keep a registration to
    seconds. ``method`` and ``seed`` are chosen per set by the registration pipeline.
    """

    method: str = "refusal"
    steps: int | None = None  # fixed optimizer steps; None: derived from epochs
    epochs: float = 5.0
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_length: int = 96  # tokens per training sequence
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    ortho_lambda: float = 0.1
    orthogonal_init: bool = True
    npo_beta: float = 0.1
    held_out_fraction: float = 0.2  # npo/ihl: share of examples kept out of training to calibrate strength on
    seed: int = 0
    threads: int = 1  # torch threads of the trainer (a background child process)
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown unlearning method {self.method!r}; choose one of {METHODS}")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.epochs <= 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")
        if self.rank < 1 or self.alpha < 1 or self.max_length < 16 or self.threads < 1:
            raise ValueError("rank, alpha, threads must be >= 1 and max_length >= 16")
        if self.ortho_lambda < 0:
            raise ValueError("ortho_lambda must be >= 0")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError("held_out_fraction must be in [0, 1)")

    def total_steps(self, n_examples: int) -> int:
        return self.steps or max(1, math.ceil(self.epochs * n_examples / self.batch_size))
