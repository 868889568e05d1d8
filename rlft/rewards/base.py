"""The reward interface, how rewards are named in a config, and how several are combined.

A reward is a plain callable::

    def reward(prompts: list[str], completions: list[str], **columns) -> list[float | None | list[float]]

Dataset columns (``reference``, ``tests``, ...) arrive as keyword lists aligned with ``completions``;
extra ``args`` from the config arrive as plain keywords. Per completion it returns

* a float: a sequence reward, placed on the last completion token;
* a list of floats, one per completion token: a dense reward;
* ``None``: "does not apply" -- left out of that component's mean, counted as 0 in the sum.

A reward may be ``async def``: ``compute`` awaits all async rewards together on one event loop, while the plain
ones run in threads. Inside a reward, ``report(failures=3)`` adds metrics logged as ``reward/<name>/failures``.

Rewards are named in a config by a short registered name (``bleu``), ``package.module:function`` or
``path/to/file.py:function``.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.util
import inspect
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RewardError  # noqa: F401 -- raised here, importable from here

RewardFn = Callable[..., list]

REGISTRY: dict[str, RewardFn] = {}


def register(name: str | None = None, *, strict_args: bool = False):
    """Decorator: make a reward available by a short name in configs (``fn: bleu``).

    ``strict_args``: the reward's options are exactly its named parameters, so ``check_columns`` rejects a
    misspelt arg (``use_stemer``) and a dataset column that would silently replace a keyword-only option.
    """

    def wrap(fn: RewardFn) -> RewardFn:
        REGISTRY[name or fn.__name__] = fn
        if strict_args:
            fn.strict_args = True
        return fn

    return wrap


_STATS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("rlft_reward_stats", default=None)


def prompt_text(prompt) -> str:
    """A prompt as plain text: a string as is; chat messages (a dataset of conversations) as
    'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def report(**metrics: float) -> None:
    """Called inside a reward: extra numbers for this batch (``report(failures=2, timeouts=1)``), logged by
    ``compute`` as ``reward/<reward name>/<key>``. Outside ``compute`` it does nothing."""
    stats = _STATS.get()
    if stats is not None:
        stats.update({k: float(v) for k, v in metrics.items()})


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
    # a reward whose needs depend on its args (a judge template naming {reference}) says so itself
    needs = getattr(fn, "needs_columns", None)
    if needs is not None:
        out += [c for c in needs(args) if c not in supplied and c not in out]
    return out


def check_columns(rewards: list[Reward], available_columns) -> None:
    """Fail at start-up, naming the reward and the column, when a reward needs a dataset column that is not
    there. For rewards registered with ``strict_args`` it also rejects args the reward does not take, and a
    dataset column that has the name of a keyword-only option not set in args (it would replace the option)."""
    available = set(available_columns)
    problems = []
    for r in rewards:
        fn_name = getattr(r.fn, "__name__", type(r.fn).__name__)
        label = f"reward {r.name!r}" + (f" (fn {fn_name})" if fn_name != r.name else "")
        missing = [c for c in required_columns(r.fn, r.args) if c not in available]
        for c in missing:
            problems.append(f"{label} needs {c!r}: it is not a dataset column (columns: "
                            f"{', '.join(sorted(available)) or 'none'}) nor set in the reward's args")
        if getattr(r.fn, "strict_args", False):
            params = inspect.signature(r.fn).parameters
            named = [p for p in params.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            for a in r.args:
                if a not in params or params[a].kind in (params[a].VAR_KEYWORD, params[a].VAR_POSITIONAL):
                    problems.append(f"{label} has no arg {a!r}; it takes: "
                                    f"{', '.join(p.name for p in named if p.name not in ('prompts', 'completions'))}")
            for p in named:
                if p.kind is p.KEYWORD_ONLY and p.name in available and p.name not in r.args:
                    problems.append(f"{label}: the dataset column {p.name!r} would replace its option {p.name!r}; "
                                    f"rename the column or set {p.name} in the reward's args")
    if problems:
        raise ValueError("reward configuration: " + "; ".join(problems))


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
    seconds: float = 0.0                       # wall time of the whole computation
    component_seconds: dict[str, float] = field(default_factory=dict)  # per component (they overlap)
    stats: dict[str, float] = field(default_factory=dict)  # what rewards report(): "reward/<name>/<key>"

    @staticmethod
    def merge(parts: list[tuple[list[int], RewardResult]], n: int) -> RewardResult:
        """One result for samples 0..n-1 from results of disjoint parts (each with its sample indices): values in
        sample order; seconds summed (component seconds too); reported stats averaged, weighted by part size."""
        token_rewards: list = [None] * n
        components: dict[str, list] = {}
        invalid = [False] * n
        stats: dict[str, float] = {}
        component_seconds: dict[str, float] = {}
        for idx, res in parts:
            for j, i in enumerate(idx):
                token_rewards[i] = res.token_rewards[j]
                invalid[i] = res.invalid[j]
            for name, vals in res.components.items():
                col = components.setdefault(name, [None] * n)
                for j, i in enumerate(idx):
                    col[i] = vals[j]
            for k, v in res.stats.items():
                stats[k] = stats.get(k, 0.0) + v * len(idx) / n
            for k, v in res.component_seconds.items():
                component_seconds[k] = component_seconds.get(k, 0.0) + v
        missing = [i for i, t in enumerate(token_rewards) if t is None]
        if missing:
            raise ValueError(f"RewardResult.merge: no part holds samples {missing[:10]}")
        return RewardResult(token_rewards, components, invalid, sum(r.seconds for _, r in parts), component_seconds,
                            stats)

    def metrics(self) -> dict[str, float]:
        """``reward/<name>`` means over the samples where the component applies."""
        out = {}
        for name, vals in self.components.items():
            vals = [v for v, bad in zip(vals, self.invalid) if v is not None and not bad]
            out[f"reward/{name}"] = sum(vals) / len(vals) if vals else float("nan")
            out[f"reward/{name}_none_frac"] = 1 - len(vals) / max(1, len(self.invalid))
        out["reward/invalid_frac"] = sum(self.invalid) / max(1, len(self.invalid))
        out.update(self.stats)
        out["perf/reward_seconds"] = self.seconds
        for name, sec in self.component_seconds.items():
            out[f"perf/reward_seconds/{name}"] = sec
        return out


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_async(fn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004 -- an object whose __call__ is async


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
    if on_error not in ("raise", "drop"):
        raise ValueError(f"rewards on_error must be 'raise' or 'drop', got {on_error!r}")
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")

    def kwargs_for(r: Reward) -> dict:
        kwargs = {**columns, **r.args}
        params = inspect.signature(r.fn).parameters
        if "completion_ids" in params and completion_ids is not None:
            kwargs["completion_ids"] = completion_ids
        if "step" in params:
            kwargs["step"] = step
        return kwargs

    # Each call returns (values, error, reported stats, seconds); the stats collector is a context variable,
    # private to the thread (sync rewards) or the task (async rewards) running the reward.
    def call(r: Reward):
        token, t = _STATS.set({}), time.perf_counter()
        try:
            out = r.fn(prompts, completions, **kwargs_for(r))
            if inspect.isawaitable(out):  # a plain callable that hands back a coroutine
                out = asyncio.run(_awaited(out))
            return out, None, _STATS.get(), time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 -- any failure of user code is reported, never swallowed
            return None, e, _STATS.get(), time.perf_counter() - t
        finally:
            _STATS.reset(token)

    async def acall(r: Reward):
        _STATS.set({})  # this task's own context
        t = time.perf_counter()
        try:
            return await r.fn(prompts, completions, **kwargs_for(r)), None, _STATS.get(), time.perf_counter() - t
        except Exception as e:  # noqa: BLE001
            return None, e, _STATS.get(), time.perf_counter() - t

    async def gather_async(rs):
        return await asyncio.gather(*(acall(r) for r in rs))

    sync = [r for r in rewards if not _is_async(r.fn)]
    asyn = [r for r in rewards if _is_async(r.fn)]
    jobs = len(sync) + (1 if asyn else 0)
    results: dict[str, tuple] = {}
    if jobs > 1:  # slow rewards (models, judges, sandboxes) overlap; async ones share one event loop
        with ThreadPoolExecutor(jobs) as pool:
            async_future = pool.submit(asyncio.run, gather_async(asyn)) if asyn else None
            for r, res in zip(sync, pool.map(call, sync)):
                results[r.name] = res
            if async_future is not None:
                results.update(zip([r.name for r in asyn], async_future.result()))
    elif sync:
        results[sync[0].name] = call(sync[0])
    elif asyn:  # asyncio.run in a fresh thread also works when the caller already runs an event loop
        with ThreadPoolExecutor(1) as pool:
            results.update(zip([r.name for r in asyn], pool.submit(asyncio.run, gather_async(asyn)).result()))
    outs = [results[r.name] for r in rewards]

    invalid = [False] * n
    components: dict[str, list] = {}
    dense: dict[str, list] = {}
    stats: dict[str, float] = {}
    component_seconds: dict[str, float] = {}
    for r, (vals, err, reported, sec) in zip(rewards, outs):
        component_seconds[r.name] = sec
        stats.update({f"reward/{r.name}/{k}": v for k, v in (reported or {}).items()})
        if err is not None:
            if on_error == "raise":
                raise RewardError(f"reward {r.name!r} raised at step {step}: {type(err).__name__}: {err}. "
                                  f"Set rewards_on_error: drop to skip such samples.") from err
            invalid = [True] * n
            components[r.name] = [None] * n
            dense[r.name] = [None] * n
            continue
        if hasattr(vals, "tolist") and not isinstance(vals, (list, tuple)):  # numpy array, torch tensor
            vals = vals.tolist()
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
                try:
                    v = [_number(x) for x in v]
                except (TypeError, ValueError) as e:
                    v, why = [], f"a dense reward with a non-number ({e})"
                    ok = False
                else:
                    ok = len(v) == lengths[i] and all(map(math.isfinite, v))
                    why = (f"a dense reward of {len(v)} values for {lengths[i]} tokens" if len(v) != lengths[i]
                           else "a non-finite dense reward")
                s = sum(v) if ok else float("nan")
            else:
                try:
                    f = _number(v)
                except (TypeError, ValueError):
                    f = float("nan")
                ok, why, s = _finite(f), repr(v), f
                v = f
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

    if normalize == "group":  # statistics over the valid samples that have the component
        if group_size < 1:
            raise ValueError(f"rewards normalize: group needs group_size >= 1, got {group_size}")
        dense = {k: _group_standardise([None if bad else x for x, bad in zip(v, invalid)], group_size)
                 for k, v in dense.items()}
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
    return RewardResult(token_rewards, components, invalid, time.perf_counter() - t0, component_seconds, stats)


async def _awaited(x):
    return await x


def _number(x) -> float:
    """float(x) for numbers (numpy / torch scalars included); strings and None are not numbers."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{x!r} is not a number")
    return float(x)


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
