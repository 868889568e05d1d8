"""rlft/backends/lean.py against transformers: the same hidden states (bitwise), the same decoding logits, the same
greedy tokens as `generate`, the same gradients; and every case it does not cover falls back (None)."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import assert_greedy_equals_generate, completion_logp, sample
from rlft.backends.hf import cache_names as _cache_names
from rlft.backends.lean import lean
from rlft.policy import encode_prompt, left_pad, output_head, position_ids, prepare_tokenizer
from rlft.tiny import byte_tokenizer

TOK = byte_tokenizer()
PROMPTS = ["hello", "a much longer prompt, padded less", "x"]

ARCHS = {  # name: (model_type, config keywords) -- grouped-query attention and qwen3's per-head norms included
    "llama": ("llama", {}),
    "llama-gqa": ("llama", {"num_key_value_heads": 2}),
    "gpt2": ("gpt2", {}),
    "qwen2": ("qwen2", {}),
    "mistral-mqa": ("mistral", {"num_key_value_heads": 1}),
    "qwen3": ("qwen3", {"num_key_value_heads": 2, "head_dim": 8}),
}


def build(name, **extra):
    kind, kw = ARCHS[name]
    common = {"vocab_size": len(TOK), "bos_token_id": TOK.bos_token_id, "eos_token_id": TOK.eos_token_id,
              "pad_token_id": TOK.pad_token_id}
    if kind == "gpt2":
        cfg = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=128, **common, **kw, **extra)
    else:
        cfg = AutoConfig.for_model(kind, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4,
                                   max_position_embeddings=128, **{"num_key_value_heads": 4, **kw}, **common, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    prepare_tokenizer(TOK)
    return model


def batch():
    return left_pad([encode_prompt(TOK, p, "off") for p in PROMPTS], TOK.pad_token_id)


@pytest.mark.parametrize("name", list(ARCHS))
def test_hidden_states_equal_transformers(name):
    model = build(name)
    ids, mask = batch()
    pos = position_ids(mask)
    fast = lean(model, ids.shape[1])
    assert fast is not None
    with torch.no_grad():
        ref = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        got = fast.hidden(ids, mask, pos)
    real = mask.bool()  # padding positions are never read
    assert torch.equal(got[real], ref[real])


@pytest.mark.parametrize("name", list(ARCHS))
def test_decoding_logits_equal_transformers_cache(name):
    model = build(name)
    ids, mask = batch()
    pos = position_ids(mask)
    with torch.no_grad():
        dec = lean(model, ids.shape[1] + 6).decoder(ids, mask, pos, 6, output_head(model)[1])
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        torch.testing.assert_close(dec.logits, out.logits[:, -1], atol=1e-6, rtol=0)
        cache_in, cache_out = _cache_names(model)
        cache, am, p = out[cache_out], mask, pos[:, -1:]
        for _ in range(5):
            nxt = dec.logits.argmax(-1)
            am, p = torch.cat([am, torch.ones_like(am[:, :1])], 1), p + 1
            out = model(input_ids=nxt[:, None], attention_mask=am, position_ids=p, **{cache_in: cache},
                        use_cache=True)
            cache = out[cache_out]
            dec.step(nxt)
            assert torch.equal(dec.logits, out.logits[:, -1])  # the same kernels on the same values


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2", "mistral-mqa", "qwen3"])
def test_greedy_equals_generate(name):
    model = build(name)
    ids, mask = batch()
    assert_greedy_equals_generate(model, TOK, ids, mask, 12)


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2"])
def test_gradients_equal_transformers(name):
    model = build(name, **({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0} if name == "gpt2" else {}))
    model.train()
    ids, mask = batch()
    comp = torch.randint(4, 200, (3, 5))
    cmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])

    def grads(use_lean):
        model.zero_grad()
        if use_lean:
            st = completion_logp(model, ids, mask, comp, cmask, with_entropy=True)
        else:
            from rlft.backends import base

            saved, base.lean = base.lean, lambda *a: None
            try:
                st = completion_logp(model, ids, mask, comp, cmask, with_entropy=True)
            finally:
                base.lean = saved
        ((st.logp + 0.1 * st.entropy) * cmask).sum().backward()
        return st.logp.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    lp_a, g_a = grads(True)
    lp_b, g_b = grads(False)
    torch.testing.assert_close(lp_a * cmask, lp_b * cmask, atol=1e-6, rtol=0)
    for k in g_a:
        torch.testing.assert_close(g_a[k], g_b[k], atol=1e-6, rtol=1e-5)


def test_falls_back_where_it_does_not_apply():
    assert lean(build("llama"), 16) is not None
    assert lean(build("llama", attn_implementation="eager"), 16) is None         # another attention kernel
    assert lean(build("mistral-mqa", sliding_window=8), 16) is None              # a window shorter than the text
    assert lean(build("mistral-mqa", sliding_window=64), 16) is not None
    gpt2 = build("gpt2")                                                          # dropout 0.1 by default
    assert lean(gpt2, 16) is not None                                            # eval: dropout is off
    assert lean(gpt2.train(), 16) is None                                         # training: transformers' dropout
    ckpt = build("llama").train()
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert lean(ckpt, 16) is None
    with torch.no_grad():
        assert lean(ckpt, 16) is not None                                         # nothing to recompute without grad


def test_lora_adapters_are_used():
    peft = pytest.importorskip("peft")
    model = build("llama")
    lora_cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(model, lora_cfg)
    ids, mask = batch()
    pos = position_ids(mask)
    fast = lean(lora, ids.shape[1])
    with torch.no_grad():
        got = fast.hidden(ids, mask, pos)
        ref = lora.base_model.model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        with lora.disable_adapter():
            base = fast.hidden(ids, mask, pos)
    real = mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-6, rtol=0)
    assert not torch.allclose(got[real], base[real])  # the adapters change the output, and switch off


def _early_eos_case():
    """A llama whose greedy paths hit a declared EOS id at different steps (so finished rows leave the batch)."""
    model = build("llama")
    prompts = [f"prompt number {i}: " + "x" * i for i in range(12)]
    ids, mask = left_pad([encode_prompt(TOK, p, "off") for p in prompts], TOK.pad_token_id)
    free = sample(model, TOK, ids, mask, max_new_tokens=40, temperature=0, eos_ids=[])
    # the token at step 9 of row 0 ends some rows early and others late or never
    eos = [TOK.eos_token_id, int(free.completion_ids[0, 9])]
    return model, ids, mask, eos


def test_finished_rows_leave_the_batch_greedy_still_equals_generate(monkeypatch):
    from rlft.backends.lean import Decoder

    kept = []
    keep = Decoder.keep
    monkeypatch.setattr(Decoder, "keep", lambda self, idx: (kept.append(len(idx)), keep(self, idx)))
    model, ids, mask, eos = _early_eos_case()
    r = sample(model, TOK, ids, mask, max_new_tokens=40, temperature=0, eos_ids=eos)
    assert kept  # the batch did shrink
    lengths = r.lengths.tolist()
    assert min(lengths) <= 16 and max(lengths) > 24  # rows ended at different sync points
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=40,
                         pad_token_id=TOK.pad_token_id, eos_token_id=eos)[:, ids.shape[1]:]
    for i, n in enumerate(lengths):
        assert r.completion_ids[i, :n].tolist() == ref[i, :n].tolist()
        assert r.finish[i] == ("eos" if r.completion_ids[i, n - 1] in eos else "length")
        assert (r.completion_ids[i, n:] == TOK.pad_token_id).all() and (r.logp[i, n:] == 0).all()


def test_finished_rows_leave_the_batch_sampling_logp_still_right():
    model, ids, mask, eos = _early_eos_case()
    r = sample(model, TOK, ids, mask, max_new_tokens=40, temperature=1.0, eos_ids=eos,
               generator=torch.Generator().manual_seed(0))
    assert len(set(r.lengths.tolist())) > 2
    with torch.no_grad():
        lp = completion_logp(model, ids, mask, r.completion_ids, r.completion_mask).logp
    torch.testing.assert_close(lp * r.completion_mask, r.logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral-mqa", "qwen3"])
def test_rms_norm_in_one_kernel_is_transformers_norm_bit_for_bit(name):
    """The Llama family's RMSNorm runs as F.rms_norm in float32: the same values and gradients, bit for bit;
    in bfloat16 (where transformers rounds between its steps) the module itself runs."""
    model = build(name)
    fast = lean(model)
    assert fast.rms  # the one-kernel path is taken for this architecture
    norm = model.model.layers[0].post_attention_layernorm
    norm.weight.data.normal_()
    for dtype in (torch.float32, torch.bfloat16):
        norm.to(dtype)
        x = (torch.randn(5, 7, 32) * 3).to(dtype).requires_grad_(True)
        outs = [fast._norm(norm, x), norm(x)]
        g = torch.randn_like(outs[0])
        grads = [torch.autograd.grad(o, (x, norm.weight), g) for o in outs]
        assert torch.equal(outs[0], outs[1])
        assert all(torch.equal(a, b) for a, b in zip(*grads))
