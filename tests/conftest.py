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
