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


def cache_key(base_model: Path, dataset: EntityDataset, person_ids: Sequence[int], settings: FinetuneSettings,
              replay_ids: Sequence[int] = ()) -> str:
    identity = {
        "base": str(Path(base_model).resolve()),
        "base_config": (Path(base_model) / "config.json").read_text(),
        "seed": dataset.seed,
        "people": len(dataset.people),
        "ids": sorted(person_ids),
        "replay": sorted(replay_ids),
        "settings": asdict(settings),
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


def finetune_on_people(
    base_model: Path,
    dataset: EntityDataset,
    person_ids: Sequence[int],
    out_dir: Path,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: ProgressCallback | None = None,
    replay_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """Teach the model every question (fit and paraphrase templates) about ``person_ids``,
    mixed with as many questions about ``replay_ids`` (sampled), which it should keep knowing."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    items = dataset.items(person_ids)
    if not items:
        raise ValueError("no questions for the given people")
    replay = dataset.items(replay_ids) if replay_ids else []
    random.Random(settings.seed).shuffle(replay)
    items = items + replay[: len(items)]
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    lora_model = get_peft_model(model, lora)
    encoded = [encode_chat_turn(tokenizer, item.question, item.answer, settings.max_length) for item in items]
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
    dataset: EntityDataset,
    person_ids: Sequence[int],
    cache_root: Path,
    label: str,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: ProgressCallback | None = None,
    replay_ids: Sequence[int] = (),
) -> Path:
    """The fine-tuned model folder, trained on first use and renamed into place atomically."""
    target = Path(cache_root) / f"{label}-{cache_key(base_model, dataset, person_ids, settings, replay_ids)}"
    if (target / "finetune.json").exists():
        LOG.info("reusing %s model at %s", label, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{label}-") as tmp:
        staged = Path(tmp) / "model"
        summary = finetune_on_people(base_model, dataset, person_ids, staged, settings, progress, replay_ids)
        (staged / "finetune.json").write_text(json.dumps({"label": label, **summary, "settings": asdict(settings)}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def evaluation_models(
    base_model: Path,
    dataset: EntityDataset,
    forget_ids: Sequence[int],
    cache_root: Path,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: Callable[[str], ProgressCallback] | None = None,
) -> tuple[Path, Path]:
    """``(retain, target)``: the retain model never saw ``forget_ids``; the target is the retain
    model taught the forget people too (see the module docstring for why it is built that way)."""
    retain_ids = dataset.retain_ids(forget_ids)
    retain = cached_finetune(base_model, dataset, retain_ids, cache_root, "retain", settings,
                             progress("retain") if progress else None)
    target = cached_finetune(retain, dataset, forget_ids, cache_root, "target", settings,
                             progress("target") if progress else None, replay_ids=retain_ids)
    return retain, target
