"""Examples (rlft/step.py): a dataset row made ready for the model -- the template, the chat template, the
long-prompt rule -- and the micro-batch cut of a rollout."""

import pytest
import torch

from rlft.config import Config, ConfigError
from rlft.data import Row
from rlft.sampling import Rollout
from rlft.step import MicroBatch, make_examples
from rlft.tiny import byte_tokenizer


def _examples(tok, rows, counts=None, **data):
    over = [f"data.{k}={v}" for k, v in data.items()]
    return make_examples(Config.load(None, over), tok, rows, "d.jsonl", {} if counts is None else counts)


def test_template_names_any_column_and_a_missing_one_is_an_error():
    tok = byte_tokenizer()
    ex = _examples(tok, [Row(1, {"prompt": "2+2=", "reference": "4", "level": 1})],
                   template='"Q ({level}): {prompt}\\nA:"')[0]
    assert ex.prompt == ex.text == "Q (1): 2+2=\nA:" and tok.decode(ex.ids) == ex.text
    assert ex.row.columns["level"] == 1 and ex.row.line == 1  # the row travels unchanged
    with pytest.raises(ConfigError, match="names column 'topic' that row at line 4 does not have"):
        _examples(tok, [Row(4, {"prompt": "x"})], template="'{topic}: {prompt}'")


def test_chat_template_for_chat_models_and_messages_pass_through():
    tok = byte_tokenizer(chat=True)
    text_row, msg_row = Row(1, {"prompt": "2+2="}), Row(2, {"prompt": [{"role": "user", "content": "hi"}]})
    a, b = _examples(tok, [text_row, msg_row], template="'Q: {prompt}'", system="'be brief'")
    assert a.prompt == "Q: 2+2=" and a.text == "<|system|>be brief</s><|user|>Q: 2+2=</s><|assistant|>"
    assert b.prompt == msg_row.columns["prompt"] and b.text == "<|system|>be brief</s><|user|>hi</s><|assistant|>"
    off = Config.load(None, ["model.chat_template=off"])
    assert make_examples(off, tok, [text_row], "d", {})[0].text == "2+2="


@pytest.mark.parametrize("mode", ["truncate", "skip"])
def test_long_prompts_truncated_from_the_left_or_skipped_and_counted(mode):
    tok = byte_tokenizer()
    counts: dict = {}
    out = _examples(tok, [Row(1, {"prompt": "abcdefgh"}), Row(2, {"prompt": "ab"})], counts, max_prompt_tokens=4,
                    long_prompts=mode)
    if mode == "truncate":
        assert tok.decode(out[0].ids) == "efgh" and counts["truncated_prompts"] == 1  # the end is kept
    else:
        assert [e.row.line for e in out] == [2] and counts["skipped_prompts"] == 1


def test_micro_batch_trims_padding_and_shares_prompts_within_groups():
    # 2 groups of 2 rows; prompts left-padded to 4, completions right-padded to 5
    pid = torch.tensor([[0, 0, 7, 8]] * 2 + [[0, 5, 6, 7]] * 2)
    pm = (pid != 0).long()
    cid = torch.tensor([[1, 2, 0, 0, 0], [1, 0, 0, 0, 0], [3, 4, 5, 0, 0], [3, 0, 0, 0, 0]])
    cm = (cid != 0).long()
    ro = Rollout(pid, pm, cid, cm, torch.zeros(4, 5), ["eos"] * 4, [""] * 4)
    mb = MicroBatch.of(ro, [1, 2, 3], group=2)
    assert mb.owner.tolist() == [0, 1, 1]                     # row 1 continues group 0's prompt, rows 2-3 group 1's
    assert mb.prompt_ids.tolist() == [[0, 7, 8], [5, 6, 7]]   # each prompt once, the all-padding column gone
    assert mb.width == 3 and mb.completion_ids.tolist() == [[1, 0, 0], [3, 4, 5], [3, 0, 0]]
    full = mb.unshared()
    assert full.owner is None and full.prompt_ids.tolist() == [[0, 7, 8], [5, 6, 7], [5, 6, 7]]
    alone = MicroBatch.of(ro, [0, 2], group=2)                 # one row per group: nothing to share
    assert alone.owner is None and alone.prompt_ids.tolist() == [[0, 7, 8], [5, 6, 7]]
