"""The G samples of a prompt share its forward pass (sampling prefill and the update), and zero-advantage
samples are skipped in the update: the same numbers as running every row in full."""

import copy

import pytest
import torch
from test_lean import ARCHS, TOK, build

from conftest import assert_greedy_equals_generate, completion_logp, sample, update
from rlft.backends import load_policy
from rlft.config import Config
from rlft.loss import Norm, pg_loss
from rlft.policy import encode_prompt, left_pad

PROMPTS = ["hello", "a much longer prompt, padded less", "x"]


def _completions(n, t, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 200, (n, t), generator=g)
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    return torch.where(mask.bool(), ids, TOK.pad_token_id), mask


@pytest.mark.parametrize("name", list(ARCHS))
def test_shared_prompt_forward_equals_full_forward(name):
    """Rows continue prompts given once (owner): log-probs, hidden states and gradients equal the forward over
    each row's own prompt + completion. Rows of one prompt are not adjacent, lengths differ, one is 1 token."""
    model = build(name)  # eval mode: GPT-2's dropout would make two forwards differ
    pid, pm = left_pad([encode_prompt(TOK, p, "off") for p in PROMPTS], TOK.pad_token_id)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    ci, cm = _completions(8, 7, [7, 3, 1, 5, 7, 2, 6, 4])
    outs = []
    for shared in (False, True):
        model.zero_grad()
        args = (pid, pm, ci, cm) if shared else (pid[owner], pm[owner], ci, cm)
        st = completion_logp(model, *args, with_hidden=True, owner=owner if shared else None)
        ((st.logp * cm).sum() + (st.hidden ** 2).mean()).backward()
        outs.append((st.logp * cm, st.hidden * cm[..., None], [p.grad.clone() for p in model.parameters()]))
    (lp0, h0, g0), (lp1, h1, g1) = outs
    torch.testing.assert_close(lp1, lp0, atol=2e-6, rtol=0)
    torch.testing.assert_close(h1, h0, atol=2e-6, rtol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_sampling_with_one_prefill_per_prompt(name):
    """Each prompt repeated 4 times: the prefill runs once per prompt; sampling log-probs still equal the
    training log-probs, greedy still equals `generate`, and rows of one prompt draw different samples."""
    model = build(name)
    rows = [p for p in PROMPTS for _ in range(4)]
    ids, mask = left_pad([encode_prompt(TOK, p, "off") for p in rows], TOK.pad_token_id)
    ro = sample(model, TOK, ids, mask, max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = completion_logp(model, ids, mask, ro.completion_ids, ro.completion_mask).logp * ro.completion_mask
    torch.testing.assert_close(ro.logp, want, atol=1e-5, rtol=0)
    assert len({tuple(r) for r in ro.completion_ids[:4].tolist()}) > 1
    assert_greedy_equals_generate(model, TOK, ids, mask, 10, eos_ids=TOK.eos_token_id)


def _setup(tiny_model_dir, **over):
    cfg = Config.load(None, [f"model.path={tiny_model_dir}", "rollout.batch_prompts=2", "rollout.num_generations=4",
                             "rollout.max_new_tokens=8", "optim.max_grad_norm=0",
                             *[f"{k}={v}" for k, v in over.items()]])
    model, tok = load_policy(cfg.model)
    ids, mask = left_pad([encode_prompt(tok, p) for p in ["ab", "a longer one"] for _ in range(4)], tok.pad_token_id)
    ro = sample(model, tok, ids, mask, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    return cfg, model, ro


def _sgd_update(model, cfg, ro, adv):
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    before = [p.detach().clone() for p in params]
    stats = update(model, None, opt, sched, params, ro, adv, ro.completion_mask, None, torch.zeros_like(adv), cfg)
    return [b - p.detach() for b, p in zip(before, params)], stats  # = the gradient (SGD, lr 1, no clipping)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_sum"])
def test_update_with_shared_prompts_equals_unshared(tiny_model_dir, agg):
    results = []
    for share in (True, False):
        cfg, model, ro = _setup(tiny_model_dir, **{"optim.share_prompts": share, "algo.agg": agg})
        adv = torch.linspace(-1, 1, 8)[:, None] * ro.completion_mask
        results.append(_sgd_update(model, cfg, ro, adv))
    (d1, s1), (d0, s0) = results
    assert any(d.abs().max() > 1e-4 for d in d0)
    for a, b in zip(d1, d0):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    assert s1["loss/pg"] == pytest.approx(s0["loss/pg"], abs=1e-6)


def test_zero_advantage_samples_are_skipped_and_the_gradient_is_unchanged(tiny_model_dir, monkeypatch):
    """The first group has advantage 0 everywhere: the update runs only the other 4 rows, and its gradient
    equals the gradient of the loss over all 8 rows (normalised by all 8 rows' tokens), computed by hand."""
    cfg, model, ro = _setup(tiny_model_dir)
    adv = torch.cat([torch.zeros(4), torch.tensor([1.0, -0.5, 0.25, -0.75])])[:, None] * ro.completion_mask
    ref = copy.deepcopy(model)
    st = completion_logp(ref, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    norm = Norm(8, int(ro.completion_mask.sum()), 8)
    loss, _ = pg_loss(st.logp, st.logp.detach(), adv, ro.completion_mask, norm)
    loss.backward()
    want = [p.grad for p in ref.parameters()]

    from rlft.backends import Causal

    seen, logprobs = [], Causal.logprobs

    def counting(self, mb, **kw):
        seen.append(mb.completion_ids.shape[0])
        return logprobs(self, mb, **kw)

    monkeypatch.setattr(Causal, "logprobs", counting)
    got, stats = _sgd_update(model, cfg, ro, adv)
    assert sum(seen) == 4
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    assert stats["loss/pg"] == pytest.approx(float(loss.detach()), abs=1e-6)


def test_a_batch_without_signal_runs_nothing_and_moves_nothing(tiny_model_dir, monkeypatch):
    from rlft.backends import Causal

    cfg, model, ro = _setup(tiny_model_dir)
    monkeypatch.setattr(Causal, "logprobs", lambda *a, **k: pytest.fail("no row should run"))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    adv = torch.zeros_like(ro.logp)
    stats = update(model, None, opt, sched, params, ro, adv, ro.completion_mask, None, adv, cfg)
    assert stats["grad_norm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert all(opt.state[p]["step"] == 1 for p in params)  # a zero-gradient step, as without the skip
