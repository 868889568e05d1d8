"""Task presets: dataset format + prompt template + rewards + evaluation metrics (see docs/tasks/).

``task: translation`` in a config puts the task's preset *under* the user's YAML: every key stays
overridable, mappings merge key by key, and a list (``rewards``, ``rollout.stop``) given by the user replaces
the preset's whole. Presets name no data files: the config does. ``rlft eval`` computes the task's metrics
(``Task.metrics``) on a model's outputs.

| task | rewards | evaluation |
| --- | --- | --- |
| translation | bleu + chrf | corpus BLEU, corpus chrF, corpus TER |
| summarization | ROUGE-L + length ratio | ROUGE-1/2/L/Lsum, length ratio |
| dialogue | reward model + repetition | reward, distinct-1/2, length |
| creative_writing | keywords + form + theme similarity + novelty | constraint satisfaction, distinct-1/2, reward |
| code_completion, bug_fixing, style_conversion | tests in the sandbox (+ style) | pass@1, pass@k |
"""

from __future__ import annotations

import difflib

from ..errors import ConfigError
from .base import Outputs, Task
from .code import CODE_TASKS, code_metrics
from .text import TEXT_TASKS

__all__ = ["CODE_TASKS", "TEXT_TASKS", "Outputs", "Task", "code_metrics", "get", "preset", "registry"]


def registry() -> dict[str, Task]:
    return {**TEXT_TASKS, **CODE_TASKS}


def get(name: str) -> Task:
    """The task called ``name``; an unknown name is a ConfigError with the nearest known one."""
    tasks = registry()
    if name not in tasks:
        near = difflib.get_close_matches(str(name), list(tasks), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"unknown task {name!r}{hint} (tasks: {', '.join(tasks)})")
    return tasks[name]


def preset(name: str) -> dict:
    """The config fragment of task ``name`` (rewards as ``{components: [...]}``)."""
    return get(name).preset()
