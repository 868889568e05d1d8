"""The policy-gradient loss, written once.

Per token t of completion i, with rho = exp(logp - old_logp)::

    L = - agg( min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) )
        + kl_coef * agg(KL_t)              # when the KL is in the loss
        - entropy_coef * agg(H_t)

With one pass over each rollout, old_logp = logp.detach(): rho is exactly 1, the gradient of rho * A is
A * grad logp, and this is plain REINFORCE. ``agg`` normalises by counts of the whole optimizer batch
(``Norm``), not of the micro-batch, so accumulating micro-batches gives exactly the full-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Norm:
    """Counts over the whole optimizer batch that the aggregation divides by."""

    num_seqs: int          # sequences in the optimizer batch
    num_tokens: int        # completion tokens (mask = 1) in the optimizer batch
    max_new_tokens: int    # for seq_sum_norm (Dr. GRPO)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate on d = logp - ref_logp: k1 = d, k2 = d^2 / 2, k3 = exp(-d) - 1 + d."""
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, norm: Norm) -> torch.Tensor:
    """Reduce per-token values [n, T] of a micro-batch to this micro-batch's share of the batch scalar.

    token_mean: sum over tokens / tokens in the batch; seq_mean_token_mean: mean over sequences of each
    sequence's token mean; seq_mean_token_sum: mean over sequences of each sequence's token sum;
    seq_sum_norm: sum / (sequences * max_new_tokens) (Dr. GRPO)."""
    m = mask.to(x.dtype)
    if mode == "token_mean":
        return (x * m).sum() / max(norm.num_tokens, 1)
    if mode == "seq_mean_token_mean":
        return ((x * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / norm.num_seqs
    if mode == "seq_mean_token_sum":
        return (x * m).sum() / norm.num_seqs
    if mode == "seq_sum_norm":
        return (x * m).sum() / (norm.num_seqs * norm.max_new_tokens)
    raise ValueError(f"unknown aggregation {mode!r}")


def pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
            norm: Norm, *, agg: str = "token_mean", eps_low: float = 0.2, eps_high: float = 0.2,
            ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
            entropy: torch.Tensor | None = None, entropy_coef: float = 0.0):
    """The loss of one micro-batch ([n, T] tensors) and its statistics (already aggregated the same way).

    Returns ``(loss, stats)`` where stats holds detached ``pg``, ``kl``, ``entropy``, ``clip_frac``."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    pg = -aggregate(torch.minimum(unclipped, clipped), mask, agg, norm)
    loss = pg
    stats = {"pg": pg.detach(), "clip_frac": aggregate((clipped < unclipped).float(), mask, "token_mean", norm)}
    if ref_logp is not None:
        kl = aggregate(kl_penalty(logp, ref_logp, kl_estimator), mask, agg, norm)
        if kl_coef:
            loss = loss + kl_coef * kl
        stats["kl"] = kl.detach()
    if entropy is not None:
        ent = aggregate(entropy, mask, agg, norm)
        if entropy_coef:
            loss = loss - entropy_coef * ent
        stats["entropy"] = ent.detach()
    return loss, stats
