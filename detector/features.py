"""Prompt features: hidden states of the first layers of the served base model.

Why a truncated transformers copy: vLLM cannot hand out inner hidden states, and the detector
only needs layers up to the highest one it uses, so the decoder layers above it are deleted
right after loading and never run (for the default config, 12 of 30 layers: ~40% of a forward).

What is featurised: only the user's text tokens. The text is wrapped as a user turn
(``<|im_start|>user\\n ... <|im_end|>`` for chat models) so the model sees it as it does when
serving, but the template tokens are masked out of the features, and no system prompt is
added: boilerplate shared by every prompt would otherwise dominate pooled features.

Feature space: per layer, each token's hidden state is standardised with per-dimension
statistics of the shipped background text (LLM hidden states have a few huge outlier dimensions
that would otherwise dominate cosine similarity), randomly rotated-and-projected to
``projection_dim`` dimensions (privacy: see ``oblivio.detector.privacy``) and L2-normalised.

Long prompts: text longer than ``max_prompt_tokens`` is cut into windows that are run as
separate sequences of the same batch, so nothing is silently truncated (a truncation would let
a forget-set question hide at the end of a long prompt). Text longer than the model's context
window is refused with ``InvalidArgument`` (a client error, and a ``ValueError``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from oblivio.detector.vocabulary import CommonWords
from oblivio.gateway.errors import InvalidArgument

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["FeatureExtractor", "PromptFeatures", "validate_texts"]


def validate_texts(texts: object, *, what: str) -> list[str]:
    """Type/emptiness checks shared by fit and score, with messages a caller can act on."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of strings, not a single {type(texts).__name__}")
    try:
        items = list(texts)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{what} must be a sequence of strings, got {type(texts).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(item).__name__}")
        if not item.strip():
            raise ValueError(f"{what}[{i}] is empty or whitespace only")
    return items


@dataclass(frozen=True)
class PromptFeatures:
    """Features of a batch of prompts, in the detector's (projected, normalised) space.

    ``tokens[layer]`` stacks the unit-norm token vectors of all prompts; prompt ``i`` owns rows
    ``offsets[i]:offsets[i+1]``.
    ``token_ids`` is only filled on request (benchmarks' privacy attack); scorers never store it.
    """

    tokens: dict[int, np.ndarray]
    offsets: np.ndarray
    token_ids: np.ndarray | None = None

    @property
    def n_prompts(self) -> int:
        return len(self.offsets) - 1

    def row_indices(self, prompts: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token rows owned by ``prompts`` (in that order)."""
        return np.concatenate(
            [np.arange(self.offsets[r], self.offsets[r + 1]) for r in prompts] or [np.zeros(0, dtype=np.int64)]
        ).astype(np.int64)

    def subset(self, rows: Sequence[int] | np.ndarray) -> "PromptFeatures":
        """Features of the prompts ``rows`` (in that order)."""
        rows = list(rows)
        idx = self.row_indices(rows)
        lengths = np.array([self.offsets[r + 1] - self.offsets[r] for r in rows], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return PromptFeatures(
            tokens={l: t[idx] for l, t in self.tokens.items()},
            offsets=offsets,
            token_ids=None if self.token_ids is None else self.token_ids[idx],
        )


def concat_features(parts: Sequence[PromptFeatures]) -> PromptFeatures:
    """Stack several feature batches as one (prompt order preserved)."""
    layers = list(parts[0].tokens)
    lengths = np.concatenate([np.diff(p.offsets) for p in parts])
    return PromptFeatures(
        tokens={l: np.concatenate([p.tokens[l] for p in parts]) for l in layers},
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        token_ids=None
        if any(p.token_ids is None for p in parts)
        else np.concatenate([p.token_ids for p in parts]),
    )


class FeatureExtractor:
    """Truncated base model + the detector's feature space. Thread-safe ``extract``."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        *,
        layers: Sequence[int],
        max_prompt_tokens: int,
        model_identity: str,
        projection_dim: int | None,
        projection_seed: int,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.layers = tuple(layers)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.model_identity = model_identity
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.hidden_size = int(model.config.hidden_size)
        self.projection_dim = projection_dim
        self.projection_seed = projection_seed
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._common_words = CommonWords(tokenizer)
        self._prefix_ids, self._suffix_ids = self._turn_wrappers()
        self._projection = self._make_projection()
        self._stats: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        self._background: PromptFeatures | None = None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_path: Path | str,
        layers: Sequence[int] = (4, 6, 8, 10, 12),
        max_prompt_tokens: int = 512,
        *,
        projection_dim: int | None = 128,
        projection_seed: int = 0,
        threads: int | None = None,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> "FeatureExtractor":
        """Load the base model truncated to ``max(layers)`` decoder layers (the rest is deleted).

        ``layers`` index ``hidden_states`` (0 = embeddings, L = output of decoder layer L).
        ``threads`` sets torch's intra-op threads; this is process-wide, so it is only applied
        when given (the server passes ``config.detector.threads``). ``device``: where the forward
        runs (``"auto"``: a CUDA GPU when there is one); features are the same either way, up to
        float rounding, so stored sets stay valid when a server moves between machines.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        layers = tuple(sorted(set(int(l) for l in layers)))
        if not layers or layers[0] < 1:
            raise ValueError(f"layers must be non-empty and >= 1 (0 is the embedding), got {layers}")
        if max_prompt_tokens < 8:
            raise ValueError(f"max_prompt_tokens must be >= 8, got {max_prompt_tokens}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        model_path = Path(model_path)
        config = AutoConfig.from_pretrained(model_path)
        if layers[-1] > config.num_hidden_layers:
            raise ValueError(f"layer {layers[-1]} does not exist: the model has {config.num_hidden_layers} layers")
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        base = model.model
        keep = layers[-1]
        base.layers = base.layers[:keep]  # delete the upper decoder layers: they are never run
        base.config.num_hidden_layers = keep
        base.norm = torch.nn.Identity()  # the final norm belongs to the last real layer, not ours
        base.eval()
        base.requires_grad_(False)
        base.to(resolve_device(device))
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        identity = _model_identity(model_path)
        return cls(
            base,
            tokenizer,
            layers=layers,
            max_prompt_tokens=max_prompt_tokens,
            model_identity=identity,
            projection_dim=projection_dim,
            projection_seed=projection_seed,
            batch_size=batch_size,
        )

    def _turn_wrappers(self) -> tuple[list[int], list[int]]:
        """Token ids around the user text: the chat template's user turn, without system prompt."""
        tok = self.tokenizer
        marker = "\x00USER\x00"
        try:
            rendered = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
        except Exception:  # no chat template: plain text with BOS if the tokenizer has one
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
            return bos, []
        start = rendered.rfind("<|im_start|>user") if "<|im_start|>user" in rendered else rendered.index(marker)
        before, after = rendered[start:].split(marker, 1)
        after = after.split("\n", 1)[0] if after.strip() else after
        prefix = tok(before, add_special_tokens=False).input_ids
        suffix = tok(after, add_special_tokens=False).input_ids if after else []
        return prefix, suffix

    def _make_projection(self) -> np.ndarray | None:
        if self.projection_dim is None:
            return None
        if not 8 <= self.projection_dim <= self.hidden_size:
            raise ValueError(f"projection_dim must be in [8, {self.hidden_size}], got {self.projection_dim}")
        rng = np.random.default_rng(self.projection_seed)
        gaussian = rng.standard_normal((self.hidden_size, self.projection_dim))
        q, _ = np.linalg.qr(gaussian)  # orthonormal columns: a random rotation, then a cut
        return q.astype(np.float32)

    def is_common_word(self, word: str) -> bool:
        """An ordinary word, not a name (:class:`~oblivio.detector.vocabulary.CommonWords`)."""
        return self._common_words(word)

    @property
    def dim(self) -> int:
        return self.projection_dim or self.hidden_size

    def secret(self) -> bytes:
        """The deployment's secret (the projection seed) as a hashing key (``attributes``)."""
        return str(self.projection_seed).encode()

    def fingerprint(self) -> dict[str, object]:
        """Everything a fitted scorer depends on; scorers refuse a mismatching extractor."""
        from oblivio.detector.background import background_digest

        return {
            "model_identity": self.model_identity,
            "layers": list(self.layers),
            "projection_dim": self.projection_dim,
            # A digest, not the seed: stored scorers carry the fingerprint, and the seed is the
            # secret that keeps their token banks from being inverted (see detector/README.md).
            "projection": projection_id(self.projection_seed),
            "background": background_digest(),
        }

    # -- extraction ----------------------------------------------------------------------------
    def _windows(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Token windows (each <= max_prompt_tokens user tokens) and the prompt owning each."""
        windows: list[list[int]] = []
        owner: list[int] = []
        encoded = self.tokenizer(list(texts), add_special_tokens=False).input_ids
        budget = self.context_length - len(self._prefix_ids) - len(self._suffix_ids)
        for i, ids in enumerate(encoded):
            if len(ids) > budget:  # the caller's text (e.g. a calibration probe) is too long: a client error
                raise InvalidArgument(
                    f"prompt {i} has {len(ids)} tokens, longer than the model's context window "
                    f"({self.context_length} tokens including the chat turn markers)"
                )
            if not ids:
                raise ValueError(f"prompt {i} has no tokens")
            for start in range(0, len(ids), self.max_prompt_tokens):
                windows.append(ids[start : start + self.max_prompt_tokens])
                owner.append(i)
        return windows, owner

    @torch.inference_mode()
    def _forward_raw(self, windows: list[list[int]]) -> dict[int, list[np.ndarray]]:
        """Raw hidden states of the user tokens of every window, per layer (one forward a batch).

        A window that is a beginning of another (a question and its answered form, a repeated
        prompt) is not run: a causal model gives a prefix the same states, so its rows are the
        first rows of the longer window's."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        npre = len(self._prefix_ids)
        source = _covering_windows(windows)
        runs = sorted(set(source), key=lambda i: -len(windows[i]))  # length-sorted batches pad less
        results: dict[int, dict[int, np.ndarray]] = {}
        for b in range(0, len(runs), self.batch_size):
            chunk = runs[b : b + self.batch_size]
            seqs = [self._prefix_ids + windows[i] + self._suffix_ids for i in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):  # right padding; the causal mask keeps real tokens clean
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            device = self.model.device
            hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                output_hidden_states=True).hidden_states
            kept = {l: hidden[l].float().cpu() for l in self.layers}
            for r, i in enumerate(chunk):
                n = len(windows[i])
                results[i] = {l: kept[l][r, npre : npre + n].numpy() for l in self.layers}
        return {l: [results[source[i]][l][: len(w)] for i, w in enumerate(windows)] for l in self.layers}

    def _ensure_stats(self) -> None:
        """Per-dimension standardisation statistics from the shipped background (computed once,
        in the same forward that gives the background's own features). Caller holds the lock."""
        if self._stats is not None and self._background is not None:
            return
        from oblivio.detector.background import background_texts

        texts = list(background_texts())
        windows, owner = self._windows(texts)
        raw = self._forward_raw(windows)
        if self._stats is None:
            stats = {}
            for l in self.layers:
                allt = np.concatenate(raw[l])
                stats[l] = (allt.mean(0).astype(np.float32), (allt.std(0) + 1e-3).astype(np.float32))
            self._stats = stats
        self._background = self._assemble(len(texts), windows, owner, raw, with_token_ids=False)

    def to_space(self, layer: int, raw: np.ndarray) -> np.ndarray:
        """Raw hidden states -> standardised, projected (not yet normalised) vectors."""
        assert self._stats is not None
        mean, std = self._stats[layer]
        x = ((raw - mean) / std).astype(np.float32)
        if self._projection is not None:  # torch: honours torch threads (see scoring.sims)
            x = torch.matmul(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self._projection)).numpy()
        return x

    def extract(self, texts: Sequence[str], *, with_token_ids: bool = False) -> PromptFeatures:
        """Features of ``texts``: one forward per batch, shared by every forget set."""
        items = validate_texts(texts, what="prompts")
        if not items:
            raise ValueError("prompts is empty")
        with self._lock:  # the model is shared; torch modules are not re-entrant-safe for us
            self._ensure_stats()
            windows, owner = self._windows(items)
            raw = self._forward_raw(windows)
        return self._assemble(len(items), windows, owner, raw, with_token_ids=with_token_ids)

    def _assemble(
        self, n: int, windows: list[list[int]], owner: list[int], raw: dict[int, list[np.ndarray]], *, with_token_ids: bool
    ) -> PromptFeatures:
        lengths = np.bincount(np.asarray(owner), weights=[len(w) for w in windows], minlength=n).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # windows are in prompt order already
        tokens = {l: _unit_rows(self.to_space(l, np.concatenate(raw[l]))) for l in self.layers}
        token_ids = np.concatenate([np.asarray(w) for w in windows]) if with_token_ids else None
        return PromptFeatures(tokens=tokens, offsets=offsets, token_ids=token_ids)

    def background(self) -> PromptFeatures:
        """Features of the shipped background text (cached: every fit uses it)."""
        with self._lock:
            self._ensure_stats()
        assert self._background is not None
        return self._background

    def raw_hidden(self, texts: Sequence[str]) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
        """Unprojected, unnormalised user-token hidden states, prompt offsets and token ids.

        For benchmarks only (the plain baseline and the privacy attack); scorers never see it.
        """
        items = validate_texts(texts, what="prompts")
        with self._lock:
            self._ensure_stats()
            windows, owner = self._windows(items)
            raw = self._forward_raw(windows)
        lengths = np.bincount(np.asarray(owner), weights=[len(w) for w in windows], minlength=len(items)).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate([np.asarray(w) for w in windows])
        return {l: np.concatenate(raw[l]) for l in self.layers}, offsets, ids

    def extract_with_raw(self, texts: Sequence[str]) -> tuple[PromptFeatures, dict[int, np.ndarray]]:
        """Features and the raw user-token hidden states from ONE forward (benchmarks compare
        the detector with a plain baseline on the same forward)."""
        items = validate_texts(texts, what="prompts")
        with self._lock:
            self._ensure_stats()
            windows, owner = self._windows(items)
            raw = self._forward_raw(windows)
        features = self._assemble(len(items), windows, owner, raw, with_token_ids=True)
        return features, {l: np.concatenate(raw[l]) for l in self.layers}

    def features_from_raw(self, raw: dict[int, np.ndarray], offsets: np.ndarray) -> PromptFeatures:
        """This extractor's features from raw states another extractor of the same model
        produced (benchmarks: compare feature spaces without a second forward)."""
        with self._lock:
            self._ensure_stats()
        tokens = {l: _unit_rows(self.to_space(l, raw[l])) for l in self.layers}
        return PromptFeatures(tokens=tokens, offsets=np.asarray(offsets, dtype=np.int64))

    def with_projection(self, projection_dim: int | None, projection_seed: int | None = None) -> "FeatureExtractor":
        """A second extractor sharing this one's model and background statistics but using
        another feature space (benchmarks compare protected vs unprotected spaces)."""
        other = FeatureExtractor(
            self.model,
            self.tokenizer,
            layers=self.layers,
            max_prompt_tokens=self.max_prompt_tokens,
            model_identity=self.model_identity,
            projection_dim=projection_dim,
            projection_seed=self.projection_seed if projection_seed is None else projection_seed,
            batch_size=self.batch_size,
        )
        with self._lock:
            self._ensure_stats()
        other._stats = self._stats  # same standardisation; the background is re-run lazily
        return other


def projection_id(seed: int) -> str:
    """Names the projection a seed makes without revealing the seed (a 63-bit random seed is
    out of reach of guessing; a small one is not, whatever is stored)."""
    return hashlib.blake2b(str(int(seed)).encode(), person=b"oblivio-proj", digest_size=8).hexdigest()


def resolve_device(device: str) -> str:
    """``"auto"`` is CUDA when torch sees a GPU (the detector then stays off the CPU cores that
    tokenization and the server's event loop need), else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"detector device must be auto, cpu, cuda or cuda:N (got {device!r})")
    return device


def _covering_windows(windows: Sequence[list[int]]) -> list[int]:
    """For each window, the index of a window it is the beginning of (itself if none)."""
    order = sorted(range(len(windows)), key=lambda i: windows[i])
    source = list(range(len(windows)))
    # sorted: every window that starts with w sorts in one run right after w
    for pos in range(len(order) - 2, -1, -1):
        i, nxt = order[pos], order[pos + 1]
        if windows[source[nxt]][: len(windows[i])] == windows[i]:
            source[i] = source[nxt]
    return source


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)).astype(np.float32)


def _model_identity(model_path: Path) -> str:
    """Hash of the model's config and weight-file sizes: cheap, and changes with the model."""
    h = hashlib.sha256()
    config = json.loads((model_path / "config.json").read_text())
    h.update(json.dumps(config, sort_keys=True).encode())
    for f in sorted(model_path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]
