"""The reward interface, how rewards are named in a config, and how several are combined.

A reward is a plain callable::

    def reward(prompts: list[str], completions: list[str], **columns) -> list[float | None | list[float]]

Dataset columns (``reference``, ``tests``, ...) arrive as keyword lists aligned with ``completions``;
extra ``args`` from the config arrive as plain keywords. Per completion it returns

* a float: a sequence reward, placed on the last completion token;
* a list of floats, one per completion token: a dense reward;
* ``None``: "does not apply" -- left out of that component's mean, counted as 0 in the sum.

Rewards are named in a config by a short registered name (``bleu``), ``package.module:function`` or
``path/to/file.py:function``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

RewardFn = Callable[..., list]

REGISTRY: dict[str, RewardFn] = {}


class RewardError(RuntimeError):
    """A reward failed (raised, returned NaN/inf, or returned the wrong shape)."""


def register(name: str | None = None):
    """Decorator: make a reward available by a short name in configs (``fn: bleu``)."""

    def wrap(fn: RewardFn) -> RewardFn:
        REGISTRY[name or fn.__name__] = fn
        return fn

    return wrap


def resolve(spec: str | Callable) -> RewardFn:
    """Turn ``bleu`` / ``pkg.mod:fn`` / ``path/to/file.py:fn`` (or a callable) into the callable."""
    if callable(spec):
        return spec
    if spec in REGISTRY:
        return REGISTRY[spec]
    if ":" not in spec:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown reward {spec!r}: use a built-in name ({known}), "
                         f"'package.module:function' or 'path/to/file.py:function'")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ValueError(f"reward {spec!r}: file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"rlft_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ValueError(f"reward {spec!r}: cannot import module {target!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {target} has no callable {attr!r}")
    return fn


def required_columns(fn: RewardFn, args: dict[str, Any]) -> list[str]:
    """Keyword parameters without a default that neither the config's args nor the trainer supply:
    they must be dataset columns. Lets a missing column fail at start-up, not at step 300."""
    supplied = {"prompts", "completions", "completion_ids", "step"} | set(args)
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in supplied:
            continue
        if p.default is p.empty:
            out.append(p.name)
    return out


@dataclass
class Reward:
    """One component of the total reward: total = sum_k weight_k * reward_k."""

    name: str
    fn: RewardFn
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardResult:
    """What a batch of completions scored. ``token_rewards[i]`` has one value per completion token."""

    token_rewards: list[list[float]]          # [N][T_i], weighted sum over components
    components: dict[str, list[float | None]]  # per component, per sample: the sequence value (sum if dense)
    invalid: list[bool]                        # samples dropped because a reward raised or gave NaN/inf
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """``reward/<name>`` means over the samples where the component applies."""
        out = {}
        for name, vals in self.components.items():
            vals = [v for v, bad in zip(vals, self.invalid) if v is not None and not bad]
            out[f"reward/{name}"] = sum(vals) / len(vals) if vals else float("nan")
            out[f"reward/{name}_none_frac"] = 1 - len(vals) / max(1, len(self.invalid))
        out["reward/invalid_frac"] = sum(self.invalid) / max(1, len(self.invalid))
        out["perf/reward_seconds"] = self.seconds
        return out


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compute(
    rewards: list[Reward],
    prompts: list[str],
    completions: list[str],
    lengths: list[int],
    columns: dict[str, list],
    *,
    step: int = 0,
    on_error: str = "raise",
    group_size: int = 1,
    normalize: str = "none",
    completion_ids: list[list[int]] | None = None,
) -> RewardResult:
    """Score a batch with every reward and combine them.

    ``on_error``: ``raise`` stops with an error naming the reward, the step and the sample;
    ``drop`` marks the sample invalid (it gets no gradient) and counts it.
    ``normalize``: ``none``, or ``group`` -- each component is standardised within each group of
    ``group_size`` samples before the weighted sum (GDPO-style, so no component dominates by scale).
    """
    n = len(completions)
    t0 = time.perf_counter()

    def call(r: Reward):
        kwargs = {**columns, **r.args}
        if "completion_ids" in inspect.signature(r.fn).parameters and completion_ids is not None:
            kwargs["completion_ids"] = completion_ids
        if "step" in inspect.signature(r.fn).parameters:
            kwargs["step"] = step
        try:
            return r.fn(prompts, completions, **kwargs), None
        except Exception as e:  # noqa: BLE001 -- any failure of user code is reported, never swallowed
            return None, e

    if len(rewards) > 1:  # slow rewards (models, judges, sandboxes) overlap
        with ThreadPoolExecutor(len(rewards)) as pool:
            outs = list(pool.map(call, rewards))
    else:
        outs = [call(r) for r in rewards]

    invalid = [False] * n
    components: dict[str, list] = {}
    dense: dict[str, list] = {}
    for r, (vals, err) in zip(rewards, outs):
        if err is not None:
            if on_error == "raise":
                raise RewardError(f"reward {r.name!r} raised at step {step}: {type(err).__name__}: {err}. "
                                  f"Set rewards_on_error: drop to skip such samples.") from err
            invalid = [True] * n
            components[r.name] = [None] * n
            dense[r.name] = [None] * n
            continue
        if not isinstance(vals, (list, tuple)) or len(vals) != n:
            got = f"{type(vals).__name__} of length {len(vals)}" if hasattr(vals, "__len__") else type(vals).__name__
            raise RewardError(f"reward {r.name!r} at step {step} returned {got}; expected a list of {n} "
                              f"values (one per completion)")
        seq, per_tok = [], []
        for i, v in enumerate(vals):
            if v is None:
                seq.append(None)
                per_tok.append(None)
                continue
            if isinstance(v, (list, tuple)) or hasattr(v, "tolist") and getattr(v, "ndim", 0) == 1:
                v = [float(x) for x in v]
                ok = len(v) == lengths[i] and all(map(math.isfinite, v))
                why = f"a dense reward of {len(v)} values for {lengths[i]} tokens" if len(v) != lengths[i] else "non-finite"
                s = sum(v) if ok else float("nan")
            else:
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    v = float("nan")
                ok, why, s = _finite(v), repr(v), v
            if not ok:
                if on_error == "raise":
                    raise RewardError(
                        f"reward {r.name!r} at step {step} gave {why} for sample {i} "
                        f"(prompt {prompts[i][:80]!r}, completion {completions[i][:80]!r}). "
                        f"Set rewards_on_error: drop to skip such samples.")
                invalid[i] = True
                seq.append(None)
                per_tok.append(None)
                continue
            seq.append(s)
            per_tok.append(v)
        components[r.name] = seq
        dense[r.name] = per_tok

    if normalize == "group":
        dense = {k: _group_standardise(v, group_size) for k, v in dense.items()}
    elif normalize != "none":
        raise ValueError(f"rewards normalize must be 'none' or 'group', got {normalize!r}")

    token_rewards = [[0.0] * max(1, L) for L in lengths]
    for r in rewards:
        for i, v in enumerate(dense[r.name]):
            if v is None or invalid[i]:
                continue
            if isinstance(v, list):
                for t, x in enumerate(v):
                    token_rewards[i][t] += r.weight * x
            else:
                token_rewards[i][-1] += r.weight * v
    return RewardResult(token_rewards, components, invalid, time.perf_counter() - t0)


def _group_standardise(vals: list, g: int) -> list:
    """(v - mean) / (std + 1e-6) within each group of g, over the samples where the value exists.
    Dense values are standardised by their sequence sum and rescaled token by token."""
    out = list(vals)
    for start in range(0, len(vals), g):
        idx = [i for i in range(start, min(start + g, len(vals))) if vals[i] is not None]
        seqs = [sum(vals[i]) if isinstance(vals[i], list) else vals[i] for i in idx]
        if not seqs:
            continue
        mean = sum(seqs) / len(seqs)
        std = (sum((s - mean) ** 2 for s in seqs) / len(seqs)) ** 0.5
        for i, s in zip(idx, seqs):
            z = (s - mean) / (std + 1e-6)
            out[i] = [x * z / s if s else z / len(vals[i]) for x in vals[i]] if isinstance(vals[i], list) else z
    return out
