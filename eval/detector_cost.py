"""What the detector adds to a request, against what the request itself costs on the vLLM backend.

Scoring cost depends on how many token rows the registered sets hold, not on what they say, so
one fitted scorer registered ``n`` times measures ``n`` real sets of its size
(``bench_detector.scoring_latency``). The reference is one greedy 32-token generation by the
vLLM backend the server runs, on the same machine, started with the default engine settings.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from oblivio.eval.bench_detector import COST_PROMPT, scoring_latency

__all__ = ["CostRow", "detector_cost", "vllm_generation_seconds"]

CostRow = tuple[str, int, float, float]  # (set size label, sets registered, median s, min s)


def detector_cost(extractor: Any, scorer: Any, label: str, counts: tuple[int, ...] = (1, 5, 20), repeats: int = 7) -> list[CostRow]:
    """Latency of scoring one prompt with ``counts`` copies of ``scorer``; row 0 = features only."""
    rows = scoring_latency(extractor, {label: scorer}, repeats, counts)
    return [(label if key != "-" else "features only", n, med, low) for key, n, med, low in rows]


async def _generation_seconds(config: Any, repeats: int) -> list[float]:
    from transformers import AutoTokenizer, BatchEncoding

    from oblivio.gateway.serving.backends.base import AdapterApplication, SamplingSettings
    from oblivio.gateway.serving.backends.factory import build_backend

    tokenizer = AutoTokenizer.from_pretrained(config.model_path)
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": COST_PROMPT}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)
    assert isinstance(encoded, BatchEncoding)  # what return_dict=True returns; typed as every possible result
    prompt = list(encoded["input_ids"])
    backend = build_backend(config)
    await backend.start()
    try:
        sampling = SamplingSettings(max_tokens=32, temperature=0.0)
        times = []
        for _ in range(repeats + 1):  # the first one warms the engine
            started = time.perf_counter()
            async for _chunk in backend.generate(prompt, sampling, AdapterApplication(), uuid.uuid4().hex):
                pass
            times.append(time.perf_counter() - started)
        return times[1:]
    finally:
        await backend.close()


def vllm_generation_seconds(config: Any, repeats: int = 5) -> tuple[float, float]:
    """(median, min) seconds of one greedy 32-token generation by the configured backend."""
    times = asyncio.run(_generation_seconds(config, repeats))
    return statistics.median(times), min(times)
