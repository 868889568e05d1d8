"""The policy-gradient loss, with expected values worked out by hand in the comments (docs/algorithms.md)."""

import math

import pytest
import torch

from rlft.loss import Norm, aggregate, kl_penalty, pg_loss

LN2 = math.log(2)
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_sum_norm"]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))


# kl_penalty ---------------------------------------------------------------------------------------------

# d = logp - ref_logp = [ln 2, 0, -ln 2]
LOGP = t([LN2, 0.5, 0.0])
REF = t([0.0, 0.5, LN2])


def test_k1_is_the_log_ratio():
    close(kl_penalty(LOGP, REF, "k1"), [LN2, 0, -LN2])


def test_k2_is_half_the_squared_log_ratio():
    # (ln 2)^2 / 2 on both sides of 0
    close(kl_penalty(LOGP, REF, "k2"), [LN2**2 / 2, 0, LN2**2 / 2])


def test_k3():
    # exp(-d) - 1 + d:  d = ln 2:  1/2 - 1 + ln 2 = ln 2 - 1/2 (~0.193);  d = 0: 1 - 1 + 0 = 0;
    #                   d = -ln 2: 2 - 1 - ln 2 = 1 - ln 2 (~0.307)
    close(kl_penalty(LOGP, REF, "k3"), [1 / 2 - 1 + LN2, 0, 2 - 1 - LN2])


def test_k3_gradient():
    # d/dlogp (exp(-d) - 1 + d) = 1 - exp(-d):  d = ln 2: 1 - 1/2 = 1/2;  d = 0: 0;  d = -ln 2: 1 - 2 = -1
    logp = LOGP.clone().requires_grad_()
    kl_penalty(logp, REF, "k3").sum().backward()
    close(logp.grad, [0.5, 0, -1])


def test_unknown_kl_estimator():
    with pytest.raises(ValueError, match="KL"):
        kl_penalty(LOGP, REF, "k4")


# aggregate ----------------------------------------------------------------------------------------------

# [2, 3]: sequence 0 has 2 tokens (1, 2), sequence 1 has 1 token (4); the 100s sit on padding.
X = t([[1, 2, 100], [4, 100, 100]])
M = t([[1, 1, 0], [1, 0, 0]])
N_SMALL = Norm(num_seqs=2, num_tokens=3, max_new_tokens=3)

AGG_SMALL = {
    "token_mean": 7 / 3,             # (1 + 2 + 4) / 3 tokens
    "seq_mean_token_mean": 2.75,     # ((1 + 2) / 2 + 4 / 1) / 2 = (1.5 + 4) / 2
    "seq_mean_token_sum": 3.5,       # ((1 + 2) + 4) / 2 sequences
    "seq_sum_norm": 7 / 6,           # (1 + 2 + 4) / (2 sequences * 3 max_new_tokens)
}


@pytest.mark.parametrize("mode", MODES)
def test_aggregate(mode):
    close(aggregate(X, M, mode, N_SMALL), AGG_SMALL[mode])


def test_aggregate_unknown_mode():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(X, M, "median", N_SMALL)


# [4, 3] with a fully masked sequence (row 3), split into two micro-batches of 2 rows.
XB = t([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])
MB = t([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
N_BIG = Norm(num_seqs=4, num_tokens=6, max_new_tokens=3)  # 2 + 1 + 3 + 0 tokens
# valid tokens sum to 1 + 2 + 4 + 7 + 8 + 9 = 31
AGG_BIG = {
    "token_mean": 31 / 6,
    "seq_mean_token_mean": 3.375,     # (1.5 + 4 + 8 + 0) / 4; the empty sequence counts as 0, not NaN
    "seq_mean_token_sum": 7.75,       # (3 + 4 + 24 + 0) / 4
    "seq_sum_norm": 31 / 12,          # 31 / (4 * 3)
}


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_add_up_to_the_batch(mode):
    # each micro-batch returns its share of the batch scalar, so the shares add up exactly
    full = aggregate(XB, MB, mode, N_BIG)
    halves = aggregate(XB[:2], MB[:2], mode, N_BIG) + aggregate(XB[2:], MB[2:], mode, N_BIG)
    close(full, AGG_BIG[mode])
    close(halves, AGG_BIG[mode])


# pg_loss ------------------------------------------------------------------------------------------------

A = t([[1, -2, 5], [4, 6, 7]])           # advantages; 5, 6, 7 on padding (mask M)
LOGP_2x3 = t([[-0.5, -1.0, -2.0], [-0.1, -3.0, -0.7]])
PG_SMALL = {  # -agg(A) with the mask M: A's valid values are 1, -2 | 4
    "token_mean": -1.0,                  # -(1 - 2 + 4) / 3
    "seq_mean_token_mean": -1.75,        # -(((1 - 2) / 2 + 4) / 2) = -(-0.5 + 4) / 2
    "seq_mean_token_sum": -1.5,          # -((1 - 2) + 4) / 2
    "seq_sum_norm": -0.5,                # -3 / (2 * 3)
}


@pytest.mark.parametrize("mode", MODES)
def test_ratio_one_is_reinforce(mode):
    logp = LOGP_2x3.clone().requires_grad_()
    loss, stats = pg_loss(logp, logp.detach(), A, M, N_SMALL, agg=mode)
    close(loss, PG_SMALL[mode])
    close(stats["pg"], PG_SMALL[mode])
    close(stats["clip_frac"], 0.0)
    assert set(stats) == {"pg", "clip_frac"}


def test_ratio_one_gradient_token_mean():
    # rho = exp(logp - old_logp) has d rho / d logp = rho = 1, so dL/dlogp = -A * mask / num_tokens:
    #   [[-1/3, 2/3, 0], [-4/3, 0, 0]]
    logp = LOGP_2x3.clone().requires_grad_()
    loss, _ = pg_loss(logp, logp.detach(), A, M, N_SMALL, agg="token_mean")
    loss.backward()
    close(logp.grad, [[-1 / 3, 2 / 3, 0], [-4 / 3, 0, 0]])


def _with_ratios(ratios):
    old = torch.full((1, len(ratios)), -1.0)
    logp = (old + torch.log(t([ratios]))).requires_grad_()
    return logp, old


def test_clipping():
    # one sequence, 4 tokens, eps_low = eps_high = 0.2 (clip range [0.8, 1.2]), token_mean over 4 tokens
    #   tok 0: rho 1.5, A = +1: min(1.5, 1.2) = 1.2    clipped, no gradient
    #   tok 1: rho 0.5, A = -1: min(-0.5, -0.8) = -0.8 clipped, no gradient
    #   tok 2: rho 0.5, A = +1: min(0.5, 0.8) = 0.5    NOT clipped (min keeps the unclipped term)
    #   tok 3: rho 1.5, A = -1: min(-1.5, -1.2) = -1.5 NOT clipped
    # loss = -(1.2 - 0.8 + 0.5 - 1.5) / 4 = 0.6 / 4 = 0.15;  clip_frac = 2 / 4
    # gradient of -(rho * A) / 4 wrt logp is -rho * A / 4:  tok 2: -0.5 / 4 = -0.125;  tok 3: 1.5 / 4 = 0.375
    logp, old = _with_ratios([1.5, 0.5, 0.5, 1.5])
    adv = t([[1, -1, 1, -1]])
    loss, stats = pg_loss(logp, old, adv, torch.ones(1, 4), Norm(1, 4, 4), eps_low=0.2, eps_high=0.2)
    close(loss, 0.15)
    close(stats["clip_frac"], 0.5)
    loss.backward()
    close(logp.grad, [[0, 0, -0.125, 0.375]])


def test_clipping_is_asymmetric():
    # rho 1.3 with A = +1 and rho 0.7 with A = -1, 2 tokens
    logp, old = _with_ratios([1.3, 0.7])
    adv = t([[1, -1]])
    mask, norm = torch.ones(1, 2), Norm(1, 2, 2)
    # eps_low = 0.4, eps_high = 0.2, range [0.6, 1.2]: tok 0 clipped to 1.2, tok 1 (0.7) inside
    #   loss = -(1.2 - 0.7) / 2 = -0.25, clip_frac 1/2
    loss, stats = pg_loss(logp, old, adv, mask, norm, eps_low=0.4, eps_high=0.2)
    close(loss, -0.25)
    close(stats["clip_frac"], 0.5)
    # eps_low = 0.2, eps_high = 0.4, range [0.8, 1.4]: tok 0 (1.3) inside, tok 1 clipped to 0.8 * -1
    #   loss = -(1.3 - 0.8) / 2 = -0.25, and the gradient only flows through tok 0: -1.3 * 1 / 2 = -0.65
    loss, stats = pg_loss(logp, old, adv, mask, norm, eps_low=0.2, eps_high=0.4)
    close(loss, -0.25)
    close(stats["clip_frac"], 0.5)
    loss.backward()
    close(logp.grad, [[-0.65, 0]])


# one sequence of 2 valid tokens and a pad: d = logp - ref_logp = [ln 2, -ln 2, (pad)], A = [1, 3, (pad)]
KL_LOGP = t([[LN2 - 1, -LN2 - 1, -5.0]])
KL_REF = t([[-1.0, -1.0, 0.0]])
KL_A = t([[1, 3, 100]])
KL_M = t([[1, 1, 0]])
KL_N = Norm(num_seqs=1, num_tokens=2, max_new_tokens=3)
# pg = -(1 + 3) / 2 = -2;  k3 = [ln 2 - 1/2, 1 - ln 2], token mean ((ln 2 - 1/2) + (1 - ln 2)) / 2 = 1/4


def test_kl_in_the_loss():
    # loss = -2 + 0.1 * 1/4 = -1.975
    # dL/dlogp = -A / 2 + 0.1 * (1 - exp(-d)) / 2:
    #   tok 0: -0.5 + 0.1 * (1 - 1/2) / 2 = -0.5 + 0.025 = -0.475
    #   tok 1: -1.5 + 0.1 * (1 - 2) / 2   = -1.5 - 0.05  = -1.55;   pad: 0
    logp = KL_LOGP.clone().requires_grad_()
    loss, stats = pg_loss(logp, logp.detach(), KL_A, KL_M, KL_N, ref_logp=KL_REF, kl_coef=0.1)
    close(loss, -1.975)
    close(stats["pg"], -2.0)
    close(stats["kl"], 0.25)
    loss.backward()
    close(logp.grad, [[-0.475, -1.55, 0]])


def test_kl_logged_without_coefficient_and_other_estimators():
    logp = KL_LOGP.clone()
    # kl_coef 0: the loss is the pg term alone, the KL is still reported
    loss, stats = pg_loss(logp, logp, KL_A, KL_M, KL_N, ref_logp=KL_REF, kl_coef=0.0)
    close(loss, -2.0)
    close(stats["kl"], 0.25)
    # k1: (ln 2 - ln 2) / 2 = 0;  k2: ((ln 2)^2 / 2 + (ln 2)^2 / 2) / 2 = (ln 2)^2 / 2
    _, stats = pg_loss(logp, logp, KL_A, KL_M, KL_N, ref_logp=KL_REF, kl_coef=0.1, kl_estimator="k1")
    close(stats["kl"], 0.0)
    loss, stats = pg_loss(logp, logp, KL_A, KL_M, KL_N, ref_logp=KL_REF, kl_coef=0.1, kl_estimator="k2")
    close(stats["kl"], LN2**2 / 2)
    close(loss, -2 + 0.1 * LN2**2 / 2)


def test_entropy_bonus():
    # H = [1, 2, (pad 50)]: agg(H) = (1 + 2) / 2 = 1.5;  loss = -2 - 0.01 * 1.5 = -2.015
    # dL/dH = -0.01 / 2 on valid tokens
    logp = KL_LOGP.clone()
    entropy = t([[1, 2, 50]]).requires_grad_()
    loss, stats = pg_loss(logp, logp, KL_A, KL_M, KL_N, entropy=entropy, entropy_coef=0.01)
    close(loss, -2.015)
    close(stats["entropy"], 1.5)
    loss.backward()
    close(entropy.grad, [[-0.005, -0.005, 0]])


def test_all_terms_and_stats():
    # pg -2, kl 1/4 with coefficient 0.1, entropy 1.5 with coefficient 0.01:
    #   loss = -2 + 0.025 - 0.015 = -1.99
    logp = KL_LOGP.clone().requires_grad_()
    entropy = t([[1, 2, 50]])
    loss, stats = pg_loss(logp, logp.detach(), KL_A, KL_M, KL_N, ref_logp=KL_REF, kl_coef=0.1,
                          entropy=entropy, entropy_coef=0.01)
    close(loss, -1.99)
    assert set(stats) == {"pg", "kl", "entropy", "clip_frac"}
    for name, want in [("pg", -2.0), ("kl", 0.25), ("entropy", 1.5), ("clip_frac", 0.0)]:
        assert stats[name].ndim == 0 and not stats[name].requires_grad
        close(stats[name], want)


@pytest.mark.parametrize("mode", MODES)
def test_pg_loss_micro_batches_give_the_batch_gradient(mode):
    # invariant: the loss and the gradient of 2 micro-batches of 2 rows equal those of the batch of 4, with
    # ratios away from 1 (some clipped), a KL and an entropy term
    g = torch.Generator().manual_seed(0)
    logp = (torch.randn(4, 5, generator=g) * 0.3 - 1).requires_grad_()
    old = logp.detach() + torch.randn(4, 5, generator=g) * 0.5
    ref = logp.detach() + torch.randn(4, 5, generator=g) * 0.3
    adv, ent = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g)
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    norm = Norm(num_seqs=4, num_tokens=11, max_new_tokens=5)

    def run(rows):
        return pg_loss(logp[rows], old[rows], adv[rows], mask[rows], norm, agg=mode, ref_logp=ref[rows],
                       kl_coef=0.05, entropy=ent[rows], entropy_coef=0.01)

    full, full_stats = run(slice(0, 4))
    (full_grad,) = torch.autograd.grad(full, logp)
    (a, a_stats), (b, b_stats) = run(slice(0, 2)), run(slice(2, 4))
    (acc_grad,) = torch.autograd.grad(a + b, logp)
    close(a + b, full)
    torch.testing.assert_close(acc_grad, full_grad)
    for name in full_stats:
        close(a_stats[name] + b_stats[name], full_stats[name])
    assert 0 < full_stats["clip_frac"] < 1  # the example does exercise clipping
