"""Detector fixtures: one real extractor over the default model, and a tiny fitted forget set.

The extractor (model load + the shipped background's forward) is the expensive part, so it is
session-scoped; other areas can reuse ``detector_extractor`` instead of loading their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from oblivio.eval.entity_data import EntityDataset, build_dataset

# Facts per person used in tests: enough to identify a person, few enough to stay fast.
TEST_FACTS = ("birthplace", "profession", "first_work", "award")


@pytest.fixture(scope="session")
def detector_extractor(model_path: Path) -> Any:
    from oblivio.detector import FeatureExtractor
    from oblivio.gateway.config import DetectorConfig

    cfg = DetectorConfig()
    # threads as the server sets them (config.detector.threads); one thread is also what keeps a
    # contended CI machine from oversubscribing its cores.
    extractor = FeatureExtractor.from_pretrained(
        model_path, layers=cfg.layers, max_prompt_tokens=cfg.max_prompt_tokens, threads=cfg.threads
    )
    extractor.background()  # warm the shared background once
    return extractor


@pytest.fixture(scope="session")
def tiny_entities() -> EntityDataset:
    return build_dataset(seed=7, n_people=12)


def person_texts(data: EntityDataset, pid: int, *, paraphrase: bool) -> list[str]:
    """Fit texts (question + answer) or held-out paraphrase questions for one person."""
    items = [q for q in data.items([pid], paraphrase=paraphrase) if q.fact in TEST_FACTS]
    return [q.text for q in items] if not paraphrase else [q.question for q in items]


@pytest.fixture(scope="session")
def two_fitted_sets(detector_extractor: Any, tiny_entities: EntityDataset) -> dict[str, Any]:
    """Two forget sets, one invented person each: {'p0': scorer, 'p1': scorer} for persons 0 and 1."""
    from oblivio.detector import fit_forget_set

    return {
        "p0": fit_forget_set(detector_extractor, person_texts(tiny_entities, 0, paraphrase=False), name="p0"),
        "p1": fit_forget_set(detector_extractor, person_texts(tiny_entities, 1, paraphrase=False), name="p1"),
    }
