"""Cheap spelling games, undone before scoring.

What the gate promises (and what it does not): a prompt is scored as written AND in a
normalised form, and every forget set keeps the higher of the two scores, so normalising can
only make the gate stricter, never let something through that the plain text would catch.
The normalised form undoes:

* Unicode compatibility forms and invisible characters: full-width letters ("Ｅｌａｒａ"),
  ligatures, zero-width spaces/joiners and soft hyphens inside a name ("Ela\\u200bra");
* letters spelled out with separators: "T.o.b.i.a.s Q.u.i.l.l.o.n", "E l a r a", "E-l-a-r-a";
* case games: all lower case ("where was elara quenwick born") or all upper case. Words that
  are not one token of the model's vocabulary (names, in practice) get a capital, ordinary
  words stay lower case: the model's own vocabulary decides, so no name list is needed.

Not promised: misspellings and leetspeak ("3lara Qu3nw1ck"), look-alike letters from other
scripts (Cyrillic "Е" for Latin "E"), translations, encodings (base64, ROT13), or a name
split into pieces the model is asked to join. Those need a model-level defence (the unlearning
adapter itself), not a detector-side rewrite (see ``detector/README.md``).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable

__all__ = ["normalise_spelling", "scoring_variants"]

# A run of >= 3 single letters joined by short separators: "T.o.b.i.a.s", "E l a r a".
_SPELLED_RUN = re.compile(r"(?<!\w)[^\W\d_](?:[^\w\n]{1,3}[^\W\d_](?!\w)){2,}")
_SEPARATOR = re.compile(r"[^\w\n]{1,3}")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _strip_invisible(text: str) -> str:
    """NFKC (full-width forms, ligatures) and no format characters (zero-width, soft hyphen)."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _join_spelled(match: re.Match[str]) -> str:
    """Join a spelled-out run. The most frequent separator is the one between letters; any
    other separator (e.g. the space in "T.o.b.i.a.s Q.u.i.l.l.o.n") is a word boundary."""
    run = match.group(0)
    letters = re.findall(r"\w", run)
    separators = _SEPARATOR.findall(run)
    inner = Counter(separators).most_common(1)[0][0]
    out = [letters[0]]
    for sep, letter in zip(separators, letters[1:]):
        out.append(letter if sep == inner else " " + letter)
    return "".join(out)


def _recase(text: str, is_common_word: Callable[[str], bool]) -> str:
    """Sentence case, with a capital for every word the vocabulary does not know as one token."""
    lowered = text.lower()

    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        return word if is_common_word(word) else word[:1].upper() + word[1:]

    recased = _WORD.sub(fix, lowered)
    first = _WORD.search(recased)
    if first is None:
        return recased
    start = first.start()
    return recased[:start] + recased[start].upper() + recased[start + 1 :]


def normalise_spelling(text: str, is_common_word: Callable[[str], bool]) -> str:
    """``text`` with the spelling games of the module doc undone (identity for plain text)."""
    out = _SPELLED_RUN.sub(_join_spelled, _strip_invisible(text))
    letters = [ch for ch in out if ch.isalpha()]
    if letters and (all(ch.islower() for ch in letters) or all(ch.isupper() for ch in letters)):
        out = _recase(out, is_common_word)
    return out


def scoring_variants(text: str, is_common_word: Callable[[str], bool]) -> tuple[str, ...]:
    """The forms of a prompt the detector scores: as written, and normalised if that differs."""
    normalised = normalise_spelling(text, is_common_word)
    return (text,) if normalised == text or not normalised.strip() else (text, normalised)
