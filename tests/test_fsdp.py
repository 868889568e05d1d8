"""FSDP2 (train.parallel=fsdp) under torchrun on CPU with gloo: 2 sharded processes == 1 process, a killed and
resumed sharded run == an uninterrupted one, checkpoints load with plain transformers, and sampling with gathered
weights runs no collective (ranks may decode different numbers of steps without a deadlock)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_scale import DP, KILL, _torchrun, mixed_data  # noqa: F401 (mixed_data is a fixture)
from transformers import AutoModelForCausalLM

from conftest import base_overrides
from rlft.config import Config, ConfigError
from rlft.train import train


def _sd(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "loss/pg" in x]


def test_fsdp_two_processes_equal_one_and_resume(tiny_model_dir, mixed_data, tmp_path, monkeypatch):  # noqa: F811
    """Greedy rollouts make the samples identical, so the sharded update alone is compared with one process: the
    policy with a value head beside it (replicated: its gradients are all-reduced) and a sharded KL reference;
    evaluation on rank 0 with gathered weights. The same run, killed after its step-2 checkpoint and resumed --
    with the shards, gradients and optimizer state offloaded this time -- ends equal to it: the full optimizer
    state round-trips through the checkpoint."""
    f = tmp_path / "kill.py"
    f.write_text(KILL)
    o = {**DP, "rewards": f"[{{fn: '{f}:reward'}}]", "train.steps": 4, "train.save_every": 2, "algo.estimator": "value",
         "train.parallel": "fsdp", "data.eval_fraction": 0.2, "train.eval_every": 2}
    one, full, cut = tmp_path / "one", tmp_path / "full", tmp_path / "cut"
    # One process, no sharding. Its log-probs go through transformers' forward, as the sharded ones must:
    # rlft/backends/lean.py computes the same function to ~1e-7, which Adam (lr 1e-2) would turn into ~1e-3 on weights
    # whose gradient is near 0. (Its sampling too: greedy, the same tokens as the sharded run's lean sampling.)
    with monkeypatch.context() as m:
        m.setattr("rlft.backends.base.lean", lambda *a, **k: None)
        train(Config.load(None, base_overrides(tiny_model_dir, mixed_data, one, **o)))
    proc = _torchrun(base_overrides(tiny_model_dir, mixed_data, full, **o), full)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # (a) 2 sharded processes == 1 process
    a, b, init = _sd(one / "checkpoint-4"), _sd(full / "checkpoint-4"), _sd(tiny_model_dir)
    assert any(not torch.equal(a[k], init[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    # Adam does not see the gradient's scale: the gradient norm checks that the ranks' shares are summed
    ma, mb = _metrics(one), _metrics(full)
    assert [r["rollout/samples"] for r in mb] == [8, 8, 8, 8]
    for x, y in zip(ma, mb):
        assert y["reward/mean"] == pytest.approx(x["reward/mean"], abs=1e-6)
        assert y["loss/pg"] == pytest.approx(x["loss/pg"], abs=1e-5)
        assert y["kl/mean"] == pytest.approx(x["kl/mean"], abs=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5)
        assert y["loss/value"] == pytest.approx(x["loss/value"], rel=1e-5)
    evals = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines() if "eval/reward" in x]
    assert len(evals) == 3  # steps 0, 2 and the end
    # (c) a plain transformers folder (the class name is not FSDP's wrapper) with the full optimizer state
    assert json.loads((full / "checkpoint-4" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    state = torch.load(full / "checkpoint-4" / "trainer_state.pt", weights_only=False)
    names = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())  # tied ones once
    names = {f"policy.{k}": v for k, v in names.items()} | {"value_head.proj.weight": torch.zeros(1, 32),
                                                             "value_head.proj.bias": torch.zeros(1)}
    assert set(state["optimizer"]["state"]) == set(names)  # keyed by parameter name, every parameter whole
    assert all(v["exp_avg"].shape == names[k].shape for k, v in state["optimizer"]["state"].items())
    # (b) killed after the step-2 checkpoint, resumed (with offload): equal to the uninterrupted run
    off = base_overrides(tiny_model_dir, mixed_data, cut, **o, **{"train.fsdp_offload": True})
    proc = _torchrun(off, cut, env={"RLFT_KILL_AT": "3"})
    assert proc.returncode != 0 and (cut / "checkpoint-2").exists() and not (cut / "checkpoint-4").exists()
    proc = _torchrun(off + ["--resume", str(cut)], cut)
    assert proc.returncode == 0, proc.stderr[-4000:]
    c = _sd(cut / "checkpoint-4")
    for k in b:
        torch.testing.assert_close(c[k], b[k], atol=1e-6, rtol=0, msg=k)


LOCKSTEP = '''
import datetime, sys
import torch
from rlft.backends import fsdp
from rlft.backends.hf import TransformersDecoder
from rlft.backends.lean import lean
from rlft.config import Config
from rlft.policy import left_pad
from rlft.sampling import SamplingParams
from rlft.step import MicroBatch
from rlft.tiny import byte_tokenizer, tiny_causal_lm

torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank = torch.distributed.get_rank()
tok = byte_tokenizer()
tok.pad_token = tok.eos_token
cfg = Config.load(None, ["train.parallel=fsdp"])
model = fsdp.shard(tiny_causal_lm(tok, hidden=32, layers=2, heads=2, max_positions=128, seed=0), cfg)
backend = fsdp.FSDP(model, tok, [tok.eos_token_id], cfg)
assert lean(model) is None  # sharded: its own forward would bypass FSDP's gathering
ids, mask = left_pad([[5, 6, 7]] * (1 + 2 * rank), tok.pad_token_id)
with fsdp.gathered(model):  # different batch sizes and step counts per rank, through both decoders
    assert lean(model) is not None
    ro = backend.sample(ids, mask, SamplingParams(max_new_tokens=3 + 9 * rank, temperature=1.0),
                        generator=torch.Generator().manual_seed(rank))
    with torch.inference_mode():
        dec = TransformersDecoder(model, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), 8)
        for t in range(2 + 5 * rank):
            dec.step(torch.full((ids.shape[0],), 9 + t))
    if rank == 0:  # as evaluation does: rank 0 alone, through transformers' generate
        fsdp.FSDP(model, tok, [tok.eos_token_id], cfg, engine="hf").sample(ids, mask, SamplingParams(4, 0.0))
assert lean(model) is None and ro.completion_ids.shape[1] == 3 + 9 * rank
mb = MicroBatch(torch.arange(len(ids)), ids, mask, None, ro.completion_ids, ro.completion_mask)
logp = backend.logprobs(mb).logp  # a sharded forward
(logp * ro.completion_mask).sum().backward()
assert all(p.grad is not None for p in model.parameters())
print("lockstep ok", rank)
'''


def test_fsdp_sampling_with_gathered_weights_cannot_deadlock(tmp_path):
    """Inside `fsdp.gathered` the ranks decode different batches for different numbers of steps, with rlft's
    sampler, with transformers' forward (FSDP's hooks fire there) and, on rank 0 alone, with transformers'
    generate: no collective may run, else the sharded forward and backward after it would pair with a stray one
    and fail (gloo times out after 60 s)."""
    script = tmp_path / "lockstep.py"
    script.write_text(LOCKSTEP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("lockstep ok") == 2


@pytest.mark.parametrize("key", ["model.lora.r=4", "sft.steps=5"])
def test_fsdp_refuses_what_needs_the_whole_model_on_one_device(key):
    with pytest.raises(ConfigError, match="train.parallel=fsdp does not support"):
        Config.load(None, ["train.parallel=fsdp", key])


def test_fsdp_sharded_sampling_decodes_in_lockstep(tiny_model_dir, tmp_path, monkeypatch):
    """train.fsdp_sampling=sharded: the weights stay sharded while sampling, so every decoding step all-gathers
    the layers and both ranks must run as many steps. Rank 0's prompts end in '!' and stop at '!!' after 2
    tokens; rank 1's run all 20: without the lockstep rank 0 would leave the loop at its first host sync and the
    ranks' collectives would pair up wrongly (a hang, or a failed forward). Greedy evaluation runs on both ranks.
    The result equals one unsharded process whose forward passes also go through transformers."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reference": "x"}) + "\n" for p in ["a!", "b!", "cd", "ef"]))
    o = {**DP, "rollout.max_new_tokens": 20, "rollout.stop": "['!!']", "data.shuffle": False, "data.eval": str(data),
         "train.eval_every": 2, "train.parallel": "fsdp", "train.fsdp_sampling": "sharded", "train.save_every": 0}
    one, two = tmp_path / "one", tmp_path / "two"
    with monkeypatch.context() as m:
        m.setattr("rlft.backends.base.lean", lambda *a, **k: None)
        train(Config.load(None, base_overrides(tiny_model_dir, data, one, **o)))
    proc = _torchrun(base_overrides(tiny_model_dir, data, two, **o), two)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = _sd(one / "checkpoint-3"), _sd(two / "checkpoint-3")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-5, rtol=1e-4, msg=k)
    ma, mb = _metrics(one), _metrics(two)
    assert mb[0]["rollout/truncated_frac"] == 0.5  # step 1: rank 0's rows stop early, rank 1's run to the end
    for x, y in zip(ma, mb):
        assert y["rollout/truncated_frac"] == x["rollout/truncated_frac"]
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5)
    evals = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines() if "eval/reward" in x]
    assert len(evals) == 3  # steps 0, 2 and the end


def test_fsdp_sharded_sampling_refuses_filter_groups():
    with pytest.raises(ConfigError, match="fsdp_sampling=sharded does not support algo.filter_groups"):
        Config.load(None, ["train.parallel=fsdp", "train.fsdp_sampling=sharded", "algo.filter_groups=true"])
