"""Multi-turn episodes (rlft/episodes.py): one turn equals the single-turn path bit for bit; environment tokens get
exactly zero gradient; per-turn rewards and discounting over the model's tokens; 2 processes == 1 and
kill-and-resume == uninterrupted; every estimator runs with an environment (tests/envs_for_tests.py).
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from envs_for_tests import Counting
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ASCII, backend_of, base_overrides
from rlft import estimators
from rlft.config import Config
from rlft.data import Row
from rlft.episodes import run_episodes
from rlft.run import build_run
from rlft.step import make_examples
from rlft.train import train, with_advantages, with_reference
from rlft.update import Optim, update

ENVS = str(Path(__file__).with_name("envs_for_tests.py"))


def _sd(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x]


def _env(name, **over):
    return {"env.cls": f"{ENVS}:{name}", "rewards": "[]", **over}


def test_one_turn_environment_equals_the_single_turn_path(tiny_model_dir, tiny_data, tmp_path):
    """reset gives the row's prompt, step ends the episode with ascii_frac of the action as its reward: the same
    samples, metrics and weights after 2 steps as the single-turn path with the ascii_frac reward, bit for bit."""
    common = {"train.steps": 2, "log.samples_every": 1, "train.save_every": 0}
    single = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "single", **common,
                                                    rewards=f"[{{fn: '{ASCII}:ascii_frac'}}]")))
    multi = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "multi", **common,
                                                   **_env("Counting", **{"env.args": "{replies: 0}"}))))
    a, b = _sd(single / "checkpoint-2"), _sd(multi / "checkpoint-2")
    assert any(not torch.equal(a[k], _sd(tiny_model_dir)[k]) for k in a)  # the weights moved
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ms, mm = _lines(single / "metrics.jsonl"), _lines(multi / "metrics.jsonl")
    assert [r["step"] for r in ms] == [r["step"] for r in mm] == [1, 2]
    for x, y in zip(ms, mm):
        shared = [k for k in x if k in y and k != "time" and not k.startswith("perf/")]
        assert len(shared) > 12 and {k: x[k] for k in shared} == {k: y[k] for k in shared}
        assert y["rollout/turns_mean"] == 1 and y["rollout/env_reward_mean"] == pytest.approx(x["reward/ascii_frac"])
    ss, sm = _lines(single / "samples.jsonl"), _lines(multi / "samples.jsonl")
    assert len(ss) == len(sm) == 4
    for x, y in zip(ss, sm):
        assert {k: y[k] for k in x} == x
        assert y["actions"] == [1] * len(y["tokens"]) and [t["role"] for t in y["turns"]] == ["user", "assistant"]


def _stepped(model_dir, data, out, env_args, **over):
    """One step's batch of a Counting run, up to its advantages (what the update receives), and the run."""
    o = {"algo.estimator": "reinforce", "algo.baseline": "none", "rollout.temperature": 0, "optim.max_grad_norm": 0,
         "rollout.max_new_tokens": 3, "rollout.num_generations": 2, **_env("Counting"), "env.args": env_args, **over}
    from rlft.collect import collect
    run = build_run(Config.load(None, base_overrides(model_dir, data, out, **o)))
    batch, _, _ = collect(run.backend, run.stream, run.rewards, run.cfg, run.generator, 1, run.ctx, run.env)
    batch = with_reference(run, batch)
    return run, with_advantages(run, batch, 1)


def _runs(ro, i):
    """Row i's completion as runs of (is the model's, token ids)."""
    n, ids, act = int(ro.lengths[i]), ro.completion_ids[i].tolist(), ro.action_mask[i].tolist()
    runs = []
    for t in range(n):
        if runs and runs[-1][0] == act[t]:
            runs[-1][1].append(ids[t])
        else:
            runs.append((act[t], [ids[t]]))
    return runs


def test_environment_tokens_get_exactly_zero_gradient(tiny_model_dir, tiny_data, tmp_path):
    """The update's gradient (SGD, lr 1: the weights move by minus the gradient) equals the gradient of the loss
    over the model's tokens only, computed here by hand; advantages of 1000 put on the environment's tokens change
    nothing, bit for bit."""
    run, batch = _stepped(tiny_model_dir, tiny_data, tmp_path / "r", "{replies: 2}")
    ro = batch.rollout
    env_tok = ro.completion_mask * (1 - ro.action_mask)
    assert env_tok.sum() > 0 and (batch.loss_mask == ro.action_mask).all()
    assert (ro.logp * env_tok == 0).all() and (batch.advantages * env_tok == 0).all()
    poisoned = replace(batch, advantages=batch.advantages + 1000.0 * env_tok)
    base = {k: v.detach().clone() for k, v in run.backend.model.named_parameters()}

    def moved(b):
        model = run.backend.model
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(base[k])
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1.0)
        update(run.backend, Optim(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), params), b, run.cfg)
        return {k: base[k] - p.detach() for k, p in model.named_parameters()}

    clean, dirty = moved(batch), moved(poisoned)
    for k in clean:
        assert torch.equal(clean[k], dirty[k]), k
    # by hand: token_mean of -A_t * log pi(a_t | context) over the model's tokens, one forward over prompt + completion
    model = run.backend.model
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(base[k])
    model.zero_grad()
    loss = 0.0
    for i in range(len(ro.finish)):
        p_ids = ro.prompt_ids[i][ro.prompt_mask[i].bool()]
        n = int(ro.lengths[i])
        seq = torch.cat([p_ids, ro.completion_ids[i, :n]])[None]
        logits = model(input_ids=seq).logits[0, len(p_ids) - 1:-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ro.completion_ids[i, :n, None]).squeeze(-1)
        loss = loss - (batch.advantages[i, :n] * logp * ro.action_mask[i, :n]).sum()
    (loss / ro.action_mask.sum()).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(clean[k], p.grad, atol=1e-6, rtol=1e-4, msg=k)


def test_the_reply_changes_the_context_not_which_tokens_are_trained(tiny_model_dir, tiny_data, tmp_path):
    """Each environment run holds exactly the reply's tokens; the trained positions are exactly the model's turns;
    another reply text gives other context tokens and other positions, never a trained environment token."""
    seen = []
    for reply in ("again", "once more, please"):
        run, batch = _stepped(tiny_model_dir, tiny_data, tmp_path / reply.replace(" ", "_").replace(",", ""),
                              f"{{replies: 2, reply: '{reply}'}}")
        ro, tok = batch.rollout, run.backend.tokenizer
        want = tok(reply, add_special_tokens=False)["input_ids"]
        for i in range(len(ro.finish)):
            runs = _runs(ro, i)
            assert [m for m, _ in runs] == [1, 0, 1, 0, 1]  # three model turns, two replies (no chat template)
            assert all(ids == want for m, ids in runs if m == 0)
            trained = batch.loss_mask[i].bool() & ro.completion_mask[i].bool()
            assert trained.tolist() == ro.action_mask[i].bool().tolist()
        seen.append(ro)
    assert seen[0].completion_ids.shape != seen[1].completion_ids.shape or \
        not torch.equal(seen[0].completion_ids, seen[1].completion_ids)


class Scored(Counting):
    """Rewards 1, 0.5, 2 on the three turns."""

    def reset(self, *, seed=None, options=None):
        self.turn = 0
        return Counting.reset(self, seed=seed, options=options)

    def step(self, action):
        obs, _, term, trunc, info = Counting.step(self, action)
        self.turn += 1
        return obs, [1.0, 0.5, 2.0][self.turn - 1], term, trunc, info


def test_turn_rewards_land_on_each_turns_last_token_and_discount_over_model_tokens(tiny_model_dir):
    """Turns of exactly 2 model tokens (no EOS), replies 'again' (5 tokens): the layout is
    M M E E E E E M M E E E E E M M with rewards 1, 0.5, 2 on the model tokens 2, 4, 6 (positions 1, 8, 15).
    With gamma = 0.5 the environment tokens are not steps, so over the 6 model tokens (rewards 0 1 0 .5 0 2):
    R5 = 2, R4 = .5 * 2 = 1, R3 = .5 + .5 * 1 = 1, R2 = .5 * 1 = .5, R1 = 1 + .5 * .5 = 1.25, R0 = .5 * 1.25 = .625."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # no EOS: every turn is exactly rollout.max_new_tokens long
    backend = backend_of(model, AutoTokenizer.from_pretrained(tiny_model_dir), eos_ids=[])
    cfg = Config.load(None, [f"model.path={tiny_model_dir}", "rollout.max_new_tokens=2", "rollout.num_generations=2",
                             f"env.cls={ENVS}:Counting"])
    tok = backend.tokenizer
    rows = [Row(1, {"prompt": "1+1="}), Row(2, {"prompt": "2+3="})]
    examples = [e for e in make_examples(cfg, tok, rows, "t", {}) for _ in range(2)]
    ep = run_episodes(backend, examples, Scored, cfg, torch.Generator().manual_seed(0), 1)
    ro = ep.rollout
    assert len(tok("again", add_special_tokens=False)["input_ids"]) == 5
    layout = [1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    assert ro.action_mask.tolist() == [layout] * 4 and ro.completion_mask.tolist() == [[1] * 16] * 4
    want_r = [0.0] * 16
    want_r[1], want_r[8], want_r[15] = 1.0, 0.5, 2.0
    assert ep.env_rewards.tolist() == [want_r] * 4
    adv = estimators.advantages("reinforce", estimators.Inputs(ep.env_rewards, ro.actions, 2, gamma=0.5),
                                baseline="none")
    want = [0.0] * 16
    for pos, v in zip([0, 1, 7, 8, 14, 15], [0.625, 1.25, 0.5, 1.0, 1.0, 2.0]):
        want[pos] = v
    assert adv.tolist() == [want] * 4
    # the same numbers from a hand-made mask with holes: model steps at 0, 1, 4, 6; rewards 0, 1, 2, 3 there
    r = torch.tensor([[0.0, 1.0, 9.0, 9.0, 2.0, 9.0, 3.0]])  # the 9s sit on mask-0 positions: never counted
    m = torch.tensor([[1, 1, 0, 0, 1, 0, 1]])
    # R6 = 3, R4 = 2 + .5 * 3 = 3.5, R1 = 1 + .5 * 3.5 = 2.75, R0 = .5 * 2.75 = 1.375
    assert estimators.discounted_returns(r, m, 0.5).tolist() == [[1.375, 2.75, 0, 0, 3.5, 0, 3.0]]


def test_discounting_single_turn_is_unchanged():
    """Padding only at the end: the returns equal the old every-position recursion bit for bit."""
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, 9, generator=g)
    m = (torch.arange(9)[None] < torch.tensor([9, 5, 1, 7, 3, 8])[:, None]).long()
    old = torch.zeros_like(r)
    run = torch.zeros(6)
    rm = r * m
    for t in range(8, -1, -1):
        run = rm[:, t] + 0.9 * run
        old[:, t] = run
    assert torch.equal(estimators.discounted_returns(r, m, 0.9), old * m)


@pytest.mark.parametrize("estimator", sorted(estimators.ESTIMATORS))
def test_every_estimator_runs_with_an_environment(tiny_model_dir, tiny_data, tmp_path, estimator):
    o = {"train.steps": 1, "algo.estimator": estimator, "rollout.max_new_tokens": 3, **_env("Counting")}
    out = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / estimator, **o)))
    m = [r for r in _lines(out / "metrics.jsonl") if "loss/pg" in r][0]
    assert m["rollout/turns_mean"] == 3 and m["rollout/truncated_episodes"] == 0 and m["grad_norm"] > 0


def test_filter_groups_and_rewards_with_an_environment(tiny_model_dir, tiny_data, tmp_path):
    """algo.filter_groups samples episodes again for groups without signal; reward functions add to the last turn
    and see the conversation."""
    rew = tmp_path / "conv.py"
    rew.write_text("def turns(completions, conversation, **kw):\n"
                   "    return [float(sum(m['role'] == 'assistant' for m in c)) for c in conversation]\n")
    o = {"train.steps": 1, "algo.filter_groups": True, "rollout.max_new_tokens": 3, **_env("Counting"),
         "rewards": f"[{{fn: '{rew}:turns'}}]"}
    out = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "f", **o)))
    m = [r for r in _lines(out / "metrics.jsonl") if "loss/pg" in r][0]
    assert m["reward/turns"] == 3.0 and "rollout/filter_rounds" in m
    assert m["reward/mean"] == pytest.approx(3.0 + 3 * m["rollout/env_reward_mean"], abs=1e-5)


DP = {"rollout.temperature": 0, "rollout.batch_prompts": 4, "rollout.num_generations": 2, "train.steps": 2,
      "algo.estimator": "reinforce", "algo.baseline": "batch", "optim.micro_batch_size": 3,
      "rollout.max_new_tokens": 3, "train.save_every": 0}


def _run_cli(args, nproc=1, env=None):
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return subprocess.run([*head, "-m", "rlft", "train", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_two_processes_equal_one_with_an_environment(tiny_model_dir, tmp_path):
    """Greedy episodes whose replies hold the reset seed: the seeds, so the contexts, are the same in both layouts."""
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["abc", "xy!", "q?", "hello", "..", "zz"]))
    o = {**DP, **_env("Seeded"), "rewards": f"[{{fn: '{ASCII}:ascii_frac'}}]"}
    one = train(Config.load(None, base_overrides(tiny_model_dir, data, tmp_path / "one", **o)))
    proc = _run_cli(base_overrides(tiny_model_dir, data, tmp_path / "two", **o), nproc=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = _sd(one / "checkpoint-2"), _sd(tmp_path / "two" / "checkpoint-2")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    ma, mb = ([r for r in _lines(x / "metrics.jsonl") if "loss/pg" in r] for x in (one, tmp_path / "two"))
    for x, y in zip(ma, mb):
        for k in ("reward/mean", "rollout/turns_mean", "rollout/env_reward_mean", "rollout/truncated_episodes",
                  "rollout/len_mean"):
            assert x[k] == pytest.approx(y[k], abs=1e-6), k


KILL = '''
import os

def reward(completions, step, **kw):
    if os.environ.get("RLFT_KILL_AT") == str(step):
        os._exit(9)  # as if the machine died mid-run
    return [0.0 for _ in completions]
'''


def test_killed_and_resumed_episodes_equal_uninterrupted(tiny_model_dir, tiny_data, tmp_path):
    f = tmp_path / "kill.py"
    f.write_text(KILL)
    o = {"train.steps": 4, "train.save_every": 2, "rollout.max_new_tokens": 3, **_env("Seeded"),
         "rewards": f"[{{fn: '{f}:reward'}}]"}
    full = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "full", **o)))
    cut = tmp_path / "cut"
    proc = _run_cli(base_overrides(tiny_model_dir, tiny_data, cut, **o), env={"RLFT_KILL_AT": "3"})
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert (cut / "checkpoint-2").exists() and not (cut / "checkpoint-4").exists()
    train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, cut, **o)), resume=True)
    a, b = _sd(full / "checkpoint-4"), _sd(cut / "checkpoint-4")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    ma, mb = ([r for r in _lines(x / "metrics.jsonl") if "loss/pg" in r] for x in (full, cut))
    assert [r["step"] for r in mb] == [1, 2, 3, 4]
    assert [(r["reward/mean"], r["rollout/env_reward_mean"]) for r in ma] == \
        [(r["reward/mean"], r["rollout/env_reward_mean"]) for r in mb]


def test_rlft_eval_of_a_run_with_an_environment_plays_greedy_episodes(tiny_model_dir, tiny_data, tmp_path):
    from rlft.evaluate import evaluate_checkpoint
    o = {"train.steps": 1, "rollout.max_new_tokens": 3, **_env("Counting")}
    out = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "r", **o)))
    res = evaluate_checkpoint(out / "checkpoint-1", tiny_data, limit=5)
    assert res["metrics"]["turns_mean"] == 3 and 0 <= res["metrics"]["reward/mean"] <= 3
    assert len(res["outputs"]) == 5 and [m["role"] for m in res["outputs"][0]["turns"]] == \
        ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert res["outputs"][0]["greedy"] == res["outputs"][0]["turns"][-1]["content"]
