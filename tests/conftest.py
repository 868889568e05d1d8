import json
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # the suite runs in parallel workers on a 2-core machine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama + byte-level tokenizer saved with save_pretrained (what a user's folder looks like)."""
    from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm

    tok = byte_tokenizer()
    model = tiny_causal_lm(tok, hidden=32, layers=2, heads=2, max_positions=128, seed=0)
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", model, tok)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small prompt/reference dataset."""
    d = tmp_path_factory.mktemp("data")
    rows = [{"prompt": f"{a}+{b}=", "reference": str(a + b)} for a in range(6) for b in range(6)]
    path = d / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ASCII = os.path.join(os.path.dirname(__file__), "rewards_for_tests.py")


def base_overrides(model_dir, data, out, **extra):
    o = {"model.path": str(model_dir), "data.train": str(data), "train.out": str(out), "train.steps": 2,
         "rollout.batch_prompts": 2, "rollout.num_generations": 4, "rollout.max_new_tokens": 6,
         "optim.lr": 1e-2, "log.console": False,
         "rewards": f"[{{fn: exact_match}}, {{fn: bleu}}, {{fn: '{ASCII}:ascii_frac'}}]"}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def backend_of(model, tok=None, *, engine: str = "rlft", eos_ids=None):
    """The backend rlft runs a (plain, one-process) model with: `rlft.backends.plain` (Causal or Seq2Seq)."""
    from rlft import backends

    b = backends.plain(model, tok)
    b.engine = engine
    if eos_ids is not None:
        b.eos_ids = list(eos_ids)
    return b


def sample(model, tok, ids, mask, *, eos_ids=None, generator=None, on_done=None, engine="rlft", stop=(), **params):
    """`Backend.sample` with the sampling parameters as keywords (max_new_tokens, temperature, top_k, top_p, stop)."""
    from rlft.sampling import SamplingParams

    b = backend_of(model, tok, engine=engine, eos_ids=eos_ids)
    return b.sample(ids, mask, SamplingParams(stop=tuple(stop), **params), generator=generator, on_done=on_done)


def hf_generate(model, tok, ids, mask, **kw):
    """`Backend.sample` through `transformers.generate` (rollout.engine: hf)."""
    return sample(model, tok, ids, mask, engine="hf", **kw)


def completion_logp(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, owner=None, **kw):
    """`Backend.logprobs` of the completions (``owner``: rows share the prompts, as in the update)."""
    from rlft.step import MicroBatch

    mb = MicroBatch(torch.arange(completion_ids.shape[0]), prompt_ids, prompt_mask, owner, completion_ids,
                    completion_mask)
    return backend_of(model).logprobs(mb, **kw)


def assert_greedy_equals_generate(model, tok, ids, mask, max_new_tokens, eos_ids=None):
    """rlft's greedy sampler and transformers' `generate` give the same tokens up to each completion's end, and
    rlft pads after it. Returns the sampler's rollout."""
    from rlft.policy import eos_ids as model_eos

    r = sample(model, tok, ids, mask, max_new_tokens=max_new_tokens, temperature=0)
    ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id,
                         eos_token_id=model_eos(tok, model) if eos_ids is None else eos_ids)[:, ids.shape[1]:]
    for i in range(ids.shape[0]):
        n = int(r.lengths[i])
        assert r.completion_ids[i, :n].tolist() == ref[i, :n].tolist()
        assert (r.completion_ids[i, n:] == tok.pad_token_id).all()
    return r


def update(model, value_head, opt, sched, params, ro, adv, loss_mask, ref_logp, token_rewards, cfg, ctx=None):
    """`rlft.update.update` on a rollout with given advantages: the `StepBatch` and `Optim` the loop would build."""
    from rlft.distributed import Dist
    from rlft.step import StepBatch
    from rlft.update import Optim
    from rlft.update import update as rlft_update

    batch = StepBatch([], ro, token_rewards, torch.ones(len(ro.finish), dtype=torch.bool), {}, kl_rewards=token_rewards,
                      loss_mask=loss_mask, ref_logp=ref_logp, advantages=adv)
    return rlft_update(backend_of(model), Optim(opt, sched, params, value_head), batch, cfg, ctx or Dist())
