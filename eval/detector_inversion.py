"""The inversion attack on what a fitted forget set actually stores.

The attacker holds a scorer's saved state, the base model and the detector's projection (the
worst case: a stolen disk plus the code). Per layer, for every stored forget-bank row, they
search candidate tokens: each candidate's hidden state on its own, mapped into the detector's
space, nearest by cosine. A row counts as recovered when the nearest candidate is the token the
row came from. The candidates always include every true token (the attacker's best case) plus
random vocabulary.

A second attacker has everything but the projection seed (``detector.projection_seed``, a
per-deployment secret that config errors never print) and guesses another one.

The true token of a stored row is known only to this benchmark: a stored row is a shuffled,
int8-quantised copy of one token row of the registered texts, so its nearest row among those
(cosine > 0.99) names it. Nothing here re-implements the fit; it attacks the saved state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from oblivio.detector.privacy import inversion_hits

__all__ = ["InversionRow", "context_free_candidates", "inversion_attack", "render_inversion"]


@dataclass(frozen=True)
class InversionRow:
    layer: int
    stored_rows: int
    recovered: float  # share of stored forget rows whose token the attacker finds
    name_tokens_recovered: float  # the same, among stored rows that came from a subject's name
    recovered_without_seed: float  # an attacker who has everything but the projection seed
    candidates: int
    examples: tuple[str, ...]  # a few recovered tokens, as text


def _true_ids(stored: np.ndarray, source: np.ndarray, source_ids: np.ndarray) -> np.ndarray:
    from oblivio.detector.scoring import sims

    return source_ids[np.argmax(sims(stored.astype(np.float32), source), axis=1)]


def inversion_attack(extractor: Any, scorer: Any, texts: tuple[str, ...], subjects: tuple[str, ...], n_random: int = 2000, seed: int = 0) -> list[InversionRow]:
    """Attack ``scorer``'s stored forget banks (fitted on ``texts``); see module doc."""
    from oblivio.detector.scorer import SUBJECT_TEMPLATES

    tokenizer = extractor.tokenizer
    registered = list(texts) + [t.format(s=s) for s in subjects for t in SUBJECT_TEMPLATES]
    source = extractor.extract(registered, with_token_ids=True)
    name_ids = {i for s in subjects for i in tokenizer(" " + s, add_special_tokens=False).input_ids}
    name_ids |= {i for s in subjects for i in tokenizer(s, add_special_tokens=False).input_ids}
    cand_ids, cand_states = context_free_candidates(extractor, source.token_ids, n_random, np.random.default_rng(seed))
    guessed = extractor.with_projection(extractor.projection_dim, extractor.projection_seed + 1)
    rows = []
    for layer in extractor.layers:
        stored = scorer.banks.forget[layer]
        ids = _true_ids(stored, source.tokens[layer], source.token_ids)
        hits = inversion_hits(stored, ids, extractor.to_space(layer, cand_states[layer]), cand_ids)
        is_name = np.isin(ids, list(name_ids))
        examples = tuple(dict.fromkeys(tokenizer.decode([int(i)]).strip() for i in ids[hits][:40]))[:8]
        blind = inversion_hits(stored, ids, guessed.to_space(layer, cand_states[layer]), cand_ids)
        rows.append(
            InversionRow(
                layer, len(stored), float(hits.mean()), float(hits[is_name].mean()) if is_name.any() else float("nan"),
                float(blind.mean()), len(cand_ids), examples,
            )
        )
    return rows


def context_free_candidates(extractor: Any, true_ids: np.ndarray, n_random: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The attacker's candidate tokens (every true id + ``n_random`` vocabulary ids, keeping those
    that decode to text tokenizing back to themselves) and, per layer, each one's raw hidden
    state when run alone in a user turn."""
    tokenizer = extractor.tokenizer
    vocab_size = int(extractor.model.embed_tokens.weight.shape[0])
    cand_ids = np.unique(np.r_[np.unique(true_ids), rng.choice(vocab_size, n_random, replace=False)])
    cand_texts = [tokenizer.decode([int(i)]) for i in cand_ids]
    usable = [i for i, t in enumerate(cand_texts) if t.strip() and tokenizer(t, add_special_tokens=False).input_ids[:1] == [int(cand_ids[i])]]
    raw, offsets, _ = extractor.raw_hidden([cand_texts[i] for i in usable])
    return cand_ids[usable], {l: states[offsets[:-1]] for l, states in raw.items()}


def render_inversion(label: str, rows: list[InversionRow]) -> str:
    lines = [
        f"Attack on the stored forget bank of *{label}*: an attacker with the saved state, the base model",
        "and the projection searches candidate tokens (every true token + random vocabulary, each run on",
        "its own) for the nearest stored row (`eval/detector_inversion.py`).",
        "",
        "| layer | stored rows | recovered | recovered among rows from subjects' names | recovered without the projection seed | candidates | recovered, e.g. |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.layer} | {r.stored_rows} | {100 * r.recovered:.1f}% | {100 * r.name_tokens_recovered:.1f}% | "
            f"{100 * r.recovered_without_seed:.1f}% | {r.candidates} | "
            + ", ".join(f"`{e}`" for e in r.examples) + " |"
        )
    return "\n".join(lines)
