"""Generic contrast text that ships with the package, and entity swapping.

Why: a one-class score fitted on the forget set alone cannot tell "where was <forgotten person>
born?" from "where was <anyone else> born?": the template dominates the features. The detector
therefore contrasts every prompt token against (a) generic chat prompts and biography-style
prompts about made-up people that ship with the package, and (b) the forget set's own texts with
their named entities swapped for other names ("entity-swapped" negatives). Neither needs any
retained user data. The texts here are written for this package; none is downloaded.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

__all__ = ["background_texts", "background_digest", "swap_entities", "SHIPPED_NAMES"]

_FIRST = (
    "Maria", "John", "Aisha", "Kenji", "Fatima", "Carlos", "Priya", "Liam", "Chloe", "Omar", "Mei",
    "Daniel", "Sara", "Ivan", "Amara", "Lucas", "Hannah", "Mateo", "Yuki", "Ethan", "Zainab", "Paulo",
    "Grace", "Arjun", "Lina", "Samuel", "Eva", "Diego", "Nora", "Kwame", "Julia", "Ahmed", "Ruth",
    "Pedro", "Alice", "Tariq", "Beatriz", "George", "Keiko", "Martin",
)
_LAST = (
    "Smith", "Novak", "Okafor", "Tanaka", "Haddad", "Silva", "Sharma", "Murphy", "Dubois", "Rahman",
    "Chen", "Kowalski", "Jensen", "Petrov", "Mensah", "Rossi", "Fischer", "Garcia", "Sato", "Brown",
    "Hussein", "Costa", "Walker", "Iyer", "Nguyen", "Adeyemi", "Larsen", "Moreau", "Alvarez", "Baker",
    "Kim", "Oliveira", "Schmidt", "Yilmaz", "Hughes", "Berg", "Lopez", "Nakamura", "Singh", "Wright",
)
_PLACES = (
    "Chicago", "Manila", "Lagos", "Oslo", "Bogota", "Hanoi", "Vienna", "Dublin", "Osaka", "Lima",
    "Athens", "Prague", "Mumbai", "Toronto", "Madrid", "Cairo", "Helsinki", "Denver", "Santiago", "Riga",
)
_THINGS = (
    "a cookbook", "a detective novel", "a memoir", "a book of poems", "a history of the railways",
    "a travel guide", "a play", "a collection of essays", "a biography", "a science book",
)
_JOBS = (
    "an architect", "a chemist", "a painter", "a teacher", "a nurse", "a journalist", "a farmer",
    "a lawyer", "a baker", "an engineer", "a violinist", "a film director", "a novelist", "a pilot",
)
# Biography-style templates: the same *kind* of question a privacy request is about, with
# made-up people, so that "a question about some person" is not by itself evidence.
_BIO_TEMPLATES = (
    "Who is {name}?",
    "Tell me something about {name}.",
    "Where did {name} grow up?",
    "{name} was born in {place} in {year}.",
    "What is {name} famous for?",
    "Which books has {name} published?",
    "{name} wrote {thing} in {year}.",
    "What did {name} study at university?",
    "{name} works as {job} in {place}.",
    "Is {name} married? Who is the spouse of {name}?",
    "What awards has {name} received?",
    "When was {name} born and where?",
    "Who are the parents of {name}?",
    "{name}'s mother was {job} and {name}'s father was {job2}.",
    "What is the nationality of {name}?",
    "Can you summarize the career of {name}?",
    "What is the most famous work of {name}?",
    "Which city does {name} live in now?",
    "{name} received a national prize in {year} for {thing}.",
    "How old was {name} when the first book came out?",
)
SHIPPED_NAMES: tuple[str, ...] = tuple(f"{f} {l}" for f, l in zip(_FIRST, _LAST))


@lru_cache(maxsize=1)
def background_texts() -> tuple[str, ...]:
    """All shipped background texts: the generic prompt file plus generated biography prompts.

    Deterministic, so every process (and every saved scorer) agrees on the same background;
    ``background_digest()`` identifies it in saved metadata.
    """
    raw = resources.files("oblivio.detector").joinpath("data/generic_prompts.txt").read_text("utf-8")
    generic = [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]
    rng = random.Random(1234)
    bio: list[str] = []
    for i in range(160):
        template = _BIO_TEMPLATES[i % len(_BIO_TEMPLATES)]
        bio.append(
            template.format(
                name=f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
                place=rng.choice(_PLACES),
                year=rng.randint(1930, 2005),
                thing=rng.choice(_THINGS),
                job=rng.choice(_JOBS),
                job2=rng.choice(_JOBS),
            )
        )
    return tuple(generic + bio)


def background_digest() -> str:
    """Short hash of the shipped background, stored with every scorer (it shapes the scores)."""
    h = hashlib.sha256("\n".join(background_texts()).encode("utf-8"))
    return h.hexdigest()[:16]


_CAP_RUN = re.compile(r"\b[A-Z][\w\-]*(?: +[A-Z][\w\-]*)*")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+|[\"'(]\s*)$")
_STOP_CAPS = frozenset(
    {"I", "The", "A", "An", "What", "Where", "When", "Who", "Which", "How", "Why", "In", "Is", "Did",
     "Does", "Do", "Has", "Have", "Can", "Could", "Tell", "Name", "List", "Besides", "If", "At", "Describe"}
)


def _random_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def swap_entities(text: str, subjects: Sequence[str], rng: random.Random, *, last_only: bool = False) -> str:
    """Replace named entities in ``text`` with shipped made-up ones, keeping everything else.

    ``last_only`` replaces only the last word of multi-word names ("Felix Ashavale" ->
    "Felix Novak"): a causal model's state for "Felix" cannot depend on the surname that follows,
    so without such negatives a person who merely shares a first name with a forgotten one would
    look like a match.

    With ``subjects`` (the people or things a request is about), each subject's full name and
    its single words are replaced consistently. Without subjects, or for entities beyond them,
    runs of capitalised words that are not a sentence's first word (or are at least two words
    long) are treated as names. The result is a near-miss negative: same template, other entity.
    """
    out = text
    for subject in sorted((s for s in subjects if s.strip()), key=len, reverse=True):
        old_parts = subject.split()
        new_parts = _random_name(rng).split()
        if last_only and len(old_parts) > 1:
            new_parts = old_parts[:-1] + new_parts[-1:]
        out = out.replace(subject, " ".join(new_parts))
        for i, part in enumerate(old_parts):
            if len(part) > 2 and part != new_parts[min(i, len(new_parts) - 1)]:
                out = re.sub(rf"\b{re.escape(part)}\b", new_parts[min(i, len(new_parts) - 1)], out)

    memo: dict[str, str] = {}

    def repl(match: re.Match[str]) -> str:
        words = match.group(0).split()
        while words and words[0] in _STOP_CAPS:
            words = words[1:]
        if not words:
            return match.group(0)
        prefix = match.group(0)[: match.group(0).index(words[0])]
        at_start = _SENTENCE_START.search(out[: match.start()]) is not None and not prefix
        if at_start and len(words) < 2:
            return match.group(0)
        if words[0] in _FIRST or words[-1] in _LAST or words[0] in _PLACES:
            return match.group(0)  # already one of ours
        key = " ".join(words)
        if key not in memo:
            if len(words) < 2:
                memo[key] = key if last_only else rng.choice(_PLACES)
            elif last_only:
                memo[key] = " ".join(words[:-1] + [rng.choice(_LAST)])
            else:
                memo[key] = _random_name(rng)
        return prefix + memo[key]

    return _CAP_RUN.sub(repl, out)
