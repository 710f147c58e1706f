"""Fitting one forget set's scorer, and saving / loading it.

``fit_forget_set`` turns a forget set's texts into a ``ForgetSetScorer``:

1. Features of the texts, of their entity-swapped copies (same sentence, other names: the
   hardest negatives there are) and of the shipped background (``extractor.background()``).
   The background is split once, deterministically, into a *bank* part (the contrast tokens)
   and a *calibration* part (held-out negatives).
2. Cross-fitting (``n_folds``): for each fold, banks are built from the other folds and the
   fold's texts are scored as positives, its swapped copies and a share of the calibration
   background as negatives. This gives honest out-of-sample per-layer scores with no data
   besides the forget set and the shipped text (O3's held-out split, used fully).
3. A logistic regression on the standardised per-layer scores (``scoring.FEATURES_PER_LAYER``
   for every layer) weighs layers and terms and maps them to a membership probability in
   [0, 1] (class-balanced, so 0.5 is the natural threshold). Then the final banks are built
   from all texts.

Scoring mutates nothing (``score_features`` is a pure function of the stored state), so one
scorer can serve many threads. See ``privacy.py`` for what is stored.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from oblivio.detector.background import swap_entities
from oblivio.detector.features import FeatureExtractor, PromptFeatures, validate_texts
from oblivio.detector.privacy import dedupe_rows, dequantize_rows, quantize_rows, shuffle_rows
from oblivio.detector.scoring import FEATURES_PER_LAYER, SetBanks, StackedBanks

__all__ = ["ForgetSetScorer", "fit_forget_set", "IncompatibleScorerError", "FORMAT_VERSION", "generic_bank"]

FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# Entity-level forgetting: a subject alone is a forget text, and so are the plainest questions
# about it, so "forget this person" also catches prompts that only name them.
SUBJECT_TEMPLATES = ("{s}", "Who is {s}?", "Tell me about {s}.", "What do you know about {s}?")


class IncompatibleScorerError(ValueError):
    """A saved scorer cannot be used here (format version or feature space differ)."""


def _bank_rows(n: int) -> tuple[list[int], list[int]]:
    """Fixed split of the shipped background: 3/4 contrast bank, 1/4 held-out negatives."""
    calib = [i for i in range(n) if i % 4 == 0]
    bank = [i for i in range(n) if i % 4 != 0]
    return bank, calib


def generic_bank(extractor: FeatureExtractor) -> PromptFeatures:
    """The background bank part every scorer contrasts against (recomputable, public text)."""
    bg = extractor.background()
    bank, _ = _bank_rows(bg.n_prompts)
    return bg.subset(bank)


@dataclass(frozen=True)
class Aggregator:
    """Standardise the raw per-layer scores, then a logistic model: membership probability."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) / self.scale) @ self.coef + self.intercept


@dataclass(frozen=True)
class ForgetSetScorer:
    """A fitted forget-set detector (see module doc). Immutable; build with ``fit_forget_set``."""

    name: str
    fingerprint: dict[str, object]
    banks: SetBanks
    aggregator: Aggregator
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.fingerprint["layers"])  # type: ignore[arg-type]

    def check_compatible(self, extractor: FeatureExtractor) -> None:
        """Refuse to score in a feature space other than the one this scorer was fitted in."""
        theirs = extractor.fingerprint()
        if theirs != self.fingerprint:
            diff = {k: (self.fingerprint.get(k), theirs.get(k)) for k in theirs if self.fingerprint.get(k) != theirs.get(k)}
            raise IncompatibleScorerError(
                f"forget set '{self.name}' was fitted for a different detector (scorer vs extractor: {diff}); "
                "refit it with the current model and detector settings"
            )

    def score_features(self, features: PromptFeatures, generic: PromptFeatures) -> np.ndarray:
        """Membership probabilities in [0, 1] for already-extracted prompt features."""
        raw = StackedBanks([self.banks], generic.tokens, self.layers).raw(features)[:, 0, :]
        return _sigmoid(self.aggregator.logit(raw))

    def score(self, extractor: FeatureExtractor, prompts: Sequence[str]) -> np.ndarray:
        """Convenience: extract and score (the bank does this for many sets at once)."""
        self.check_compatible(extractor)
        return self.score_features(extractor.extract(prompts), generic_bank(extractor))

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write ``meta.json`` + ``state.npz`` (token banks as shuffled int8, no text)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "agg_mean": self.aggregator.mean,
            "agg_scale": self.aggregator.scale,
            "agg_coef": self.aggregator.coef,
        }
        for l in self.layers:
            arrays[f"forget_{l}"] = quantize_rows(self.banks.forget[l])
            arrays[f"swap_{l}"] = quantize_rows(self.banks.swap[l])
            arrays[f"mu_forget_{l}"] = self.banks.mu_forget[l]
            arrays[f"mu_background_{l}"] = self.banks.mu_background[l]
            arrays[f"precision_{l}"] = self.banks.precision[l]
        tmp = directory / "state.npz.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        tmp.replace(directory / "state.npz")
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "oblivio.detector.ForgetSetScorer",
            "name": self.name,
            "fingerprint": self.fingerprint,
            "features_per_layer": list(FEATURES_PER_LAYER),
            "agg_intercept": self.aggregator.intercept,
            "diagnostics": self.diagnostics,
        }
        (directory / "meta.json.tmp").write_text(json.dumps(meta, indent=2))
        (directory / "meta.json.tmp").replace(directory / "meta.json")

    @classmethod
    def load(cls, directory: Path) -> "ForgetSetScorer":
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file() or not (directory / "state.npz").is_file():
            raise FileNotFoundError(f"no saved forget-set scorer in {directory} (need meta.json and state.npz)")
        meta = json.loads(meta_path.read_text())
        version = meta.get("format_version")
        if version != FORMAT_VERSION or meta.get("kind") != "oblivio.detector.ForgetSetScorer":
            raise IncompatibleScorerError(
                f"scorer in {directory} has format version {version!r}; this oblivio reads version "
                f"{FORMAT_VERSION}: refit the forget set"
            )
        if meta.get("features_per_layer") != list(FEATURES_PER_LAYER):
            raise IncompatibleScorerError(f"scorer in {directory} uses other per-layer features: refit it")
        layers = [int(l) for l in meta["fingerprint"]["layers"]]
        with np.load(directory / "state.npz") as z:
            missing = [f"{k}_{l}" for l in layers for k in ("forget", "swap", "precision") if f"{k}_{l}" not in z.files]
            if missing:
                raise IncompatibleScorerError(f"scorer in {directory}: state.npz lacks {missing[:3]} named by meta.json (corrupt?)")
            banks = SetBanks(
                forget={l: dequantize_rows(z[f"forget_{l}"]) for l in layers},
                swap={l: dequantize_rows(z[f"swap_{l}"]) for l in layers},
                mu_forget={l: z[f"mu_forget_{l}"] for l in layers},
                mu_background={l: z[f"mu_background_{l}"] for l in layers},
                precision={l: z[f"precision_{l}"] for l in layers},
            )
            agg = Aggregator(z["agg_mean"], z["agg_scale"], z["agg_coef"], float(meta["agg_intercept"]))
        return cls(meta["name"], meta["fingerprint"], banks, agg, dict(meta.get("diagnostics", {})))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _protect(tokens: np.ndarray, rng: np.random.Generator, dedupe: float | None) -> np.ndarray:
    """What the stored bank holds: shuffled, near-duplicate-free, int8-quantised rows
    (round-tripped now so that fit-time and post-load scores are identical)."""
    if len(tokens) == 0:
        return np.zeros((1, tokens.shape[1]), dtype=np.float32)  # see SetBanks: never empty
    rows = shuffle_rows(tokens, rng)
    if dedupe is not None:
        rows = dedupe_rows(rows, dedupe)
    return dequantize_rows(quantize_rows(rows))


def _build_banks(
    forget: PromptFeatures,
    swap: PromptFeatures | None,
    generic: PromptFeatures,
    layers: Sequence[int],
    seed: int,
    dedupe: float | None,
) -> SetBanks:
    rng = np.random.default_rng(seed)
    mu_f, mu_b, prec = {}, {}, {}
    for l in layers:
        mu_f[l] = forget.pooled[l].mean(0).astype(np.float64)
        mu_b[l] = generic.pooled[l].mean(0).astype(np.float64)
        centred = np.concatenate([forget.pooled[l] - mu_f[l], generic.pooled[l] - mu_b[l]])
        prec[l] = LedoitWolf(assume_centered=True).fit(centred).precision_.astype(np.float64)
    dim = forget.tokens[layers[0]].shape[1]
    return SetBanks(
        forget={l: _protect(forget.tokens[l], rng, dedupe) for l in layers},
        swap={l: _protect(swap.tokens[l] if swap is not None else np.zeros((0, dim), np.float32), rng, dedupe) for l in layers},
        mu_forget=mu_f,
        mu_background=mu_b,
        precision=prec,
    )


def _validate_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ValueError(f"name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'")
    return name


def fit_forget_set(
    extractor: FeatureExtractor,
    texts: Sequence[str],
    *,
    name: str,
    subjects: Sequence[str] = (),
    n_folds: int = 4,
    seed: int = 0,
    regularization: float = 0.5,
    dedupe: float | None = 0.97,
) -> ForgetSetScorer:
    """Fit a scorer for one forget set (see module doc). Raises ValueError/TypeError on bad input.

    ``dedupe``: token rows with a cosine >= this to an already kept row are dropped from the
    banks (None keeps all); this bounds bank size and scoring cost (see ``privacy.dedupe_rows``).
    """
    name = _validate_name(name)
    items = validate_texts(texts, what="texts")
    subj = validate_texts(subjects, what="subjects")
    forget_texts = items + [t.format(s=s) for s in subj for t in SUBJECT_TEMPLATES]
    if len(forget_texts) < 2:
        raise ValueError(
            f"forget set '{name}' needs at least 2 texts (or subjects) to calibrate on held-out "
            f"texts, got {len(forget_texts)}"
        )
    py_rng = random.Random(seed)
    swapped: list[str] = []
    swap_src: list[int] = []
    for i, text in enumerate(forget_texts):
        # two near misses per text: every name swapped, and only the surnames swapped
        for last_only in (False, True):
            other = swap_entities(text, subj, py_rng, last_only=last_only)
            if other != text and other not in swapped:
                swapped.append(other)
                swap_src.append(i)
    n = len(forget_texts)
    feats = extractor.extract(forget_texts + swapped)
    ff = feats.subset(range(n))
    fs = feats.subset(range(n, n + len(swapped))) if swapped else None
    bg = extractor.background()
    bank_rows, calib_rows = _bank_rows(bg.n_prompts)
    generic = bg.subset(bank_rows)
    layers = extractor.layers

    k = max(2, min(n_folds, n))
    perm = np.random.default_rng(seed).permutation(n)
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[perm] = np.arange(n) % k
    swap_fold = fold_of[swap_src] if swapped else np.zeros(0, dtype=np.int64)
    rows_x: list[np.ndarray] = []
    rows_y: list[np.ndarray] = []
    for fold in range(k):
        train = np.flatnonzero(fold_of != fold)
        test = np.flatnonzero(fold_of == fold)
        s_train = np.flatnonzero(swap_fold != fold)
        s_test = np.flatnonzero(swap_fold == fold)
        banks = _build_banks(
            ff.subset(train), fs.subset(s_train) if fs is not None and len(s_train) else None, generic, layers, seed + fold, dedupe
        )
        stacked = StackedBanks([banks], generic.tokens, layers)
        calib = [r for j, r in enumerate(calib_rows) if j % k == fold]
        parts = [(ff.subset(test), 1), (bg.subset(calib), 0)]
        if fs is not None and len(s_test):
            parts.append((fs.subset(s_test), 0))
        for part, label in parts:
            raw = stacked.raw(part)[:, 0, :]
            rows_x.append(raw)
            rows_y.append(np.full(len(raw), label))
    x = np.concatenate(rows_x)
    y = np.concatenate(rows_y)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 1e-9, scaler.scale_, 1.0)
    lr = LogisticRegression(C=regularization, class_weight="balanced", max_iter=2000)
    lr.fit((x - scaler.mean_) / scale, y)
    agg = Aggregator(scaler.mean_.astype(np.float64), scale.astype(np.float64), lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))
    cross_p = _sigmoid(agg.logit(x))
    diagnostics = {
        "n_texts": float(n),
        "n_swapped": float(len(swapped)),
        "crossfit_auroc": float(roc_auc_score(y, cross_p)) if 0 < y.sum() < len(y) else float("nan"),
        "crossfit_tpr_at_0.5": float((cross_p[y == 1] >= 0.5).mean()),
        "crossfit_fpr_at_0.5": float((cross_p[y == 0] >= 0.5).mean()),
    }
    final = _build_banks(ff, fs, generic, layers, seed + k, dedupe)
    diagnostics["bank_rows_forget"] = float(sum(final.forget[l].shape[0] for l in layers) / len(layers))
    diagnostics["bank_rows_swap"] = float(sum(final.swap[l].shape[0] for l in layers) / len(layers))
    diagnostics["tokens_forget"] = float(ff.tokens[layers[0]].shape[0])
    return ForgetSetScorer(name, extractor.fingerprint(), final, agg, diagnostics)
