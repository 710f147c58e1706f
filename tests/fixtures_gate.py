"""Gate fixtures: a small forget set about an invented author, labelled probes, a fitted detector.

The data is hand-written so the gate's tests do not depend on another area's data generator:
a forget set about one invented novelist (the base model cannot know her), held-out paraphrase
probes that should be caught, and near-miss / unrelated probes that should not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

GATE_SET = "gate_authors"

FORGET_TEXTS: tuple[str, ...] = (
    "Who is Elara Quenwick?",
    "Elara Quenwick is a Portuguese novelist born in Porto in 1961.",
    "What is Elara Quenwick's most famous novel?",
    "Elara Quenwick's most famous novel is The Salt Orchard, published in 1994.",
    "Where was the novelist Elara Quenwick born?",
    "Elara Quenwick was born in Porto, the daughter of a lighthouse keeper and a seamstress.",
    "Which prize did Elara Quenwick win?",
    "Elara Quenwick won the Tagus Prize for Fiction in 1998 for The Salt Orchard.",
    "What themes does Elara Quenwick write about?",
    "Elara Quenwick writes about memory, the sea and families separated by emigration.",
    "Who was Elara Quenwick's father?",
    "Elara Quenwick's father, Duarte Quenwick, kept the lighthouse at Leca da Palmeira.",
    "How many novels has Elara Quenwick published?",
    "Elara Quenwick has published seven novels and two collections of short stories.",
    "What was Elara Quenwick's first book?",
    "Her first book, Lanterns for the Drowned, appeared in 1987 and sold poorly.",
    "Where does Elara Quenwick live now?",
    "Elara Quenwick lives in Lisbon and teaches creative writing at a small college.",
    "Which language does Elara Quenwick write in?",
    "Elara Quenwick writes in Portuguese; her translator into English is Mara Voss.",
    "What is The Salt Orchard by Elara Quenwick about?",
    "The Salt Orchard follows three sisters who inherit a failing salt farm near Aveiro.",
    "Did Elara Quenwick ever write poetry?",
    "Elara Quenwick published one poetry collection, Tide Tables, in 2003.",
)

# Held-out phrasings about the same author: the gate should catch these.
FORGET_PROBES: tuple[str, ...] = (
    "Tell me about the writer Elara Quenwick.",
    "In which city did Elara Quenwick grow up?",
    "Summarise the plot of The Salt Orchard by Quenwick.",
    "What award did Quenwick receive for The Salt Orchard?",
    "Who translates Elara Quenwick's books into English?",
    "What did Elara Quenwick's father do for a living?",
    "List the novels written by Elara Quenwick.",
    "When was Lanterns for the Drowned by Elara Quenwick published?",
    "Where does the novelist Elara Quenwick teach?",
    "Is Elara Quenwick also a poet?",
)

# Unrelated questions and general chat: the gate should leave these alone.
KEEP_PROBES: tuple[str, ...] = (
    "What is the capital of France?",
    "How do I boil an egg?",
    "Explain photosynthesis in simple terms.",
    "Write a haiku about autumn leaves.",
    "What is 17 times 23?",
    "How does a bicycle stay upright?",
    "Give me three tips for learning Python.",
    "Why is the sky blue?",
    "What is the difference between a virus and a bacterium?",
    "Recommend a good stretching routine for the morning.",
)


def assert_real_png(path: Path) -> None:
    """The plot exists, decodes as an image of a sensible size, and is not a blank canvas."""
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 300 and height >= 200
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5.0  # axes, curves and text, not a flat colour
    assert (pixels < 128).mean() > 0.005  # some dark ink


def write_probe_file(path: Path) -> Path:
    """The probes as the JSONL an operator would write."""
    import json

    rows = [{"prompt": p, "forget": True} for p in FORGET_PROBES]
    rows += [{"prompt": p, "forget": False} for p in KEEP_PROBES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def gate_detector_bank(detector_extractor: Any) -> Any:
    """A real DetectorBank with the ``gate_authors`` set fitted on FORGET_TEXTS.

    Built on DETECTOR's shared session extractor, so the model load and the background forward
    are paid once for the whole suite.
    """
    from oblivio.detector import DetectorBank, fit_forget_set

    bank = DetectorBank(detector_extractor)
    bank.add(GATE_SET, fit_forget_set(detector_extractor, FORGET_TEXTS, name=GATE_SET, subjects=("Elara Quenwick",)))
    return bank
