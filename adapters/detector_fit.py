"""Fitting a forget set's detector in a child process (``python -m oblivio.adapters.detector_fit``).

Why not in the server: the fit runs the detector's model over every text of the set and its
swapped near misses, keeping their hidden states: minutes of CPU and gigabytes for a large set.
In the server it held the feature extractor's lock that every chat prompt's scoring needs, and a
thread running it could be neither cancelled by a deletion nor stopped at shutdown. Here it has
its own truncated model (:meth:`FeatureExtractor.from_pretrained`, the same feature space as
the server's: same model, layers, projection), its own torch threads and memory, and the
pipeline stops it with a kill. The fitted scorer comes back as a folder
(:meth:`ForgetSetScorer.save`) that the pipeline publishes and loads.

Spec (JSON): ``model_path``, ``extractor`` (see :func:`extractor_settings`), ``threads``,
``examples_path`` (the job's examples.jsonl), ``name``, ``subjects``, ``out_dir``.
Progress: ``{"event": "progress", "message": ..., "fraction": 0..1 of the fit}``; a heartbeat
every :data:`HEARTBEAT_S` seconds while the model runs, so watchers see the fit is alive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from oblivio.adapters.child_entry import child_main, emit
from oblivio.adapters.forget_set import read_examples

HEARTBEAT_S = 5.0


def extractor_settings(extractor: Any) -> dict[str, Any]:
    """What the child needs to rebuild ``extractor``'s feature space (the server's own)."""
    return {
        "layers": list(extractor.layers),
        "max_prompt_tokens": extractor.max_prompt_tokens,
        "projection_dim": extractor.projection_dim,
        "projection_seed": extractor.projection_seed,
        "batch_size": extractor.batch_size,
    }


def detector_texts(examples_path: Path) -> list[str]:
    """The texts a set's detector is fitted on, from the job's stored examples."""
    return [text for example in read_examples(examples_path) for text in example.detector_texts()]


def _progress(message: str, fraction: float) -> None:
    emit({"event": "progress", "message": message, "fraction": fraction})


class _Heartbeat:
    """Emits "still fitting" progress every ``HEARTBEAT_S`` seconds while the fit runs."""

    def __init__(self, message: str, fraction: float) -> None:
        self._message, self._fraction = message, fraction
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fit-heartbeat", daemon=True)

    def _beat(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(HEARTBEAT_S):
            _progress(f"{self._message} ({time.monotonic() - started:.0f} s)", self._fraction)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Fit and save one set's detector; the report holds the fit's diagnostics."""
    from oblivio.detector import FeatureExtractor, fit_forget_set

    texts = detector_texts(Path(spec["examples_path"]))
    settings = spec["extractor"]
    _progress("loading the detector model", 0.1)
    extractor = FeatureExtractor.from_pretrained(
        spec["model_path"],
        layers=tuple(settings["layers"]),
        max_prompt_tokens=settings["max_prompt_tokens"],
        projection_dim=settings["projection_dim"],
        projection_seed=settings["projection_seed"],
        batch_size=settings["batch_size"],
        threads=int(spec["threads"]),
    )
    message = f"fitting the detector on {len(texts)} texts"
    _progress(message, 0.2)
    with _Heartbeat(message, 0.2):
        scorer = fit_forget_set(extractor, texts, name=spec["name"], subjects=list(spec["subjects"]))
    _progress("saving the detector", 0.9)
    scorer.save(Path(spec["out_dir"]))
    return {"texts": len(texts), "diagnostics": scorer.diagnostics}


def main(argv: Sequence[str] | None = None) -> int:
    return child_main(argv, run_spec, usage="python -m oblivio.adapters.detector_fit SPEC.json")


if __name__ == "__main__":
    raise SystemExit(main())
