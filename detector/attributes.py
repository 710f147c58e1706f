"""Identifying attribute pairs: a place AND a year that one forget text states together.

Why: the token banks deliberately treat a shared attribute as no evidence (their near misses
keep the forget texts' places and dates, ``swaps.SwapKind.NAMES``), since other people are born
in Karachi too. But two attributes together identify: "the writer born on June 30, 1975 in
Karachi, Pakistan" names nobody and is still about one forgotten person. Measured on TOFU, such
questions were most of what the detector missed (forget05: all 9 misses were of this kind).

So a forget set also keeps the (place, year) pairs its texts state within one sentence, and a
prompt mentioning any such pair anywhere scores at least :data:`PAIR_MATCH_PROBABILITY`. Places
are found as the banks' swapper finds them (capitalised runs that are GeoNames places), years as
four-digit numbers, so no list of entities is written by hand.

Privacy: the pairs are stored only as keyed hashes (BLAKE2b keyed with the deployment's secret
projection seed), never as text. With the secret, checking a guessed pair is one hash; without
it the stored digests say nothing. The default seed 0 is public, so as for the token banks a
deployment that stores sensitive sets must set ``detector.projection_seed``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence

from oblivio.detector.swaps import place_mentions

__all__ = ["PAIR_MATCH_PROBABILITY", "pair_digests", "prompt_digests", "mentions_pair", "pair_floors"]

# The score of a prompt that states a forget text's place and year together: above the gate's
# default threshold 0.5 with room for an operator's stricter per-set threshold.
PAIR_MATCH_PROBABILITY = 0.9
_YEAR = re.compile(r"(?<!\d)(1[5-9]\d\d|20\d\d)(?!\d)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")

IsCommonWord = Callable[[str], bool]


def _places_and_years(text: str, is_common: IsCommonWord) -> tuple[set[str], set[str]]:
    places = {part.lower() for run in place_mentions(text, is_common) for part in run}
    return places, set(_YEAR.findall(text))


def _digest(place: str, year: str, secret: bytes) -> str:
    return hashlib.blake2b(f"{place}|{year}".encode(), key=secret, digest_size=16).hexdigest()


def pair_digests(texts: Iterable[str], secret: bytes, is_common: IsCommonWord) -> frozenset[str]:
    """Keyed digests of every (place, year) stated within one sentence of the forget texts.

    Within one sentence: a paragraph that mentions a city in one sentence and an unrelated year
    in another does not identify anybody by that pair."""
    digests: set[str] = set()
    for text in texts:
        for sentence in _SENTENCE_END.split(text):
            places, years = _places_and_years(sentence, is_common)
            digests.update(_digest(p, y, secret) for p in places for y in years)
    return frozenset(digests)


def prompt_digests(forms: Sequence[str], secret: bytes, is_common: IsCommonWord) -> frozenset[str]:
    """Keyed digests of every (place, year) pair a prompt mentions anywhere, over all its forms.
    Computed once per prompt: every set's stored digests are compared with the same ones."""
    digests: set[str] = set()
    for form in forms:
        places, years = _places_and_years(form, is_common)
        digests.update(_digest(p, y, secret) for p in places for y in years)
    return frozenset(digests)


def mentions_pair(prompts: Sequence[str], digests: frozenset[str], secret: bytes, is_common: IsCommonWord) -> bool:
    """Whether any of ``prompts`` (forms of one prompt) mentions a stored pair, anywhere in it."""
    return bool(digests) and not digests.isdisjoint(prompt_digests(prompts, secret, is_common))


def pair_floors(prompts: Sequence[frozenset[str]], digests: frozenset[str]) -> list[float]:
    """Per prompt (given as its :func:`prompt_digests`), the lowest score it may get from a set
    storing ``digests``: :data:`PAIR_MATCH_PROBABILITY` when it states one of them, else 0."""
    return [0.0 if digests.isdisjoint(mentioned) else PAIR_MATCH_PROBABILITY for mentioned in prompts]
