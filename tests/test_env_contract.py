"""The environment contract (rlft/env.py) and its faults: what an environment returns is checked and a bad value is
an error naming the environment, the turn and the sample -- or, under rewards.on_error: drop, the sample is
dropped and counted; episodes that never end or outgrow env.max_tokens are truncated and counted; async
environments equal sync ones; replies go through the chat template; env.cls loading and the config's rules."""

import asyncio
import math
from pathlib import Path

import pytest
import torch
from envs_for_tests import AsyncCounting, Counting, Endless
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import backend_of, base_overrides
from rlft import env as rlft_env
from rlft.config import Config, ConfigError
from rlft.data import Row
from rlft.env import EnvError, call_all
from rlft.episodes import run_episodes, score_episodes
from rlft.policy import format_prompt
from rlft.run import env_factory
from rlft.step import make_examples

ENVS = str(Path(__file__).with_name("envs_for_tests.py"))


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return backend_of(model, AutoTokenizer.from_pretrained(tiny_model_dir))


def _cfg(model_dir, **over):
    o = {"model.path": str(model_dir), "rollout.max_new_tokens": 4, "rollout.num_generations": 2,
         "env.cls": f"{ENVS}:Counting", **over}
    return Config.load(None, [f"{k}={v}" for k, v in o.items()])


def _examples(cfg, tok, prompts=("1+1=", "2+3=")):
    rows = [Row(i + 1, {"prompt": p}) for i, p in enumerate(prompts)]
    return [e for e in make_examples(cfg, tok, rows, "train.jsonl", {}) for _ in range(cfg.rollout.num_generations)]


class Bad(Counting):
    """Breaks the contract at turn 2 (``mode``), only for prompts starting with ``only`` (all by default)."""

    def __init__(self, mode: str, only: str = ""):
        super().__init__(replies=3)
        self.mode, self.only = mode, only

    def reset(self, *, seed=None, options=None):
        self.turn, self.bad = 0, options["row"]["prompt"].startswith(self.only)
        if self.bad and self.mode == "reset_obs_only":
            return "just the observation"
        return Counting.reset(self, seed=seed, options=options)

    def step(self, action):
        self.turn += 1
        if not self.bad or self.turn < 2:
            return Counting.step(self, action)
        return {
            "raises": lambda: 1 / 0,
            "obs_int": lambda: (3, 0.0, False, False, {}),
            "reward_str": lambda: ("ok", "1", False, False, {}),
            "reward_nan": lambda: ("ok", math.nan, False, False, {}),
            "three_tuple": lambda: ("ok", 1.0, False),
            "terminated_str": lambda: ("ok", 1.0, "yes", False, {}),
            "none_running": lambda: (None, 1.0, False, False, {}),
            "no_content": lambda: ({"role": "tool"}, 1.0, False, False, {}),
        }[self.mode]()


BAD = [
    ("raises", "raised ZeroDivisionError: division by zero (" + __file__.replace("test_env_contract.py", "")),
    ("obs_int", "step's observation must be a string, a chat message dict or a non-empty list of them, got int 3"),
    ("reward_str", "step's reward must be a finite number, got str '1'"),
    ("reward_nan", "step's reward must be a finite number, got float nan"),
    ("three_tuple", "step must return a 5-tuple (observation, reward, terminated, truncated, info), got a 3-tuple"),
    ("terminated_str", "step's terminated must be a bool, got str 'yes'"),
    ("none_running", "step returned observation None but neither terminated nor truncated"),
    ("no_content", "step's observation must have a string 'role' and a string 'content', got {'role': 'tool'}"),
    ("reset_obs_only", "reset must return a 2-tuple (observation, info), got str 'just the observation'"),
]


@pytest.mark.parametrize("mode,problem", BAD, ids=[m for m, _ in BAD])
def test_a_broken_environment_is_an_error_naming_it_the_turn_and_the_sample(tiny_model_dir, backend, mode, problem):
    cfg = _cfg(tiny_model_dir, **{"env.args": f"{{mode: {mode}, only: '2'}}"})
    with pytest.raises(EnvError) as e:
        run_episodes(backend, _examples(cfg, backend.tokenizer), Bad, cfg, torch.Generator().manual_seed(0), 7)
    msg = str(e.value)
    when = "in reset" if mode.startswith("reset") else "at turn 2"
    assert f"environment Bad {when} (step 7, sample: " in msg and "line 2, generation 0)" in msg, msg
    assert problem in msg and "rewards.on_error: drop" in msg, msg


@pytest.mark.parametrize("mode", ["raises", "reward_str", "reset_obs_only"])
def test_under_on_error_drop_the_sample_is_dropped_and_counted(tiny_model_dir, backend, mode):
    cfg = _cfg(tiny_model_dir, **{"env.args": f"{{mode: {mode}, only: '2'}}", "rewards.on_error": "drop"})
    ex = _examples(cfg, backend.tokenizer)
    ep = run_episodes(backend, ex, Bad, cfg, torch.Generator().manual_seed(0), 1)
    assert ep.valid.tolist() == [True, True, False, False] and ep.stats.errors == 2
    assert all(t[-1]["role"] == "error" and "environment Bad" in t[-1]["content"] for t in ep.rollout.turns[2:])
    sc = score_episodes([], ex, ep, cfg, 1)
    assert sc.valid.tolist() == [True, True, False, False]


def test_a_run_with_dropped_episodes_goes_on(tiny_model_dir, tiny_data, tmp_path):
    """Every episode fails at its second turn (the environment given in Python): counted, and the run finishes."""
    import json

    from rlft.train import train
    o = {"train.steps": 2, "rewards": "[]", "rewards.on_error": "drop", "rollout.max_new_tokens": 3}
    out = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "r", **o)),
                env=lambda: Bad("raises"))
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss/pg" in x]
    assert [r["rollout/env_errors"] for r in m] == [8, 8] and (out / "checkpoint-2").exists()
    assert [r["rollout/turns_mean"] for r in m] == [2, 2]


def test_episodes_that_never_end_are_truncated_at_max_turns(tiny_model_dir, backend):
    cfg = _cfg(tiny_model_dir, **{"env.max_turns": 3})
    ep = run_episodes(backend, _examples(cfg, backend.tokenizer), Endless, cfg, torch.Generator().manual_seed(0), 1)
    assert ep.stats.truncated == 4 and ep.stats.turns == 12 and ep.stats.errors == 0 and ep.valid.all()
    assert all(sum(m["role"] == "assistant" for m in t) == 3 for t in ep.rollout.turns)
    m = ep.stats.metrics()
    assert m["rollout/turns_mean"] == 3 and m["rollout/truncated_episodes"] == 4


def test_episodes_are_cut_at_max_tokens_and_counted(tiny_model_dir, backend):
    """4 model tokens, 'again' (5), then 1 token fills env.max_tokens=10: truncated, never longer."""
    cfg = _cfg(tiny_model_dir, **{"env.max_tokens": 10, "env.args": "{replies: 5}"})
    ep = run_episodes(backend, _examples(cfg, backend.tokenizer), Counting, cfg, torch.Generator().manual_seed(0), 1)
    assert ep.rollout.lengths.max() <= 10 and ep.stats.truncated == 4
    full = [i for i in range(4) if int(ep.rollout.lengths[i]) == 10]
    assert full and all(ep.rollout.finish[i] == "length" for i in full)


def test_async_environments_equal_sync_ones(tiny_model_dir, backend):
    cfg = _cfg(tiny_model_dir)
    runs = [run_episodes(backend, _examples(cfg, backend.tokenizer), f, cfg, torch.Generator().manual_seed(3), 1)
            for f in (Counting, AsyncCounting)]
    a, b = (r.rollout for r in runs)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.action_mask, b.action_mask)
    assert torch.equal(a.logp, b.logp) and a.turns == b.turns and torch.equal(runs[0].env_rewards, runs[1].env_rewards)
    assert runs[0].stats.turns == 12


def test_call_all_awaits_inside_a_running_event_loop():
    """As in a notebook: an event loop already runs in this thread."""
    async def double(x):
        await asyncio.sleep(0)
        return 2 * x

    def fails():
        raise KeyError("k")

    async def main():
        return call_all([(double, (1,), {}), (str.upper, ("a",), {}), (fails, (), {})])

    out, _ = asyncio.run(main())
    assert out[:2] == [2, "A"] and isinstance(out[2], KeyError)


def test_replies_go_through_the_chat_template(tmp_path):
    """The context is the model's tokens plus exactly the template's text after its turn: the turn's closing (left
    out when the model wrote it: its EOS), the reply, the next generation prompt. A tool message too."""
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm
    tok = byte_tokenizer(chat=True)
    model_dir = save_tiny(tmp_path / "chat", tiny_causal_lm(tok, hidden=32, layers=1, heads=2, seed=1), tok)
    b = backend_of(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir))
    tok = b.tokenizer
    for role, shown in (("user", "<|user|>again"), ("tool", "<|tool|>again")):
        cfg = _cfg(model_dir, **{"env.args": f"{{role: {role}}}", "rollout.max_new_tokens": 3})
        ex = _examples(cfg, tok)
        b.eos_ids = [tok.eos_token_id]
        ep = run_episodes(b, ex, Counting, cfg, torch.Generator().manual_seed(0), 1)
        ro = ep.rollout
        for i, e in enumerate(ex):
            assert ro.prompt_ids[i][ro.prompt_mask[i].bool()].tolist() == e.ids  # reset gave the row's prompt
            assert tok.decode(e.ids) == format_prompt(tok, "1+1=" if i < 2 else "2+3=")
            ids, act = ro.completion_ids[i].tolist(), ro.action_mask[i].tolist()
            starts = [t for t in range(1, int(ro.lengths[i])) if act[t] == 0 and act[t - 1] == 1]
            assert len(starts) == 2
            for s in starts:
                end = next(t for t in range(s, len(act)) if act[t] == 1)
                closed = ids[s - 1] == tok.eos_token_id  # the model ended its turn itself
                want = ("" if closed else "</s>") + shown + "</s><|assistant|>"
                assert tok.decode(ids[s:end]) == want
                assert ids[s:end] == tok(want, add_special_tokens=False)["input_ids"]
        assert [m["role"] for m in ro.turns[0]] == ["user", "assistant", role, "assistant", role, "assistant"]
    # a turn the model closed itself (its EOS, the template's closing) and one cut by length, side by side
    from rlft.env import Where
    from rlft.episodes import _Episode, _reply_ids
    for finish, last, want in (("eos", tok.eos_token_id, "<|user|>again</s><|assistant|>"),
                               ("length", tok("x")["input_ids"][-1], "</s><|user|>again</s><|assistant|>")):
        e = _Episode(None, Where("E", 1, "f", 1, 0), ids=[70, last], last=(0, 2), finish=finish,
                     messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}])
        assert _reply_ids(tok, e, [{"role": "user", "content": "again"}], cfg, 1) == \
            tok(want, add_special_tokens=False)["input_ids"]


def test_a_list_of_messages_needs_a_chat_template(tiny_model_dir, backend):
    class Messages(Counting):
        def reset(self, *, seed=None, options=None):
            Counting.reset(self, seed=seed, options=options)
            return [{"role": "user", "content": "hi"}], {}

    cfg = _cfg(tiny_model_dir)
    with pytest.raises(EnvError, match="reset returned chat messages, but prompts are not formatted with a chat "
                                       "template .* return a string"):
        run_episodes(backend, _examples(cfg, backend.tokenizer), Messages, cfg, None, 1)


# ------------------------------------------------------------------------------------------- loading, config

def test_env_cls_loading_and_registry():
    assert rlft_env.resolve(f"{ENVS}:Counting").__name__ == "Counting"
    assert rlft_env.resolve("envs_for_tests:Endless") is Endless
    rlft_env.register("counting_for_tests")(Counting)
    assert rlft_env.resolve("counting_for_tests") is Counting
    with pytest.raises(ConfigError, match="did you mean 'counting_for_tests'"):
        rlft_env.resolve("counting_for_test")
    with pytest.raises(ConfigError, match="file nowhere.py does not exist"):
        rlft_env.resolve("nowhere.py:X")
    with pytest.raises(ConfigError, match="has no class or callable 'Nope'"):
        rlft_env.resolve(f"{ENVS}:Nope")


def test_a_factory_that_fails_or_makes_no_environment_is_named(tiny_model_dir, backend):
    cfg = _cfg(tiny_model_dir, **{"env.args": "{replies: 1, colour: red}"})
    with pytest.raises(EnvError, match=r"environment Counting\(\*\*\{'replies': 1, 'colour': 'red'\}\) could not be "
                                       r"made \(env.args\): TypeError"):
        run_episodes(backend, _examples(cfg, backend.tokenizer), Counting, cfg, None, 1)
    with pytest.raises(EnvError, match=r"environment dict: the object it made \(dict\) has no reset or step method"):
        run_episodes(backend, _examples(_cfg(tiny_model_dir), backend.tokenizer), dict, _cfg(tiny_model_dir), None, 1)


def test_env_config_rules(tiny_model_dir):
    plain = Config.load(None, ["env.max_turns=3"])
    with pytest.raises(ConfigError, match="env.max_turns set, but there is no environment"):
        env_factory(plain, None)
    assert env_factory(plain, Counting) is Counting
    with pytest.raises(ConfigError, match="given twice"):
        env_factory(_cfg(tiny_model_dir), Counting)
    with pytest.raises(ConfigError, match="rewards.overlap=true applies only to single-turn sampling"):
        _cfg(tiny_model_dir, **{"rewards.overlap": True})
    with pytest.raises(ConfigError, match="rewards.overlap applies only to single-turn sampling"):
        env_factory(Config.load(None, ["rewards.overlap=true"]), Counting)
    with pytest.raises(ConfigError, match="env.max_turns and env.max_tokens must be >= 1"):
        _cfg(tiny_model_dir, **{"env.max_turns": 0})
    with pytest.raises(ConfigError, match="does not support train.fsdp_sampling=sharded"):
        _cfg(tiny_model_dir, **{"train.parallel": "fsdp", "train.fsdp_sampling": "sharded"})


def test_episode_seeds_depend_on_step_row_and_generation_only():
    s = rlft_env.episode_seed
    assert s(0, 1, 5, 0) == s(0, 1, 5, 0) and 0 <= s(0, 1, 5, 0) < 2 ** 63
    assert len({s(0, 1, 5, 0), s(1, 1, 5, 0), s(0, 2, 5, 0), s(0, 1, 6, 0), s(0, 1, 5, 1)}) == 5


def test_an_episode_must_fit_the_models_learned_positions(tmp_path, tiny_data):
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm
    from rlft.train import train
    tok = byte_tokenizer()
    model = save_tiny(tmp_path / "gpt2", tiny_causal_lm(tok, arch="gpt2", hidden=16, layers=1, heads=2,
                                                          max_positions=64), tok)
    o = {"data.max_prompt_tokens": 16, "rollout.max_new_tokens": 8, "rewards": "[]", "env.max_tokens": 100}
    with pytest.raises(ConfigError, match=r"learned positions cannot hold an episode: data.max_prompt_tokens=16 "
                                          r"\(its first observation\) \+ env.max_tokens=100"):
        train(Config.load(None, base_overrides(model, tiny_data, tmp_path / "r", **o)), env=Counting)
    assert not (tmp_path / "r").exists()  # nothing left behind


def test_a_gymnasium_env_subclass_works_as_it_is(tiny_model_dir, backend):
    """Gymnasium's own base class: reset seeds self.np_random from rlft's seed; Text spaces; numpy rewards."""
    gym = pytest.importorskip("gymnasium", reason="the dev extra installs gymnasium")

    class Guess(gym.Env):
        observation_space = gym.spaces.Text(64)
        action_space = gym.spaces.Text(64)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.secret = int(self.np_random.integers(0, 10))
            return f"{options['row']['prompt']} guess a digit", {"secret": self.secret}

        def step(self, action):
            hit = str(self.secret) in action
            return (None if hit else "no"), self.np_random.random(dtype="float32") + hit, bool(hit), False, {}

    cfg = _cfg(tiny_model_dir, **{"env.max_turns": 2})
    ex = _examples(cfg, backend.tokenizer)
    runs = [run_episodes(backend, ex, Guess, cfg, torch.Generator().manual_seed(0), 5) for _ in range(2)]
    assert torch.equal(runs[0].env_rewards, runs[1].env_rewards) and runs[0].rollout.turns == runs[1].rollout.turns
    assert runs[0].rollout.turns[0][0]["content"] == "1+1= guess a digit" and runs[0].stats.reward_turns >= 4
    assert runs[0].env_rewards.sum() > 0


def test_tools_in_resets_info_go_to_the_chat_template(tmp_path, tiny_model_dir, backend):
    """reset's info["tools"] is passed to apply_chat_template(tools=...) for the prompt and every reply."""
    from rlft.tiny import CHAT_TEMPLATE, byte_tokenizer, save_tiny, tiny_causal_lm
    tok = byte_tokenizer(chat=True)
    tok.chat_template = "{% if tools %}<|system|>tools:{% for t in tools %}{{ t['name'] }};{% endfor %}</s>" \
                        "{% endif %}" + CHAT_TEMPLATE
    model_dir = save_tiny(tmp_path / "chat", tiny_causal_lm(tok, hidden=32, layers=1, heads=2, seed=1), tok)
    b = backend_of(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir))

    class WithTools(Counting):
        def reset(self, *, seed=None, options=None):
            obs, _ = Counting.reset(self, seed=seed, options=options)
            return obs, {"tools": [{"name": "add"}, {"name": "mul"}]}

    cfg = _cfg(model_dir, **{"rollout.max_new_tokens": 3})
    ep = run_episodes(b, _examples(cfg, b.tokenizer), WithTools, cfg, torch.Generator().manual_seed(0), 1)
    ro = ep.rollout
    assert b.tokenizer.decode(ro.prompt_ids[0][ro.prompt_mask[0].bool()]) == \
        "<|system|>tools:add;mul;</s><|user|>1+1=</s><|assistant|>"
    assert ep.stats.turns == 12 and ep.valid.all()
    with pytest.raises(EnvError, match="reset's info names tools, but prompts are not formatted with a chat template"):
        run_episodes(backend, _examples(_cfg(tiny_model_dir), backend.tokenizer), WithTools, _cfg(tiny_model_dir),
                     None, 1)
