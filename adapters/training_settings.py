"""The unlearning LoRA's hyper-parameters, without torch.

Why apart from ``oblivio.adapters.training``: the registration pipeline and the trainer's
spec describe a training with this dataclass, and neither but the trainer itself may pay for
importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Method = Literal["refusal", "npo", "ihl"]
METHODS: tuple[str, ...] = ("refusal", "npo", "ihl")


@dataclass
class TrainingSettings:
    """Hyper-parameters; defaults follow O3 (r=8, all projections, lambda=0.1)."""

    method: str = "refusal"
    steps: int | None = None  # None: derived from epochs
    epochs: float = 5.0
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_length: int = 96
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    ortho_lambda: float = 0.1
    orthogonal_init: bool = True
    npo_beta: float = 0.1
    seed: int = 0
    threads: int = 1
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

    def total_steps(self, n_examples: int) -> int:
        return self.steps or max(1, math.ceil(self.epochs * n_examples / self.batch_size))
