"""TOFU, the real benchmark, vendored under ``eval/data/tofu`` (MIT; provenance in its README).

Why vendored: users of oblivio do not have the project's shared data folder, and the official
splits live on a model hub these machines cannot reach. Headline detector and unlearning numbers
are measured on this data, which the project did not generate.
"""

from __future__ import annotations

import collections
import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["TofuRow", "FORGET_SPLITS", "forget_split", "retain_eval", "retain90", "retain90_sample", "finetune_retain",
           "real_authors", "world_facts", "far_questions", "author_names"]

# forget01 / forget05 are the last 2 / 10 authors of forget10 (20 questions each).
FORGET_SPLITS = {"forget01": 40, "forget05": 200, "forget10": 400}
QUESTIONS_PER_AUTHOR = 20


@dataclass(frozen=True)
class TofuRow:
    question: str
    answer: str
    paraphrased_question: str | None = None
    # TOFU's truth-ratio pair: the true answer reworded, and wrong answers in that same wording.
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()


@lru_cache(maxsize=None)
def _read(name: str) -> tuple[TofuRow, ...]:
    text = resources.files("oblivio.eval").joinpath(f"data/tofu/{name}.jsonl").read_text("utf-8")
    rows = (json.loads(line) for line in text.splitlines() if line.strip())
    return tuple(TofuRow(r["question"], r["answer"], r.get("paraphrased_question"), r.get("paraphrased_answer"),
                         tuple(r.get("perturbed_answer", ()))) for r in rows)


def forget_split(split: str) -> tuple[TofuRow, ...]:
    """``forget01`` / ``forget05`` / ``forget10`` exactly as TOFU defines them."""
    if split not in FORGET_SPLITS:
        raise ValueError(f"unknown TOFU forget split {split!r}; one of {sorted(FORGET_SPLITS)}")
    return _read("forget10")[-FORGET_SPLITS[split] :]


def retain_eval() -> tuple[TofuRow, ...]:
    """TOFU's retain evaluation questions (authors 0-21), with paraphrases."""
    return _read("retain_perturbed")


def retain90() -> tuple[TofuRow, ...]:
    """The 180 authors outside forget10 (question, answer)."""
    return _read("retain90")


# The retain authors the evaluation models are fine-tuned on: TOFU's retain evaluation authors
# (0-21 of retain90, whose questions ``retain_perturbed`` asks), not all 180. Why: a fine-tune step
# costs about ten seconds on a 2-core CPU, and all 3600 retain pairs would take hours; the
# retain model and the target see the same subset, and the forget splits are TOFU's own.
FINETUNE_RETAIN_AUTHORS = 22


def finetune_retain() -> tuple[TofuRow, ...]:
    """The retain pairs both evaluation models learn (see ``FINETUNE_RETAIN_AUTHORS``)."""
    return retain90()[: FINETUNE_RETAIN_AUTHORS * QUESTIONS_PER_AUTHOR]


def retain90_sample(n: int, seed: int = 0) -> tuple[TofuRow, ...]:
    """A fixed random sample of retain90 questions (the same for every run with this seed)."""
    rows = retain90()
    return tuple(rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n)))


def real_authors() -> tuple[TofuRow, ...]:
    """Real, famous authors (with wrong answers): knowledge that must stay."""
    return _read("real_authors_perturbed")


def world_facts() -> tuple[TofuRow, ...]:
    """General knowledge (with wrong answers): knowledge that must stay."""
    return _read("world_facts_perturbed")


def far_questions() -> tuple[str, ...]:
    """World facts and real authors: questions that must never fire a person's forget set."""
    return tuple(r.question for r in world_facts() + real_authors())


def author_names(rows: tuple[TofuRow, ...]) -> tuple[str, ...]:
    """Each author's name as a user would type it for ``--subject``: in every block of 20
    questions, the capitalised multi-word run that recurs in the most of them."""
    names = []
    for start in range(0, len(rows), QUESTIONS_PER_AUTHOR):
        counts: collections.Counter[str] = collections.Counter()
        for row in rows[start : start + QUESTIONS_PER_AUTHOR]:
            counts.update(set(re.findall(r"\b[A-Z][\w\-]+(?: [A-Z][\w\-]+)+", row.question)))
        names.append(counts.most_common(1)[0][0])
    return tuple(names)
