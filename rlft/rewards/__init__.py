"""Rewards: the interface (``base``) and the built-in adapters. See docs/rewards.md."""

# importing each module registers its rewards (code: pass_rate, all_pass, coderl, rltf, code_style; human: 'human');
# heavy libraries and the sandbox load lazily, inside the rewards
from . import code, embedding, human, judge, model, shape, text  # noqa: F401
from .base import (
    REGISTRY,
    Reward,
    RewardError,
    RewardResult,
    call_keywords,
    check_columns,
    check_signature,
    compute,
    register,
    report,
    required_columns,
    resolve,
)
from .text import bleu, chrf, corpus_bleu, corpus_chrf, corpus_rouge, corpus_ter, exact_match, rouge, ter, token_f1

__all__ = ["REGISTRY", "Reward", "RewardError", "RewardResult", "compute", "register", "required_columns",
           "resolve", "check_columns", "check_signature", "call_keywords", "report", "bleu", "chrf", "ter", "rouge",
           "exact_match", "token_f1", "corpus_bleu", "corpus_chrf", "corpus_ter", "corpus_rouge"]
