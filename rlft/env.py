"""The environment contract of multi-turn episodes -- Gymnasium's -- and how rlft calls an environment.

An environment is any object with::

    reset(*, seed=None, options=None) -> (observation, info)
    step(action) -> (observation, reward, terminated, truncated, info)

(``gymnasium.Env`` subclasses work as they are; gymnasium itself is not needed). Either method may be ``async def``.
rlft makes ONE instance per episode (``factory(**env.args)``) and calls ``reset(seed=..., options={"row":
columns})`` with the dataset row's columns; ``seed`` is derived from (train.seed, step, the row's line, the
generation), so two processes sample what one does and a resumed run what an uninterrupted one did.

* ``reset``'s observation starts the conversation: a string (the first user message) or a list of chat messages
  (dicts with ``role`` and ``content``). It replaces the dataset prompt as what the model sees. ``info["tools"]``
  (optional: tool schemas or functions) is passed to the chat template (``apply_chat_template(tools=...)``) for
  the whole episode.
* ``action`` is the text of the model's turn (special tokens and a stop string removed).
* ``step``'s observation is the environment's reply: a string (a user message), a chat message dict (e.g.
  ``{"role": "tool", "content": ...}``), a list of such dicts, or ``None``; it is not shown to the model once the
  episode has ended (``terminated`` or ``truncated``). ``reward`` (a finite number) is the turn's reward.

`check_reset` / `check_step` validate what an environment returned and say what is wrong, naming the environment,
the turn and the sample (`Where`). `call_all` runs one method on many episodes: async ones concurrently on one event
loop, plain ones in threads. Short names (``env.cls: guess_number``) come from `register` (the shipped
environments in rlft/envs/ register themselves; they are imported on first lookup of a short name).
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import ConfigError, RunError
from .loading import load_object

REGISTRY: dict[str, Callable] = {}


class EnvError(RunError):
    """An environment raised, returned something outside the contract, or could not be built; the message names
    the environment, the turn and the sample."""


def register(name: str):
    """Give an environment class (or factory) a short name for ``env.cls``: ``@register("guess_number")``."""
    def wrap(cls):
        REGISTRY[name] = cls
        return cls
    return wrap


def _shipped() -> None:
    """Import rlft's shipped environments (rlft/envs/), which register their short names (by name: rlft.envs sits
    above this module)."""
    if importlib.util.find_spec("rlft.envs") is not None:
        importlib.import_module("rlft.envs")


def resolve(spec: str | Callable) -> Callable:
    """``env.cls`` (a registered short name, ``package.module:Class`` or ``path/to/file.py:Class``) or a class /
    factory given in Python -> the callable that makes one environment (called with ``env.args``)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"env.cls must name an environment class, got {spec!r}")
    if ":" not in spec:
        if spec not in REGISTRY:
            _shipped()
        if spec in REGISTRY:
            return REGISTRY[spec]
        near = difflib.get_close_matches(spec, list(REGISTRY), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"env.cls={spec!r} is not a registered environment{hint} (registered: "
                          f"{', '.join(sorted(REGISTRY)) or 'none'}; or 'package.module:Class' or "
                          f"'path/to/file.py:Class')")
    return load_object(spec, f"env.cls={spec!r}", kind="class or callable", error=ConfigError)


def name_of(factory) -> str:
    """How errors name an environment: its class (or factory) name."""
    return getattr(factory, "__qualname__", None) or type(factory).__name__


def check_methods(env, name: str) -> None:
    """The built object has callable ``reset`` and ``step``."""
    missing = [m for m in ("reset", "step") if not callable(getattr(env, m, None))]
    if missing:
        raise EnvError(f"environment {name}: the object it made ({type(env).__name__}) has no {' or '.join(missing)}"
                       f" method; an environment needs reset(*, seed=None, options=None) -> (observation, info) and "
                       f"step(action) -> (observation, reward, terminated, truncated, info)")


def episode_seed(seed: int, step: int, line: int, generation: int) -> int:
    """The ``seed`` an episode's ``reset`` gets: a hash of (train.seed, step, the row's line, the generation) -- the
    same in every process layout and after a resume; in [0, 2**63)."""
    digest = hashlib.blake2b(repr((seed, step, line, generation)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class Where:
    """Names an episode in error messages: the environment, the step, the sample (file, line, generation)."""

    env: str
    step: int
    source: str
    line: int
    generation: int

    def at(self, turn: int | None) -> str:
        when = "in reset" if turn is None else f"at turn {turn}"
        return (f"environment {self.env} {when} (step {self.step}, sample: {self.source} line {self.line}, "
                f"generation {self.generation})")


# ------------------------------------------------------------------------------------- what may come back

def _message(m, what: str) -> dict:
    if not isinstance(m, dict):
        raise TypeError(f"{what} must be a chat message dict with 'role' and 'content', got {type(m).__name__} "
                        f"{_short(m)}")
    if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
        raise TypeError(f"{what} must have a string 'role' and a string 'content', got {_short(m)}")
    return m


def _short(x) -> str:
    s = repr(x)
    return s if len(s) <= 120 else s[:117] + "..."


def messages_of(obs, what: str) -> list[dict]:
    """An observation as chat messages: a string is a user message; a dict one message; a list several."""
    if isinstance(obs, str):
        return [{"role": "user", "content": obs}]
    if isinstance(obs, dict):
        return [_message(obs, what)]
    if isinstance(obs, (list, tuple)) and obs:
        return [_message(m, f"{what}[{i}]") for i, m in enumerate(obs)]
    raise TypeError(f"{what} must be a string, a chat message dict or a non-empty list of them, got "
                    f"{type(obs).__name__} {_short(obs)}")


def check_reset(out, where: Where) -> tuple[list[dict], dict]:
    """``reset``'s return value -> (the first messages, info); an `EnvError` naming what is wrong."""
    try:
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"reset must return a 2-tuple (observation, info), got {type(out).__name__} "
                            f"{_short(out)}")
        obs, info = out
        if info is not None and not isinstance(info, dict):
            raise TypeError(f"reset's info must be a dict, got {type(info).__name__}")
        return messages_of(obs, "reset's observation"), info or {}
    except TypeError as e:
        raise EnvError(f"{where.at(None)}: {e}") from None


@dataclass(frozen=True)
class StepResult:
    reply: list[dict] | None   # the environment's reply as chat messages; None: no reply
    reward: float
    terminated: bool
    truncated: bool
    info: dict


def _is_bool(x) -> bool:
    return isinstance(x, bool) or type(x).__name__ in ("bool", "bool_")  # numpy.bool_ too


def check_step(out, where: Where, turn: int) -> StepResult:
    """``step``'s return value -> `StepResult`; an `EnvError` naming what is wrong."""
    try:
        if not isinstance(out, tuple) or len(out) != 5:
            n = f"a {len(out)}-tuple" if isinstance(out, tuple) else f"{type(out).__name__} {_short(out)}"
            raise TypeError(f"step must return a 5-tuple (observation, reward, terminated, truncated, info), got {n}")
        obs, reward, terminated, truncated, info = out
        if not isinstance(reward, numbers.Real) or _is_bool(reward) or not math.isfinite(float(reward)):
            raise TypeError(f"step's reward must be a finite number, got {type(reward).__name__} {_short(reward)}")
        for k, v in (("terminated", terminated), ("truncated", truncated)):
            if not _is_bool(v):
                raise TypeError(f"step's {k} must be a bool, got {type(v).__name__} {_short(v)}")
        if info is not None and not isinstance(info, dict):
            raise TypeError(f"step's info must be a dict, got {type(info).__name__}")
        ended = bool(terminated) or bool(truncated)
        if obs is None and not ended:
            raise TypeError("step returned observation None but neither terminated nor truncated: return the "
                            "environment's reply, or end the episode")
        reply = None if obs is None else messages_of(obs, "step's observation")
        return StepResult(reply, float(reward), bool(terminated), bool(truncated), info or {})
    except TypeError as e:
        raise EnvError(f"{where.at(turn)}: {e}") from None


# ------------------------------------------------------------------------------------------- calling them

def call_all(calls: list[tuple[Callable, tuple, dict]], workers: int = 16) -> tuple[list, float]:
    """Run ``fn(*args, **kwargs)`` for every call: plain functions in a thread pool, coroutine functions (and
    anything that returns an awaitable) concurrently on one event loop. Returns (each call's result or the
    exception it raised, in order; wall seconds)."""
    t0 = time.perf_counter()

    def one(i: int):
        fn, args, kwargs = calls[i]
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- the caller names the environment and the sample
            return e

    out: list = [None] * len(calls)
    threaded = [i for i, (fn, _, _) in enumerate(calls) if not inspect.iscoroutinefunction(fn)]
    for i in sorted(set(range(len(calls))) - set(threaded)):
        out[i] = one(i)  # a coroutine object, awaited below
    if threaded:
        with ThreadPoolExecutor(min(workers, len(threaded)), thread_name_prefix="rlft-env") as pool:
            for i, r in zip(threaded, pool.map(one, threaded)):
                out[i] = r
    pending = [i for i, r in enumerate(out) if inspect.isawaitable(r)]
    if pending:
        for i, r in zip(pending, _await_all([out[i] for i in pending])):
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # KeyboardInterrupt, SystemExit: not the environment's fault to report
            out[i] = r
    return out, time.perf_counter() - t0


def _await_all(awaitables: list) -> list:
    """Await them together on a new event loop (in a thread of its own when this one already runs a loop, as in
    a notebook)."""
    async def gather():
        return await asyncio.gather(*awaitables, return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, gather()).result()
