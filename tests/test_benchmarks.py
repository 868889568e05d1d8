"""The correctness parts of benchmarks/vs_trl.py (never a timing): the reward by hand, both sides scoring the
same samples alike, both sides tokenizing the prompts alike, both sides' effective settings equal, and the
summary arithmetic. Tests that need TRL skip when it is not installed (it is in the `bench` extra only)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds benchmarks/

from benchmarks import vs_trl
from benchmarks.vs_trl import Job, prompts, reward, settings, summarize_run

HAS_TRL = importlib.util.find_spec("trl") is not None
needs_trl = pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (pip install -e '.[bench]')")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return vs_trl.build_model("llama-0.4M", tmp_path_factory.mktemp("bench"))


def test_reward_by_hand():
    # lowercase ASCII letters and spaces count; everything else does not; an empty completion scores 0
    assert reward(["p"] * 5, ["abc", "A b", "", "é x", "a\n"]) == [1.0, 2 / 3, 0.0, 2 / 3, 0.5]


def test_rlft_settings_read_back_from_its_config():
    s = settings(Job(estimator="grpo", max_new_tokens=128), "rlft")
    assert s["loss_aggregation"] == "sum / tokens in the optimizer batch" and s["advantage_scale"] == "group"
    assert s["max_new_tokens"] == 128 and s["grad_accumulation"] == 4 and s["kl_coef"] == 0.0
    r = settings(Job(estimator="rloo"), "rlft")
    assert r["loss_aggregation"] == "sum / sequences in the optimizer batch" and r["advantage_scale"] == "none"


@needs_trl
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("tokens", [32, 128])
def test_both_sides_run_the_same_settings(estimator, tokens):
    job = Job(estimator=estimator, max_new_tokens=tokens)
    a, b = settings(job, "rlft"), settings(job, "trl")
    assert a.keys() == b.keys()
    assert {k: v for k, v in a.items() if b[k] != v} == {}, {k: (v, b[k]) for k, v in a.items() if b[k] != v}


def _rollout(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import sample
    from rlft.policy import encode_prompt, left_pad, prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prepare_tokenizer(tok)
    texts = [p for p in prompts(4) for _ in range(4)]
    ids, mask = left_pad([encode_prompt(tok, t, "off") for t in texts], tok.pad_token_id)
    ro = sample(model, tok, ids, mask, max_new_tokens=24, temperature=1.0, generator=torch.Generator().manual_seed(0))
    return model, tok, texts, ro


@needs_trl
def test_both_sides_score_the_same_samples_alike(model_dir, tmp_path):
    import datasets
    import trl

    from rlft.data import Row
    from rlft.rewards import Reward
    from rlft.step import make_examples, score

    model, tok, texts, ro = _rollout(model_dir)
    job = Job(estimator="grpo", max_new_tokens=24, batch_prompts=4)
    # rlft: the trainer's own scoring of the rollout
    cfg = vs_trl.rlft_config(job, model_dir, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    examples = make_examples(cfg, tok, [Row(i, {"prompt": t}) for i, t in enumerate(texts)], "test", {})
    sc = score([Reward("reward", reward)], examples, ro, cfg, 1)
    dense, valid = sc.token_rewards, sc.valid
    ours = (dense * ro.completion_mask).sum(-1)
    # TRL: its decoding of the same token ids (cut after EOS) and its reward call
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], args=vs_trl.trl_config(job, str(tmp_path / "t")),
                              train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts(4)]),
                              processing_class=tok)
    ids = [row[:n] for row, n in zip(ro.completion_ids.tolist(), ro.lengths.tolist())]
    completions = tok.batch_decode(ids, skip_special_tokens=True)
    theirs = trainer._calculate_rewards([{"prompt": t} for t in texts], texts, completions, ids)[:, 0]
    assert completions == ro.completions
    assert valid.all() and torch.equal(ours, theirs)
    # and both tokenize the prompts alike (no chat template, no BOS added by this tokenizer)
    assert [e.ids for e in examples] == tok(text=texts)["input_ids"]


def test_profiled_run_and_floor(model_dir):
    """The two extra runs per job: rlft under the profiler gives seconds per step by kernel kind (matrix products
    present, and less than the whole step), and the floor process runs and is below rlft's own peak."""
    job = Job(steps=4, max_new_tokens=8)
    prof = vs_trl.run_child("rlft-kernels", job, model_dir, 300)
    plain = summarize_run(prof, job)
    k = prof["kernels"]
    assert set(k) == {"matmul", "attention", "other_ops"} and k["matmul"] > 0 and k["attention"] > 0
    assert k["matmul"] + k["attention"] + k["other_ops"] < plain["s_per_step"]  # one thread: ops within the step
    floor = vs_trl.run_child("floor", job, model_dir, 300)
    assert 0 < floor["peak_rss_mb"] < prof["peak_rss_mb"]


def test_a_childs_peak_memory_is_its_own():
    """A child spawned while this process holds 300 MB more reports its own peak, not ours (ru_maxrss would:
    exec records the replaced address space's peak in it)."""
    import subprocess

    held = bytearray(300 * 2**20)
    held[::4096] = b"\1" * len(held[::4096])  # touched: resident
    code = "import resource; from benchmarks.vs_trl import peak_rss_mb; " \
           "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    own, maxrss = float(out[0]), float(out[1])
    assert own < 100 < 300 < maxrss
    del held


def test_summary_arithmetic():
    # reward calls at t = 0, 1, 3, 4, 6 s: intervals 1, 2, 1, 2 -> the first dropped -> median of 2, 1, 2 = 2
    calls = [{"t": t, "cpu": t / 2, "n": 32, "tokens": 320, "reward": r}
             for t, r in zip([0, 1, 3, 4, 6], [0.1, 0.2, 0.3, 0.4, 0.5])]
    s = summarize_run({"calls": calls, "peak_rss_mb": 100.0, "wall_s": 7.0}, Job(steps=5))
    assert s["s_per_step"] == 2 and s["cpu_s_per_step"] == 1 and s["tokens_per_s"] == 160
    assert s["final_reward"] == 0.5 and s["samples"] == 160  # the last quarter of 5 steps: the last one


def test_report_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    row = {"job": "llama-0.4M 32 tok grpo", **vars(Job(steps=10)), "pairs": 1,
           "runs": {side: [{"curve": [0.1, 0.2, 0.3]}] for side in ("rlft", "trl")}}
    for key in ("s_per_step", "cpu_s_per_step", "tokens_per_s", "peak_rss_mb", "final_reward"):
        row[key] = {"rlft": 1.0, "trl": 2.0, "ratio": 0.5}
    report = {"machine": {"cpu": "x", "cores": 2, "python": "3", "torch": "t", "transformers": "t", "trl": "t",
                          "rlft": "r", "rlft_commit": "c"}, "command": "python benchmarks/vs_trl.py", "seconds": 1,
              "results": [row]}
    md = vs_trl.markdown(report)
    assert "| llama-0.4M 32 tok grpo | 320 | 1.000 | 2.000 | **0.50** |" in md
    assert "kernel bound" not in md  # no profiled run: no second table
    # TRL 2 s/step, rlft's matrix products + attention 0.25 + 0.15 s -> at most 5x; peaks rlft 1.0, TRL 2.0 MB
    # over a 0.5 MB floor: the floor is 0.25 of TRL's, rlft's 0.5 MB above it a third of TRL's 1.5 MB
    row["kernels"], row["floor_mb"] = {"matmul": 0.25, "attention": 0.15, "other_ops": 0.3}, 0.5
    row.update(vs_trl.bounds(row))
    assert row["kernel_bound"] == pytest.approx(5.0) and row["floor_ratio"] == 0.25
    assert row["above_floor_ratio"] == pytest.approx(1 / 3)
    assert "| **5.0x** | 0 | **0.25** | 0 / 2 MB = 0.33 |" in vs_trl.markdown(report)
    vs_trl.plot([row], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


@needs_trl
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_both_sides_take_the_same_gradient_on_the_same_samples(model_dir, tmp_path, estimator):
    """One batch, one micro-batch, the same advantages: rlft's update and TRL's loss give the same gradient (the
    loss aggregation, normalisation and log-probs agree). rlft's step uses SGD with lr 1 and no clipping, so the
    parameter change is minus the gradient."""
    import dataclasses

    import datasets
    import trl

    from conftest import update
    from rlft import estimators

    model, tok, texts, ro = _rollout(model_dir)
    job = Job(estimator=estimator, max_new_tokens=24, batch_prompts=4, micro_batch=16)
    n = ro.completion_ids.shape[0]
    rewards = torch.tensor(reward(texts, ro.completions))
    token_rewards = torch.zeros(ro.completion_ids.shape)
    token_rewards[torch.arange(n), ro.lengths - 1] = rewards          # a sequence reward sits on the last token
    adv = estimators.advantages(estimator, estimators.Inputs(token_rewards, ro.completion_mask, 4), scale="group")
    start = {k: p.detach().clone() for k, p in model.named_parameters()}

    cfg = vs_trl.rlft_config(job, model_dir, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_grad_norm=0.0))
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    update(model, None, opt, sched, params, ro, adv, ro.completion_mask, None, token_rewards, cfg)
    ours = {k: start[k] - p.detach() for k, p in model.named_parameters()}

    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(start[k])
    cls = trl.GRPOTrainer if estimator == "grpo" else trl.RLOOTrainer
    trainer = cls(model=model, reward_funcs=[reward], args=vs_trl.trl_config(job, str(tmp_path / "t")),
                  train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts(4)]),
                  processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    inputs = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask, "completion_ids": ro.completion_ids,
              "completion_mask": ro.completion_mask, "advantages": adv[:, 0],
              "num_items_in_batch": ro.completion_mask.sum()}
    if estimator == "rloo":  # RLOOTrainer's sequence log-ratio needs the sampling policy's sequence log-prob
        with torch.no_grad():
            lp, _, _ = trainer._get_per_token_logps_and_entropies(
                model, torch.cat([ro.prompt_ids, ro.completion_ids], 1),
                torch.cat([ro.prompt_mask, ro.completion_mask], 1), ro.completion_ids.shape[1])
        inputs["old_logps"] = (lp * ro.completion_mask).sum(1)
    model.train()
    model.zero_grad()
    trainer._compute_loss(model, inputs).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(ours[k], p.grad, atol=1e-6, rtol=1e-4)
