"""Generic contrast text that ships with the package.

Why: a one-class score fitted on the forget set alone cannot tell "where was <forgotten person>
born?" from "where was <anyone else> born?": the template dominates the features. The detector
therefore contrasts every prompt token against (a) generic chat prompts that ship with the
package (this module) and (b) the forget set's own texts about other entities
(``swaps.py``). Neither needs any retained user data.

The shipped text names no people on purpose. An earlier version added biography prompts about
made-up people from a list of forty names; a forgotten person whose surname was on the list
("Takashi Nakamura") then had that surname cancelled by the background and was missed. People
now enter the negatives only through the swaps, whose names are drawn per forget set and never
share a word with it.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

__all__ = ["background_texts", "background_digest"]


@lru_cache(maxsize=1)
def background_texts() -> tuple[str, ...]:
    """The shipped generic prompts (deterministic: every process and every saved scorer agrees on
    the same background; ``background_digest()`` identifies it in saved metadata)."""
    raw = resources.files("oblivio.detector").joinpath("data/generic_prompts.txt").read_text("utf-8")
    return tuple(line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#"))


def background_digest() -> str:
    """Short hash of the shipped background, stored with every scorer (it shapes the scores)."""
    h = hashlib.sha256("\n".join(background_texts()).encode("utf-8"))
    return h.hexdigest()[:16]
