"""The reward scale of human ratings, shared by the ``human`` reward (``rlft.rewards.human``) and the reward
models fitted on ratings (``rlft.feedback.reward_model``, which trains on the same scale so that its outputs
can stand in for missing ratings). It imports nothing of rlft, so both may import it."""

from __future__ import annotations


def score_to_reward(score: int) -> float:
    """A 1-5 rating on the reward scale: 1 -> -1, 3 -> 0, 5 -> 1."""
    return (score - 3) / 2
