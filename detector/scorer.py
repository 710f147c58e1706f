"""Fitting one forget set's scorer, and saving / loading it.

``fit_forget_set`` turns a forget set's texts into a ``ForgetSetScorer``:

1. Texts are grouped (a question and "question + answer" are one group: the longer feeds the
   banks, the shorter is what a user sends). Near misses (``swaps``): the bank's texts about
   other entities from the *bank* half of the real-name vocabulary (stored, contrasted
   against), the questions about other entities from the *calibration* half (held out).
2. Cross-fitting (``n_folds``) over groups: banks from the other folds, the fold's questions
   as positives, their held-out near misses and the held-out share of the shipped generic
   prompts as negatives. Out-of-sample scores with no data besides the forget set and shipped
   text (O3's held-out split, used fully); the near misses name people no bank has seen.
3. A logistic regression on the standardised per-layer scores (``scoring.FEATURES_PER_LAYER``
   for every layer), then ``decision_point`` places probability 0.5 between the held-out near
   misses and the held-out questions. Then the final banks are built from all groups.

Banks keep only the token rows that can tell this entity from its near misses
(``bank_rows``): template tokens that a near miss repeats are dropped, and so are near-miss
tokens that sit far from every kept forget token.

Scoring mutates nothing (``score_features`` is a pure function of the stored state), so one
scorer can serve many threads. See ``privacy.py`` for what is stored.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from oblivio.adapters.forget_set import validate_name
from oblivio.detector.features import FeatureExtractor, PromptFeatures, projection_id, validate_texts
from oblivio.detector.attributes import pair_digests
from oblivio.detector.bank_rows import build_banks, template_coverage
from oblivio.detector.privacy import dequantize_rows, quantize_rows
from oblivio.detector.scoring import FEATURES_PER_LAYER, SetBanks, StackedBanks
from oblivio.detector.swaps import EntitySwapper, SwapKind, find_entities
from oblivio.detector.vocabulary import entity_vocabulary

__all__ = ["ForgetSetScorer", "fit_forget_set", "IncompatibleScorerError", "FORMAT_VERSION", "generic_bank"]

FORMAT_VERSION = 2
# Entity-level forgetting: a subject alone is a forget text, and so are the plainest questions
# about it, so "forget this person" also catches prompts that only name them.
SUBJECT_TEMPLATES = ("{s}", "Who is {s}?", "Tell me about {s}.", "What do you know about {s}?")


# Stored near misses (see ``swaps.SwapKind``) and the held-out ones calibration scores.
# Another entity with the same attributes is made from the answered text (the attributes are in
# the answer); the name-part near misses only need the question, where the name is: a third of
# the tokens, and the fit's forward is dominated by the near misses it runs.
BANK_SWAPS = (SwapKind.NAMES,)
BANK_QUESTION_SWAPS = (SwapKind.SURNAMES, SwapKind.NAME_TAILS)
CALIBRATION_SWAPS = (SwapKind.NAMES, SwapKind.ALL)


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
    # Keyed digests of the (place, year) pairs the forget texts state (``attributes``).
    pair_digests: frozenset[str] = frozenset()

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
        tmp = directory / "state.npz.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **kwds against allow_pickle
        tmp.replace(directory / "state.npz")
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "oblivio.detector.ForgetSetScorer",
            "name": self.name,
            "fingerprint": self.fingerprint,
            "features_per_layer": list(FEATURES_PER_LAYER),
            "agg_intercept": self.aggregator.intercept,
            "diagnostics": self.diagnostics,
            "pair_digests": sorted(self.pair_digests),
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
        fingerprint = dict(meta["fingerprint"])
        if "projection_seed" in fingerprint:  # stored before the seed was kept as a digest
            fingerprint["projection"] = projection_id(fingerprint.pop("projection_seed"))
        layers = [int(l) for l in fingerprint["layers"]]
        with np.load(directory / "state.npz") as z:
            missing = [f"{k}_{l}" for l in layers for k in ("forget", "swap") if f"{k}_{l}" not in z.files]
            if missing:
                raise IncompatibleScorerError(f"scorer in {directory}: state.npz lacks {missing[:3]} named by meta.json (corrupt?)")
            banks = SetBanks(
                forget={l: dequantize_rows(z[f"forget_{l}"]) for l in layers},
                swap={l: dequantize_rows(z[f"swap_{l}"]) for l in layers},
            )
            agg = Aggregator(z["agg_mean"], z["agg_scale"], z["agg_coef"], float(meta["agg_intercept"]))
        return cls(meta["name"], fingerprint, banks, agg, dict(meta.get("diagnostics", {})),
                   frozenset(meta.get("pair_digests", ())))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


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
    target_false_fire: float = 0.01,
    catch_quantile: float = 0.1,
) -> ForgetSetScorer:
    """Fit a scorer for one forget set (see module doc). Raises ValueError/TypeError on bad input.

    ``target_false_fire`` and ``catch_quantile`` place probability 0.5, the gate's default
    threshold (see ``decision_point``), so that "0.5" means the same operating point for every
    set and the false-fire rate a registration reports is the one it was calibrated to.

    ``dedupe``: of the rows ``bank_rows`` keeps, those with a cosine >= this to an already kept
    row are dropped too (None keeps all; see ``privacy.dedupe_rows``).
    """
    name = validate_name(name)
    items = validate_texts(texts, what="texts")
    subj = validate_texts(subjects, what="subjects")
    forget_texts = list(dict.fromkeys(items + [t.format(s=s) for s in subj for t in SUBJECT_TEMPLATES]))
    groups = prefix_groups(forget_texts)
    if len(groups) < 2:
        raise ValueError(
            f"forget set '{name}' needs at least 2 texts (or subjects) that are not copies or beginnings "
            f"of each other, to calibrate on held-out texts; got {len(groups)}"
        )
    # A group's longest text feeds the banks (a causal model gives its prefixes the same token
    # states); its shortest text is what a user would send, so it is the held-out positive.
    bank_texts = [forget_texts[g[-1]] for g in groups]
    probe_texts = [forget_texts[g[0]] for g in groups]
    entities = find_entities(forget_texts, subj, extractor.is_common_word)
    bank_swapper = EntitySwapper(entity_vocabulary("bank"), subj, extractor.is_common_word, entities)
    answered_swaps, answered_src = _swapped(bank_texts, bank_swapper, seed, BANK_SWAPS)
    question_swaps, question_src = _swapped(probe_texts, bank_swapper, seed + 2, BANK_QUESTION_SWAPS)
    bank_swaps, bank_src = answered_swaps + question_swaps, np.concatenate([answered_src, question_src])
    calib_swaps, calib_src = _swapped(probe_texts, EntitySwapper(entity_vocabulary("calibration"), subj, extractor.is_common_word, entities), seed + 1, CALIBRATION_SWAPS)
    unique = list(dict.fromkeys(bank_texts + probe_texts + bank_swaps + calib_swaps))
    where = {t: i for i, t in enumerate(unique)}
    feats = extractor.extract(unique)

    def rows(ts: Sequence[str]) -> PromptFeatures:
        return feats.subset([where[t] for t in ts])

    fb, fp, fs, fc = rows(bank_texts), rows(probe_texts), rows(bank_swaps), rows(calib_swaps)
    bg = extractor.background()
    bank_rows, calib_rows = _bank_rows(bg.n_prompts)
    generic = bg.subset(bank_rows)
    layers = extractor.layers
    coverage = template_coverage(fb, fs, bank_src, generic, layers)

    n = len(groups)
    k = max(2, min(n_folds, n))
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    rows_x: list[np.ndarray] = []
    rows_y: list[np.ndarray] = []
    rows_kind: list[np.ndarray] = []
    for fold in range(k):
        train = np.flatnonzero(fold_of != fold)
        s_train = np.flatnonzero(fold_of[bank_src] != fold)
        c_test = np.flatnonzero(fold_of[calib_src] == fold)
        train_rows = fb.row_indices(train)
        banks = build_banks(
            fb.subset(train), {l: coverage[l][train_rows] for l in layers}, fs.subset(s_train) if len(s_train) else None, layers, seed + fold, dedupe
        )
        stacked = StackedBanks([banks], generic.tokens, layers)
        parts = [(fp.subset(np.flatnonzero(fold_of == fold)), 1, 0), (bg.subset(calib_rows), 0, 2)]
        if len(c_test):
            parts.append((fc.subset(c_test), 0, 1))
        for part, label, kind in parts:
            raw = stacked.raw(part)[:, 0, :]
            rows_x.append(raw)
            rows_y.append(np.full(len(raw), label))
            rows_kind.append(np.full(len(raw), kind))
    x = np.concatenate(rows_x)
    y = np.concatenate(rows_y)
    kind = np.concatenate(rows_kind)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 1e-9, scaler.scale_, 1.0)
    lr = LogisticRegression(C=regularization, class_weight="balanced", max_iter=2000)
    lr.fit((x - scaler.mean_) / scale, y)
    raw_agg = Aggregator(scaler.mean_.astype(np.float64), scale.astype(np.float64), lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))
    near = raw_agg.logit(x[kind == 1]) if (kind == 1).any() else raw_agg.logit(x[y == 0])
    positives = raw_agg.logit(x[y == 1])
    shift = decision_point(near, positives, target_false_fire, catch_quantile)
    agg = Aggregator(raw_agg.mean, raw_agg.scale, raw_agg.coef, raw_agg.intercept - shift)
    cross_p = _sigmoid(agg.logit(x))
    diagnostics = {
        "n_texts": float(len(forget_texts)),
        "n_groups": float(n),
        "n_swapped": float(len(bank_swaps)),
        "n_calibration_negatives": float(len(calib_swaps)),
        "crossfit_auroc": float(roc_auc_score(y, cross_p)) if 0 < y.sum() < len(y) else float("nan"),
        "crossfit_tpr_at_0.5": float((cross_p[y == 1] >= 0.5).mean()),
        "crossfit_fpr_at_0.5": float((cross_p[y == 0] >= 0.5).mean()),
        "crossfit_near_fpr_at_0.5": float((cross_p[kind == 1] >= 0.5).mean()) if (kind == 1).any() else float("nan"),
        "crossfit_far_fpr_at_0.5": float((cross_p[kind == 2] >= 0.5).mean()),
        # log-odds (after the shift) of the two quantiles ``decision_point`` weighed
        "logit_near_quantile": float(np.quantile(near, 1.0 - target_false_fire)) - shift,
        "logit_forget_quantile": float(np.quantile(positives, catch_quantile)) - shift,
    }
    final = build_banks(fb, coverage, fs, layers, seed + k, dedupe)
    diagnostics["bank_rows_forget"] = float(sum(final.forget[l].shape[0] for l in layers) / len(layers))
    diagnostics["bank_rows_swap"] = float(sum(final.swap[l].shape[0] for l in layers) / len(layers))
    diagnostics["tokens_forget"] = float(fb.tokens[layers[0]].shape[0])
    pairs = pair_digests(forget_texts, extractor.secret(), extractor.is_common_word)
    diagnostics["attribute_pairs"] = float(len(pairs))
    return ForgetSetScorer(name, extractor.fingerprint(), final, agg, diagnostics, pairs)


def decision_point(near: np.ndarray, positives: np.ndarray, target_false_fire: float, catch_quantile: float) -> float:
    """The log-odds that become probability 0.5, from cross-fitted scores.

    Halfway between the ``1 - target_false_fire`` quantile of the held-out near misses and the
    ``catch_quantile`` quantile of the held-out forget questions, and never below the former.
    Why halfway: the held-out near misses are names the banks never saw in sentences the
    detector did see, a harder case than most real traffic, while real paraphrases of a forget
    question score below the held-out originals. Measured on TOFU (``oblivio eval detector``):
    placing 0.5 at the near-miss quantile alone let 2-4% of other authors' questions fire;
    halfway to the forget questions' median dropped the catch rate of paraphrases to 86%.
    """
    floor = float(np.quantile(near, 1.0 - target_false_fire))
    return max(floor, (floor + float(np.quantile(positives, catch_quantile))) / 2)


def prefix_groups(texts: Sequence[str]) -> list[list[int]]:
    """Indices of ``texts`` grouped so that every text is a prefix of its group's last one
    (shortest first). A question and "question + answer" form one group: cross-fitting must
    never hold one out while the other sits in the bank, or it would score a text against
    itself and promise a catch rate no paraphrase gets."""
    order = sorted(range(len(texts)), key=lambda i: (texts[i], len(texts[i])))
    groups: list[list[int]] = []
    for i in order:  # sorted: a prefix sorts right before the texts it starts
        if groups and texts[i].startswith(texts[groups[-1][-1]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _swapped(texts: Sequence[str], swapper: EntitySwapper, seed: int, kinds: Sequence[SwapKind]) -> tuple[list[str], np.ndarray]:
    """Near misses per text, one of each kind, and each one's source text."""
    rng = random.Random(seed)
    out: list[str] = []
    src: list[int] = []
    seen = set(texts)
    for i, text in enumerate(texts):
        for kind in kinds:
            other = swapper.swap(text, rng, kind)
            if other not in seen:
                seen.add(other)
                out.append(other)
                src.append(i)
    return out, np.asarray(src, dtype=np.int64)
