"""Advantage estimators: pure functions from rewards to per-token advantages [N, T].

N = num_prompts * G samples, consecutive groups of G share a prompt. ``token_rewards`` [N, T] holds each
completion's per-token reward (a sequence reward sits on its last token; zeros elsewhere and on padding).
A sequence's reward r_i is its undiscounted return sum_t r_t. Every estimator gives exactly zero
advantages for a group (or batch) whose rewards are all equal, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

EPS = 1e-6


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_{k>=t} gamma^(k-t) r_k over the valid tokens. [N, T] -> [N, T] (0 on padding).

    Only positions in ``mask`` are time steps: the running return passes a mask-0 position unchanged (no reward,
    no discount). Padding sits at the end, where the return is still 0; a multi-turn episode's environment tokens
    (mask 0 between the model's turns) are not steps of the model."""
    r = token_rewards * mask
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    step = mask.bool()
    for t in range(r.shape[1] - 1, -1, -1):
        running = torch.where(step[:, t], r[:, t] + gamma * running, running)
        out[:, t] = running
    return out * mask


def _broadcast(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return seq_adv[:, None] * mask  # [N] -> [N, T]


def _groups(x: torch.Tensor, g: int) -> torch.Tensor:
    if x.shape[0] % g:
        raise ValueError(f"{x.shape[0]} samples do not split into groups of {g}")
    return x.view(-1, g)


def _centre(x: torch.Tensor) -> torch.Tensor:
    """x - mean(x) along the last dim, exactly 0 where all values are equal: the float mean of equal values need
    not round back to them (0.9 three times), and a std of ~0 + EPS would blow that residue up. Shifting by
    the first value first is exact for equal values and changes nothing else."""
    d = x - x[..., :1]
    return d - d.mean(-1, keepdim=True)


def _masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    x = x - x[mask.bool()][:1].sum()  # shift by the first valid value: equal values whiten to exactly 0
    count = m.sum().clamp(min=1)
    mean = (x * m).sum() / count
    var = (((x - mean) * m) ** 2).sum() / count
    return (x - mean) / (var.sqrt() + EPS) * m


@dataclass
class Inputs:
    """What an estimator may use. Only ``token_rewards``, ``mask`` and ``group_size`` are always set."""

    token_rewards: torch.Tensor                  # [N, T]
    mask: torch.Tensor                           # [N, T]
    group_size: int                              # G
    gamma: float = 1.0
    values: torch.Tensor | None = None           # [N, T] V(s_t) (value)
    greedy_rewards: torch.Tensor | None = None   # [N / G] reward of each prompt's greedy completion (remax)
    state: dict = field(default_factory=dict)    # persists across steps (ema baseline); saved in checkpoints


def reinforce(x: Inputs, baseline: str = "batch", ema_decay: float = 0.9, **_) -> torch.Tensor:
    """A_t = R_t - b (Williams 1992). b: 0 (`none`), the batch mean return (`batch`), or a moving average
    of past batch means (`ema`, using the value from before this batch, then updated)."""
    returns = discounted_returns(x.token_rewards, x.mask, x.gamma)
    r0 = returns[:, 0]
    if baseline == "none":
        b = 0.0
    elif baseline == "batch":
        b = r0[0] + (r0 - r0[0]).mean()  # = r0.mean(), but exactly r when all returns equal r
    elif baseline == "ema":
        mean = float(r0.mean())
        b = x.state.get("ema_baseline", mean)
        x.state["ema_baseline"] = ema_decay * b + (1 - ema_decay) * mean
    else:
        raise ValueError(f"unknown reinforce baseline {baseline!r}")
    return (returns - b) * x.mask


def value(x: Inputs, **_) -> torch.Tensor:
    """A_t = R_t - V(s_t): a learned state baseline (the value head, trained by MSE on R_t)."""
    if x.values is None:
        raise ValueError("the value estimator needs V(s_t)")
    returns = discounted_returns(x.token_rewards, x.mask, x.gamma)
    return (returns - x.values.detach()) * x.mask


def rloo(x: Inputs, **_) -> torch.Tensor:
    """A_i = r_i - mean_{j != i} r_j within the group (Ahmadian et al. 2024, arXiv:2402.14740).

    Equal to G / (G - 1) * (r_i - mean_g)."""
    g = x.group_size
    r = _groups(discounted_returns(x.token_rewards, x.mask, x.gamma)[:, 0], g)  # [P, G]
    r = r - r[:, :1]                    # shift-invariant; makes a group of equal rewards give exactly 0
    adv = (r * g - r.sum(-1, keepdim=True)) / (g - 1)                           # r_i - (sum - r_i)/(G-1)
    return _broadcast(adv.reshape(-1), x.mask)


def grpo(x: Inputs, scale: str = "group", **_) -> torch.Tensor:
    """A_i = (r_i - mean_g) / (std + eps) (Shao et al. 2024, arXiv:2402.03300). ``scale``: std of the group
    (unbiased, as TRL), of the whole batch, or ``none`` -- no division (Dr. GRPO, Liu et al. 2025)."""
    g = x.group_size
    r = _groups(discounted_returns(x.token_rewards, x.mask, x.gamma)[:, 0], g)  # [P, G]
    centred = _centre(r)
    if scale == "group":
        std = r.std(-1, keepdim=True) if g > 1 else torch.zeros_like(r[:, :1])
    elif scale == "batch":
        std = r.std() if r.numel() > 1 else torch.zeros(())
    elif scale == "none":
        std = None
    else:
        raise ValueError(f"unknown grpo scale {scale!r}")
    adv = centred if std is None else centred / (std + EPS)
    return _broadcast(adv.reshape(-1), x.mask)


def reinforce_pp(x: Inputs, group_baseline: bool = False, **_) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): the returns R_t (the KL already in the token rewards when
    ``kl_in: reward``) whitened over all tokens of the batch. ``group_baseline`` subtracts each group's mean
    sequence reward from its last-token reward first (REINFORCE++-baseline)."""
    rewards = x.token_rewards
    if group_baseline:
        g = x.group_size
        seq = _groups((rewards * x.mask).sum(-1), g)                       # [P, G]
        shift = (seq.mean(-1, keepdim=True).expand_as(seq)).reshape(-1)     # [N]
        last = (x.mask.cumsum(-1) == x.mask.sum(-1, keepdim=True)) & x.mask.bool()
        rewards = rewards - shift[:, None] * last
    returns = discounted_returns(rewards, x.mask, x.gamma)
    return _masked_whiten(returns, x.mask)


def remax(x: Inputs, **_) -> torch.Tensor:
    """A_i = r_i - r(greedy completion of the same prompt) (ReMax, Li et al. 2023, arXiv:2310.10505;
    self-critical sequence training, Rennie et al. 2017)."""
    if x.greedy_rewards is None:
        raise ValueError("remax needs the rewards of the greedy completions")
    r = _groups(discounted_returns(x.token_rewards, x.mask, x.gamma)[:, 0], x.group_size)
    return _broadcast((r - x.greedy_rewards[:, None]).reshape(-1), x.mask)


ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "reinforce": reinforce, "value": value, "rloo": rloo, "grpo": grpo, "reinforce_pp": reinforce_pp,
    "remax": remax,
}


def advantages(name: str, x: Inputs, **options) -> torch.Tensor:
    """Look up an estimator by name and apply it: [N, T] advantages."""
    return ESTIMATORS[name](x, **options)
