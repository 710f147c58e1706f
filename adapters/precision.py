"""The precision adapters are trained in, and the check that they are served in it.

An unlearning adapter is a small weight delta fitted against the base model's activations at
one precision. Served over a base model at another (vLLM's ``dtype="auto"`` downcast this fp32
checkpoint to bfloat16 on AVX512-BF16 CPUs and on CUDA), the base model alone already answers
differently ("What is the capital of France?" -> "L'Etoile, la Marseillaise...") and the delta
no longer does what training measured. So every adapter records the precision it was trained
in (``training_dtype`` in the artifact's ``metadata.json``, see ``ArtifactStore.publish``),
``engine.dtype = "auto"`` resolves to that precision, and a backend refuses an adapter recorded
at another precision rather than serve it silently. Refusing, not refitting: a refit is a full
training run (minutes), and it cannot happen inside a hot-load; the operator sees both dtypes in
the error and serves in the precision the adapter was trained in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

# What adapters/training.py trains in. The detector runs its own fp32 copy of the model too.
TRAINING_DTYPE = "float32"
# The metadata.json field (of a published adapter version) that records it.
PRECISION_FIELD = "training_dtype"
METADATA_FILE = "metadata.json"


class AdapterPrecisionError(ValueError):
    """An adapter was trained at a precision other than the one the backend serves in."""


def resolve_serving_dtype(configured: str) -> str:
    """The dtype a backend serves in for the configured ``engine.dtype``.

    ``"auto"`` is the training precision on every platform, never vLLM's own pick: vLLM's
    "auto" downcasts fp32 checkpoints to bfloat16 on CUDA and on AVX512-BF16 CPUs, and then
    neither the base model's answers nor the adapters match what was fitted. An explicit dtype
    is honoured (a larger model may need bfloat16 to fit), and adapters trained in another
    precision are then refused by :func:`check_adapter_precision`.
    """
    return TRAINING_DTYPE if configured == "auto" else configured


def adapter_precision(folder: Path) -> str:
    """The precision the adapter in ``folder`` was trained in.

    Artifacts published before the field existed, and peft folders made outside the pipeline
    (no ``metadata.json``), count as ``float32``: training has only ever run in fp32.
    """
    try:
        metadata = json.loads((Path(folder) / METADATA_FILE).read_text())
    except FileNotFoundError:
        return TRAINING_DTYPE
    except (OSError, ValueError) as exc:
        raise AdapterPrecisionError(f"cannot read the adapter metadata in {folder}: {exc}") from exc
    if not isinstance(metadata, dict):
        raise AdapterPrecisionError(f"the adapter metadata in {folder} is not a JSON object")
    return str(metadata.get(PRECISION_FIELD, TRAINING_DTYPE))


def check_adapter_precision(name: str, folder: Path, serving_dtype: str) -> None:
    """Raise :class:`AdapterPrecisionError`, naming both precisions, unless the adapter in
    ``folder`` was trained in ``serving_dtype``."""
    trained = adapter_precision(folder)
    if trained != serving_dtype:
        raise AdapterPrecisionError(
            f"adapter {name!r} ({folder}) was trained in {trained} but this server serves in {serving_dtype}; "
            f"serve it with engine.dtype = \"{trained}\""
        )


def announce_serving_dtype(backend: str, serving_dtype: str, logger: logging.Logger) -> None:
    """Log the precision a backend serves in at its start, and warn when adapters this server
    trains (in :data:`TRAINING_DTYPE`) would be refused by it."""
    logger.info("%s backend serves in %s (adapters are trained in %s)", backend, serving_dtype, TRAINING_DTYPE)
    if serving_dtype != TRAINING_DTYPE:
        logger.warning(
            "engine.dtype %s differs from the training precision %s: adapters trained in %s will be refused; "
            "set engine.dtype = \"auto\" to serve them", serving_dtype, TRAINING_DTYPE, TRAINING_DTYPE,
        )
