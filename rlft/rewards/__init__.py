"""Rewards: the interface (``base``) and the built-in adapters. See docs/rewards.md."""

from .base import REGISTRY, Reward, RewardError, RewardResult, compute, register, required_columns, resolve
from . import embedding, judge, model, shape, text  # noqa: F401  (each registers its rewards; heavy libs load lazily)
from . import human  # noqa: F401  (registers the 'human' reward)
from . import code  # noqa: F401  (registers pass_rate, all_pass, coderl, rltf, code_style; the sandbox loads lazily)
from .base import check_columns, report
from .text import (bleu, chrf, corpus_bleu, corpus_chrf, corpus_rouge, corpus_ter, exact_match, rouge, ter,
                   token_f1)

__all__ = ["REGISTRY", "Reward", "RewardError", "RewardResult", "compute", "register", "required_columns",
           "resolve", "check_columns", "report", "bleu", "chrf", "ter", "rouge", "exact_match", "token_f1",
           "corpus_bleu", "corpus_chrf", "corpus_ter", "corpus_rouge"]
