"""The models the evaluation needs: a target that knows the invented people, and a "retain"
model that never saw the forget people (the reference for TOFU's Forget Quality).

Both are the default base model fine-tuned with a LoRA on chat-templated question/answer
pairs, merged into the weights and saved as a plain Hugging Face folder, so vLLM and the
detector load them exactly like any other model. They are cached in the artifact directory
under a key of everything that determines them; a second run reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from oblivio.adapters.losses import refusal_loss as answer_cross_entropy
from oblivio.adapters.training import TARGET_MODULES, batch_indices, collate_turns, encode_chat_turn
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


def cache_key(base_model: Path, dataset: EntityDataset, person_ids: Sequence[int], settings: FinetuneSettings) -> str:
    identity = {
        "base": str(Path(base_model).resolve()),
        "base_config": (Path(base_model) / "config.json").read_text(),
        "seed": dataset.seed,
        "people": len(dataset.people),
        "ids": sorted(person_ids),
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def finetune_on_people(
    base_model: Path,
    dataset: EntityDataset,
    person_ids: Sequence[int],
    out_dir: Path,
    settings: FinetuneSettings = FinetuneSettings(),
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Teach the model every question (fit and paraphrase templates) about ``person_ids``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    items = dataset.items(person_ids)
    if not items:
        raise ValueError("no questions for the given people")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    encoded = [encode_chat_turn(tokenizer, item.question, item.answer, settings.max_length) for item in items]
    total = max(1, round(settings.epochs * len(encoded) / settings.batch_size))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    started, losses = time.monotonic(), []
    model.train()
    for step in range(total):
        batch = collate_turns([encoded[i] for i in batch_indices(step, len(encoded), settings.batch_size, settings.seed)], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = answer_cross_entropy(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, total, losses[-1])
    merged = model.merge_and_unload()
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
) -> Path:
    """The fine-tuned model folder, trained on first use and renamed into place atomically."""
    target = Path(cache_root) / f"{label}-{cache_key(base_model, dataset, person_ids, settings)}"
    if (target / "finetune.json").exists():
        LOG.info("reusing %s model at %s", label, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{label}-") as tmp:
        staged = Path(tmp) / "model"
        summary = finetune_on_people(base_model, dataset, person_ids, staged, settings, progress)
        (staged / "finetune.json").write_text(json.dumps({"label": label, **summary, "settings": asdict(settings)}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target
