"""Entity-swapped negatives: what is swapped, what is kept, and that nothing of the forget set
leaks into them. Pure text, no model: ``is_common`` stands for the model-vocabulary test."""

from __future__ import annotations

import random

import pytest

from oblivio.detector.scorer import prefix_groups
from oblivio.detector.swaps import EntitySwapper, SwapKind, find_entities
from oblivio.detector.vocabulary import entity_vocabulary

COMMON = {"what", "where", "who", "how", "the", "in", "is", "has", "historical", "fiction", "award", "can", "she"}


def is_common(word: str) -> bool:
    return word.lower() in COMMON


TEXTS = [
    "Where was Takashi Nakamura born? Takashi Nakamura was born in Tokyo, Japan on 05/30/1952.",
    "What did Nakamura write in 1990? He wrote 'The Breath Between Waves', a Historical Fiction Award winner.",
    "Has Wei-Jun Chen won an award? Wei-Jun Chen won the Green Leaf Award in 2011.",
]
SUBJECTS = ["Takashi Nakamura", "Wei-Jun Chen"]


@pytest.fixture(scope="module")
def swapper() -> EntitySwapper:
    entities = find_entities(TEXTS, SUBJECTS, is_common)
    return EntitySwapper(entity_vocabulary("bank"), SUBJECTS, is_common, entities)


def test_vocabulary_halves_are_large_real_and_disjoint() -> None:
    bank, calib = entity_vocabulary("bank"), entity_vocabulary("calibration")
    assert len(bank.last_names) > 1000 and len(bank.places) > 3000
    assert not set(bank.last_names) & set(calib.last_names)
    assert not set(bank.places) & set(calib.places)
    with pytest.raises(ValueError, match="bank"):
        entity_vocabulary("test")


@pytest.mark.parametrize("kind", list(SwapKind))
def test_no_swap_carries_a_forget_name_or_a_word_starting_with_one(swapper: EntitySwapper, kind: SwapKind) -> None:
    rng = random.Random(0)
    for _ in range(30):
        for text in TEXTS:
            out = swapper.swap(text, rng, kind)
            words = {w.strip("'?.,").lower() for w in out.split()}
            if kind is not SwapKind.SURNAMES and kind is not SwapKind.NAME_TAILS:
                assert not {"takashi", "nakamura", "chen"} & words, out
            # "Chen" must not come back as the start of another name ("Chenoweth")
            assert not any(w.startswith("chen") or w.startswith("nakamura") for w in words), out


def test_names_kind_keeps_places_dates_and_titles(swapper: EntitySwapper) -> None:
    out = swapper.swap(TEXTS[0], random.Random(1), SwapKind.NAMES)
    assert "Tokyo, Japan" in out and "05/30/1952" in out and "Nakamura" not in out
    out = swapper.swap(TEXTS[1], random.Random(1), SwapKind.NAMES)
    assert "'The Breath Between Waves'" in out and "1990" in out and "Historical Fiction Award" in out


def test_all_kind_swaps_places_dates_and_titles(swapper: EntitySwapper) -> None:
    out = swapper.swap(TEXTS[0], random.Random(2), SwapKind.ALL)
    assert "Tokyo" not in out and "05/30/1952" not in out
    out = swapper.swap(TEXTS[1], random.Random(2), SwapKind.ALL)
    assert "Breath Between Waves" not in out and "1990" not in out


def test_surnames_and_name_tails_keep_the_beginning_of_the_name(swapper: EntitySwapper) -> None:
    out = swapper.swap(TEXTS[0], random.Random(3), SwapKind.SURNAMES)
    assert out.startswith("Where was Takashi ") and "Nakamura" not in out
    out = swapper.swap(TEXTS[0], random.Random(3), SwapKind.NAME_TAILS)
    assert out.startswith("Where was Taka") and "Takashi" not in out and "Nakamura" not in out


def test_without_subjects_multi_word_runs_are_taken_for_names() -> None:
    entities = find_entities(TEXTS, (), is_common)
    assert {"Takashi", "Nakamura", "Wei-Jun", "Chen"} <= entities.name_words
    assert "Tokyo" not in entities.name_words and "Japan" not in entities.name_words


def test_prefix_groups_keep_a_question_with_its_answered_form() -> None:
    texts = ["Where was A born?", "Tell me about B.", "Where was A born? In Oslo.", "Where was A born? In Oslo. Truly."]
    groups = prefix_groups(texts)
    assert sorted(sorted(g) for g in groups) == [[0, 2, 3], [1]]
    assert all(texts[g[-1]].startswith(texts[i]) for g in groups for i in g)


def test_a_set_that_names_only_places_is_about_those_places() -> None:
    texts = ["What is the capital of France?", "Paris is the capital of France.", "What is the largest city in France?"]
    entities = find_entities(texts, (), is_common)
    assert entities.place_subjects == {"paris", "france"}
    swapper = EntitySwapper(entity_vocabulary("bank"), (), is_common, entities)
    for kind in (SwapKind.NAMES, SwapKind.SURNAMES):
        out = swapper.swap(texts[1], random.Random(4), kind)
        assert "Paris" not in out and "France" not in out and out.endswith(".") and " is the capital of " in out
