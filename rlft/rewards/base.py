"""The reward interface, how rewards are named in a config, and how several are combined.

A reward is a plain callable, called with keywords only (TRL's convention)::

    def reward(prompts: list[str], completions: list[str], **kwargs) -> list[float | None | list[float]]
    def reward(completions, **kwargs)            # a TRL reward function works as it is

It receives ``prompts``, ``completions``, ``completion_ids`` (when it names it or takes ``**kwargs``), every
dataset column (``reference``, ``tests``, ...) as a keyword list aligned with ``completions``, the config's
``args`` as plain keywords, and ``step`` when it names it. ``check_columns`` checks at start-up that it can take
all that. Per completion it returns

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
import difflib
import inspect
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, RewardError  # noqa: F401 -- RewardError is raised here, importable from here
from ..loading import load_object

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
        near = difflib.get_close_matches(str(spec), list(REGISTRY), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown reward {spec!r}{hint} (built-in names: {', '.join(sorted(REGISTRY))}; or "
                         f"'package.module:function' or 'path/to/file.py:function')")
    return load_object(spec, f"reward {spec!r}")


# --------------------------------------------------------------------------------- the calling convention

def _params(fn) -> dict[str, inspect.Parameter] | None:
    """The reward's parameters; None when Python cannot tell (a builtin), and then no check applies."""
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _takes_kwargs(params: dict[str, inspect.Parameter] | None) -> bool:
    return params is None or any(p.kind is p.VAR_KEYWORD for p in params.values())


def trainer_keywords(fn) -> list[str]:
    """What the trainer passes besides dataset columns and args: prompts and completions always, completion_ids
    when the reward names it or takes ``**kwargs`` (TRL passes it always), step when the reward names it."""
    params = _params(fn)
    out = ["prompts", "completions"]
    if _takes_kwargs(params) or "completion_ids" in params:
        out.append("completion_ids")
    if params is not None and "step" in params:
        out.append("step")
    return out


def call_keywords(fn, prompts, completions, columns: dict, args: dict, completion_ids=None, step: int = 0) -> dict:
    """The keywords a reward is called with -- TRL's convention, everything by keyword:
    ``fn(prompts=..., completions=..., completion_ids=..., **dataset_columns, **args)`` (+ ``step=``), so both
    ``def r(prompts, completions, **kw)`` and ``def r(completions, **kwargs)`` work. The trainer's own keywords
    win over a dataset column of the same name."""
    kwargs = {**columns, **args}
    given = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, "step": step}
    for name in trainer_keywords(fn):
        if given[name] is not None:
            kwargs[name] = given[name]
    return kwargs


def required_columns(fn: RewardFn, args: dict[str, Any]) -> list[str]:
    """Parameters without a default that neither the config's args nor the trainer supply: they must be dataset
    columns. Lets a missing column fail at start-up, not at step 300."""
    supplied = set(trainer_keywords(fn)) | set(args)
    out = []
    for p in (_params(fn) or {}).values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name in supplied:
            continue
        if p.default is p.empty:
            out.append(p.name)
    # a reward whose needs depend on its args (a judge template naming {reference}) says so itself
    needs = getattr(fn, "needs_columns", None)
    if needs is not None:
        out += [c for c in needs(args) if c not in supplied and c not in out]
    return out


def check_signature(r: Reward, available_columns) -> list[str]:
    """Problems with calling ``r`` by keyword (``call_keywords``): a positional-only parameter, or -- for a reward
    without ``**kwargs`` -- a keyword it would receive but does not name. Each names the reward, its signature and
    what it would receive."""
    params = _params(r.fn)
    if params is None:
        return []
    label = _label(r)
    received = list(dict.fromkeys(trainer_keywords(r.fn) + sorted(available_columns) + list(r.args)))
    sig = f"its signature is {_fn_name(r.fn)}{inspect.signature(r.fn)}; it would receive the keywords " \
          f"{', '.join(received)}"
    problems = []
    positional = [p.name for p in params.values() if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if positional:
        problems.append(f"{label} takes {', '.join(positional)} positionally only, but rewards are called by "
                        f"keyword ({sig}); drop the '/' from its parameters")
    if not _takes_kwargs(params):
        unexpected = [k for k in received if k not in params or params[k].kind is params[k].POSITIONAL_ONLY]
        if unexpected:
            problems.append(f"{label} takes no **kwargs, so it cannot receive {', '.join(unexpected)} ({sig}); add "
                            f"**kwargs to its parameters")
    return problems


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _label(r: Reward) -> str:
    return f"reward {r.name!r}" + (f" (fn {_fn_name(r.fn)})" if _fn_name(r.fn) != r.name else "")


def _strict_arg_problems(r: Reward, available: set) -> list[str]:
    """For rewards registered with ``strict_args``: args it does not take, and a dataset column with the name of a
    keyword-only option not set in args (it would replace the option)."""
    label, problems = _label(r), []
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
    return problems


def check_columns(rewards: list[Reward], available_columns) -> None:
    """Fail at start-up (a ConfigError naming the reward) when a reward needs a dataset column that is not there,
    or cannot be called by keyword with what it would receive (``check_signature``). For rewards registered with
    ``strict_args`` it also rejects args the reward does not take, and a dataset column that has the name of a
    keyword-only option not set in args (it would replace the option)."""
    available = set(available_columns)
    problems = []
    for r in rewards:
        missing = [c for c in required_columns(r.fn, r.args) if c not in available]
        for c in missing:
            problems.append(f"{_label(r)} needs {c!r}: it is not a dataset column (columns: "
                            f"{', '.join(sorted(available)) or 'none'}) nor set in the reward's args (its signature "
                            f"is {_fn_name(r.fn)}{inspect.signature(r.fn)})")
        problems += check_signature(r, available)
        if getattr(r.fn, "strict_args", False):
            problems += _strict_arg_problems(r, available)
    if problems:
        raise ConfigError("reward configuration: " + "; ".join(problems))


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

    Each reward is called by keyword (``call_keywords``). ``on_error``: ``raise`` stops with an error naming the
    reward, the step and the sample; ``drop`` marks the sample invalid (it gets no gradient) and counts it.
    ``normalize``: ``none``, or ``group`` -- each component is standardised within each group of
    ``group_size`` samples before the weighted sum (GDPO-style, so no component dominates by scale).
    """
    n = len(completions)
    t0 = time.perf_counter()
    if on_error not in ("raise", "drop"):
        raise ValueError(f"rewards on_error must be 'raise' or 'drop', got {on_error!r}")
    if normalize not in ("none", "group"):
        raise ValueError(f"rewards normalize must be 'none' or 'group', got {normalize!r}")
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique, got {names}")
    calls = {r.name: call_keywords(r.fn, prompts, completions, columns, r.args, completion_ids, step)
             for r in rewards}
    outs = _call_all(rewards, calls)

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
                                  f"Set rewards.on_error: drop to skip such samples.") from err
            invalid = [True] * n
            components[r.name] = dense[r.name] = [None] * n
            continue
        components[r.name], dense[r.name], bad = _check_values(r.name, vals, lengths, prompts, completions, step,
                                                               on_error)
        invalid = [a or b for a, b in zip(invalid, bad)]

    if normalize == "group":  # statistics over the valid samples that have the component
        if group_size < 1:
            raise ValueError(f"rewards normalize: group needs group_size >= 1, got {group_size}")
        dense = {k: _group_standardise([None if bad else x for x, bad in zip(v, invalid)], group_size)
                 for k, v in dense.items()}
    token_rewards = _combine(rewards, dense, invalid, lengths)
    return RewardResult(token_rewards, components, invalid, time.perf_counter() - t0, component_seconds, stats)


# Each call returns (values, error, reported stats, seconds); the stats collector is a context variable, private
# to the thread (sync rewards) or the task (async rewards) running the reward.
def _call(fn, kwargs: dict):
    token, t = _STATS.set({}), time.perf_counter()
    try:
        out = fn(**kwargs)
        if inspect.isawaitable(out):  # a plain callable that hands back a coroutine
            out = asyncio.run(_awaited(out))
        return out, None, _STATS.get(), time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 -- any failure of user code is reported, never swallowed
        return None, e, _STATS.get(), time.perf_counter() - t
    finally:
        _STATS.reset(token)


async def _acall(fn, kwargs: dict):
    _STATS.set({})  # this task's own context
    t = time.perf_counter()
    try:
        return await fn(**kwargs), None, _STATS.get(), time.perf_counter() - t
    except Exception as e:  # noqa: BLE001
        return None, e, _STATS.get(), time.perf_counter() - t


async def _gather(rewards: list[Reward], calls: dict[str, dict]):
    return await asyncio.gather(*(_acall(r.fn, calls[r.name]) for r in rewards))


def _call_all(rewards: list[Reward], calls: dict[str, dict]) -> list[tuple]:
    """Every reward's (values, error, stats, seconds), in the order of ``rewards``. Slow rewards (models, judges,
    sandboxes) overlap: plain ones in threads, async ones together on one event loop in a thread of its own (which
    also works when the caller already runs an event loop)."""
    sync = [r for r in rewards if not _is_async(r.fn)]
    asyn = [r for r in rewards if _is_async(r.fn)]
    jobs = len(sync) + (1 if asyn else 0)
    results: dict[str, tuple] = {}
    if jobs == 1 and sync:
        results[sync[0].name] = _call(sync[0].fn, calls[sync[0].name])
    elif jobs:
        with ThreadPoolExecutor(jobs) as pool:
            async_future = pool.submit(asyncio.run, _gather(asyn, calls)) if asyn else None
            for r, res in zip(sync, pool.map(lambda r: _call(r.fn, calls[r.name]), sync)):
                results[r.name] = res
            if async_future is not None:
                results.update(zip([r.name for r in asyn], async_future.result()))
    return [results[r.name] for r in rewards]


def _check_values(name: str, vals, lengths: list[int], prompts, completions, step: int, on_error: str):
    """One reward's values -> (per-sample sequence values, per-sample float or token list, invalid flags).
    A wrong shape raises; a non-finite or malformed value raises (on_error raise) or invalidates its sample."""
    n = len(lengths)
    if hasattr(vals, "tolist") and not isinstance(vals, (list, tuple)):  # numpy array, torch tensor
        vals = vals.tolist()
    if not isinstance(vals, (list, tuple)) or len(vals) != n:
        got = f"{type(vals).__name__} of length {len(vals)}" if hasattr(vals, "__len__") else type(vals).__name__
        raise RewardError(f"reward {name!r} at step {step} returned {got}; expected a list of {n} "
                          f"values (one per completion)")
    seq, per_tok, invalid = [], [], [False] * n
    for i, v in enumerate(vals):
        if v is None:
            seq.append(None)
            per_tok.append(None)
            continue
        v, s, ok, why = _one_value(v, lengths[i])
        if not ok:
            if on_error == "raise":
                raise RewardError(
                    f"reward {name!r} at step {step} gave {why} for sample {i} "
                    f"(prompt {prompts[i][:80]!r}, completion {completions[i][:80]!r}). "
                    f"Set rewards.on_error: drop to skip such samples.")
            invalid[i] = True
            seq.append(None)
            per_tok.append(None)
            continue
        seq.append(s)
        per_tok.append(v)
    return seq, per_tok, invalid


def _one_value(v, length: int):
    """(value as float or list of floats, its sequence sum, usable?, what was wrong) for one sample."""
    if isinstance(v, (list, tuple)) or hasattr(v, "tolist") and getattr(v, "ndim", 0) == 1:  # dense
        try:
            v = [_number(x) for x in v]
        except (TypeError, ValueError) as e:
            return [], float("nan"), False, f"a dense reward with a non-number ({e})"
        ok = len(v) == length and all(map(math.isfinite, v))
        why = (f"a dense reward of {len(v)} values for {length} tokens" if len(v) != length
               else "a non-finite dense reward")
        return v, sum(v) if ok else float("nan"), ok, why
    try:
        f = _number(v)
    except (TypeError, ValueError):
        f = float("nan")
    return f, f, _finite(f), repr(v)


def _combine(rewards: list[Reward], dense: dict[str, list], invalid: list[bool], lengths: list[int]) -> list:
    """The weighted sum per token [N][T_i]: dense values token by token, sequence values on the last token."""
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
    return token_rewards


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
