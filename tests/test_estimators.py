"""The advantage estimators, with expected values worked out by hand in the comments (docs/algorithms.md)."""

import math

import pytest
import torch

from rlft.estimators import EPS, ESTIMATORS, Inputs, advantages, discounted_returns


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# The shared example: N = 4 samples, G = 2 (prompts {0, 1} and {2, 3}), T = 3, a sequence reward on each
# completion's last valid token; the 9s sit on padding and must never leak in.
#   row 0: length 3, r = 1      row 1: length 2, r = 3      row 2: length 1, r = 2      row 3: length 3, r = 6
REWARDS = t([[0, 0, 1], [0, 3, 9], [2, 9, 9], [0, 0, 6]])
MASK = t([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
# With gamma = 1 every valid token's return is its sequence reward: R = [[1,1,1], [3,3,0], [2,0,0], [6,6,6]].


def example(**kw):
    return Inputs(REWARDS.clone(), MASK.clone(), 2, **kw)


def spread(seq_adv):
    """A per-sequence advantage written on every valid token of the shared example (0 on padding)."""
    return t(seq_adv)[:, None] * MASK


# discounted_returns -------------------------------------------------------------------------------------


def test_returns_gamma_one_sequence_reward():
    # row 0: R_t = 0 + 0 + 1 = 1 at every t; row 1: R_t = 0 + 3 = 3 on the 2 valid tokens, 0 on padding
    # (its pad reward 5 is masked out before summing).
    r = t([[0, 0, 1], [0, 3, 5]])
    m = t([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(discounted_returns(r, m, 1.0), t([[1, 1, 1], [3, 3, 0]]))


def test_returns_gamma_half_dense_rewards_with_padding():
    # row 0, rewards [1, 2, 4, 8], R_t = r_t + 0.5 R_{t+1}:
    #   R_3 = 8;  R_2 = 4 + 0.5*8 = 8;  R_1 = 2 + 0.5*8 = 6;  R_0 = 1 + 0.5*6 = 4
    # row 1, rewards [1, -2, 3, (7 on padding)]: the pad reward is dropped and R_3 stays 0,
    #   R_2 = 3;  R_1 = -2 + 0.5*3 = -0.5;  R_0 = 1 + 0.5*(-0.5) = 0.75
    r = t([[1, 2, 4, 8], [1, -2, 3, 7]])
    m = t([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert torch.equal(discounted_returns(r, m, 0.5), t([[4, 6, 8, 8], [0.75, -0.5, 3, 0]]))


def test_returns_gamma_zero_is_the_reward_itself():
    # gamma = 0: R_t = r_t (the pad reward 7 still becomes 0)
    r = t([[1, -2, 3, 7]])
    m = t([[1, 1, 1, 0]])
    assert torch.equal(discounted_returns(r, m, 0.0), t([[1, -2, 3, 0]]))


# reinforce ----------------------------------------------------------------------------------------------


def test_reinforce_no_baseline():
    # A_t = R_t - 0
    assert torch.equal(advantages("reinforce", example(), baseline="none"), spread([1, 3, 2, 6]))


def test_reinforce_no_baseline_discounted():
    # gamma = 0.5, sequence reward r on the last token, so R_t = r * 0.5^(last - t):
    #   row 0 (r=1, last=2): [0.25, 0.5, 1];  row 1 (r=3, last=1): [1.5, 3, 0]
    #   row 2 (r=2, last=0): [2, 0, 0];       row 3 (r=6, last=2): [1.5, 3, 6]
    adv = advantages("reinforce", example(gamma=0.5), baseline="none")
    assert torch.equal(adv, t([[0.25, 0.5, 1], [1.5, 3, 0], [2, 0, 0], [1.5, 3, 6]]))


def test_reinforce_batch_baseline():
    # b = mean of the sequence returns = (1 + 3 + 2 + 6) / 4 = 3  ->  A = r - 3 = [-2, 0, -1, 3]
    assert torch.equal(advantages("reinforce", example(), baseline="batch"), spread([-2, 0, -1, 3]))


def test_reinforce_ema_baseline_across_two_calls():
    state = {}
    # call 1: no moving average yet, so b = this batch's mean = 3  ->  A = [-2, 0, -1, 3];
    # then ema = 0.5 * 3 + 0.5 * 3 = 3
    adv1 = advantages("reinforce", Inputs(REWARDS.clone(), MASK, 2, state=state), baseline="ema", ema_decay=0.5)
    assert torch.equal(adv1, spread([-2, 0, -1, 3]))
    assert state["ema_baseline"] == 3.0
    # call 2, rewards doubled to [2, 6, 4, 12] (batch mean 6): b = the ema from before this batch = 3,
    #   A = [2 - 3, 6 - 3, 4 - 3, 12 - 3] = [-1, 3, 1, 9]; then ema = 0.5 * 3 + 0.5 * 6 = 4.5
    adv2 = advantages("reinforce", Inputs(2 * REWARDS, MASK, 2, state=state), baseline="ema", ema_decay=0.5)
    assert torch.equal(adv2, spread([-1, 3, 1, 9]))
    assert state["ema_baseline"] == 4.5


def test_reinforce_unknown_baseline():
    with pytest.raises(ValueError, match="baseline"):
        advantages("reinforce", example(), baseline="median")


# value --------------------------------------------------------------------------------------------------


def test_value_is_return_minus_value_head():
    # A_t = R_t - V(s_t), R = [[1,1,1], [3,3,0], [2,0,0], [6,6,6]]:
    #   row 0: [1 - 0.5, 1 - 1, 1 - 2] = [0.5, 0, -1]
    #   row 1: [3 - 1, 3 - 1, pad]     = [2, 2, 0]
    #   row 2: [2 - 3, pad, pad]       = [-1, 0, 0]
    #   row 3: [6 - 0, 6 - 6, 6 - 4]   = [6, 0, 2]
    values = t([[0.5, 1, 2], [1, 1, 9], [3, 9, 9], [0, 6, 4]]).requires_grad_()
    adv = advantages("value", example(values=values))
    assert torch.equal(adv, t([[0.5, 0, -1], [2, 2, 0], [-1, 0, 0], [6, 0, 2]]))
    assert not adv.requires_grad  # the baseline is a constant for the policy gradient


def test_value_needs_values():
    with pytest.raises(ValueError, match="V"):
        advantages("value", example())


# rloo ---------------------------------------------------------------------------------------------------


def test_rloo_groups_of_two():
    # group {1, 3}: 1 - 3 = -2, 3 - 1 = 2;  group {2, 6}: 2 - 6 = -4, 6 - 2 = 4
    assert torch.equal(advantages("rloo", example()), spread([-2, 2, -4, 4]))


def test_rloo_group_of_four():
    # one group r = [1, 3, 2, 6], A_i = r_i - (sum - r_i) / 3 with sum = 12:
    #   1 - 11/3 = -8/3;  3 - 9/3 = 0;  2 - 10/3 = -4/3;  6 - 6/3 = 4     (they sum to 0)
    adv = advantages("rloo", Inputs(REWARDS, MASK, 4))
    torch.testing.assert_close(adv, spread([-8 / 3, 0, -4 / 3, 4]))


def test_rloo_pairs_are_differences():
    # invariant: with G = 2 the leave-one-out mean is the other sample, so A = (r1 - r2, r2 - r1)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(16, generator=g)
    rewards = torch.zeros(16, 2)
    rewards[:, 1] = r
    adv = advantages("rloo", Inputs(rewards, torch.ones(16, 2), 2))[:, 0].view(8, 2)
    r1, r2 = r.view(8, 2).unbind(-1)
    torch.testing.assert_close(adv[:, 0], r1 - r2)
    torch.testing.assert_close(adv[:, 1], r2 - r1)


# grpo ---------------------------------------------------------------------------------------------------


def test_grpo_group_scale_unbiased_std():
    # group {1, 3}: mean 2, centred [-1, 1], unbiased std = sqrt((1 + 1) / (2 - 1)) = sqrt(2)
    # group {2, 6}: mean 4, centred [-2, 2], unbiased std = sqrt((4 + 4) / 1) = 2 sqrt(2)
    # (the biased std would give exactly +-1 in both groups)
    s1, s2 = math.sqrt(2) + EPS, 2 * math.sqrt(2) + EPS
    adv = advantages("grpo", example(), scale="group")
    torch.testing.assert_close(adv, spread([-1 / s1, 1 / s1, -2 / s2, 2 / s2]))


def test_grpo_batch_scale():
    # centred within the groups as above: [-1, 1, -2, 2]; the std is of all four rewards [1, 3, 2, 6]:
    #   mean 3, squared deviations 4 + 0 + 1 + 9 = 14, unbiased variance 14 / 3
    s = math.sqrt(14 / 3) + EPS
    adv = advantages("grpo", example(), scale="batch")
    torch.testing.assert_close(adv, spread([-1 / s, 1 / s, -2 / s, 2 / s]))


def test_grpo_no_scale_is_dr_grpo():
    # only centred: [1 - 2, 3 - 2, 2 - 4, 6 - 4]
    assert torch.equal(advantages("grpo", example(), scale="none"), spread([-1, 1, -2, 2]))


def test_grpo_unknown_scale():
    with pytest.raises(ValueError, match="scale"):
        advantages("grpo", example(), scale="mad")


# reinforce_pp -------------------------------------------------------------------------------------------

# Its own example (G = 2), chosen so the whitening statistics are round numbers; 9 sits on padding.
PP_REWARDS = t([[1, 9, 9], [0, 0, 3], [0, 1, 9], [-2, 3, 9]])
PP_MASK = t([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]])
# gamma = 1 returns: row 0 [1]; row 1 [3, 3, 3]; row 2 [1, 1]; row 3 [-2 + 3, 3] = [1, 3]


def test_reinforce_pp_whitens_over_valid_tokens():
    # the 8 valid returns are four 1s and four 3s: mean 2, population variance (4 * 1 + 4 * 1) / 8 = 1, std 1;
    # A = (R - 2) / (1 + eps) on valid tokens, 0 on padding. (The unbiased std, sqrt(8/7), would differ.)
    adv = advantages("reinforce_pp", Inputs(PP_REWARDS, PP_MASK, 2))
    expected = t([[-1, 0, 0], [1, 1, 1], [-1, -1, 0], [-1, 1, 0]]) / (1 + EPS)
    torch.testing.assert_close(adv, expected)


def test_reinforce_pp_group_baseline():
    # sequence rewards (valid tokens only): [1, 3, 1, -2 + 3 = 1]; group means: {1, 3} -> 2, {1, 1} -> 1.
    # Subtract them on each last valid token:
    #   row 0 [1 - 2]          -> returns [-1]
    #   row 1 [0, 0, 3 - 2]    -> returns [1, 1, 1]
    #   row 2 [0, 1 - 1]       -> returns [0, 0]
    #   row 3 [-2, 3 - 1]      -> returns [-2 + 2, 2] = [0, 2]
    # whiten the 8 valid values [-1, 1, 1, 1, 0, 0, 0, 2]: mean 4/8 = 0.5, deviations
    #   [-1.5, .5, .5, .5, -.5, -.5, -.5, 1.5], squares sum 2.25 + 3 * .25 + 3 * .25 + 2.25 = 6,
    #   population variance 6/8 = 0.75, std sqrt(3)/2
    s = math.sqrt(3) / 2 + EPS
    adv = advantages("reinforce_pp", Inputs(PP_REWARDS, PP_MASK, 2), group_baseline=True)
    expected = t([[-1.5, 0, 0], [0.5, 0.5, 0.5], [-0.5, -0.5, 0], [-0.5, 1.5, 0]]) / s
    torch.testing.assert_close(adv, expected)


# remax --------------------------------------------------------------------------------------------------


def test_remax_subtracts_the_greedy_reward():
    # greedy rewards per prompt [2, 5]: [1 - 2, 3 - 2, 2 - 5, 6 - 5] = [-1, 1, -3, 1]
    adv = advantages("remax", example(greedy_rewards=t([2, 5])))
    assert torch.equal(adv, spread([-1, 1, -3, 1]))


def test_remax_needs_greedy_rewards():
    with pytest.raises(ValueError, match="greedy"):
        advantages("remax", example())


# properties shared by the estimators -------------------------------------------------------------------

# every estimator with the extra inputs it needs
CASES = {
    "reinforce-none": ("reinforce", {"baseline": "none"}),
    "reinforce-batch": ("reinforce", {"baseline": "batch"}),
    "reinforce-ema": ("reinforce", {"baseline": "ema"}),
    "value": ("value", {}),
    "rloo": ("rloo", {}),
    "grpo-group": ("grpo", {"scale": "group"}),
    "grpo-batch": ("grpo", {"scale": "batch"}),
    "grpo-none": ("grpo", {"scale": "none"}),
    "reinforce_pp": ("reinforce_pp", {}),
    "reinforce_pp-group": ("reinforce_pp", {"group_baseline": True}),
    "remax": ("remax", {}),
}


def test_registry_names():
    assert set(ESTIMATORS) == {"reinforce", "value", "rloo", "grpo", "reinforce_pp", "remax"}
    assert {name for name, _ in CASES.values()} == set(ESTIMATORS)


@pytest.mark.parametrize("case", CASES)
def test_padding_gets_zero_advantage(case):
    name, opts = CASES[case]
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 3, generator=g) * 10  # dense, and large values on padding too
    x = Inputs(rewards, MASK, 2, gamma=0.9, values=torch.randn(4, 3, generator=g) * 10,
               greedy_rewards=torch.randn(2, generator=g))
    adv = advantages(name, x, **opts)
    assert adv.shape == (4, 3)
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[MASK == 0], torch.zeros(int((MASK == 0).sum())))


# Estimators that centre or normalise: equal rewards must give exactly 0, not the rounding residue of a
# float mean blown up by a std of ~0 + eps. 0.3 and 0.9 in groups of 3 and 6 are values whose float32 mean
# does not round back to them.
NORMALISING = ["reinforce-batch", "rloo", "grpo-group", "grpo-batch", "grpo-none", "reinforce_pp",
               "reinforce_pp-group"]


@pytest.mark.parametrize("case", NORMALISING)
@pytest.mark.parametrize("reward", [0.0, 0.3, 0.9, 1 / 3, -2.7])
@pytest.mark.parametrize("g", [2, 3, 6])
def test_equal_rewards_give_exactly_zero(case, reward, g):
    name, opts = CASES[case]
    n, length = 2 * g, 4
    lengths = torch.arange(n) % length + 1                          # 1, 2, 3, 4, 1, ... valid tokens
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(n, length)
    rewards[torch.arange(n), lengths - 1] = reward                  # each sequence reward on its last token
    adv = advantages(name, Inputs(rewards, mask, g), **opts)
    assert torch.equal(adv, torch.zeros(n, length)), adv


def test_equal_group_among_unequal_groups_is_zero():
    # group {0.9, 0.9, 0.9} carries no signal even when the batch's other group has some; in group {1, 2, 6}
    # (mean 3) the rewards below the mean get A < 0 and 6 gets A > 0
    rewards = t([[0.9], [0.9], [0.9], [1], [2], [6]])
    mask = torch.ones(6, 1)
    for name, opts in [("rloo", {}), ("grpo", {"scale": "group"}), ("grpo", {"scale": "batch"}),
                       ("grpo", {"scale": "none"})]:
        adv = advantages(name, Inputs(rewards, mask, 3), **opts)
        assert torch.equal(adv[:3], torch.zeros(3, 1)), (name, opts, adv)
        assert adv[3, 0] < 0 and adv[4, 0] < 0 < adv[5, 0]


@pytest.mark.parametrize("name", ["rloo", "grpo", "remax", "reinforce_pp"])
def test_group_shape_error(name):
    # N = 3 samples cannot form groups of G = 2
    x = Inputs(torch.ones(3, 2), torch.ones(3, 2), 2, greedy_rewards=torch.ones(1))
    with pytest.raises(ValueError, match="groups of 2"):
        advantages(name, x, group_baseline=True)
