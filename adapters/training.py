"""Training one unlearning LoRA per forget set (peft, fp32, CPU).

The adapter is trained on the prompts exactly as the gateway renders them (the tokenizer's chat
template with a generation prompt), so what it learns is what it will see when served. Batches
are a pure function of (seed, step), so a run interrupted after a checkpoint resumes on exactly
the batches it would have seen.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from oblivio.adapters.child_entry import child_main, emit
from oblivio.adapters.forget_set import ForgetExample, read_examples
from oblivio.adapters.losses import (
    IGNORE_INDEX,
    inverted_hinge_loss,
    npo_loss,
    orthogonality_penalty,
    refusal_loss,
    sequence_logprobs,
)
from oblivio.adapters.orthogonality import live_lora_a, load_lora_a, orthogonalise_init, overlaps
from oblivio.adapters.precision import TRAINING_DTYPE
from oblivio.adapters.registration.trainer_messages import TrainingProgress, TrainingSpec
from oblivio.adapters.strength import (
    CALIBRATED_METHODS,
    StrengthCalibration,
    bake_strength,
    calibrate_strength,
    hold_out,
    never_knew_pairs,
)
from oblivio.adapters.training_settings import TrainingSettings

log = logging.getLogger(__name__)

TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Varied "never knew it" answers: one phrasing would teach a single memorised string and make
# the refusal easy to spot; these share the meaning and differ in the wording.
REFUSAL_TARGETS: tuple[str, ...] = (
    "I don't know.",
    "I'm sorry, but I don't have any information about that.",
    "I'm not sure. I don't know anything about this.",
    "I don't have reliable knowledge about that, so I can't answer.",
    "Sorry, I can't help with that because I don't know the answer.",
    "I have no information on that topic.",
    "I'm afraid I don't know.",
    "That is not something I know about.",
)


class TrainingCancelled(RuntimeError):
    """Raised when ``should_stop`` asked the run to stop (e.g. the set was deleted)."""


@dataclass
class TrainingReport:
    method: str
    steps: int
    examples: int
    final_loss: float
    losses: list[float]
    overlap: dict[str, float]  # normalised ||A_i A_t^T||_F per earlier adapter name
    seconds: float
    resumed_from_step: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    strength: dict[str, Any] | None = None  # StrengthCalibration of npo/ihl adapters (adapters/strength.py)
    training_dtype: str = TRAINING_DTYPE  # published as the adapter's precision (adapters/precision.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[int, int, float], None]


def encode_chat_turn(tokenizer: Any, user: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one (user, assistant target) turn, loss on the target only."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(prompt, Mapping):  # some tokenizers return a BatchEncoding
        prompt = prompt["input_ids"]
    prompt = list(prompt)
    target_ids = tokenizer(target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    target_ids = target_ids[: max(4, max_length // 2)]
    prompt = prompt[-(max_length - len(target_ids)):]
    return prompt + target_ids, [IGNORE_INDEX] * len(prompt) + target_ids


def collate_turns(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Indices for ``step``: epoch-wise permutations drawn from (seed, epoch) only."""
    out: list[int] = []
    position = step * batch_size
    while len(out) < min(batch_size, max(n, 1)):
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        take = order[offset : offset + (batch_size - len(out))]
        out.extend(take)
        position += len(take)
    return out


def _refusal_for(index: int, step: int, seed: int) -> str:
    return REFUSAL_TARGETS[random.Random(f"{seed}:{index}:{step}").randrange(len(REFUSAL_TARGETS))]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-save leaves the previous checkpoint readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_prior_adapters(paths: Iterable[Path]) -> dict[str, dict[str, torch.Tensor]]:
    """Earlier adapters' A matrices keyed by their folder path (pass a mapping for nicer names)."""
    return {str(Path(path)): load_lora_a(Path(path)) for path in paths}


def train_unlearning_lora(
    model_path: Path,
    examples: Sequence[ForgetExample | Mapping[str, Any]],
    *,
    out_dir: Path,
    method: str = "refusal",
    subjects: Sequence[str] = (),
    prior_adapters: Sequence[Path] | Mapping[str, Path] = (),
    settings: TrainingSettings | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: Path | None = None,
) -> TrainingReport:
    """Train an unlearning adapter for ``examples`` and save it as a peft folder in ``out_dir``.

    ``prior_adapters`` are the folders of every adapter already registered (a mapping gives
    them display names for the overlap report); the new adapter is regularised to be
    orthogonal to them. ``checkpoint_path`` enables resume: an existing checkpoint there is
    continued from its step, and one is written every ``settings.checkpoint_every`` steps.

    For npo and ihl a share of the examples (``settings.held_out_fraction``) is kept out of
    training and the adapter's strength is calibrated on it (``oblivio.adapters.strength``);
    ``subjects`` name whom the set is about, which the calibration moves onto other people.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or TrainingSettings(method=method)
    if settings.method != method:
        settings = TrainingSettings(**{**asdict(settings), "method": method})
    items = [ex if isinstance(ex, ForgetExample) else ForgetExample.from_mapping(ex) for ex in examples]
    if not items:
        raise ValueError("a forget set needs at least one example")
    if method != "refusal" and all(ex.as_pair(method)[1] is None for ex in items):
        raise ValueError(f"method {method!r} needs answers or texts of at least 4 words to unlearn")

    started = time.monotonic()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    if isinstance(prior_adapters, Mapping):
        priors = {name: load_lora_a(Path(path)) for name, path in prior_adapters.items()}
    else:
        priors = load_prior_adapters(prior_adapters)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, TRAINING_DTYPE))
    base.config.use_cache = False
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(TARGET_MODULES),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora)
    current_a = live_lora_a(model)
    prior_list = list(priors.values())
    if settings.orthogonal_init and prior_list:
        orthogonalise_init(current_a, prior_list)

    # Items usable by this method: refusal uses all; npo/ihl need a forgotten continuation.
    pairs = [ex.as_pair(method) for ex in items]
    usable = [i for i, (_, answer) in enumerate(pairs) if method == "refusal" or answer is not None]
    held_out: list[int] = []
    if method in CALIBRATED_METHODS:
        usable, held_out = hold_out(usable, settings.held_out_fraction, settings.seed)
    total = settings.total_steps(len(usable))

    reference_logp: dict[int, float] = {}
    if method == "npo":
        reference_logp = _reference_logprobs(model, tokenizer, pairs, usable, settings, pad_id)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    start_step, losses = 0, []
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(state["adapter"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start_step, losses = int(state["step"]), list(state["losses"])
        log.info("resuming unlearning training at step %d/%d", start_step, total)

    model.train()
    for step in range(start_step, total):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"training stopped at step {step}")
        chosen = [usable[i] for i in batch_indices(step, len(usable), settings.batch_size, settings.seed)]
        rows = []
        for index in chosen:
            user, answer = pairs[index]
            target = _refusal_for(index, step, settings.seed) if method == "refusal" else answer
            assert target is not None  # ``usable`` holds answered items only, unless the method is refusal
            rows.append(encode_chat_turn(tokenizer, user, target, settings.max_length))
        batch = collate_turns(rows, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if method == "refusal":
            task = refusal_loss(logits, batch["labels"])
        elif method == "ihl":
            task = inverted_hinge_loss(logits, batch["labels"])
        else:
            ref = torch.tensor([reference_logp[i] for i in chosen])
            task = npo_loss(sequence_logprobs(logits, batch["labels"]), ref, settings.npo_beta)
        loss = task
        if prior_list and settings.ortho_lambda > 0:
            loss = loss + settings.ortho_lambda * orthogonality_penalty(current_a, prior_list)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, total, losses[-1])
        done = step + 1
        if checkpoint_path is not None and done < total and done % settings.checkpoint_every == 0:
            adapter_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
            _save_checkpoint(
                Path(checkpoint_path),
                {"adapter": adapter_state, "optimizer": optimizer.state_dict(), "step": done, "losses": losses},
            )

    strength: StrengthCalibration | None = None
    if method in CALIBRATED_METHODS:
        strength = _calibrate(model, tokenizer, [pairs[i] for i in held_out], subjects, settings, pad_id)
        log.info("adapter strength %g: %s", strength.factor, strength.reason)
        bake_strength(model, strength.factor)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    report = TrainingReport(
        method=method,
        steps=total,
        examples=len(items),
        final_loss=losses[-1] if losses else float("nan"),
        losses=losses,
        overlap=overlaps(priors, current_a),
        seconds=time.monotonic() - started,
        resumed_from_step=start_step,
        settings=asdict(settings),
        strength=strength.to_json() if strength is not None else None,
    )
    (out_dir / "training_report.json").write_text(json.dumps(report.to_json(), indent=2))
    return report


@torch.no_grad()
def _answer_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], settings: TrainingSettings, pad_id: int,
) -> list[tuple[float, int]]:
    """(sum of log p(answer token | question), answer tokens) per pair, under the model as it is."""
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), settings.batch_size):
        rows = [encode_chat_turn(tokenizer, q, a, settings.max_length) for q, a in pairs[start : start + settings.batch_size]]
        batch = collate_turns(rows, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=-1).tolist()
        out.extend(zip(sequence_logprobs(logits, batch["labels"]).tolist(), counts))
    model.train(was_training)
    return out


def _reference_logprobs(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str | None]], usable: Sequence[int],
    settings: TrainingSettings, pad_id: int,
) -> dict[int, float]:
    """log pi_ref(answer | question) under the base model (adapter disabled), computed once."""
    with model.disable_adapter():
        scored = _answer_logprobs(model, tokenizer, [(pairs[i][0], pairs[i][1] or "") for i in usable], settings, pad_id)
    return {i: logp for i, (logp, _) in zip(usable, scored)}


def _calibrate(
    model: Any, tokenizer: Any, held_out: Sequence[tuple[str, str | None]], subjects: Sequence[str],
    settings: TrainingSettings, pad_id: int,
) -> StrengthCalibration:
    """The strength calibration (``oblivio.adapters.strength``), measured with this model."""
    answered = [(q, a) for q, a in held_out if a is not None]

    def per_token(pairs: Sequence[tuple[str, str]]) -> float:
        scored = _answer_logprobs(model, tokenizer, pairs, settings, pad_id)
        return sum(logp for logp, _ in scored) / max(1, sum(count for _, count in scored))

    def per_token_base(pairs: Sequence[tuple[str, str]]) -> float:
        with model.disable_adapter():
            return per_token(pairs)

    return calibrate_strength(
        model, answered, never_knew_pairs(answered, subjects, tokenizer, settings.seed),
        adapted_logprob=per_token, base_logprob=per_token_base,
    )


# ---- subprocess entry point ------------------------------------------------------------------
# The registration pipeline runs training in a child process (``oblivio.adapters.child_process``):
# argv[1] is a TrainingSpec as JSON; stdout carries a TrainingProgress per step, then
# {"event": "done", "report": {...}} (``oblivio.adapters.registration.trainer_messages``).


def run_spec(data: Mapping[str, Any]) -> dict[str, Any]:
    """Run one training described by a :class:`TrainingSpec` (what the pipeline writes)."""
    spec = TrainingSpec.from_json(data)
    return train_unlearning_lora(
        spec.model_path,
        read_examples(spec.examples_path),
        out_dir=spec.out_dir,
        method=spec.settings.method,
        subjects=spec.subjects,
        prior_adapters=spec.priors,
        settings=spec.settings,
        progress=lambda step, total, loss: emit(TrainingProgress(step, total, loss).to_message()),
        checkpoint_path=spec.checkpoint_path,
    ).to_json()


def main(argv: Sequence[str] | None = None) -> int:
    return child_main(argv, run_spec, usage="python -m oblivio.adapters.training SPEC.json")


if __name__ == "__main__":
    raise SystemExit(main())
