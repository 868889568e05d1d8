"""rollout.decode=graph on a CPU: lean's fixed-shape decode step (rlft/backends/lean.py `StaticDecoder`) runs
uncaptured -- the code a GPU records as CUDA graphs (rlft/backends/graphs.py) -- and must decode as the eager
path does: greedy equal to `generate` token for token, sampled tokens equal to the eager path's for the same
generator, log-probs equal to the training forward's, finished rows moved to smaller buckets without changing
any of that. tests/test_gpu.py checks the captured graphs against this on a GPU.

What is exact and what is not: the prefill is the eager path's own code (its logits are equal bit for bit); a
decode step attends over the whole preallocated cache under a key mask instead of a slice of the current length.
Masked keys weigh exactly 0, but on a CPU the softmax and the products with V reduce over a longer row, in
another order, so a step's logits differ from the eager ones by float32 rounding (measured here: at most ~1e-7
on these models; the test allows 1e-5). A token can differ only where a draw falls within that distance of a
boundary between two tokens; none does in these tests.
"""

import functools
import json

import pytest
import torch
from test_lean import ARCHS, TOK, batch, build

from conftest import assert_greedy_equals_generate, base_overrides, completion_logp, sample
from rlft.backends import base
from rlft.backends.lean import Decoder, StaticDecoder, lean
from rlft.policy import encode_prompt, left_pad, output_head, position_ids


@pytest.fixture
def graph_decode(monkeypatch):
    """Every backend built in the test decodes with rollout.decode=graph (uncaptured on this CPU)."""
    init = base.Causal.__init__
    monkeypatch.setattr(base.Causal, "__init__", functools.partialmethod(init, decode="graph"))
    made = []
    orig = StaticDecoder.__init__

    def record(self, *a, **kw):
        made.append(self)
        orig(self, *a, **kw)

    monkeypatch.setattr(StaticDecoder, "__init__", record)
    return made


def _decoders(model, ids, mask, steps):
    pos = position_ids(mask)
    fast = lean(model, ids.shape[1] + steps)
    head = output_head(model)[1]
    return (fast.decoder(ids, mask, pos, steps, head),
            fast.decoder(ids, mask, pos, steps, head, static=True))


@pytest.mark.parametrize("name", list(ARCHS))
def test_static_step_logits_equal_eager_up_to_rounding(name):
    model = build(name)
    ids, mask = batch()
    with torch.inference_mode():
        eager, static = _decoders(model, ids, mask, 10)
        assert isinstance(static, StaticDecoder) and type(eager) is Decoder
        assert torch.equal(static.logits, eager.logits)  # the prefill is the same code
        worst = 0.0
        for _ in range(9):
            tok = eager.logits.argmax(-1)
            a, b = eager.step(tok), static.step(tok)
            worst = max(worst, float((a - b).abs().max()))
            assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert worst < 1e-5
    # the buffers advanced on the device: 9 steps written after the prompt, positions moved on by 9
    p = ids.shape[1]
    assert int(static.index) == p + 9
    assert static.valid[:, p:p + 9].all() and not static.valid[:, p + 9:].any()
    assert torch.equal(static.pos, position_ids(mask)[:, -1:] + 10)
    assert static.cache[0][0].shape[2] % 64 == 0 and static.cache[0][0].shape[2] >= p + 10


def test_static_step_has_one_shape():
    """The step function sees the same shapes at every call (what a CUDA graph records): the cache is read whole,
    never sliced to the current length."""
    model = build("llama-gqa")
    ids, mask = batch()
    with torch.inference_mode():
        _, static = _decoders(model, ids, mask, 8)
        seen = set()
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def spy(q, k, v, **kw):
            seen.add((tuple(q.shape), tuple(k.shape), tuple(kw["attn_mask"].shape)))
            return sdpa(q, k, v, **kw)

        torch.nn.functional.scaled_dot_product_attention = spy
        try:
            for _ in range(6):
                static.step(static.logits.argmax(-1))
        finally:
            torch.nn.functional.scaled_dot_product_attention = sdpa
    assert len(seen) == 1
    (_, k_shape, m_shape), = seen
    assert k_shape[2] == m_shape[-1] == static.valid.shape[1]


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "qwen2", "mistral-mqa", "qwen3"])
def test_greedy_equals_generate(graph_decode, name):
    model = build(name)
    ids, mask = batch()
    assert_greedy_equals_generate(model, TOK, ids, mask, 12)
    assert graph_decode  # the static decoder ran


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen3"])
def test_sampled_tokens_equal_the_eager_path_for_the_same_generator(monkeypatch, name):
    model = build(name)
    prompts = [f"prompt {i}: " + "ab" * i for i in range(8)]
    ids, mask = left_pad([encode_prompt(TOK, p, "off") for p in prompts for _ in range(2)], TOK.pad_token_id)

    def run(decode):
        b = base.Causal(model, TOK, [TOK.eos_token_id], decode=decode)
        from rlft.sampling import SamplingParams

        return b.sample(ids, mask, SamplingParams(24, 1.0, top_k=50, top_p=0.95),
                        generator=torch.Generator().manual_seed(3))

    eager, static = run("eager"), run("graph")
    assert torch.equal(static.completion_ids, eager.completion_ids)
    assert torch.equal(static.completion_mask, eager.completion_mask)
    torch.testing.assert_close(static.logp, eager.logp, atol=1e-6, rtol=0)


def test_sampling_logp_equals_training_logp(graph_decode):
    model = build("qwen2")
    ids, mask = batch()
    r = sample(model, TOK, ids, mask, max_new_tokens=16, temperature=0.7,
               generator=torch.Generator().manual_seed(0))
    assert graph_decode
    with torch.no_grad():
        lp = completion_logp(model, ids, mask, r.completion_ids, r.completion_mask, temperature=0.7).logp
    torch.testing.assert_close(lp * r.completion_mask, r.logp, atol=1e-5, rtol=0)


def test_finished_rows_move_to_smaller_buckets(graph_decode, monkeypatch):
    """Rows that end early leave the step: at a host sync where the live rows fit half the bucket they move to the
    front and the step runs over fewer rows; greedy output still equals `generate`, sampled log-probs still equal
    the training forward's."""
    buckets = []
    keep = StaticDecoder.keep
    monkeypatch.setattr(StaticDecoder, "keep", lambda self, idx: (keep(self, idx), buckets.append(self.bucket)))
    model, ids, mask, eos = _staggered_eos_case()
    r = sample(model, TOK, ids, mask, max_new_tokens=40, temperature=0, eos_ids=eos)
    assert buckets and min(buckets) == 8  # 24 rows, then 8
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=40,
                         pad_token_id=TOK.pad_token_id, eos_token_id=eos)[:, ids.shape[1]:]
    lengths = r.lengths.tolist()
    assert min(lengths) <= 8 and max(lengths) > 16
    for i, n in enumerate(lengths):
        assert r.completion_ids[i, :n].tolist() == ref[i, :n].tolist()
        assert (r.completion_ids[i, n:] == TOK.pad_token_id).all()
    buckets.clear()
    s = sample(model, TOK, ids, mask, max_new_tokens=40, temperature=1.0, eos_ids=eos,
               generator=torch.Generator().manual_seed(0))
    assert min(buckets) == 16  # 24 rows, then 16
    with torch.no_grad():
        lp = completion_logp(model, ids, mask, s.completion_ids, s.completion_mask).logp
    torch.testing.assert_close(lp * s.completion_mask, s.logp, atol=1e-5, rtol=0)


def _staggered_eos_case():
    """24 rows whose completions end at many different steps: EOS ids taken from rows' own greedy paths."""
    model = build("llama")
    prompts = [f"prompt number {i}: " + "xy" * (i % 7) + str(i * 7) for i in range(24)]
    ids, mask = left_pad([encode_prompt(TOK, p, "off") for p in prompts], TOK.pad_token_id)
    free = sample(model, TOK, ids, mask, max_new_tokens=40, temperature=0, eos_ids=[])
    eos = sorted({int(free.completion_ids[i, min(39, int(1.6 * i) + 2)]) for i in range(0, 24, 3)})
    return model, ids, mask, eos


def test_bucket_moves_keep_each_rows_cache():
    """keep() by hand: after moving to a smaller bucket each live row continues from its own cache, positions and
    mask (the logits equal those of the eager decoder that dropped the same rows)."""
    model = build("llama-gqa")
    prompts = [f"row {i} " + "z" * (i % 5) for i in range(20)]
    ids, mask = left_pad([encode_prompt(TOK, p, "off") for p in prompts], TOK.pad_token_id)
    with torch.inference_mode():
        eager, static = _decoders(model, ids, mask, 8)
        tok = eager.logits.argmax(-1)
        eager.step(tok)
        static.step(tok)
        live = torch.tensor([1, 4, 6, 7, 11, 13, 18])         # 7 of 20 rows: bucket 20 -> 8
        eager.keep(live)
        static.keep(live)
        assert static.bucket == 8 and static.rows is None
        for _ in range(3):
            tok = eager.logits.argmax(-1)
            a, b = eager.step(tok), static.step(tok)
            assert a.shape == b.shape == (7, len(TOK))
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        static.keep(torch.tensor([0, 2, 5]))                  # 3 of 7: stays in bucket 8, rows remapped
        eager.keep(torch.tensor([0, 2, 5]))
        assert static.bucket == 8 and static.rows.tolist() == [0, 2, 5]
        tok = eager.logits.argmax(-1)
        torch.testing.assert_close(eager.step(tok), static.step(tok), atol=1e-5, rtol=0)


def test_decode_key_chooses_the_decoder(tiny_model_dir, tiny_data, tmp_path):
    """rollout.decode reaches the backend: graph gives the static decoder, eager and auto (on a CPU) the eager one;
    a run with rollout.decode=graph trains and logs the optimizer's time; the key is an error with another engine."""
    from rlft import backends
    from rlft.config import Config
    from rlft.errors import ConfigError
    from rlft.train import train

    model = build("llama")
    ids, mask = batch()
    for decode, kind in (("graph", StaticDecoder), ("eager", Decoder), ("auto", Decoder)):
        b = backends.build(Config.load(None, [f"rollout.decode={decode}"]), model, TOK)
        with torch.inference_mode():
            assert type(b.decoder(ids, mask, 4)) is kind
    with pytest.raises(ConfigError, match="rollout.decode"):
        Config.load(None, ["rollout.engine=hf", "rollout.decode=graph"])
    cfg = Config.load(None, base_overrides(tiny_model_dir, tiny_data, tmp_path / "run",
                                           **{"rollout.decode": "graph", "train.steps": 1}))
    line = json.loads((train(cfg) / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["perf/optimizer_seconds"] > 0
