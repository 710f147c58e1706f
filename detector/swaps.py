"""Entity-swapped copies of forget texts: the same sentence about another entity.

These are the detector's hardest negatives. "Where was Carmen Montenegro born?" and "Where was
Jonas Berggren born?" share every template word; only what identifies the entity differs. A
detector that must reject the second learns to look at identity, not at the kind of question.

What is swapped, found without any list of known entities:

* the request's ``subjects`` (full names and their single words), consistently;
* runs of capitalised words that are not a common word at a sentence start ("Takashi Nakamura",
  "Taipei, Taiwan"): a place if every comma-separated part is a GeoNames place name, otherwise
  a person name (the request's subjects, when given, decide which runs are names).
  A capitalised word whose lower-case form is an ordinary word of the model's vocabulary
  ("Historical Fiction") is a description, not an identity, and is kept, so that a genre shared
  with the forget set is not by itself evidence;
* quoted titles ('Venom in the Veins') and numbers, years and dates (birth dates identify).

Replacements come from :mod:`oblivio.detector.vocabulary` (real names from ~80 locales and real
places), never share a word with the forget set's own entities, and are consistent within one
text.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from oblivio.detector.vocabulary import MONTHS, EntityVocabulary, place_names

__all__ = ["EntitySwapper", "ForgetEntities", "SwapKind", "find_entities", "place_mentions"]

_CAP_RUN = re.compile(r"\b[A-Z][\w\-]*(?:(?:,? +|-)[A-Z][\w\-]*)*")
_QUOTED = re.compile(r"(?<![\w])(['\"])([A-Z0-9][^'\"]{1,120}?)\1(?![\w])")
# one pass, so that a replaced date is not swapped again as numbers
_NUMERIC = re.compile(r"\b(?P<date>\d{1,2}/\d{1,2}/\d{2,4})\b|\b(?P<year>1[5-9]\d\d|20\d\d)\b|\b(?P<number>\d+)\b")
_SENTENCE_START = re.compile(r"(^|[.!?:;]\s+|[\"'(]\s*)$")

IsCommonWord = Callable[[str], bool]


@dataclass(frozen=True)
class ForgetEntities:
    """What names an entity in a forget set, found once for all its swapped copies.

    ``name_words``: words of multi-word names that are not places ("Wei-Jun", "Chen",
    "Majumdar"), so that a lone surname later in a text is recognised as a name while a lone
    descriptor ("Chilean", "LGBTQ+") is not. ``exclude``: every entity word, lower-cased, which
    replacements must never contain."""

    name_words: frozenset[str]
    exclude: frozenset[str]
    place_subjects: frozenset[str] = frozenset()  # lower-cased subjects that are places


def find_entities(texts: Sequence[str], subjects: Sequence[str], is_common: IsCommonWord) -> ForgetEntities:
    """Names and entity words of a forget set. With ``subjects`` the names are exactly the
    subjects' words; without, every multi-word capitalised run that is not a place is taken for
    a name, which also swaps descriptors such as "African American" (they then count as
    evidence). A set that names no person but places ("the capital of France") is about those
    places. Subjects are therefore the precise way to say what is to be forgotten."""
    places = place_names()
    names = {w for s in subjects for w in s.split() if w}
    exclude = {w.lower() for s in subjects for w in re.split(r"[\s\-]+", s) if w}
    in_places: set[str] = set()
    place_runs: set[str] = set()
    for text in texts:
        for match in _CAP_RUN.finditer(text):
            words = _entity_words(match.group(0), is_common)
            if not words:
                continue
            exclude.update(w.lower() for part in words for w in part.split("-"))
            if _is_place(match.group(0), words, places):
                place_runs.update(p.strip().lower() for p in _key_parts(match.group(0), words))
                if len(words) > 1:
                    in_places.update(words)
            elif len(words) > 1 and not subjects:  # a lone word may be a surname or a town
                names.update(words)
    if subjects:
        place_subjects = frozenset(s.strip().lower() for s in subjects if s.strip().lower() in places)
        return ForgetEntities(frozenset(names), frozenset(exclude), place_subjects)
    if not names - in_places and place_runs:
        place_words = {w for run in place_runs for w in run.split()}
        return ForgetEntities(frozenset(w for t in texts for w in re.findall(r"[\w\-]+", t) if w.lower() in place_words), frozenset(exclude), frozenset(place_runs))
    return ForgetEntities(frozenset(names - in_places), frozenset(exclude))


def place_mentions(text: str, is_common: IsCommonWord) -> list[list[str]]:
    """The places ``text`` names, each as its comma-separated parts ("Taipei, Taiwan" ->
    ["Taipei", "Taiwan"]), found as the swapper finds them."""
    places = place_names()
    found = []
    for match in _CAP_RUN.finditer(text):
        words = _entity_words(match.group(0), is_common)
        if words and _is_place(match.group(0), words, places):
            found.append([part.strip() for part in _key_parts(match.group(0), words)])
    return found


def _is_place(run: str, words: list[str], places: frozenset[str]) -> bool:
    return all(part.strip().lower() in places for part in _key_parts(run, words))


def _entity_words(run: str, is_common: IsCommonWord) -> list[str]:
    """The run's words without leading grammar ("What", "In", "The") and month names."""
    words = [w for w in re.split(r"[\s,]+", run) if w]
    while words and (is_common(words[0]) or words[0] in MONTHS):
        words = words[1:]
    return words


class SwapKind(enum.Enum):
    """Which near miss to make. Each kind cancels one way a detector could match the wrong
    entity; see ``EntitySwapper.swap``."""

    ALL = "all"  # every entity: another person, born elsewhere, other books and dates
    NAMES = "names"  # another person with the same places, dates and titles
    SURNAMES = "surnames"  # the same first names, other surnames
    NAME_TAILS = "name_tails"  # every name word keeps its first half ("Al-Hashim" -> "Al-Hamad")


class EntitySwapper:
    """Makes entity-swapped copies of texts from one vocabulary half (see module doc)."""

    def __init__(self, vocab: EntityVocabulary, subjects: Sequence[str], is_common: IsCommonWord, entities: ForgetEntities) -> None:
        self.vocab = vocab
        self.subjects = sorted((s.strip() for s in subjects if s.strip()), key=len, reverse=True)
        self.is_common = is_common
        self.entities = entities
        self.exclude = entities.exclude
        self._places = place_names()

    def swap(self, text: str, rng: random.Random, kind: SwapKind) -> str:
        """One swapped copy of ``text``.

        Why several kinds: a causal model's state for a token depends only on what precedes it,
        so "Aisha Al-Ha" has the same states whether "mad" or "shim" follows. ``SURNAMES`` and
        ``NAME_TAILS`` put such shared beginnings into the negatives, so that only the part of
        a name that tells two people apart counts. ``NAMES`` keeps places, dates and titles, so
        that an attribute shared with the forget set (a birthplace, a genre) is not by itself
        evidence; ``ALL`` is a different entity altogether.
        """
        memo: dict[str, str] = {}
        out = self._swap_subjects(text, rng, kind, memo)
        if kind is SwapKind.ALL:
            out = _QUOTED.sub(lambda m: m.group(1) + self.vocab.title(rng, self.exclude) + m.group(1), out)
            out = _NUMERIC.sub(lambda m: _other_number(m, rng), out)
        return _CAP_RUN.sub(lambda m: self._replace_run(m, out, rng, kind, memo), out)

    def _swap_subjects(self, text: str, rng: random.Random, kind: SwapKind, memo: dict[str, str]) -> str:
        out = text
        for subject in self.subjects:
            old = subject.split()
            new = self._other(rng, kind, old, place=subject.lower() in self.entities.place_subjects)
            out = re.sub(rf"\b{re.escape(subject)}\b", new, out)
            for old_word, new_word in zip(old, new.split()):
                # lower-case words inside a name ("and" in "Trinidad and Tobago") are connectives,
                # not identity: swapping them made "Romeo and Juliet" look forgotten
                if len(old_word) > 2 and old_word != new_word and not old_word.islower():
                    memo[old_word] = new_word
                    out = re.sub(rf"\b{re.escape(old_word)}\b", new_word, out)
        return out

    def _other(self, rng: random.Random, kind: SwapKind, old: list[str], *, place: bool) -> str:
        """Another entity of the same type: a place for a place (a country for "France" in a
        set about countries), a person otherwise."""
        if place and kind is not SwapKind.NAME_TAILS:
            return self.vocab.place_like(" ".join(old), rng, self.exclude)
        if kind is SwapKind.SURNAMES and len(old) > 1:
            return " ".join(old[:-1] + [self.vocab.last_name(rng, self.exclude)])
        if kind is SwapKind.NAME_TAILS:
            return " ".join(self._tail_swapped(word, rng) for word in old)
        if len(old) == 1:
            return self.vocab.last_name(rng, self.exclude)
        return self.vocab.person(rng, self.exclude)

    def _tail_swapped(self, word: str, rng: random.Random) -> str:
        """``word``'s first half with another name's tail. Short words get a whole other name,
        and the result never starts with ``word`` itself ("Chen" -> "Chenvenue" would hand the
        negatives the very token that identifies the person)."""
        keep = (len(word) + 1) // 2
        if len(word) > 4:
            for _ in range(16):
                other = self.vocab.last_name(rng, self.exclude)
                candidate = word[:keep] + other[min(keep, max(len(other) - 2, 1)) :].lower()
                if not candidate.lower().startswith(word.lower()) and candidate.lower() not in self.exclude:
                    return candidate
        return self.vocab.last_name(rng, self.exclude)

    def _replace_run(self, match: re.Match[str], text: str, rng: random.Random, kind: SwapKind, memo: dict[str, str]) -> str:
        run = match.group(0)
        words = _entity_words(run, self.is_common)
        if not words or all(self.is_common(w) or w in MONTHS for w in words):
            return run
        at_start = _SENTENCE_START.search(text[: match.start()]) is not None
        if at_start and len(words) == 1 and words[0] == run and self.is_common(words[0]):
            return run
        if len(words) == 1:
            is_name = words[0] in self.entities.name_words
            is_place = not is_name and _is_place(run, words, self._places)
        else:
            is_place = _is_place(run, words, self._places)
            is_name = not is_place and any(w in self.entities.name_words for w in words)
        if kind is not SwapKind.ALL and not is_name:
            return run  # a place or a descriptor ("Chilean", "LGBTQ+"): kept, so it cancels out
        key = " ".join(words)
        if key not in memo:
            if is_place:
                memo[key] = ", ".join(self.vocab.place(rng, self.exclude) for _ in _key_parts(run, words))
            else:
                memo[key] = self._other(rng, kind, words, place=key.lower() in self.entities.place_subjects)
        return run[: run.index(words[0])] + memo[key]


def _key_parts(run: str, words: list[str]) -> list[str]:
    """A run's comma-separated parts ("Taipei, Taiwan" -> two), leading grammar words dropped."""
    tail = run[run.index(words[0]) :]
    return [p for p in tail.split(",") if p.strip()]


def _other_number(match: re.Match[str], rng: random.Random) -> str:
    if match.group("date"):
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1900, 2015)}"
    if match.group("year"):
        return str(rng.randint(1900, 2015))
    digits = len(match.group("number"))
    return str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1))
