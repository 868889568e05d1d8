"""On a CUDA GPU: the decode step recorded as CUDA graphs (rlft/backends/graphs.py) against the same step run
uncaptured and against the eager decoder; no host sync inside a step; fused AdamW. Skipped without CUDA (CI runs the
uncaptured step in tests/test_static_decode.py). The one test that runs everywhere runs benchmarks/gpu.py --tiny end
to end (on a CPU when there is no GPU), so the GPU benchmark script is known to work.

    PYTHONPATH=. python -m pytest tests/test_gpu.py -q      # on the GPU machine
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlft.backends import Causal
from rlft.backends.lean import StaticDecoder, lean
from rlft.policy import encode_prompt, left_pad, output_head, position_ids, prepare_tokenizer
from rlft.sampling import SamplingParams
from rlft.tiny import byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
TOK = byte_tokenizer()
prepare_tokenizer(TOK)


def qwen2(dtype=torch.float32, layers=4, hidden=128):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen2", vocab_size=len(TOK), hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=TOK.bos_token_id,
                               eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).to("cuda", dtype).eval()


def prompts(n=16):
    texts = [f"prompt {i}: " + "abc " * (i % 9) for i in range(n)]
    return left_pad([encode_prompt(TOK, t, "off") for t in texts], TOK.pad_token_id, torch.device("cuda"))


def run(model, decode, ids, mask, params, seed=0, eos=()):
    return Causal(model, TOK, list(eos), decode=decode).sample(
        ids, mask, params, generator=torch.Generator("cuda").manual_seed(seed))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_step_equals_uncaptured_bit_for_bit(dtype):
    model = qwen2(dtype)
    ids, mask = prompts()
    pos = position_ids(mask)
    fast = lean(model, ids.shape[1] + 24)
    head = output_head(model)[1]
    with torch.inference_mode():
        a = fast.decoder(ids, mask, pos, 24, head, static=True, capture=True)
        b = fast.decoder(ids, mask, pos, 24, head, static=True, capture=False)
        assert torch.equal(a.logits, b.logits)
        for _ in range(20):
            tok = b.logits.argmax(-1)
            assert torch.equal(a.step(tok), b.step(tok))
        assert a.graphs.graphs and not b.graphs.graphs  # the first really replays a recorded graph


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampled_rollouts_equal_the_eager_decoder(dtype):
    """The same generator gives the same tokens through the captured graph and through the eager decoder (the
    drawing runs outside the graph, so the generator is untouched by the capture); log-probs agree. The two attend
    over different key lengths (the whole masked cache vs a slice), so in bfloat16 a row may differ where a draw
    falls within rounding of a token boundary: all rows must agree in float32, three in four in bfloat16."""
    model = qwen2(dtype)
    ids, mask = prompts()
    params = SamplingParams(48, 1.0, top_k=50, top_p=0.9)
    g, e = run(model, "graph", ids, mask, params), run(model, "eager", ids, mask, params)
    same = (g.completion_ids == e.completion_ids).all(-1)
    if dtype == torch.float32:
        assert same.all(), f"rows differing: {(~same).nonzero().flatten().tolist()}"
    else:
        assert same.float().mean() >= 0.75, f"rows differing: {(~same).nonzero().flatten().tolist()}"
    torch.testing.assert_close(g.logp[same], e.logp[same], atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)


@needs_cuda
def test_greedy_equals_generate_float32():
    model = qwen2(torch.float32)
    ids, mask = prompts()
    r = run(model, "graph", ids, mask, SamplingParams(40, 0.0))
    with torch.inference_mode():
        ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=40,
                             pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id)[:, ids.shape[1]:]
    for i in range(ids.shape[0]):
        n = int(r.lengths[i])
        assert r.completion_ids[i, :n].tolist() == ref[i, :n].tolist()


@needs_cuda
def test_buckets_captured_and_rows_leave():
    """Rows ending at different steps: the captured decoder moves to smaller buckets (one graph each) and still
    gives the eager decoder's greedy tokens."""
    model = qwen2(torch.float32)
    ids, mask = prompts(32)
    free = run(model, "eager", ids, mask, SamplingParams(40, 0.0))
    eos = sorted({int(free.completion_ids[i, min(39, i + 2)]) for i in range(0, 32, 2)})  # row i ends by i + 2
    made = []
    init = StaticDecoder.__init__

    def record(self, *a, **kw):
        made.append(self)
        init(self, *a, **kw)

    StaticDecoder.__init__ = record
    try:
        g = run(model, "graph", ids, mask, SamplingParams(40, 0.0), eos=eos)
    finally:
        StaticDecoder.__init__ = init
    e = run(model, "eager", ids, mask, SamplingParams(40, 0.0), eos=eos)
    assert torch.equal(g.completion_ids, e.completion_ids) and g.finish == e.finish
    assert len(made[0].graphs.graphs) > 1, sorted(made[0].graphs.graphs)  # more than one bucket recorded


@needs_cuda
def test_no_host_sync_inside_a_step():
    model = qwen2(torch.bfloat16)
    ids, mask = prompts()
    fast = lean(model, ids.shape[1] + 8)
    with torch.inference_mode():
        dec = fast.decoder(ids, mask, position_ids(mask), 8, output_head(model)[1], static=True, capture=True)
        tok = dec.logits.argmax(-1)
        dec.step(tok)  # the first step records the graph (capture syncs once)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                tok = dec.step(tok).argmax(-1)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_fused_adamw_on_cuda(tmp_path):
    from rlft.config import Config
    from rlft.run import _optimizer

    model = qwen2(torch.bfloat16, layers=1, hidden=64)
    opt = _optimizer(Config.load(), Causal(model, TOK, [TOK.eos_token_id])).opt
    assert opt.defaults["fused"] is True


def test_gpu_benchmark_runs_tiny(tmp_path):
    """benchmarks/gpu.py --tiny end to end (TRL's side too when it is installed): both sides train, the sampler is
    timed, and the report holds every figure it promises."""
    args = ["--tiny", "--out", str(tmp_path)] + ([] if importlib.util.find_spec("trl") else ["--no-trl"])
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=900)
    rep = json.loads((tmp_path / "gpu.json").read_text())
    (row,) = rep["results"]
    assert len(row["runs"]["rlft"][0]["phases"]) == row["job"]["steps"]
    assert {"perf/sample_seconds", "perf/update_seconds", "perf/optimizer_seconds"} <= set(
        row["runs"]["rlft"][0]["phases"][0])
    s = row["sampler"]
    assert s["floor_ms_per_step"] > 0 and s["copy_bandwidth_Bps"] > 0 and s["greedy"]["rows"] > 0
    if not torch.cuda.is_available():  # float32 on a CPU: greedy == generate (bfloat16 on a GPU: reported)
        assert s["greedy"]["rows_equal"] == s["greedy"]["rows"]
    for side in row["s_per_step"]:
        assert row["s_per_step"][side] > 0 and row["peak_mb"][side] > 0
    md = (tmp_path / "gpu.md").read_text()
    assert "| tiny qwen2 short | rlft |" in md and "graph ms/step" in md and "| optimizer |" in md


@pytest.mark.parametrize("micro", [8, 1])
def test_update_reads_no_statistic_per_micro_batch(tiny_model_dir, monkeypatch, micro):
    """The update's statistics stay on the device until the end (one read for all of them), so its host syncs do
    not grow with the number of micro-batches; the figures equal the Python-float sums they replace (float64)."""
    from conftest import sample, update
    from rlft.backends import load_policy
    from rlft.config import Config

    cfg = Config.load(None, [f"model.path={tiny_model_dir}", "rollout.batch_prompts=2", "rollout.num_generations=4",
                             f"optim.micro_batch_size={micro}", "rollout.max_new_tokens=8", "algo.entropy_coef=0.01"])
    model, tok = load_policy(cfg.model)
    ids, mask = left_pad([encode_prompt(tok, p) for p in ("ab", "a longer one") for _ in range(4)], tok.pad_token_id)
    ro = sample(model, tok, ids, mask, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    adv = torch.linspace(-1, 1, 8)[:, None] * ro.completion_mask
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    reads = []
    for name in ("__float__", "item", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _r=real, _n=name: (reads.append(_n), _r(self, *a))[1])
    stats = update(model, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), params, ro, adv,
                   ro.completion_mask, None, torch.zeros_like(adv), cfg)
    monkeypatch.undo()
    # whatever the number of micro-batches: the lengths (1 tolist), the gradient norm (1 float), the statistics
    # (1 tolist); before, each micro-batch read each statistic (26 reads for 8 micro-batches of 1). Not counted:
    # the int() reads of each micro-batch's widths in MicroBatch.of (rlft/step.py)
    assert sorted(reads) == ["__float__", "tolist", "tolist"], reads
    assert stats["loss/entropy"] > 0 and stats["perf/optimizer_seconds"] > 0
