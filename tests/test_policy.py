"""Loading what real checkpoints look like: no pad token, several EOS ids in generation_config.json, a BOS
the model expects, chat templates; and the demo's summary."""

import json
import subprocess
import sys

import pytest
import torch

from rlft.backends import load_policy
from rlft.config import Config, ConfigError
from rlft.policy import encode_prompt, eos_ids, format_prompt
from rlft.tiny import byte_tokenizer, save_tiny, tiny_causal_lm


def _save(tmp_path, tok, **gen):
    model = tiny_causal_lm(tok, hidden=32, layers=1, heads=2)
    for k, v in gen.items():
        setattr(model.generation_config, k, v)
    return save_tiny(tmp_path / "m", model, tok)


def _load(path, **model_cfg):
    over = [f"model.path={path}"] + [f"model.{k}={v}" for k, v in model_cfg.items()]
    return load_policy(Config.load(None, over).model)


def test_no_pad_token_and_a_list_of_eos_ids(tmp_path):
    tok = byte_tokenizer()
    extra_eos = tok.convert_tokens_to_ids("<unk>")
    path = _save(tmp_path, tok, eos_token_id=[tok.eos_token_id, extra_eos])
    # a checkpoint whose tokenizer has no pad token
    cfg = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(cfg))
    model, tok2 = _load(path)
    assert tok2.pad_token_id == tok2.eos_token_id
    assert tok2.padding_side == "left"
    assert set(eos_ids(tok2, model)) == {tok.eos_token_id, extra_eos}


def test_bos_added_once_when_the_tokenizer_adds_one(tmp_path):
    from tokenizers import processors

    tok = byte_tokenizer()
    bos = tok.bos_token_id
    assert encode_prompt(tok, "hi") == tok("hi", add_special_tokens=False)["input_ids"]  # adds none: none added
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok("hi")["input_ids"][0] == bos
    ids = encode_prompt(tok, "hi")
    assert ids[0] == bos and ids[1] != bos
    # a chat template that already writes BOS in the text is not given a second one
    assert encode_prompt(tok, "<s>hi") == ids
    assert encode_prompt(tok, "hi", add_bos="off")[0] != bos
    assert encode_prompt(tok, "hi", add_bos="on")[0] == bos


def test_chat_template_wraps_prompts_and_messages(tmp_path):
    tok = byte_tokenizer(chat=True)
    assert format_prompt(tok, "2+2?") == "<|user|>2+2?</s><|assistant|>"
    assert format_prompt(tok, "2+2?", system="be brief") == "<|system|>be brief</s><|user|>2+2?</s><|assistant|>"
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert format_prompt(tok, msgs).endswith("<|user|>c</s><|assistant|>")
    assert format_prompt(tok, "2+2?", chat_template="off") == "2+2?"
    plain = byte_tokenizer()
    with pytest.raises(ConfigError, match="no chat template"):
        format_prompt(plain, "x", chat_template="on")
    with pytest.raises(ConfigError, match="chat messages"):
        format_prompt(plain, msgs)


def test_dtype_bf16_and_missing_path(tmp_path):
    path = _save(tmp_path, byte_tokenizer())
    model, _ = _load(path, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="does not exist"):
        _load(tmp_path / "nope")


def test_demo_writes_summary(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "rlft", "demo", "--out", str(out), "--steps", "2",
                           "--sft-steps", "10"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert set(s["before"]) == set(s["after"]) == {"bleu", "exact_match"}
    assert all(0 <= v <= 1 for part in ("before", "after") for v in s[part].values())
    assert s["seconds"] > 0 and (out / "run" / "metrics.jsonl").exists()
    assert "warm start (before RL)" in proc.stdout
