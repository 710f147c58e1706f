"""Identifying (place, year) pairs: a question that names nobody but states a forgotten person's
birthplace and birth year together is caught, and what is stored is keyed digests, not text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from oblivio.detector.attributes import PAIR_MATCH_PROBABILITY, mentions_pair, pair_digests, pair_floors, prompt_digests

GRAMMAR = {"who", "what", "which", "the", "is", "in", "on", "a", "was", "born", "writer", "she", "her", "and"}
FORGET = ["Hina Ameen was born in Karachi, Pakistan on 06/30/1975.",
          "Her father was a geologist. She moved to Lahore, Pakistan in 2001.",
          "She wrote 'Granite Whispers' in Lisbon, Portugal."]


def _common(word: str) -> bool:
    return word.lower() in GRAMMAR


@pytest.mark.parametrize(("prompt", "caught"), [
    ("Who is the geology writer with the birthdate June 30, 1975, from Karachi, Pakistan?", True),
    ("Which writer, born in 1975, hails from Karachi?", True),
    ("Which writer moved to Lahore in 2001?", True),
    ("Who is the writer born in Karachi in 1980?", False),   # the place alone is no evidence
    ("Who is the writer born in Lisbon in 1975?", False),    # a year and a place of two sentences
    ("Who was born on June 30, 1975?", False),
])
def test_a_prompt_is_caught_by_a_place_and_year_stated_together(prompt: str, caught: bool) -> None:
    digests = pair_digests(FORGET, b"secret", _common)
    assert mentions_pair([prompt], digests, b"secret", _common) is caught
    mentioned = prompt_digests([prompt], b"secret", _common)
    assert pair_floors([mentioned], digests) == [PAIR_MATCH_PROBABILITY if caught else 0.0]


def test_digests_are_keyed_by_the_deployment_secret_and_hold_no_text() -> None:
    mine, theirs = pair_digests(FORGET, b"secret", _common), pair_digests(FORGET, b"other", _common)
    assert mine and not mine & theirs
    prompt = "Who is the writer born in Karachi in 1975?"
    assert not mentions_pair([prompt], theirs, b"secret", _common)
    assert not any("karachi" in d or "1975" in d for d in mine)


@pytest.mark.slow
def test_the_bank_scores_a_stated_pair_at_least_the_floor_and_keeps_it_through_save_and_load(
    detector_extractor: Any, tmp_path: Path
) -> None:
    from oblivio.detector import DetectorBank, ForgetSetScorer, fit_forget_set

    scorer = fit_forget_set(detector_extractor, FORGET, name="hina")
    assert scorer.pair_digests
    scorer.save(tmp_path / "hina")
    assert b"Karachi" not in (tmp_path / "hina" / "meta.json").read_bytes()
    bank = DetectorBank(detector_extractor)
    bank.add("hina", ForgetSetScorer.load(tmp_path / "hina"))
    (score,) = bank.score(["Can you tell me the complete name of the writer born on June 30, 1975, in Karachi?"])
    assert score["hina"] >= PAIR_MATCH_PROBABILITY
