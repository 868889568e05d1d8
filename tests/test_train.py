"""End to end through the real trainer on a tiny model: smoke runs, every estimator, and the invariants
(accumulation 1 x 8 == 8 x 1; a killed-and-resumed run == an uninterrupted one)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import base_overrides, completion_logp, sample, update
from rlft.backends import load_policy
from rlft.config import Config
from rlft.policy import encode_prompt, left_pad
from rlft.train import train

REQUIRED = ["reward/mean", "reward/std", "reward/exact_match", "reward/bleu", "rollout/len_mean",
            "rollout/truncated_frac", "rollout/zero_advantage_frac", "loss/pg", "loss/kl", "loss/entropy", "kl/mean",
            "clip_frac", "grad_norm", "lr", "perf/step_seconds", "perf/sample_seconds", "perf/update_seconds",
            "perf/tokens_per_second"]


def _params(path):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_cli_smoke_run(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlft", "train", *base_overrides(tiny_model_dir, tiny_data, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in _lines(out / "metrics.jsonl") if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for k in REQUIRED:
            assert k in r and r[k] is not None and math.isfinite(r[k]), k
    ckpt = out / "checkpoint-2"
    before, after = _params(tiny_model_dir), _params(ckpt)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the update changed the policy
    assert Config.load(out / "config.yaml").model.path == str(tiny_model_dir)  # resolved config saved


@pytest.mark.parametrize("extra", [
    {"algo.estimator": "reinforce", "algo.baseline": "ema"},
    {"algo.estimator": "value", "algo.gamma": 0.9},
    {"algo.estimator": "rloo", "algo.kl_coef": 0.1, "algo.kl_estimator": "k2"},
    {"algo.estimator": "grpo", "algo.scale": "none", "algo.agg": "seq_sum_norm", "algo.entropy_coef": 0.01},
    {"algo.estimator": "reinforce_pp", "algo.group_baseline": True, "algo.kl_coef": 0.05, "algo.kl_in": "reward"},
    {"algo.estimator": "remax", "rollout.num_generations": 2},
    {"algo.num_iterations": 2, "algo.mini_batches": 2, "algo.agg": "seq_mean_token_mean", "algo.mask_truncated": True},
    {"algo.filter_groups": True, "rollout.engine": "hf", "optim.schedule": "cosine", "optim.warmup_steps": 1},
])
def test_every_estimator_and_option_trains(tiny_model_dir, tiny_data, tmp_path, extra):
    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "r", **extra))
    out = train(cfg)
    rows = [r for r in _lines(out / "metrics.jsonl") if "loss/pg" in r]
    assert len(rows) == 2
    for r in rows:
        assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in r.values()), r
    if cfg.algo.kl_coef:
        assert rows[-1]["kl/mean"] != 0.0  # the reference model is loaded and the policy has moved from it


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_sum_norm"])
def test_accumulation_1x8_equals_8x1(tiny_model_dir, agg):
    """The same rollout and advantages; micro-batch 8 in one go vs 8 micro-batches of 1: same update."""
    results = []
    for micro in (8, 1):
        cfg = Config.load(None, [f"model.path={tiny_model_dir}", "rollout.batch_prompts=2",
                                 "rollout.num_generations=4", f"optim.micro_batch_size={micro}", f"algo.agg={agg}",
                                 "rollout.max_new_tokens=8", "algo.entropy_coef=0.01"])
        model, tok = load_policy(cfg.model)
        prompts = ["ab", "a longer one"]
        ids, mask = left_pad([encode_prompt(tok, p) for p in prompts for _ in range(4)], tok.pad_token_id)
        ro = sample(model, tok, ids, mask, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
        adv = torch.linspace(-1, 1, 8)[:, None] * ro.completion_mask
        params = [p for p in model.parameters()]
        opt = torch.optim.SGD(params, lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        stats = update(model, None, opt, sched, params, ro, adv, ro.completion_mask, None,
                       torch.zeros_like(adv), cfg)
        results.append(([p.detach().clone() for p in params], stats))
    (p8, s8), (p1, s1) = results
    for a, b in zip(p8, p1):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    assert s8["loss/pg"] == pytest.approx(s1["loss/pg"], abs=1e-6)
    assert s8["grad_norm"] == pytest.approx(s1["grad_norm"], rel=1e-5)


KILL_REWARD = '''
import os

def reward(prompts, completions, reference, step, **kw):
    if os.environ.get("RLFT_KILL_AT") == str(step):
        os._exit(9)  # as if the machine died mid-run
    return [sum(ch.isascii() and ch.isalnum() for ch in c) / max(1, len(c)) for c in completions]
'''


def test_killed_and_resumed_run_equals_uninterrupted(tiny_model_dir, tiny_data, tmp_path):
    reward = tmp_path / "kill_reward.py"
    reward.write_text(KILL_REWARD)
    common = dict(**{"train.steps": 4, "train.save_every": 2, "rewards": f"[{{fn: '{reward}:reward'}}]",
                     "algo.estimator": "reinforce", "algo.baseline": "ema", "optim.schedule": "cosine",
                     "algo.num_iterations": 2})
    full = train(Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "full", **common)))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rlft", "train", *base_overrides(tiny_model_dir, tiny_data, out, **common)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "RLFT_KILL_AT": "3"})
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert (out / "checkpoint-2").exists() and not (out / "checkpoint-4").exists()
    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, out, **common))
    train(cfg, resume=True)
    a, b = _params(full / "checkpoint-4"), _params(out / "checkpoint-4")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    ma = [r for r in _lines(full / "metrics.jsonl") if "loss/pg" in r]
    mb = [r for r in _lines(out / "metrics.jsonl") if "loss/pg" in r]
    assert [r["step"] for r in mb] == [1, 2, 3, 4]  # lines past the checkpoint were written once, not twice
    assert [r["reward/mean"] for r in ma] == [r["reward/mean"] for r in mb]


def test_sft_warm_start_lowers_loss_and_rl_starts_from_it(tiny_model_dir, tiny_data, tmp_path):


    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "s", **{
        "sft.steps": 30, "sft.lr": 3e-3, "train.steps": 1, "algo.kl_coef": 0.1}))
    out = train(cfg)
    sft = out / "sft-model"
    assert sft.exists()

    def nll(path):
        model, tok = load_policy(Config.load(None, [f"model.path={path}"]).model)
        ids, mask = left_pad([encode_prompt(tok, "2+3=")], tok.pad_token_id)
        ref = torch.tensor([tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
        with torch.no_grad():
            return -float(completion_logp(model, ids, mask, ref, torch.ones_like(ref)).logp.sum())

    assert nll(sft) < nll(tiny_model_dir) - 1.0
