"""Unlearning objectives and the orthogonality regulariser, as pure tensor functions.

Kept apart from the training loop so each formula can be read (and tested) on its own:

* ``refusal`` — cross-entropy toward a refusal / "I don't know" answer (what O3 trains); it
  teaches the adapter to behave like a model that never knew, instead of pushing likelihoods
  down without bound.
* ``npo`` — negative preference optimisation (Zhang et al. 2024): a DPO-style loss with only a
  "rejected" answer, ``-(2/beta) * log sigmoid(-beta * (log pi_theta(y|x) - log pi_ref(y|x)))``.
  Bounded, unlike gradient ascent, because the sigmoid saturates once the policy has moved
  far enough below the reference.
* ``ihl`` — inverted hinge loss (LoKU, Cha et al.): per answer token
  ``1 + p(y_t) - max_{v != y_t} p(v)``; it lowers the forgotten token only until another token
  overtakes it, which keeps generation fluent.

Orthogonality (O3): ``sum_i sum_modules ||A_i A_t^T||_F^2`` over the ``lora_A`` (down
projection) matrices of every earlier adapter ``i`` and the adapter being trained ``t``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1 (causal LM convention)."""
    return logits[:, :-1, :], labels[:, 1:]


def refusal_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean cross-entropy on the labelled (answer) positions."""
    shifted_logits, shifted_labels = _shift(logits, labels)
    return F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(answer token) per sequence, shape (batch,)."""
    shifted_logits, shifted_labels = _shift(logits, labels)
    mask = shifted_labels != IGNORE_INDEX
    safe_labels = shifted_labels.masked_fill(~mask, 0)
    token_logp = torch.log_softmax(shifted_logits.float(), dim=-1).gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(dim=-1)


def npo_loss(policy_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Negative preference optimisation over per-sequence log-likelihoods of forgotten answers."""
    if beta <= 0:
        raise ValueError("npo beta must be > 0")
    log_ratio = policy_logp - reference_logp
    return (-(2.0 / beta) * F.logsigmoid(-beta * log_ratio)).mean()


def inverted_hinge_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of ``1 + p(y_t) - max_{v != y_t} p(v)`` (range [0, 2])."""
    shifted_logits, shifted_labels = _shift(logits, labels)
    mask = shifted_labels != IGNORE_INDEX
    safe_labels = shifted_labels.masked_fill(~mask, 0)
    probs = torch.softmax(shifted_logits.float(), dim=-1)
    p_true = probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    others = probs.scatter(-1, safe_labels.unsqueeze(-1), float("-inf"))
    p_best_other = others.max(dim=-1).values
    per_token = 1.0 + p_true - p_best_other
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def orthogonality_penalty(
    current: Mapping[str, torch.Tensor], priors: Sequence[Mapping[str, torch.Tensor]]
) -> torch.Tensor:
    """O3's regulariser: sum over earlier adapters and shared modules of ||A_i A_t^T||_F^2.

    ``current`` maps a module name to the trainable ``lora_A`` weight (r_t x d_in); each prior
    maps module names to frozen ``lora_A`` weights (r_i x d_in). Modules present in only one
    adapter contribute nothing: they cannot interfere.
    """
    total: torch.Tensor | None = None
    for prior in priors:
        for name, a_t in current.items():
            a_i = prior.get(name)
            if a_i is None:
                continue
            term = (a_i @ a_t.transpose(0, 1)).pow(2).sum()
            total = term if total is None else total + term
    if total is None:
        reference = next(iter(current.values()), None)
        return torch.zeros((), device=reference.device if reference is not None else None)
    return total


@torch.no_grad()
def normalised_overlap(prior: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor]) -> float:
    """Mean over shared modules of ||A_i A_t^T||_F / (||A_i||_F ||A_t||_F), in [0, 1].

    0 means the two adapters read orthogonal input subspaces (they cannot interfere through
    A); 1 means they read the same direction. Two random rank-8 A matrices in d dimensions sit
    near 1/sqrt(d) (about 0.04 for d=576), which is the scale to compare reports against.
    """
    values = []
    for name, a_t in current.items():
        a_i = prior.get(name)
        if a_i is None:
            continue
        denom = a_i.norm() * a_t.norm()
        if float(denom) == 0.0:
            continue
        values.append(float((a_i.float() @ a_t.float().T).norm() / denom))
    return sum(values) / len(values) if values else 0.0
