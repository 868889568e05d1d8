"""Batched multi-turn episodes: the model talks with an environment (rlft/env.py's contract) for several turns.

All episodes of a step advance together. Each turn is ONE batched ``backend.sample`` over the episodes still
running, with everything so far -- the first observation, the model's turns, the environment's replies -- as the
prompt (the context is prefilled again each turn: no KV cache is carried between turns). Then every running
episode's ``step`` is called with the text of its turn (`rlft.env.call_all`: async environments concurrently, plain
ones in threads), and the reply is tokenised and appended:

* with a chat template (model.chat_template auto/on and the tokenizer has one; reset's ``info["tools"]`` as its
  ``tools``): the conversation is rendered with the model's turn replaced by a marker, and the text after the
  marker -- the turn's closing, the reply, the generation prompt of the next turn -- is tokenised; the turn's
  closing is left out where the model already wrote it (its EOS token). The context is thus exactly the tokens the
  model drew plus the template's own;
* without one: the reply's text, tokenised and appended as it is (write separators, e.g. a newline, yourself).

The result is ONE `Rollout` per step: ``completion_ids`` holds everything after the first observation (model
turns and environment replies interleaved, all attended to in the update), ``action_mask`` marks the model's
tokens (the only ones trained; the environment's get exactly zero gradient), ``logp`` their sampling log-probs (0
on the environment's), ``completions`` each episode's LAST model turn (what reward functions score) and ``turns``
the whole conversation as chat messages. Each turn's reward sits on the turn's last model token.

An episode ends when the environment says so (terminated / truncated), after env.max_turns model turns, or when it
reaches env.max_tokens (the turn or the reply that would pass it is cut or left out); the last two are counted as
truncated. An environment that raises or breaks the contract stops the run with an error naming it, the turn and
the sample -- or, with rewards.on_error: drop, ends that episode, which gets no gradient (counted).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .config import Config
from .env import EnvError, Where, call_all, check_methods, check_reset, check_step, episode_seed, name_of
from .errors import ConfigError
from .policy import encode_prompt, format_prompt, left_pad, uses_chat_template
from .rewards import Reward, RewardResult
from .sampling import Rollout, SamplingParams
from .step import Example, Scores, run_rewards

MARK = "<<rlft:turn>>"  # stands for the model's turn when the chat template renders the environment's reply
EVAL_STEP = -1          # the step in evaluation episodes' seeds: the same environments at every evaluation


@dataclass
class _Episode:
    """One episode while it runs."""

    env: object
    where: Where
    prompt: list[int] = field(default_factory=list)     # the first observation's tokens (until reset: the row's)
    messages: list[dict] = field(default_factory=list)  # the conversation as the chat template renders it
    turns: list[dict] = field(default_factory=list)     # the conversation as logged and given to rewards
    ids: list[int] = field(default_factory=list)        # everything after the prompt
    logp: list[float] = field(default_factory=list)
    model: list[int] = field(default_factory=list)      # 1: the model's token, 0: the environment's
    rewards: list[tuple[int, float]] = field(default_factory=list)  # (position of the turn's last token, reward)
    tools: list | None = None        # reset's info["tools"]: passed to the chat template (tools=)
    last: tuple[int, int] = (0, 0)   # the last model turn: [start, end) in ids
    last_text: str = ""
    finish: str = "error"
    n_turns: int = 0
    done: bool = False
    truncated: bool = False
    error: bool = False


@dataclass
class EpisodeStats:
    """Counts of one batch of episodes (summed over sampling rounds and ranks for the metrics)."""

    episodes: int = 0
    turns: int = 0
    reward_sum: float = 0.0   # of the environment's per-turn rewards
    reward_turns: int = 0     # turns that returned a reward
    truncated: int = 0        # by the environment, env.max_turns or env.max_tokens
    errors: int = 0           # dropped under rewards.on_error: drop
    seconds: float = 0.0      # wall time in reset and step

    def add(self, o: EpisodeStats) -> EpisodeStats:
        return EpisodeStats(*(a + b for a, b in zip(self._values(), o._values())))

    def _values(self) -> tuple:
        return (self.episodes, self.turns, self.reward_sum, self.reward_turns, self.truncated, self.errors,
                self.seconds)

    def metrics(self, total: Callable[[float], float] = float) -> dict:
        """The logged metrics; ``total`` sums a count over ranks (`rlft.distributed.Dist.sum`)."""
        n, turns, r_sum, r_n, trunc, err, _ = (total(x) for x in self._values())
        return {"rollout/turns_mean": turns / max(n, 1), "rollout/env_reward_mean": r_sum / max(r_n, 1),
                "rollout/truncated_episodes": trunc, "rollout/env_errors": err, "perf/env_seconds": self.seconds}


@dataclass(frozen=True)
class Episodes:
    rollout: Rollout              # completions: the last model turns; turns, action_mask: set
    env_rewards: torch.Tensor     # [N, T] each turn's reward on its last model token
    valid: torch.Tensor           # [N] bool: the environment did not fail (rewards.on_error: drop)
    last: list[tuple[int, int]]   # each episode's last model turn: [start, end) in the completion
    stats: EpisodeStats


def run_episodes(backend, examples: list[Example], factory: Callable, cfg: Config, generator, step: int, *,
                 greedy: bool = False, source: str = "") -> Episodes:
    """One episode per example (examples repeated G times in a row; generation = index mod G, 0 when greedy)."""
    g = 1 if greedy else cfg.rollout.num_generations
    tok = backend.tokenizer
    stats = EpisodeStats(episodes=len(examples))
    eps = _start(tok, examples, factory, cfg, step, g, source or cfg.data.train, stats)
    params = SamplingParams.of(cfg.rollout, greedy)
    for turn in range(1, cfg.env.max_turns + 1):
        live = [e for e in eps if not e.done]
        if not live:
            break
        _model_turn(backend, live, params, cfg.env.max_tokens, generator)
        stats.seconds += _env_turn(tok, live, cfg, turn)
    for e in eps:
        if not e.done:  # still running after env.max_turns
            e.done = e.truncated = True
    stats.turns = sum(e.n_turns for e in eps)
    stats.reward_sum = sum(r for e in eps for _, r in e.rewards)
    stats.reward_turns = sum(len(e.rewards) for e in eps)
    stats.truncated = sum(e.truncated for e in eps)
    stats.errors = sum(e.error for e in eps)
    return _assemble(eps, tok.pad_token_id, backend.device, stats)


def _fail(e: _Episode, err: EnvError, cfg: Config) -> None:
    """An environment's fault: stop the run, or (rewards.on_error: drop) end this episode, which gets no gradient."""
    if cfg.rewards.on_error == "raise":
        raise EnvError(f"{err}. Fix the environment, or set rewards.on_error: drop to drop such samples "
                       f"(counted in rollout/env_errors)") from err.__cause__
    e.done = e.error = True
    e.turns.append({"role": "error", "content": str(err)})


def _raised(where: str, exc: Exception) -> EnvError:
    """An exception an environment raised, as an `EnvError` naming where (and the line that raised)."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    err = EnvError(f"{where} raised {type(exc).__name__}: {exc}{at}")
    err.__cause__ = exc
    return err


def _start(tok, examples: list[Example], factory, cfg: Config, step: int, g: int, source: str,
           stats: EpisodeStats) -> list[_Episode]:
    """One environment per episode, all reset together; each first observation becomes that episode's prompt."""
    name, eps = name_of(factory), []
    for i, ex in enumerate(examples):
        try:
            env = factory(**cfg.env.args)
        except Exception as exc:  # noqa: BLE001 -- the user's constructor: name it and its arguments
            raise EnvError(f"environment {name}(**{cfg.env.args!r}) could not be made (env.args): "
                           f"{type(exc).__name__}: {exc}") from exc
        check_methods(env, name)
        eps.append(_Episode(env, Where(name, step, source, ex.row.line, i % g), prompt=list(ex.ids)))
    calls = [(e.env.reset, (), {"seed": episode_seed(cfg.train.seed, step, e.where.line, e.where.generation),
                                "options": {"row": dict(ex.row.columns)}}) for e, ex in zip(eps, examples)]
    outs, stats.seconds = call_all(calls)
    for e, out in zip(eps, outs):
        try:
            if isinstance(out, Exception):
                raise _raised(e.where.at(None), out)
            messages, info = check_reset(out, e.where)
            e.tools = _tools(info, e.where)
            _prompt(tok, e, out[0], messages, cfg)
        except EnvError as err:
            _fail(e, err, cfg)
    return eps


def _tools(info: dict, where: Where) -> list | None:
    """reset's ``info["tools"]``: the tools (JSON schemas or functions) the chat template describes to the model."""
    tools = info.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) or callable(t) for t in tools)):
        raise EnvError(f"{where.at(None)}: reset's info['tools'] must be a list of tool schemas (dicts) or functions "
                       f"for the chat template, got {type(tools).__name__}")
    return tools or None


def _prompt(tok, e: _Episode, obs, messages: list[dict], cfg: Config) -> None:
    """The first observation as the model sees it: formatted and encoded as a dataset prompt would be (the same
    tokens when it is the same text), data.max_prompt_tokens applied."""
    d, templated = cfg.data, uses_chat_template(tok, cfg.model.chat_template)
    if not templated and (not isinstance(obs, str) or e.tools):
        what = "reset returned chat messages" if not isinstance(obs, str) else "reset's info names tools"
        raise EnvError(f"{e.where.at(None)}: {what}, but prompts are not formatted with a chat template (the "
                       f"tokenizer has none, or model.chat_template=off); return a string without tools")
    if templated and d.system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": d.system}] + messages
    try:
        text = format_prompt(tok, messages if e.tools or not isinstance(obs, str) else obs,
                             chat_template=cfg.model.chat_template, system=d.system, tools=e.tools)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a chat template that cannot render what the environment gave
        raise _raised(f"{e.where.at(None)}: the chat template rendering its first observation", exc) from None
    ids = encode_prompt(tok, text, cfg.model.add_bos)
    if len(ids) > d.max_prompt_tokens:
        if d.long_prompts != "truncate":
            raise EnvError(f"{e.where.at(None)}: the first observation has {len(ids)} tokens, over "
                           f"data.max_prompt_tokens={d.max_prompt_tokens} (raise it, or set data.long_prompts: "
                           f"truncate to keep its last tokens)")
        ids = ids[-d.max_prompt_tokens:]
    e.prompt, e.messages, e.turns = ids, list(messages), [dict(m) for m in messages]


def _model_turn(backend, live: list[_Episode], params: SamplingParams, max_tokens: int, generator) -> None:
    """One batched sample over the running episodes, each with its whole context as the prompt; a turn that would
    pass the episode's env.max_tokens is cut there."""
    tok = backend.tokenizer
    budget = [max_tokens - len(e.ids) for e in live]  # >= 1: an episode with no room left has ended
    ids, mask = left_pad([e.prompt + e.ids for e in live], tok.pad_token_id, backend.device)
    ro = backend.sample(ids, mask, replace(params, max_new_tokens=min(params.max_new_tokens, max(budget))),
                        generator=generator)
    lengths, rows, logps = ro.lengths.tolist(), ro.completion_ids.tolist(), ro.logp.tolist()
    for j, e in enumerate(live):
        n, text, finish = lengths[j], ro.completions[j], ro.finish[j]
        if n > budget[j]:
            n, finish = budget[j], "length"
            text = tok.decode(rows[j][:n], skip_special_tokens=True)
        start = len(e.ids)
        e.ids += rows[j][:n]
        e.logp += logps[j][:n]
        e.model += [1] * n
        e.last, e.last_text, e.finish = (start, start + n), text, finish
        e.n_turns += 1
        e.messages.append({"role": "assistant", "content": text})
        e.turns.append({"role": "assistant", "content": text})


def _env_turn(tok, live: list[_Episode], cfg: Config, turn: int) -> float:
    """Every running episode's ``step`` on its turn's text (together); the reward placed, the reply appended or
    the episode ended. Returns the seconds the environments took."""
    max_tokens, last_turn = cfg.env.max_tokens, turn == cfg.env.max_turns
    outs, seconds = call_all([(e.env.step, (e.last_text,), {}) for e in live])
    for e, out in zip(live, outs):
        try:
            if isinstance(out, Exception):
                raise _raised(e.where.at(turn), out)
            res = check_step(out, e.where, turn)
            e.rewards.append((e.last[1] - 1, res.reward))
            e.turns += [dict(m) for m in res.reply or []]
            if res.terminated or res.truncated:
                e.done, e.truncated = True, res.truncated and not res.terminated
                continue
            reply = [] if last_turn or len(e.ids) >= max_tokens else _reply_ids(tok, e, res.reply, cfg, turn)
            if last_turn or len(e.ids) + len(reply) >= max_tokens:  # no model turn would follow the reply
                e.done = e.truncated = True
                continue
            e.ids += reply
            e.logp += [0.0] * len(reply)
            e.model += [0] * len(reply)
            e.messages += res.reply
        except EnvError as err:
            _fail(e, err, cfg)
    return seconds


def _reply_ids(tok, e: _Episode, reply: list[dict], cfg: Config, turn: int) -> list[int]:
    """The reply's tokens: through the chat template (the text after the model's turn, with the closing the model
    already wrote left out, up to the next turn's generation prompt), else its text as it is."""
    if not uses_chat_template(tok, cfg.model.chat_template):
        return [t for m in reply for t in tok(m["content"], add_special_tokens=False)["input_ids"]]
    convo = e.messages[:-1] + [{"role": "assistant", "content": MARK}] + list(reply)
    try:
        text = tok.apply_chat_template(convo, tools=e.tools, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 -- a template that cannot render the reply (a role it does not know)
        raise _raised(f"{e.where.at(turn)}: the chat template rendering the environment's reply", exc) from None
    if MARK not in text:
        raise EnvError(f"{e.where.at(turn)}: the chat template does not render the model's turn (assistant "
                       f"message) back, so the reply cannot be placed after it")
    tail = text[text.rindex(MARK) + len(MARK):]
    if e.finish == "eos" and e.last[1] > e.last[0]:  # the model closed its turn itself: that token is there
        closing = tok.decode([e.ids[e.last[1] - 1]], skip_special_tokens=False)
        if closing and tail.startswith(closing):
            tail = tail[len(closing):]
    return tok(tail, add_special_tokens=False)["input_ids"]


def _assemble(eps: list[_Episode], pad: int, device, stats: EpisodeStats) -> Episodes:
    """The episodes as one `Rollout` (prompts left-padded, completions right-padded) and their turn rewards."""
    n, t = len(eps), max(1, max(len(e.ids) for e in eps))
    prompt_ids, prompt_mask = left_pad([e.prompt for e in eps], pad, device)
    ids = torch.full((n, t), pad, dtype=torch.long)
    mask, actions = torch.zeros((n, t), dtype=torch.long), torch.zeros((n, t), dtype=torch.long)
    logp, rewards = torch.zeros((n, t)), torch.zeros((n, t))
    for i, e in enumerate(eps):
        k = len(e.ids)
        if k:
            ids[i, :k], mask[i, :k] = torch.tensor(e.ids), 1
            actions[i, :k], logp[i, :k] = torch.tensor(e.model), torch.tensor(e.logp)
        for pos, r in e.rewards:
            rewards[i, pos] += r
    ro = Rollout(prompt_ids, prompt_mask, ids.to(device), mask.to(device), logp.to(device),
                 [e.finish for e in eps], [e.last_text for e in eps], actions.to(device), [e.turns for e in eps])
    valid = torch.tensor([not e.error for e in eps], device=device)
    return Episodes(ro, rewards.to(device), valid, [e.last for e in eps], stats)


def score_episodes(rewards: list[Reward], examples: list[Example], ep: Episodes, cfg: Config, step: int = 0,
                   **kw) -> Scores:
    """The episodes' rewards: each turn's environment reward on its last token, plus the reward functions' (if
    any) on the LAST model turn -- they see ``completions`` = the last turn's text, ``completion_ids`` its tokens,
    ``prompts`` the dataset prompts and ``conversation`` the whole conversation (chat messages). ``kw``:
    `rlft.step.run_rewards`' on_error / group_size / normalize (else the config's)."""
    ro, n = ep.rollout, len(examples)
    ids = [row[s:e] for row, (s, e) in zip(ro.completion_ids.tolist(), ep.last)]
    if rewards:
        result = run_rewards(rewards, examples, ro.completions, ids, cfg, step=step,
                             columns={"conversation": ro.turns}, **kw)
    else:
        result = RewardResult([[0.0] * len(x) for x in ids], {}, [False] * n)
    dense = ep.env_rewards.clone()
    for i, vals in enumerate(result.token_rewards):
        s = ep.last[i][0]
        if vals:
            dense[i, s:s + len(vals)] += torch.tensor(vals[:dense.shape[1] - s], device=dense.device)
    invalid = torch.tensor(result.invalid, dtype=torch.bool, device=dense.device)
    return Scores(dense, ep.valid & ~invalid, result)
