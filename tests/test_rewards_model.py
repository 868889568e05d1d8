"""Reward models, on tiny randomly initialised classifiers saved to a temporary folder: batched scores (with
padding) equal one-by-one forwards of the plain transformers model."""

import pytest
import torch

from rlft.rewards import Reward, check_columns
from rlft.rewards import model as rm
from rlft.tiny import byte_tokenizer, save_tiny, tiny_classifier

PROMPTS = ["Say hi.", "Write a long sentence about cats, please.", "x", "Why?", "2+2=", "A poem:"]
COMPLETIONS = ["hi", "Cats are small furry animals that like to sleep in the sun all day long.", "", "Because.",
               "4", "Roses are red,\nviolets are blue."]


def direct(path, texts, add_special_tokens=True):
    """The plain transformers forward, one text at a time, no padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return [model(**tok(t, return_tensors="pt", add_special_tokens=add_special_tokens)).logits[0].float()
                for t in texts]


@pytest.fixture(scope="module")
def scalar_rm(tmp_path_factory):
    tok = byte_tokenizer()
    tok.padding_side = "left"  # a left-padding tokenizer must not change the scores
    return save_tiny(tmp_path_factory.mktemp("rm"), tiny_classifier(tok, num_labels=1), tok)


@pytest.fixture(scope="module")
def chat_classifier(tmp_path_factory):
    tok = byte_tokenizer(chat=True)
    model = tiny_classifier(tok, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, seed=1)
    return save_tiny(tmp_path_factory.mktemp("cls"), model, tok)


def test_batched_equals_one_by_one_with_padding(scalar_rm):
    batched = rm.reward_model(PROMPTS, COMPLETIONS, path=scalar_rm, batch_size=4, device="cpu")
    single = rm.reward_model(PROMPTS, COMPLETIONS, path=scalar_rm, batch_size=1, device="cpu")
    want = [x[0].item() for x in direct(scalar_rm, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])]
    assert batched == pytest.approx(want, abs=1e-5)
    assert single == pytest.approx(want, abs=1e-5)
    assert len({round(x, 4) for x in want}) > 1  # the texts really score differently


def test_classifier_label_probability_through_the_chat_template(chat_classifier):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(chat_classifier)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                                     tokenize=False) for p, c in zip(PROMPTS, COMPLETIONS)]
    assert texts[0] == "<|user|>Say hi.</s><|assistant|>hi</s>"
    logits = direct(chat_classifier, texts, add_special_tokens=False)
    pos = rm.reward_model(PROMPTS, COMPLETIONS, path=chat_classifier, label="POSITIVE", batch_size=3, device="cpu")
    assert pos == pytest.approx([x.softmax(-1)[1].item() for x in logits], abs=1e-6)
    neg = rm.reward_model(PROMPTS, COMPLETIONS, path=chat_classifier, label=0, device="cpu")
    assert [a + b for a, b in zip(pos, neg)] == pytest.approx([1.0] * len(PROMPTS), abs=1e-6)
    # a per-row label column
    rows = rm.reward_model(PROMPTS[:2], COMPLETIONS[:2], ["NEGATIVE", "POSITIVE"], path=chat_classifier, device="cpu")
    assert rows == pytest.approx([neg[0], pos[1]], abs=1e-6)
    # the completion alone
    alone = rm.reward_model(PROMPTS[:1], COMPLETIONS[:1], path=chat_classifier, label="POSITIVE",
                            include_prompt=False, device="cpu")
    one = direct(chat_classifier, ["<|assistant|>hi</s>"], add_special_tokens=False)[0]
    assert alone == pytest.approx([one.softmax(-1)[1].item()], abs=1e-6)


def test_label_errors(chat_classifier):
    with pytest.raises(ValueError, match="2 labels.*set args.label"):
        rm.reward_model(["p"], ["c"], path=chat_classifier, device="cpu")
    with pytest.raises(ValueError, match="no label 'HAPPY'"):
        rm.reward_model(["p"], ["c"], path=chat_classifier, label="HAPPY", device="cpu")


def test_loaded_once_and_cached(scalar_rm):
    a = rm.load_reward_model(scalar_rm, "cpu", "auto")
    rm.reward_model(["p"], ["c"], path=scalar_rm, device="cpu")
    assert rm.load_reward_model(scalar_rm, "cpu", "auto")[0] is a[0]
    assert rm.load_reward_model(scalar_rm, "cpu", "float32")[0] is not a[0]  # another dtype, another copy


def test_model_without_pad_token_id(tmp_path):
    tok = byte_tokenizer()
    model = tiny_classifier(tok, num_labels=1, seed=3)
    model.config.pad_token_id = None
    path = save_tiny(tmp_path / "nopad", model, tok)
    got = rm.reward_model(PROMPTS, COMPLETIONS, path=path, batch_size=6, device="cpu")
    # pooled at the last real token, as the model does for one unpadded text
    want = [x[0].item() for x in direct(path, [p + c for p, c in zip(PROMPTS, COMPLETIONS)])]
    assert got == pytest.approx(want, abs=1e-5)


def test_truncation_keeps_the_end(scalar_rm):
    long = "y" * 300
    got = rm.reward_model(["p"], [long], path=scalar_rm, max_length=32, device="cpu")
    want = direct(scalar_rm, ["y" * 32])[0][0].item()  # byte tokenizer: one token per byte, no specials
    assert got == pytest.approx([want], abs=1e-5)


def test_path_is_required_at_start_up():
    with pytest.raises(ValueError, match="'rm' .*needs 'path'"):
        check_columns([Reward("rm", rm.reward_model)], ["prompt"])


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot load it"):
        rm.reward_model(["p"], ["c"], path=str(tmp_path / "nowhere"), device="cpu")


def test_chat_message_prompts_are_scored(tmp_path):
    """A chat dataset hands rewards message lists: they go through the model's chat template as turns, or
    become 'role: content' text without one."""
    from rlft.rewards.base import prompt_text
    from rlft.rewards.model import _texts
    from rlft.tiny import byte_tokenizer

    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    chat = byte_tokenizer(chat=True)
    texts, specials = _texts(chat, [msgs], ["hello"], include_prompt=True)
    assert specials and texts == ["<|system|>be kind</s><|user|>hi</s><|assistant|>hello</s>"]
    plain = byte_tokenizer()
    texts, specials = _texts(plain, [msgs], ["hello"], include_prompt=True)
    assert not specials and texts == ["system: be kind\nuser: hi" + "hello"]
    assert prompt_text("already text") == "already text"
