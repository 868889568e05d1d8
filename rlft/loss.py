"""The policy-gradient loss, written once.

Per token t of completion i, with rho = exp(logp - old_logp)::

    L = - agg( min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) )
        + kl_coef * agg(KL_t)              # when the KL is in the loss
        - entropy_coef * agg(H_t)

With one pass over each rollout, old_logp = logp.detach(): rho is exactly 1, the gradient of rho * A is
A * grad logp, and this is plain REINFORCE. ``agg`` normalises by counts of the whole optimizer batch
(``Norm``), not of the micro-batch, so accumulating micro-batches gives exactly the full-batch gradient.

Truncated importance sampling (TIS), for samples drawn by another engine (vLLM): its log-probs of the tokens it
sampled, logp_sampler, differ from the trainer's (other kernels, precision, batch shapes), so the samples come
from a slightly different policy than the one the trainer differentiates. Each token's policy-gradient term is
reweighted by the trainer's probability over the sampler's, truncated at C (no gradient through w)::

    w_t = min(exp(old_logp_t - logp_sampler_t), C)
    L = - agg( w * min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A) ) + ...   # KL and entropy unweighted

old_logp is the trainer's log-prob of the sample before the update. Truncation bounds the variance that rare
large ratios would add; C = 2 is the default (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training", https://fengyao.notion.site/off-policy-rl).
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
            entropy: torch.Tensor | None = None, entropy_coef: float = 0.0, weights: torch.Tensor | None = None):
    """The loss of one micro-batch ([n, T] tensors) and its statistics (already aggregated the same way).

    ``weights`` [n, T]: per-token weights on the policy-gradient term (the TIS weights of `tis_weights`).
    Returns ``(loss, stats)`` where stats holds detached ``pg``, ``kl``, ``entropy``, ``clip_frac``."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * advantages
    surrogate = torch.minimum(unclipped, clipped)
    if weights is not None:
        surrogate = weights.detach() * surrogate
    pg = -aggregate(surrogate, mask, agg, norm)
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


def tis_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, cap: float):
    """Truncated importance weights w = min(exp(old_logp - sampler_logp), cap) ([n, T], no gradient), and sums
    over the tokens in ``mask`` for the metrics: ``tis_weight`` (of w), ``tis_clipped`` (tokens where the cap
    bit), ``tis_abs_diff`` (of |old_logp - sampler_logp|), ``tis_tokens``.

    Example: log-ratios [ln 0.5, 0, ln 3] with cap 2 give w = [0.5, 1, 2], one token clipped."""
    d = (old_logp - sampler_logp).detach()
    raw = torch.exp(d)
    w = raw.clamp(max=cap)
    m = mask.to(w.dtype)
    return w, {"tis_weight": (w * m).sum(), "tis_clipped": ((raw > cap).to(w.dtype) * m).sum(),
               "tis_abs_diff": (d.abs() * m).sum(), "tis_tokens": m.sum()}
