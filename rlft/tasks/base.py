"""What a task is (``Task``) and what its evaluation metrics read (``Outputs``). Kept apart from the registry in
``rlft/tasks/__init__.py`` so the task modules (text.py, code.py) and the registry import it in one direction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    name: str
    preset: Callable[[], dict]               # a config fragment, fresh on each call
    metrics: Callable[[Outputs], dict]     # what `rlft eval` reports, {name: value}
    needs_reference: bool = False            # eval rows must carry a reference
    summary: str = ""


@dataclass
class Outputs:
    """What a model produced on an eval set, for ``Task.metrics``. Row i's k samples are ``sampled[i]``."""

    rows: list[dict]                         # the eval rows' columns (as the rewards see them)
    prompts: list                            # [N] the templated prompts (text or chat messages)
    references: list                         # [N] the reference column (text, list of texts, or None)
    greedy: list[str]                        # [N] greedy completions
    sampled: list[list[str]] | None = None   # [N][k] sampled completions (rlft eval --samples k)
    score: Callable | None = None            # (completions [N*m], m) -> {"reward": mean, "reward/<name>": mean}
    extra: dict = field(default_factory=dict)
