"""All registered forget sets, scored together from one feature forward.

Why a bank: the gateway scores every chat prompt against every forget set. Running a detector
per set (as O3's code does) makes cost grow linearly with the number of sets. Here the
extractor runs once per prompt batch, and the per-set work is a slice of one matrix product per
layer over all sets' stacked token banks, plus a tiny per-set logistic model.

Thread safety: the stacked state is immutable and replaced as a whole on ``add``/``remove``
(copy-on-write under a lock); ``score`` takes one reference at its start, so a registration
running concurrently never exposes a half-built bank.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oblivio.detector.attributes import pair_floors, prompt_digests
from oblivio.detector.features import FeatureExtractor, PromptFeatures, validate_texts
from oblivio.detector.scorer import ForgetSetScorer, _sigmoid, generic_bank
from oblivio.detector.scoring import StackedBanks
from oblivio.detector.spelling import scoring_variants

__all__ = ["DetectorBank"]


@dataclass(frozen=True)
class _Snapshot:
    names: tuple[str, ...]
    stacked: StackedBanks
    agg_mean: np.ndarray  # (S, F)
    agg_scale: np.ndarray
    agg_coef: np.ndarray
    agg_intercept: np.ndarray  # (S,)
    pair_digests: dict[str, frozenset[str]]  # sets that state (place, year) pairs


class DetectorBank:
    """Registered forget-set scorers, scored together (see module doc)."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self._generic: PromptFeatures = generic_bank(extractor)
        self._lock = threading.Lock()
        self._scorers: dict[str, ForgetSetScorer] = {}
        self._snapshot = self._build({})

    def _build(self, scorers: dict[str, ForgetSetScorer]) -> _Snapshot:
        names = tuple(scorers)
        items = [scorers[n] for n in names]
        stacked = StackedBanks([s.banks for s in items], self._generic.tokens, self.extractor.layers)
        if items:
            mean = np.stack([s.aggregator.mean for s in items])
            scale = np.stack([s.aggregator.scale for s in items])
            coef = np.stack([s.aggregator.coef for s in items])
            intercept = np.array([s.aggregator.intercept for s in items])
        else:
            mean = scale = coef = np.zeros((0, 0))
            intercept = np.zeros(0)
        pairs = {n: scorers[n].pair_digests for n in names if scorers[n].pair_digests}
        return _Snapshot(names, stacked, mean, scale, coef, intercept, pairs)

    def add(self, name: str, scorer: ForgetSetScorer) -> None:
        """Register (or replace) a set. Raises IncompatibleScorerError for another feature space."""
        if not isinstance(scorer, ForgetSetScorer):
            raise TypeError(f"scorer must be a ForgetSetScorer, got {type(scorer).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        scorer.check_compatible(self.extractor)
        with self._lock:
            scorers = {**self._scorers, name: scorer}
            snapshot = self._build(scorers)
            self._scorers, self._snapshot = scorers, snapshot

    def remove(self, name: str) -> None:
        """Unregister a set; KeyError if unknown."""
        with self._lock:
            if name not in self._scorers:
                raise KeyError(f"no forget set named {name!r} in the detector bank")
            scorers = {k: v for k, v in self._scorers.items() if k != name}
            snapshot = self._build(scorers)
            self._scorers, self._snapshot = scorers, snapshot

    def names(self) -> list[str]:
        return list(self._snapshot.names)

    def __len__(self) -> int:
        return len(self._snapshot.names)

    def score(self, prompts: Sequence[str]) -> list[dict[str, float]]:
        """For each prompt, every registered set's membership probability in [0, 1].

        Each prompt is scored as written and with spelling games undone (``spelling``); a set
        keeps the higher score, so normalising can only make the gate stricter."""
        snap = self._snapshot  # one consistent view for the whole call
        variants = [scoring_variants(p, self.extractor.is_common_word) for p in validate_texts(prompts, what="prompts")]
        flat = [v for forms in variants for v in forms]
        features = self.extractor.extract(flat)
        if not snap.names:
            return [{} for _ in variants]
        scores = self.score_features(features, snap)
        out: list[dict[str, float]] = []
        start = 0
        for forms in variants:
            group = scores[start : start + len(forms)]
            start += len(forms)
            out.append({name: max(s[name] for s in group) for name in snap.names})
        self._raise_for_pairs(variants, out, snap)
        return out

    def _raise_for_pairs(self, variants: Sequence[Sequence[str]], out: list[dict[str, float]], snap: _Snapshot) -> None:
        """A prompt stating a forget text's place and year together scores at least
        ``PAIR_MATCH_PROBABILITY`` for that set (see ``attributes``), whatever its banks say."""
        if not snap.pair_digests:
            return
        mentioned = [prompt_digests(forms, self.extractor.secret(), self.extractor.is_common_word) for forms in variants]
        for name, digests in snap.pair_digests.items():
            for scores, floor in zip(out, pair_floors(mentioned, digests)):
                scores[name] = max(scores[name], floor)

    def score_features(self, features: PromptFeatures, snap: _Snapshot | None = None) -> list[dict[str, float]]:
        snap = snap or self._snapshot
        raw = snap.stacked.raw(features)  # (P, S, F)
        z = np.einsum("psf,sf->ps", (raw - snap.agg_mean[None]) / snap.agg_scale[None], snap.agg_coef) + snap.agg_intercept[None]
        probs = _sigmoid(z)
        return [{name: float(probs[p, s]) for s, name in enumerate(snap.names)} for p in range(probs.shape[0])]
