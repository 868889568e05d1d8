"""Encoder-decoder policies (tiny T5 and BART from configs): greedy equals transformers.generate token for token;
sampling log-probs equal training log-probs; the encoder runs once per distinct prompt; a 2-step RL run through
train() changes the parameters and saves a checkpoint plain transformers loads."""

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from conftest import base_overrides, completion_logp, hf_generate, sample
from rlft import backends
from rlft.backends import load_policy
from rlft.backends.seq2seq import decoder_prefix, right_align
from rlft.config import Config, ConfigError
from rlft.policy import encode_prompt, eos_ids, left_pad, prepare_tokenizer
from rlft.tiny import byte_tokenizer, save_tiny, tiny_seq2seq_lm

PROMPTS = ["hello", "a much longer prompt, padded less", "x", "hello"]


@pytest.fixture(scope="module", params=["t5", "bart"])
def s2s(request):
    tok = byte_tokenizer()
    model = tiny_seq2seq_lm(tok, request.param, seed=1).eval()
    prepare_tokenizer(tok)
    ids, mask = left_pad([encode_prompt(tok, p, encoder=True) for p in PROMPTS], tok.pad_token_id)
    return model, tok, ids, mask


def test_right_align_keeps_tokens_in_order():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 1]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    r_ids, r_mask = right_align(ids, mask, pad_id=0)
    assert r_ids.tolist() == [[5, 6, 0, 0], [7, 8, 9, 1]] and r_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_greedy_equals_generate(s2s):
    model, tok, ids, mask = s2s
    r = sample(model, tok, ids, mask, max_new_tokens=16, temperature=0)
    k = len(decoder_prefix(model))
    e_ids, e_mask = right_align(ids, mask, tok.pad_token_id)
    # generate counts a forced first token (BART's BOS) among the new ones
    ref = model.generate(input_ids=e_ids, attention_mask=e_mask, do_sample=False, max_new_tokens=16 + k - 1,
                         pad_token_id=tok.pad_token_id, eos_token_id=eos_ids(tok, model))[:, k:]
    for i in range(ids.shape[0]):
        n = int(r.lengths[i])
        assert n > 0 and r.completion_ids[i, :n].tolist() == ref[i, :n].tolist()
        assert (r.completion_ids[i, n:] == tok.pad_token_id).all()
    hf = hf_generate(model, tok, ids, mask, max_new_tokens=16, temperature=0)  # rollout.engine: hf
    assert hf.completions == r.completions


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampling_logp_equals_training_logp(s2s, temperature):
    model, tok, ids, mask = s2s
    r = sample(model, tok, ids, mask, max_new_tokens=12, temperature=temperature,
               generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        st = completion_logp(model, ids, mask, r.completion_ids, r.completion_mask, temperature=temperature,
                             with_entropy=True, with_hidden=True)
    torch.testing.assert_close(st.logp * r.completion_mask, r.logp, atol=1e-5, rtol=0)
    assert st.entropy.shape == st.logp.shape and st.hidden.shape[:2] == st.logp.shape
    # a micro-batch (rows 1 and 3, prompts trimmed from the left as the trainer trims them) gives the same values
    ix = torch.tensor([1, 3])
    p = int(mask[ix].sum(-1).max())
    with torch.no_grad():
        part = completion_logp(model, ids[ix, -p:], mask[ix, -p:], r.completion_ids[ix], r.completion_mask[ix],
                               temperature=temperature).logp
    torch.testing.assert_close(part * r.completion_mask[ix], r.logp[ix], atol=1e-5, rtol=0)


def test_stop_strings_end_completions(s2s):
    model, tok, ids, mask = s2s
    kw = dict(max_new_tokens=16, temperature=1.0)
    r = sample(model, tok, ids, mask, generator=torch.Generator().manual_seed(2), **kw)
    i = max(range(len(PROMPTS)), key=lambda j: len(r.completions[j]))
    text = r.completions[i]
    assert len(text) >= 4
    stop = text[2:4]  # the same seed draws the same tokens until the stop string ends the row
    s = sample(model, tok, ids, mask, generator=torch.Generator().manual_seed(2), stop=[stop], **kw)
    assert s.finish[i] == "stop" and s.completions[i] == text[:text.find(stop)]
    assert int(s.lengths[i]) < int(r.lengths[i])


def test_same_seed_same_samples(s2s):
    model, tok, ids, mask = s2s
    a = sample(model, tok, ids, mask, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    b = sample(model, tok, ids, mask, max_new_tokens=8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.completion_ids, b.completion_ids)


def test_encoder_runs_once_per_distinct_prompt(s2s):
    model, tok, ids, mask = s2s
    seen = []
    hook = model.get_encoder().register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape[0]),
                                                     with_kwargs=True)
    try:
        rep = ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)          # 4 prompts x G=4, one repeated
        r = sample(model, tok, *rep, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
        completion_logp(model, *rep, r.completion_ids, r.completion_mask)
    finally:
        hook.remove()
    assert seen == [3, 3]  # 16 rows, 3 distinct prompts: sampling, then the update's forward


@pytest.fixture(scope="module")
def s2s_dirs(tmp_path_factory):
    tok = byte_tokenizer()
    d = tmp_path_factory.mktemp("s2s")
    return {arch: save_tiny(d / arch, tiny_seq2seq_lm(tok, arch, seed=0), tok) for arch in ("t5", "bart")}


@pytest.mark.parametrize("arch,extra", [
    ("t5", {"algo.estimator": "rloo", "algo.kl_coef": 0.05}),
    ("bart", {"algo.estimator": "grpo", "algo.num_iterations": 2, "rollout.engine": "hf"}),
])
def test_two_rl_steps_change_the_model_and_save_a_plain_checkpoint(s2s_dirs, tiny_data, tmp_path, arch, extra):
    from rlft.train import train

    cfg = Config.load(None, base_overrides(s2s_dirs[arch], tiny_data, tmp_path / "run", **extra))
    out = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "loss/pg" in x]
    assert len(rows) == 2 and all(abs(r["loss/pg"]) < 1e6 for r in rows)
    before = AutoModelForSeq2SeqLM.from_pretrained(s2s_dirs[arch]).state_dict()
    after = AutoModelForSeq2SeqLM.from_pretrained(out / "checkpoint-2").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if extra.get("algo.kl_coef"):
        assert rows[-1]["kl/mean"] != 0.0


def test_model_kind(s2s_dirs, tiny_model_dir):
    cfg = Config.load(None, [f"model.path={s2s_dirs['t5']}"])
    model, tok = load_policy(cfg.model)                       # auto: config.is_encoder_decoder
    backend = backends.build(cfg, model, tok)
    assert model.config.is_encoder_decoder and backend.seq2seq
    assert encode_prompt(tok, "ab", encoder=backend.seq2seq) == tok("ab")["input_ids"]  # its own special tokens
    with pytest.raises(ConfigError, match="as a sequence-to-sequence model"):
        load_policy(Config.load(None, [f"model.path={tiny_model_dir}", "model.kind=seq2seq"]).model)
    with pytest.raises(ConfigError, match="is not a token"):
        load_policy(Config.load(None, [f"model.path={s2s_dirs['t5']}", "model.forced_bos_token=zzz_Latn"]).model)
    model, tok = load_policy(Config.load(None, [f"model.path={s2s_dirs['t5']}", "model.forced_bos_token=<s>"]).model)
    assert decoder_prefix(model) == [tok.pad_token_id, tok.bos_token_id]


def test_finished_rows_are_reported_as_returned(s2s):
    """rewards.overlap's hook: at each sync the rows finished since the last one, as the rollout will hold them."""
    model, tok, ids, mask = s2s
    reports = []
    r = sample(model, tok, ids, mask, max_new_tokens=40, temperature=1.0, stop=list("abcdefghijklmnopqrstuvwxyz"),
               generator=torch.Generator().manual_seed(0), on_done=lambda idx, part: reports.append((idx, part)))
    rows = [i for idx, _ in reports for i in idx]
    assert rows and len(rows) == len(set(rows))
    for idx, part in reports:
        for j, i in enumerate(idx):
            assert (part.completions[j], part.finish[j], int(part.lengths[j])) == \
                (r.completions[i], r.finish[i], int(r.lengths[i]))
