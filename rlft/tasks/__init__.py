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
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Task:
    name: str
    preset: Callable[[], dict]               # a config fragment, fresh on each call
    metrics: Callable[["Outputs"], dict]     # what `rlft eval` reports, {name: value}
    needs_reference: bool = False            # eval rows must carry a reference
    summary: str = ""


@dataclass
class Outputs:
    """What a model produced on an eval set, for ``Task.metrics``. Row i's k samples are ``sampled[i]``."""

    rows: list[dict]                         # the eval rows (columns as the rewards see them)
    prompts: list                            # [N] the templated prompts (text or chat messages)
    references: list                         # [N] the reference column (text, list of texts, or None)
    greedy: list[str]                        # [N] greedy completions
    sampled: list[list[str]] | None = None   # [N][k] sampled completions (rlft eval --samples k)
    score: Callable | None = None            # (completions [N*m], m) -> {"reward": mean, "reward/<name>": mean}
    extra: dict = field(default_factory=dict)


def registry() -> dict[str, Task]:
    from .text import TEXT_TASKS

    return {**TEXT_TASKS, **CODE_TASKS}


def get(name: str) -> Task:
    """The task called ``name``; an unknown name is a ConfigError with the nearest known one."""
    from ..config import ConfigError

    tasks = registry()
    if name not in tasks:
        near = difflib.get_close_matches(str(name), list(tasks), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"unknown task {name!r}{hint} (tasks: {', '.join(tasks)})")
    return tasks[name]


def preset(name: str) -> dict:
    """The config fragment of task ``name`` (rewards as ``{components: [...]}``)."""
    return get(name).preset()


# ------------------------------------------------------------------------------------- code tasks

def _code_preset(rewards: list[dict], stop: list[str]) -> Callable[[], dict]:
    def make() -> dict:
        return {"data": {"template": "{prompt}"},
                "rollout": {"max_new_tokens": 384, "temperature": 1.0, "stop": list(stop)},
                "rewards": {"components": [dict(r) for r in rewards]}}
    return make


def code_metrics(o: Outputs) -> dict:
    """pass@1 of the greedy completions (share of problems whose program passes every test, in the sandbox);
    with k samples per problem also the unbiased pass@1 and pass@k of Chen et al. 2021
    (``rlft.tasks.code.evaluate_pass_at_k``)."""
    from .code import evaluate_pass_at_k

    out = {"pass@1 (greedy)": evaluate_pass_at_k(o.rows, [[g] for g in o.greedy], ks=(1,))["pass@1"]}
    if o.sampled:
        ks = sorted({1, len(o.sampled[0])})
        out.update({f"{name} (sampled)": v for name, v in evaluate_pass_at_k(o.rows, o.sampled, ks=ks).items()})
    return out


_STYLE = {"name": "style", "fn": "code_style", "weight": 0.5,
          "args": {"checks": ["type_hints", "docstring", "snake_case", "no_print", "f_strings", "max_line_length"]}}
CODE_TASKS = {
    "code_completion": Task("code_completion", _code_preset([{"fn": "pass_rate"}],
                                                            ["\ndef ", "\nclass ", "\nif __name__", "\n```"]),
                            code_metrics, summary="signature + docstring -> body, scored by the tests"),
    "bug_fixing": Task("bug_fixing", _code_preset([{"fn": "pass_rate"}], []), code_metrics,
                       summary="a buggy function and a failing test -> the fixed function"),
    "style_conversion": Task("style_conversion", _code_preset([{"fn": "all_pass"}, _STYLE], []),
                             code_metrics, summary="a function -> the same behaviour in the house style"),
}
