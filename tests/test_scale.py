"""Scale-out: LoRA through PEFT, and torchrun data parallelism on CPU with gloo (2 processes == 1 process)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import base_overrides
from rlft.config import Config
from rlft.train import train

peft = pytest.importorskip("peft", reason="LoRA needs the lora extra (peft), which the dev extra installs")


def _sd(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_lora_trains_adapters_only_and_reference_is_the_base(tiny_model_dir, tiny_data, tmp_path):
    from safetensors.torch import load_file

    from conftest import backend_of, completion_logp, sample
    from rlft.backends import AdaptersOff, load_policy
    from rlft.policy import encode_prompt, left_pad
    from rlft.update import logprobs_of

    over = base_overrides(tiny_model_dir, tiny_data, tmp_path / "lora", **{
        "model.lora.r": 4, "model.lora.alpha": 8, "algo.kl_coef": 0.1, "train.steps": 2, "optim.lr": 0.05,
        "model.lora.save_merged": True})
    cfg = Config.load(None, over)
    out = train(cfg)
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter_config.json").exists()
    adapter = load_file(str(ckpt / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at 0
    # base weights unchanged on disk; merged weights load in plain transformers and differ from the base
    base, merged = _sd(tiny_model_dir), _sd(ckpt / "merged")
    assert any(not torch.equal(base[k], merged[k]) for k in base)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "kl/mean" in x]
    assert rows[-1]["kl/mean"] > 0
    # the reference log-probs (adapters off) equal the base model's
    model, tok = load_policy(cfg.model, adapter=str(ckpt))
    base_model, _ = load_policy(Config.load(None, [f"model.path={tiny_model_dir}"]).model)
    ids, mask = left_pad([encode_prompt(tok, "1+2=")] * 2, tok.pad_token_id)
    ro = sample(model, tok, ids, mask, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    ref = logprobs_of(AdaptersOff(backend_of(model, tok)), ro, cfg)  # the reference of a LoRA run
    with torch.no_grad():
        want = completion_logp(base_model, ids, mask, ro.completion_ids, ro.completion_mask).logp * ro.completion_mask
        pol = completion_logp(model, ids, mask, ro.completion_ids, ro.completion_mask).logp * ro.completion_mask
    torch.testing.assert_close(ref, want, atol=1e-5, rtol=0)
    assert (pol - want).abs().max() > 1e-4  # while the adapters are on, the policy differs from the base


def _torchrun(args, out, env=None, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "rlft", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


DP = {"rollout.temperature": 0, "rollout.batch_prompts": 4, "rollout.num_generations": 2, "train.steps": 3,
      "algo.estimator": "reinforce", "algo.baseline": "batch", "optim.micro_batch_size": 3,
      "algo.kl_coef": 0.05, "train.save_every": 1}


@pytest.fixture
def mixed_data(tmp_path):
    """Prompts ending in letters or in punctuation: an untrained tiny model repeats the last character, so
    greedy completions get different rewards (ascii_frac) and the batch-mean baseline has signal."""
    rows = [{"prompt": p, "reference": "x"} for p in ["abc", "xy!", "q?", "hello", "..", "zz", "#", "k9", "(", "mn"]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_and_two(model_dir, data, tmp_path, o):
    """The same run in 1 process and in 2 (torchrun): assert equal final parameters (that moved); return both
    runs' step metrics."""
    one = train(Config.load(None, base_overrides(model_dir, data, tmp_path / "one", **o)))
    two = tmp_path / "two"
    proc = _torchrun(base_overrides(model_dir, data, two, **o), two)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = _sd(one / "checkpoint-3"), _sd(two / "checkpoint-3")
    assert any(not torch.equal(a[k], _sd(model_dir)[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    return [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "loss/pg" in x]
            for run in (one, two)]


def test_two_processes_equal_one(tiny_model_dir, mixed_data, tmp_path):
    """Greedy rollouts make the samples identical, so the update alone is compared: the batch-mean baseline,
    the token counts of token_mean and the gradient are global in both runs."""
    ma, mb = _one_and_two(tiny_model_dir, mixed_data, tmp_path, DP)
    assert [r["rollout/samples"] for r in mb] == [8, 8, 8]
    for x, y in zip(ma, mb):
        assert x["reward/mean"] == pytest.approx(y["reward/mean"], abs=1e-6)
        assert x["loss/pg"] == pytest.approx(y["loss/pg"], abs=1e-5)


KILL = '''
import os

def reward(prompts, completions, step, **kw):
    if os.environ.get("RLFT_KILL_AT") == str(step):
        os._exit(9)
    return [sum(ch.isascii() and ch.isalnum() for ch in c) / max(1, len(c)) for c in completions]
'''


def test_killed_and_resumed_two_process_run_equals_uninterrupted(tiny_model_dir, tiny_data, tmp_path):
    f = tmp_path / "kill.py"
    f.write_text(KILL)
    o = {**DP, "rollout.temperature": 1.0, "rewards": f"[{{fn: '{f}:reward'}}]", "train.save_every": 2,
         "train.steps": 4}
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _torchrun(base_overrides(tiny_model_dir, tiny_data, full, **o), full).returncode == 0
    proc = _torchrun(base_overrides(tiny_model_dir, tiny_data, cut, **o), cut, env={"RLFT_KILL_AT": "3"})
    assert proc.returncode != 0 and (cut / "checkpoint-2").exists() and not (cut / "checkpoint-4").exists()
    proc = _torchrun(base_overrides(tiny_model_dir, tiny_data, cut, **o) + ["--resume", str(cut)], cut)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = _sd(full / "checkpoint-4"), _sd(cut / "checkpoint-4")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


BY_PROMPT = '''
def reward(prompts, completions, **kw):
    return [{"a!": 0.0, "b!": 2.0, "cd": 1.0, "ef": 1.0}[p] for p in prompts]
'''


def test_two_processes_equal_one_when_a_rank_has_no_signal(tiny_model_dir, tmp_path):
    """Zero-advantage samples are not run. Rewards 0 and 2 on rank 0's prompts, 1 and 1 on rank 1's: with the
    batch-mean baseline (1) every advantage of rank 1 is exactly 0, so rank 1 runs no sample at all, yet takes
    part in every all-reduce (its gradient is zero; the loss statistics sum over the same keys): 2 processes
    finish, equal to 1."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reference": "x"}) + "\n" for p in ["a!", "b!", "cd", "ef"]))
    f = tmp_path / "r.py"
    f.write_text(BY_PROMPT)
    o = {**DP, "rollout.num_generations": 1, "algo.kl_coef": 0.0, "data.shuffle": False, "train.save_every": 0,
         "rewards": f"[{{fn: '{f}:reward'}}]"}
    ma, mb = _one_and_two(tiny_model_dir, data, tmp_path, o)
    for x, y in zip(ma, mb):
        assert y["rollout/zero_advantage_frac"] == x["rollout/zero_advantage_frac"] == 0.5
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5)
