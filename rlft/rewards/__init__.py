"""Rewards: the interface (``base``) and the built-in adapters. See docs/rewards.md."""

from .base import REGISTRY, Reward, RewardError, RewardResult, compute, register, required_columns, resolve
from . import shape, text
from . import human  # noqa: F401  (registers the 'human' reward)
from .base import check_columns, report
from .text import bleu, exact_match

__all__ = ["REGISTRY", "Reward", "RewardError", "RewardResult", "compute", "register", "required_columns",
           "resolve", "bleu", "exact_match"]
