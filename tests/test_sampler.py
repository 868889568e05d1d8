"""The sampler: greedy equals transformers.generate token for token; seeds reproduce; top-k / top-p never
leave the allowed set; EOS, stop strings and max_new_tokens end completions with the right reason."""

import pytest
import torch

from conftest import assert_greedy_equals_generate, completion_logp, hf_generate, sample
from rlft.policy import encode_prompt, left_pad, position_ids, prepare_tokenizer
from rlft.sampling import filter_logits
from rlft.tiny import byte_tokenizer, tiny_causal_lm


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request):
    tok = byte_tokenizer()
    model = tiny_causal_lm(tok, arch=request.param, hidden=32, layers=2, heads=2, seed=1).eval()
    prepare_tokenizer(tok)
    prompts = ["hello", "a much longer prompt, padded less", "x"]
    ids, mask = left_pad([encode_prompt(tok, p) for p in prompts], tok.pad_token_id)
    return model, tok, ids, mask


def test_greedy_equals_generate(lm):
    model, tok, ids, mask = lm
    assert_greedy_equals_generate(model, tok, ids, mask, 16)


def test_sampling_logp_equals_training_logp(lm):
    model, tok, ids, mask = lm
    r = sample(model, tok, ids, mask, max_new_tokens=12, temperature=0.7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lp = completion_logp(model, ids, mask, r.completion_ids, r.completion_mask, temperature=0.7).logp
    torch.testing.assert_close(lp * r.completion_mask, r.logp, atol=1e-5, rtol=0)


def test_same_seed_same_samples_and_different_seed_differs(lm):
    model, tok, ids, mask = lm
    kw = dict(max_new_tokens=12, temperature=1.0)
    a = sample(model, tok, ids, mask, generator=torch.Generator().manual_seed(7), **kw)
    b = sample(model, tok, ids, mask, generator=torch.Generator().manual_seed(7), **kw)
    c = sample(model, tok, ids, mask, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_filter_logits_top_k_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.10]]))
    # top-k 2 keeps the two largest
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    # top-p 0.7: mass before each token 0, .5, .75, .9 -> tokens whose predecessors hold < .7 stay: first two
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    # top-p 0.76: the third token's predecessors hold .75 < .76 -> kept
    assert torch.isfinite(filter_logits(logits, top_p=0.76)).tolist() == [[True, True, True, False]]
    # a tiny p keeps the single most likely token
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.5), (5, 0.3)])
def test_top_k_top_p_never_sample_outside_allowed_set(lm, top_k, top_p):
    model, tok, ids, mask = lm
    n = 64
    ids, mask = ids[:1].repeat(n, 1), mask[:1].repeat(n, 1)
    r = sample(model, tok, ids, mask, max_new_tokens=1, temperature=1.0, top_k=top_k, top_p=top_p,
               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids[:1], attention_mask=mask[:1], position_ids=position_ids(mask[:1]))
        logits = out.logits[0, -1].float()
    allowed = torch.isfinite(filter_logits(torch.log_softmax(logits, -1)[None], top_k, top_p))[0]
    assert allowed[r.completion_ids[:, 0]].all()
    assert allowed.sum() < logits.numel()  # the filter really excluded something


def test_eos_every_id_and_finish_reasons():
    tok = byte_tokenizer()
    model = tiny_causal_lm(tok, hidden=32, layers=1, heads=2, seed=0).eval()
    prepare_tokenizer(tok)
    ids, mask = left_pad([encode_prompt(tok, "abc")], tok.pad_token_id)

    def run(**kw):  # the same seed gives the same path until something ends it
        return sample(model, tok, ids, mask, max_new_tokens=8, temperature=1.0,
                      generator=torch.Generator().manual_seed(5), **kw)

    free = run(eos_ids=[tok.eos_token_id])
    path = free.completion_ids[0].tolist()
    assert free.finish == ["length"] and int(free.lengths[0]) == 8
    k = next(i for i in range(1, 8) if path[i] not in path[:i])  # a token that first appears at position k
    # declare it an extra EOS id: generation stops there, the EOS token kept in the mask
    r = run(eos_ids=[tok.eos_token_id, path[k]])
    assert r.finish == ["eos"] and int(r.lengths[0]) == k + 1
    assert r.completion_ids[0, :k + 1].tolist() == path[:k + 1]
    assert (r.completion_ids[0, k + 1:] == tok.pad_token_id).all()
    # a stop string equal to the k-th token's text ends there and is cut from the text the rewards see
    stop_text = tok.decode([path[k]])
    r = run(eos_ids=[tok.eos_token_id], stop=[stop_text])
    j = next(i for i in range(8) if stop_text in tok.decode(path[:i + 1]))
    assert r.finish == ["stop"] and int(r.lengths[0]) == j + 1
    assert stop_text not in r.completions[0]


def test_hf_engine_matches_greedy(lm):
    model, tok, ids, mask = lm
    a = sample(model, tok, ids, mask, max_new_tokens=10, temperature=0)
    b = hf_generate(model, tok, ids, mask, max_new_tokens=10, temperature=0)
    assert a.completions == b.completions and a.finish == b.finish
    torch.testing.assert_close(a.logp, b.logp, atol=1e-5, rtol=0)
