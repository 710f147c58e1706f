"""What a fitted forget set keeps, and why it does not give the forgotten text back.

A scorer stores, per layer:

* token banks: the forget texts' token vectors after per-dimension standardisation, a random
  orthonormal projection from the model's width (576) down to ``projection_dim`` (128 by
  default), L2 normalisation and int8 quantisation, with rows **shuffled** and **no token ids,
  positions or text boundaries**. The projection discards 448 of 576 dimensions: the original
  hidden state cannot be reconstructed, only its shadow in a random 128-d subspace.
* the same for the entity-swapped copies of the forget texts (other, real names);
* the fitted weights of the layer aggregator and its feature scaling.

What it does NOT keep: texts, subjects' names, token ids, order, the number of tokens per text.

Honest limits: (1) a detector exists to answer "is this prompt about the forget set?", so
anyone who can query it (or holds its state and the base model) can test a *guessed* candidate
text; no stored format can prevent that. (2) A stored token vector still sits near the vector of
the token it came from; ``inversion_recovery_rate`` measures how often an attacker who knows the
base model AND the projection recovers the token by nearest neighbour search, with and without
the protection (``eval/bench_detector.py`` reports the figures).
"""

from __future__ import annotations

import numpy as np
import torch


def _sims(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` via torch (honours torch threads; numpy's OpenBLAS oversubscribes busy CPUs)."""
    return torch.matmul(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)).T).numpy()

__all__ = ["quantize_rows", "dequantize_rows", "shuffle_rows", "dedupe_rows", "inversion_hits", "inversion_recovery_rate"]


def quantize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm float rows -> int8 (scale 127). Cosines change by < 1%."""
    return np.clip(np.rint(x * 127.0), -127, 127).astype(np.int8)


def dequantize_rows(q: np.ndarray) -> np.ndarray:
    x = q.astype(np.float32) / 127.0
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def shuffle_rows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drop the token order (and with it the text boundaries)."""
    return x[rng.permutation(len(x))]


def dedupe_rows(x: np.ndarray, threshold: float, block: int = 256) -> np.ndarray:
    """Greedy leader selection: keep a unit row only if its cosine to every kept row is below
    ``threshold``. Repeated template tokens collapse to one row, which bounds bank size (and
    so scoring cost) and removes the repetition structure of the texts from the stored state;
    a rare token (a name, a fact) has no near duplicate and is always kept."""
    kept: list[np.ndarray] = []
    kept_mat = np.zeros((0, x.shape[1]), dtype=x.dtype)
    for start in range(0, len(x), block):
        cand = x[start : start + block]
        if len(kept_mat):
            cand = cand[_sims(cand, kept_mat).max(axis=1) < threshold]
        if not len(cand):
            continue
        sims = _sims(cand, cand)
        take: list[int] = []
        for i in range(len(cand)):
            if not take or sims[i, take].max() < threshold:
                take.append(i)
        kept.append(cand[take])
        kept_mat = np.concatenate([kept_mat, cand[take]])
    return kept_mat


def inversion_hits(stored: np.ndarray, true_ids: np.ndarray, candidates: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """Per stored vector: is its nearest candidate (cosine) the token it came from.

    ``candidates`` are vectors the attacker can compute for each candidate token in the same
    space as ``stored`` (e.g. the model's input embeddings, or each token's hidden state run on
    its own); the attacker is given the true id of nothing.
    """
    a = stored / np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-6)
    c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-6)
    hits = np.zeros(len(a), dtype=bool)
    for start in range(0, len(a), 2048):
        nearest = np.argmax(_sims(a[start : start + 2048].astype(np.float32), c.astype(np.float32)), axis=1)
        hits[start : start + 2048] = candidate_ids[nearest] == true_ids[start : start + 2048]
    return hits


def inversion_recovery_rate(stored: np.ndarray, true_ids: np.ndarray, candidates: np.ndarray, candidate_ids: np.ndarray) -> float:
    """Share of stored vectors whose nearest candidate has the true token id (``inversion_hits``)."""
    return float(inversion_hits(stored, true_ids, candidates, candidate_ids).mean()) if len(stored) else 0.0
