"""The models the evaluation needs: a target that knows the invented people, and a "retain"
model that never saw the forget people (the reference for TOFU's Forget Quality).

Both are fine-tuned with a LoRA on chat-templated question/answer pairs, merged into the
weights and saved as a plain Hugging Face folder, so vLLM and the detector load them exactly
like any other model. They are cached under a key of everything that determines them; a second
run reuses them.

Why the target is built on top of the retain model (:func:`evaluation_models`): on a 2-core CPU a
fine-tune step costs seconds, and TOFU needs two models that differ only in the forget people.
Training the retain model once and then teaching it the forget people (with as many retain
questions replayed, so it does not drift) gives exactly that pair for the price of one model
plus a small top-up, instead of two full fine-tunes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from oblivio.adapters.training import IGNORE_INDEX, TARGET_MODULES, batch_indices, collate_turns, encode_chat_turn
from oblivio.eval.entity_data import EntityDataset

LOG = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class FinetuneSettings:
    """Sized so a 135M model memorises a few hundred short facts on a CPU in minutes."""

    epochs: float = 6.0
    batch_size: int = 16
    learning_rate: float = 2e-3
    rank: int = 32
    alpha: int = 64
    max_length: int = 80
    seed: int = 0
    threads: int = 2


QAPair = tuple[str, str]


def entity_pairs(dataset: EntityDataset, person_ids: Sequence[int]) -> list[QAPair]:
    """Every (question, answer) the invented-people data set has about ``person_ids``."""
    return [(item.question, item.answer) for item in dataset.items(person_ids)]


def cache_key(base_model: Path, pairs: Sequence[QAPair], settings: FinetuneSettings,
              replay: Sequence[QAPair] = ()) -> str:
    """Everything that determines a fine-tuned model: the base, the data (by content, so two
    data sources never share a cache entry) and the settings."""
    identity = {
        "base": str(Path(base_model).resolve()),
        "base_config": (Path(base_model) / "config.json").read_text(),
        "pairs": hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest(),
        "replay": hashlib.sha256(json.dumps(sorted(replay)).encode()).hexdigest(),
        # Threads change how fast a model is built, not which model: a cache filled on a busy
        # machine with one thread serves a run with two.
        "settings": {k: v for k, v in asdict(settings).items() if k != "threads"},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on answer tokens, with vocabulary logits computed only where an answer
    token is predicted. Why: the 49k-word output layer over every position of a padded batch is
    about a fifth of a step's compute and most of its memory traffic; answers are a third of
    the tokens. Same loss as the full-logits version."""
    causal_lm = model.get_base_model()
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    predicted = targets != IGNORE_INDEX
    logits = causal_lm.lm_head(hidden[:, :-1][predicted])
    return torch.nn.functional.cross_entropy(logits.float(), targets[predicted])


def finetune_on_pairs(
    base_model: Path,
    pairs: Sequence[QAPair],
    out_dir: Path,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: ProgressCallback | None = None,
    replay: Sequence[QAPair] = (),
) -> dict[str, Any]:
    """Teach the model every (question, answer) pair, mixed with as many pairs sampled from
    ``replay``, which it should keep knowing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    if not pairs:
        raise ValueError("no questions to fine-tune on")
    replayed = list(replay)
    random.Random(settings.seed).shuffle(replayed)
    items = list(pairs) + replayed[: len(pairs)]
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    lora_model = get_peft_model(model, lora)
    encoded = [encode_chat_turn(tokenizer, question, answer, settings.max_length) for question, answer in items]
    total = max(1, round(settings.epochs * len(encoded) / settings.batch_size))
    optimizer = torch.optim.AdamW([p for p in lora_model.parameters() if p.requires_grad], lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    started, losses = time.monotonic(), []
    lora_model.train()
    for step in range(total):
        batch = collate_turns([encoded[i] for i in batch_indices(step, len(encoded), settings.batch_size, settings.seed)], pad_id)
        loss = answer_loss(lora_model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, total, losses[-1])
    merged = lora_model.merge_and_unload()
    assert isinstance(merged, PreTrainedModel)  # the base model again; peft types it as any Module
    merged.config.use_cache = True
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {"steps": total, "examples": len(encoded), "final_loss": losses[-1], "seconds": time.monotonic() - started}


def cached_finetune(
    base_model: Path,
    pairs: Sequence[QAPair],
    cache_root: Path,
    label: str,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: ProgressCallback | None = None,
    replay: Sequence[QAPair] = (),
) -> Path:
    """The fine-tuned model folder, trained on first use and renamed into place atomically."""
    target = Path(cache_root) / f"{label}-{cache_key(base_model, pairs, settings, replay)}"
    if (target / "finetune.json").exists():
        LOG.info("reusing %s model at %s", label, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{label}-") as tmp:
        staged = Path(tmp) / "model"
        summary = finetune_on_pairs(base_model, pairs, staged, settings, progress, replay)
        (staged / "finetune.json").write_text(json.dumps({"label": label, **summary, "settings": asdict(settings)}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def evaluation_models(
    base_model: Path,
    retain_pairs: Sequence[QAPair],
    forget_pairs: Sequence[QAPair],
    cache_root: Path,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: Callable[[str], ProgressCallback] | None = None,
) -> tuple[Path, Path]:
    """``(retain, target)``: the retain model never saw ``forget_pairs``; the target is the
    retain model taught them too, replaying as many retain pairs (see the module docstring)."""
    retain = cached_finetune(base_model, retain_pairs, cache_root, "retain", settings,
                             progress("retain") if progress else None)
    target = cached_finetune(retain, forget_pairs, cache_root, "target", settings,
                             progress("target") if progress else None, replay=retain_pairs)
    return retain, target
