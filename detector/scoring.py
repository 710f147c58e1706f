"""The detector's per-layer scores, computed for many forget sets at once.

One code path serves a single scorer, the cross-fitting inside ``fit_forget_set`` and the
``DetectorBank``: every set's token banks are stacked into one matrix per layer, so a batch of
prompts costs one matrix product per layer for all sets together (plus one per-set reduction),
instead of one pass per set.

Per layer ``l`` and set ``s`` the raw score vector of a prompt holds:

* ``contrast_max``: max over the prompt's tokens of
  ``max cos(token, forget tokens) - max cos(token, background tokens)``, where background =
  shipped generic text + the set's entity-swapped texts. Token level, so "capital of France"
  and "capital of Germany" differ; contrastive, so template words shared with any question
  about anybody cancel out and only what is specific to the forget set (names, facts) counts.
* ``contrast_top3``: mean of the three largest token contrasts (robust to one lucky token).
* ``contrast_pair``: max over adjacent token pairs of the smaller of the two contrasts: a name
  split into sub-words ("Mar" "wick") must match in sequence, so another person who shares one
  sub-word ("Mar" "ley") or only the first name does not score as a match.
All terms are oriented so that larger = more like the forget set (O3's code mixed signs).

What is deliberately *not* here: O3's plain 1-NN cosine and its global Mahalanobis terms on
pooled states. They measure how much a prompt looks like the forget set's *kind* of text, and
on TOFU they made the detector fire on questions about other authors and on world-fact
questions ("What is the capital of Australia?" scored 0.70 against two fictitious authors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from oblivio.detector.features import PromptFeatures


def sims(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` through torch, which honours ``torch.set_num_threads`` (the server's
    ``detector.threads``). numpy's bundled OpenBLAS starts its own thread pool per core and, on a
    busy machine, oversubscribes it: measured 20x slower than one thread for these shapes."""
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b).T).numpy()

FEATURES_PER_LAYER = ("contrast_max", "contrast_top3", "contrast_pair")


@dataclass(frozen=True)
class SetBanks:
    """What one forget set contributes to scoring, per layer (float32, unit-norm token rows).

    ``swap`` has at least one row: a set without entity-swapped texts gets one zero row, which
    has cosine 0 to everything and so never wins the background maximum."""

    forget: dict[int, np.ndarray]
    swap: dict[int, np.ndarray]


class StackedBanks:
    """All sets' banks stacked per layer; immutable once built (safe to share across threads)."""

    def __init__(self, sets: Sequence[SetBanks], generic: dict[int, np.ndarray], layers: Sequence[int]) -> None:
        self.layers = tuple(layers)
        self.n_sets = len(sets)
        self.generic = {l: np.ascontiguousarray(generic[l], dtype=np.float32) for l in self.layers}
        self._forget: dict[int, np.ndarray] = {}
        self._swap: dict[int, np.ndarray] = {}
        self._f_start: dict[int, np.ndarray] = {}
        self._s_start: dict[int, np.ndarray] = {}
        for l in self.layers:
            self._forget[l] = np.ascontiguousarray(np.concatenate([s.forget[l] for s in sets]), dtype=np.float32) if sets else np.zeros((0, 1), np.float32)
            self._swap[l] = np.ascontiguousarray(np.concatenate([s.swap[l] for s in sets]), dtype=np.float32) if sets else np.zeros((0, 1), np.float32)
            self._f_start[l] = _starts([s.forget[l].shape[0] for s in sets])
            self._s_start[l] = _starts([s.swap[l].shape[0] for s in sets])

    def raw(self, q: PromptFeatures) -> np.ndarray:
        """Raw per-layer scores, shape (n_prompts, n_sets, n_layers * len(FEATURES_PER_LAYER))."""
        n_p = q.n_prompts
        nf = len(FEATURES_PER_LAYER)
        out = np.zeros((n_p, self.n_sets, len(self.layers) * nf), dtype=np.float64)
        if self.n_sets == 0:
            return out
        row_starts = q.offsets[:-1]
        for li, l in enumerate(self.layers):
            tok = q.tokens[l]
            fmax = np.maximum.reduceat(sims(tok, self._forget[l]), self._f_start[l], axis=1)  # (T, S)
            gmax = sims(tok, self.generic[l]).max(axis=1) if self.generic[l].shape[0] else np.full(len(tok), -1.0)
            smax = np.maximum.reduceat(sims(tok, self._swap[l]), self._s_start[l], axis=1)
            contrast = fmax - np.maximum(smax, gmax[:, None])  # (T, S)
            base = li * nf
            out[:, :, base + 0] = np.maximum.reduceat(contrast, row_starts, axis=0)
            out[:, :, base + 1] = _topk_mean_per_prompt(contrast, q.offsets, 3)
            out[:, :, base + 2] = _pair_max_per_prompt(contrast, q.offsets)
        return out


def _starts(sizes: Sequence[int]) -> np.ndarray:
    """Segment starts for ``reduceat``; every segment must be non-empty (reduceat would
    otherwise return a neighbour's value), which ``SetBanks`` guarantees."""
    if any(n <= 0 for n in sizes):
        raise ValueError("every set needs at least one bank row")
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _topk_mean_per_prompt(values: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(offsets) - 1, values.shape[1]))
    for i in range(len(offsets) - 1):
        block = values[offsets[i] : offsets[i + 1]]
        kk = min(k, block.shape[0])
        out[i] = np.sort(block, axis=0)[-kk:].mean(axis=0)
    return out


def _pair_max_per_prompt(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per prompt: max over adjacent token pairs of min(value_t, value_t+1) (one token: itself).
    Pairs never span two prompts."""
    pair = np.minimum(values[:-1], values[1:]) if len(values) > 1 else values[:0]
    out = np.empty((len(offsets) - 1, values.shape[1]))
    for i in range(len(offsets) - 1):
        a, b = offsets[i], offsets[i + 1]
        out[i] = values[a] if b - a == 1 else pair[a : b - 1].max(axis=0)
    return out
