"""The messages between the registration pipeline and its trainer child process.

Why one module: the pipeline writes the spec and reads the progress lines, the trainer
(``python -m oblivio.adapters.training``) reads the spec and writes the progress lines; with
both sides on these dataclasses a field renamed on one side cannot silently stop matching the
other. Torch-free, so the pipeline imports it without loading the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oblivio.adapters.training_settings import TrainingSettings

PROGRESS_EVENT = "progress"  # the ``event`` of a progress line (``oblivio.adapters.child_process``)


@dataclass(frozen=True)
class TrainingSpec:
    """One training: the spec file the pipeline writes and ``python -m oblivio.adapters.training`` runs."""

    model_path: Path
    examples_path: Path  # the job's examples.jsonl
    out_dir: Path  # the peft folder and training_report.json go here
    settings: TrainingSettings
    priors: dict[str, Path] = field(default_factory=dict)  # every other set's adapter: kept orthogonal to them
    checkpoint_path: Path | None = None  # resume from here, and checkpoint here
    subjects: tuple[str, ...] = ()  # whom the set is about: the strength calibration swaps them out

    def to_json(self) -> dict[str, Any]:
        return {
            "model_path": str(self.model_path),
            "examples_path": str(self.examples_path),
            "out_dir": str(self.out_dir),
            "priors": {name: str(path) for name, path in self.priors.items()},
            "settings": asdict(self.settings),
            "checkpoint_path": str(self.checkpoint_path) if self.checkpoint_path is not None else None,
            "subjects": list(self.subjects),
        }

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> "TrainingSpec":
        return cls(
            model_path=Path(spec["model_path"]),
            examples_path=Path(spec["examples_path"]),
            out_dir=Path(spec["out_dir"]),
            settings=TrainingSettings(**spec.get("settings", {})),
            priors={name: Path(path) for name, path in spec.get("priors", {}).items()},
            checkpoint_path=Path(spec["checkpoint_path"]) if spec.get("checkpoint_path") else None,
            subjects=tuple(spec.get("subjects", ())),
        )


@dataclass(frozen=True)
class TrainingProgress:
    """One optimizer step done: a progress line on the trainer's stdout."""

    step: int
    total: int
    loss: float

    def to_message(self) -> dict[str, Any]:
        return {"event": PROGRESS_EVENT, "step": self.step, "total": self.total, "loss": self.loss}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> "TrainingProgress":
        return cls(step=int(message["step"]), total=int(message["total"]), loss=float(message["loss"]))

    def describe(self) -> tuple[float, str]:
        """(fraction of the training done, the text watchers see)."""
        return self.step / max(self.total, 1), f"training step {self.step}/{self.total}, loss {self.loss:.4f}"
