"""The ``human`` reward: people rate the samples on the ``rlft rate`` page while the trainer waits.

Each call writes the step's samples (or a ``fraction`` of its groups) to the feedback store, polls it until
every item is rated or ``timeout_s`` passes, and turns the ratings into rewards:

* ``mode: score`` -- each sample is scored 1-5 and the reward is ``(score - 3) / 2``, in [-1, 1];
* ``mode: pair``  -- samples of the same group (the ``group_size`` = ``num_generations`` consecutive samples
  of one prompt) are compared two at a time (A / B / tie) and the reward is each sample's Bradley-Terry
  strength, fitted over that group's comparisons (``bradley_terry``; a log-odds scale centred on 0).

Samples without a rating (not selected, or not rated in time) are handled per ``missing``: ``drop`` returns
``None`` (the trainer leaves them out of this component's mean), ``default`` returns ``default``,
``reward_model`` scores them with the sequence-classification model at ``reward_model_path`` (for example one
fitted on earlier ratings by ``rlft reward-model train``; its outputs are on the same scales). Ratings that
arrive after the timeout stay in the store, for the next reward model. See docs/feedback.md.

Config::

    rewards:
      - {name: human, fn: human, args: {db: runs/x/feedback.sqlite, group_size: 4, mode: pair,
                                         timeout_s: 600, missing: reward_model, reward_model_path: runs/rm}}
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time

from rlft.feedback import reward_model
from rlft.feedback.scale import score_to_reward
from rlft.feedback.store import Store

from .base import register, report

log = logging.getLogger(__name__)

MODES = ("score", "pair")
MISSING = ("drop", "default", "reward_model")
__all__ = ["bradley_terry", "human", "score_to_reward"]  # score_to_reward lives in rlft.feedback.scale


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def bradley_terry(n: int, comparisons: list[tuple[int, int, float]], prior: float = 1.0,
                  iters: int = 50, tol: float = 1e-10) -> list[float]:
    """Strengths theta[0..n) of n samples from pairwise outcomes, by Newton's method.

    ``comparisons``: ``(i, j, y)`` with y = 1 if i was preferred to j, 0 if j was, 0.5 for a tie. Maximises

        sum_c [ y log sigmoid(theta_i - theta_j) + (1 - y) log sigmoid(theta_j - theta_i) ] - prior/2 * |theta|^2

    The L2 prior (``prior`` > 0) keeps the answer finite when one side always wins and centres it on 0.
    The objective is strictly concave, so Newton converges in a handful of steps.

    Example, worked by hand: two samples, one comparison that 0 won. By symmetry theta = (t, -t) and the
    gradient in t is 1 - sigmoid(2t) - prior * t = 0. With prior = 1 / (2 ln 3), t = ln(3) / 2 solves it
    (sigmoid(ln 3) = 3/4, so both sides are 1/4): ``bradley_terry(2, [(0, 1, 1)], 1 / (2 * log(3)))``
    is ``[0.549.., -0.549..]``.
    """
    if prior <= 0:
        raise ValueError(f"bradley_terry needs prior > 0, got {prior}")
    theta = [0.0] * n
    for _ in range(iters):
        grad = [-prior * t for t in theta]
        neg_hess = [[prior if r == c else 0.0 for c in range(n)] for r in range(n)]
        for i, j, y in comparisons:
            p = _sigmoid(theta[i] - theta[j])
            grad[i] += y - p
            grad[j] -= y - p
            w = p * (1 - p)
            neg_hess[i][i] += w
            neg_hess[j][j] += w
            neg_hess[i][j] -= w
            neg_hess[j][i] -= w
        step = _solve(neg_hess, grad)
        theta = [t + s for t, s in zip(theta, step)]
        if max(map(abs, grad), default=0.0) < tol:
            break
    return theta


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """x with a x = b, a symmetric positive definite (Gaussian elimination; n is a group size, so small)."""
    n = len(b)
    m = [row[:] + [b[r]] for r, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for k in range(col, n + 1):
                m[r][k] -= f * m[col][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))) / m[r][r]
    return x


class _State:
    """What one process keeps per feedback database: the store, this run's id, a step counter (when the
    caller passes no step) and the reward model (loaded on first use)."""

    def __init__(self, db: str, run_id: str | None):
        self.store = Store(db)
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.store.add_run(self.run_id, {"pid": os.getpid()})
        self.calls = 0
        self.rm = None


_STATES: dict[tuple[str, str | None], _State] = {}
_LOCK = threading.Lock()


def _state(db: str, run_id: str | None) -> _State:
    key = (os.path.abspath(db), run_id)
    with _LOCK:
        if key not in _STATES:
            _STATES[key] = _State(db, run_id)
        return _STATES[key]


def _group_pairs(size: int, pairs: str, rng: random.Random) -> list[tuple[int, int]]:
    """Which samples of a group to compare: ``cycle`` links them in a random ring (``size`` comparisons, one
    for a pair; every sample is compared twice and the group is connected), ``all`` asks every pair."""
    if pairs == "all":
        out = [(i, j) for i in range(size) for j in range(i + 1, size)]
    elif pairs == "cycle":
        order = list(range(size))
        rng.shuffle(order)
        out = [(order[0], order[1])] if size == 2 else [(order[k], order[(k + 1) % size]) for k in range(size)]
    else:
        raise ValueError(f"human reward: pairs must be 'cycle' or 'all', got {pairs!r}")
    return [(i, j) if rng.random() < 0.5 else (j, i) for i, j in out]  # A/B side at random: no position bias


def _check_args(n: int, *, db, mode: str, group_size: int, fraction: float, missing: str,
                reward_model_path) -> None:
    """Raise ``ValueError`` naming the bad argument of the ``human`` reward."""
    if not db:
        raise ValueError("the human reward needs args.db: the feedback database (e.g. runs/x/feedback.sqlite)")
    if mode not in MODES:
        raise ValueError(f"human reward: mode must be one of {MODES}, got {mode!r}")
    if missing not in MISSING:
        raise ValueError(f"human reward: missing must be one of {MISSING}, got {missing!r}")
    if missing == "reward_model" and not reward_model_path:
        raise ValueError("human reward: missing: reward_model needs args.reward_model_path")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"human reward: fraction must be in [0, 1], got {fraction}")
    if group_size < 1 or n % group_size:
        raise ValueError(f"human reward: {n} samples do not split into groups of group_size={group_size}")
    if mode == "pair" and group_size < 2:
        raise ValueError("human reward: mode: pair compares samples of one prompt and needs group_size >= 2")


def _ask(st: _State, step: int, prompts: list[str], completions: list[str], *, mode: str, group_size: int,
         fraction: float, pairs: str, rng: random.Random):
    """Write the chosen groups' samples and their items in one transaction. Returns ``(item_ids, idx,
    item_pairs)``: ``idx`` the batch positions written, ``item_pairs`` (pair mode) each item's two positions
    in ``idx``."""
    num_groups = len(completions) // group_size
    k = round(fraction * num_groups)
    k = max(k, 1) if fraction > 0 and num_groups else k
    chosen = sorted(rng.sample(range(num_groups), k))
    idx = [g * group_size + j for g in chosen for j in range(group_size)]
    item_pairs = None
    if mode == "pair":
        item_pairs = [(gi * group_size + i, gi * group_size + j)
                      for gi in range(len(chosen)) for i, j in _group_pairs(group_size, pairs, rng)]
    item_ids = st.store.add_samples(st.run_id, step, [prompts[i] for i in idx], [completions[i] for i in idx],
                                    [i // group_size for i in idx], pairs=item_pairs)
    return item_ids, idx, item_pairs


def _wait(store: Store, item_ids: list[int], timeout_s: float, poll_s: float) -> dict[int, dict]:
    """Poll until every item is rated or the time is up; the ratings got (and the wait, ``report``ed)."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while True:
        got = store.results(item_ids)
        left = deadline - time.monotonic()
        if len(got) == len(item_ids) or left <= 0:
            break
        time.sleep(min(poll_s, left))
    report(rated_frac=len(got) / len(item_ids) if item_ids else 0.0, asked=len(item_ids),
           wait_seconds=time.monotonic() - t0)
    return got


def _pair_rewards(out: list, got: dict, item_ids: list[int], idx: list[int], item_pairs, group_size: int,
                  prior: float) -> None:
    """Fill ``out`` with each compared sample's Bradley-Terry strength within its group."""
    by_group: dict[int, list[tuple[int, int, float]]] = {}
    for item, (a, b) in zip(item_ids, item_pairs):
        if item in got:
            y = {"a": 1.0, "b": 0.0, "tie": 0.5}[got[item]["choice"]]
            by_group.setdefault(idx[a] // group_size, []).append((idx[a] % group_size, idx[b] % group_size, y))
    for g, comps in by_group.items():
        theta = bradley_terry(group_size, comps, prior)
        seen = {i for c in comps for i in c[:2]}
        for j in seen:  # a sample in no rated comparison has no strength of its own: it is missing
            out[g * group_size + j] = theta[j]


def _fill_missing(st: _State, out: list, prompts: list[str], completions: list[str], *, missing: str,
                  default: float, reward_model_path) -> None:
    """The samples without a rating, per ``missing`` (``drop`` leaves them ``None``)."""
    todo = [i for i in range(len(out)) if out[i] is None]
    if todo and missing == "default":
        for i in todo:
            out[i] = float(default)
    elif todo and missing == "reward_model":
        if st.rm is None or st.rm[0] != reward_model_path:
            st.rm = (reward_model_path, *reward_model.load(reward_model_path))
        vals = reward_model.score(*st.rm[1:], [prompts[i] for i in todo], [completions[i] for i in todo])
        for i, v in zip(todo, vals):
            out[i] = v


@register("human", strict_args=True)
def human(prompts: list[str], completions: list[str], *, db: str | None = None, step: int | None = None,
          mode: str = "score", group_size: int = 1, fraction: float = 1.0, timeout_s: float = 600.0,
          poll_s: float = 2.0, missing: str = "drop", default: float = 0.0, reward_model_path: str | None = None,
          run_id: str | None = None, pairs: str = "cycle", prior: float = 1.0, seed: int = 0,
          **columns) -> list[float | None]:
    """Rewards from people rating the samples in the ``rlft rate`` page (see the module docstring).

    ``db``: the feedback SQLite file; ``mode``: ``score`` | ``pair``; ``group_size``: samples per prompt
    (``num_generations``); ``fraction``: share of groups sent for rating (the rest count as missing);
    ``timeout_s``/``poll_s``: how long to wait for ratings and how often to look; ``missing``: ``drop`` |
    ``default`` | ``reward_model``; ``run_id``: names this run in the store (default: time and pid);
    ``pairs``: ``cycle`` | ``all`` (which pairs of a group to ask); ``prior``: the Bradley-Terry L2 prior.
    """
    n = len(completions)
    _check_args(n, db=db, mode=mode, group_size=group_size, fraction=fraction, missing=missing,
                reward_model_path=reward_model_path)
    st = _state(db, run_id)
    st.calls += 1
    step = st.calls - 1 if step is None else int(step)
    rng = random.Random(f"{seed}:{st.run_id}:{step}")
    item_ids, idx, item_pairs = _ask(st, step, prompts, completions, mode=mode, group_size=group_size,
                                     fraction=fraction, pairs=pairs, rng=rng)
    if item_ids:
        log.info("human reward: step %d waits up to %.0fs for %d ratings in %s (rlft rate --db %s)",
                 step, timeout_s, len(item_ids), db, db)
    got = _wait(st.store, item_ids, timeout_s, poll_s)
    out: list[float | None] = [None] * n
    if mode == "score":
        for item, pos in zip(item_ids, idx):
            if item in got:
                out[pos] = score_to_reward(got[item]["score"])
    else:
        _pair_rewards(out, got, item_ids, idx, item_pairs, group_size, prior)
    _fill_missing(st, out, prompts, completions, missing=missing, default=default,
                  reward_model_path=reward_model_path)
    return out
