"""vLLM rollouts without vLLM: the truncated importance weights (by hand, and through a real update on a tiny
model), the weights handed to vLLM, the conversion of its outputs to a `Rollout`, and the errors when vLLM cannot
run. vLLM itself only runs on a GPU: benchmarks/vllm_gpu.py checks the engine there."""

import copy
import importlib.util
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import base_overrides, completion_logp, sample, update
from rlft.backends import load_policy
from rlft.backends.vllm import policy_weights, to_rollout
from rlft.config import Config, ConfigError
from rlft.loss import Norm, pg_loss, tis_weights
from rlft.policy import encode_prompt, left_pad
from rlft.train import train

HAS_VLLM = importlib.util.find_spec("vllm") is not None
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_sum_norm"]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# the weights and the loss, by hand -----------------------------------------------------------------------

def test_tis_weights_below_at_and_above_the_cap():
    # sampler log-probs below the trainer's by ln 0.5, 0, ln 3 -> raw weights 0.5, 1, 3; cap 2 -> 0.5, 1, 2
    old = t([[-1.0, -1.0, -1.0, -1.0]])
    sampler = old - torch.log(t([[0.5, 1.0, 3.0, 5.0]]))
    mask = t([[1, 1, 1, 0]])  # the 4th token is padding: in no sum
    w, sums = tis_weights(old, sampler, mask, cap=2.0)
    torch.testing.assert_close(w, t([[0.5, 1.0, 2.0, 2.0]]))
    assert float(sums["tis_tokens"]) == 3
    assert float(sums["tis_weight"]) == pytest.approx(3.5)                  # 0.5 + 1 + 2
    assert float(sums["tis_clipped"]) == 1                                   # only the 3 was capped
    assert float(sums["tis_abs_diff"]) == pytest.approx(math.log(2) + math.log(3))


def test_pg_loss_with_tis_weights_by_hand():
    # one sequence, 3 tokens, one pass (rho = 1), token_mean over 3 tokens, A = [1, -2, 1], w = [0.5, 1, 2]:
    #   loss = -(0.5 * 1 + 1 * -2 + 2 * 1) / 3 = -0.5 / 3 = -1/6
    #   dL/dlogp = -w * A / 3 = [-1/6, 2/3, -2/3]   (no gradient through w)
    logp = t([[-1.0, -1.0, -1.0]]).requires_grad_()
    sampler = logp.detach() - torch.log(t([[0.5, 1.0, 3.0]]))
    w, _ = tis_weights(logp.detach(), sampler, torch.ones(1, 3), cap=2.0)
    loss, stats = pg_loss(logp, logp.detach(), t([[1, -2, 1]]), torch.ones(1, 3), Norm(1, 3, 3), weights=w)
    torch.testing.assert_close(loss, torch.tensor(-1 / 6))
    torch.testing.assert_close(stats["pg"], torch.tensor(-1 / 6))
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[-1 / 6, 2 / 3, -2 / 3]]))


@pytest.mark.parametrize("mode", MODES)
def test_weights_of_one_give_exactly_the_gradient_without_tis(mode):
    # the sampler agrees with the trainer: every weight is exp(0) = 1, and the loss is the one without TIS
    old = t([[-0.3, -1.2, -2.0], [-0.7, -0.1, -4.0]])
    adv, mask, norm = t([[1.0, 2.0, -1.0], [-4.0, 0.5, 0.0]]), t([[1, 1, 1], [1, 1, 0]]), Norm(2, 5, 3)
    grads = []
    for weights in (None, tis_weights(old, old.clone(), mask, cap=2.0)[0]):
        logp = (old + t([[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]])).requires_grad_()  # rho != 1: clipping too
        loss, _ = pg_loss(logp, old, adv, mask, norm, agg=mode, weights=weights)
        loss.backward()
        grads.append((loss.detach(), logp.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


# through a real update on a tiny model ------------------------------------------------------------------

def _step(model_dir, data, out, ro, adv, engine):
    """One `update` of a fresh policy on a given rollout; its parameters afterwards and the update's metrics."""
    cfg = Config.load(None, base_overrides(model_dir, data, out, **{
        "rollout.engine": engine, "rollout.max_new_tokens": 8, "optim.max_grad_norm": 0, "optim.micro_batch_size": 3}))
    model, _ = load_policy(cfg.model)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    stats = update(model, None, opt, sched, params, ro, adv, ro.completion_mask, None, torch.zeros_like(adv), cfg)
    return [p.detach().clone() for p in params], stats


def test_update_with_tis_is_reinforce_with_the_weighted_advantages(tiny_model_dir, tiny_data, tmp_path):
    """With one pass, reweighting each token's term by w is the same as REINFORCE on advantages w * A. The
    sampler's log-probs are perturbed by -1, 0, +0.5 (raw weights ~e, 1, e^-0.5): a third of them hit the cap."""
    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "x"))
    model, tok = load_policy(cfg.model)
    ids, mask = left_pad([encode_prompt(tok, p) for p in ["1+2=", "3+4="] for _ in range(4)], tok.pad_token_id)
    ro = sample(model, tok, ids, mask, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    cm = ro.completion_mask
    n, width = cm.shape
    pattern = torch.tensor([-1.0, 0.0, 0.5])[(torch.arange(n)[:, None] + torch.arange(width)[None]) % 3]
    vllm_ro = replace(ro, logp=(ro.logp + pattern) * cm)
    adv = torch.linspace(-1, 1, n)[:, None] * cm
    with torch.no_grad():  # the trainer's log-probs of the samples, before the update
        old = completion_logp(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, cm).logp
    raw = torch.exp(old - vllm_ro.logp)
    w = raw.clamp(max=2.0) * cm

    tis_params, stats = _step(tiny_model_dir, tiny_data, tmp_path / "tis", vllm_ro, adv, "vllm")
    by_hand, plain_stats = _step(tiny_model_dir, tiny_data, tmp_path / "hand", vllm_ro, adv * w, "rlft")
    plain, _ = _step(tiny_model_dir, tiny_data, tmp_path / "plain", vllm_ro, adv, "rlft")
    for a, b in zip(tis_params, by_hand):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(tis_params, plain))  # the weights mattered
    tokens = float(cm.sum())
    assert stats["tis/clipped_frac"] == pytest.approx(float(((pattern == -1) * cm).sum()) / tokens, abs=1e-6)
    assert stats["tis/clipped_frac"] > 0
    assert stats["tis/weight_mean"] == pytest.approx(float(w.sum()) / tokens, rel=1e-5)
    assert stats["tis/logp_abs_diff"] == pytest.approx(float((pattern.abs() * cm).sum()) / tokens, abs=1e-4)
    assert not any(k.startswith("tis/") for k in plain_stats)  # rlft's own log-probs are the trainer's


# what vLLM is given and what comes back ------------------------------------------------------------------

def test_policy_weights_are_the_checkpoint_weights(tiny_model_dir):
    cfg = Config.load(None, [f"model.path={tiny_model_dir}"])
    model, _ = load_policy(cfg.model)
    got = dict(policy_weights(model))
    want = model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_policy_weights_of_lora_are_the_merged_weights_and_leave_the_model_alone(tiny_model_dir):
    pytest.importorskip("peft")
    cfg = Config.load(None, [f"model.path={tiny_model_dir}", "model.lora.r=4", "model.lora.alpha=8"])
    model, _ = load_policy(cfg.model)
    torch.manual_seed(0)
    with torch.no_grad():  # new adapters are B = 0; give them a delta
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = dict(policy_weights(model))
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
    plain = load_policy(Config.load(None, [f"model.path={tiny_model_dir}"]).model)[0].state_dict()
    assert sum(not torch.equal(got[k], plain[k]) for k in got) >= 4  # the adapted weights got their delta
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the policy is untouched


def test_to_rollout_cuts_at_eos_keeps_stop_tokens_and_pads(tiny_model_dir):
    from transformers import AutoTokenizer

    from rlft.policy import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepare_tokenizer(tok)
    eos = tok.eos_token_id
    enc = [tok("ab", add_special_tokens=False)["input_ids"] + [eos, 5],   # EOS, then a token that must go
           tok("x;y", add_special_tokens=False)["input_ids"],             # stopped at the string ";"
           tok("hello", add_special_tokens=False)["input_ids"]]           # ran to the limit
    logps = [[-0.5 - j for j in range(len(s))] for s in enc]
    ids, mask = left_pad([[1, 7], [1], [1, 8, 9]], tok.pad_token_id)
    ro = to_rollout(tok, ids, mask, enc, logps, [False, True, False], [eos], [";"])
    assert ro.finish == ["eos", "stop", "length"]
    assert ro.completions == ["ab", "x", "hello"]
    assert ro.lengths.tolist() == [3, 3, 5]
    assert ro.completion_ids.shape == (3, 5)
    assert ro.completion_ids[0].tolist() == enc[0][:3] + [tok.pad_token_id] * 2
    assert ro.completion_ids[1, :3].tolist() == enc[1]  # the stop string stays in the tokens
    torch.testing.assert_close(ro.logp[0], t([-0.5, -1.5, -2.5, 0, 0]))  # nothing after EOS, padding 0
    assert ro.prompt_ids is ids


# when vLLM cannot run -----------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_names_the_extra(tiny_model_dir, tiny_data, tmp_path):
    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "r", **{"rollout.engine": "vllm"}))
    with pytest.raises(ConfigError, match=r"pip install 'rlft\[vllm\]'"):
        train(cfg)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # it stopped before the run started


def test_rlft_imports_without_vllm():
    code = ("import sys, rlft, rlft.train, rlft.backends.vllm, rlft.cli; "
            "assert 'vllm' not in sys.modules, 'vllm imported eagerly'")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tis_settings_are_checked():
    with pytest.raises(ConfigError, match="rollout.tis_cap"):
        Config.load(None, ["rollout.tis_cap=-1"])
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        Config.load(None, ["rollout.vllm_gpu_memory_utilization=1.5"])


# benchmarks/vllm_gpu.py runs on a GPU only; here: it loads, and its report and statistics are right ----------

def test_gpu_benchmark_help_runs_without_vllm():
    proc = subprocess.run([sys.executable, "benchmarks/vllm_gpu.py", "--help"], check=False, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--quick" in proc.stdout and "--lora" in proc.stdout


def test_gpu_benchmark_gap_and_report():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.vllm_gpu import _gap, report

    # gaps ln 3 (capped at 2), 0 and -ln 2 on three tokens; the 4th is padding
    trainer = t([[math.log(3), 0.0, -math.log(2), 9.0]])
    g = _gap(trainer, torch.zeros(1, 4), t([[1, 1, 1, 0]]), cap=2.0)
    assert g["tokens"] == 3 and g["tis_clipped_frac"] == pytest.approx(1 / 3)
    assert g["tis_weight_mean"] == pytest.approx((2 + 1 + 0.5) / 3)
    assert g["logp_abs_diff_mean"] == pytest.approx((math.log(3) + math.log(2)) / 3)
    assert g["logp_abs_diff_max"] == pytest.approx(math.log(3))
    sync = {"logp_abs_diff_mean": 0.01, "greedy_same_as_trainer": 1.0}
    res = {"model": "m", "machine": "gpu", "repeats": 3,
           "engine": {"tokens_per_s": {"rlft": 1000.0, "vllm": 3000.0, "ratio": 3.0}, "rows": 8, "new_tokens": 16,
                      "gap": {"rlft": g, "vllm": g}, "update": {"tis/weight_mean": 1.0}, "peak_cuda_gb": 1.0,
                      "sync": {"stale": {**sync, "logp_abs_diff_mean": 0.5}, "synced": sync, "load_weights_s": 0.1,
                               "weights_reach_vllm": True}},
           "train": [{"engine": "vllm", "lora": False, "steps": [
               {"step": 1, "perf/step_seconds": 2.0, "perf/sample_seconds": 1.0, "perf/update_seconds": 1.0,
                "perf/tokens_per_second": 500.0, "tis/weight_mean": 0.99, "tis/clipped_frac": 0.0,
                "tis/logp_abs_diff": 0.02}]}, {"error": "boom"}]}
    md = report(res)
    assert "| vLLM | 3000 | **3.00x** |" in md and "weights reach vLLM: **True**" in md
    assert "| vllm | 1 | 2.00 | 1.00 | 1.00 | 500 | 0.9900 | 0.0000 | 0.0200 |" in md and "boom" in md
    assert "parts 1-3 failed" in report({**res, "engine": {"error": "no GPU"}})
