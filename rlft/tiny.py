"""Tiny models and tokenizers built from configs, with no download: for the demo, tests and benchmarks.

``byte_tokenizer()`` encodes any text (byte-level BPE; with ``train_text`` it learns merges offline, which
shortens sequences). ``tiny_causal_lm`` / ``tiny_classifier`` build randomly initialised transformers models
of a chosen architecture around it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer(train_text: Iterable[str] | None = None, vocab_size: int = 512, chat: bool = False):
    """A ``PreTrainedTokenizerFast`` over bytes (every string encodes and decodes exactly).

    With ``train_text`` it learns up to ``vocab_size`` BPE merges from that text, offline.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if train_text is None:
        vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                      show_progress=False)
        tok.train_from_iterator(list(train_text), trainer)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if chat:
        fast.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>"]})
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_causal_lm(tokenizer, arch: str = "llama", hidden: int = 64, layers: int = 2, heads: int = 4,
                   max_positions: int = 512, seed: int = 0):
    """A randomly initialised causal LM (``llama``, ``gpt2``, ``qwen2``) sized for a CPU test."""
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        cfg = AutoConfig.for_model("gpt2", n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
                                   **common)
    else:
        cfg = AutoConfig.for_model(arch, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=heads,
                                   max_position_embeddings=max_positions, tie_word_embeddings=True, **common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


def tiny_classifier(tokenizer, num_labels: int = 1, arch: str = "llama", hidden: int = 32, layers: int = 1,
                    heads: int = 2, seed: int = 0, id2label: dict[int, str] | None = None):
    """A randomly initialised ``AutoModelForSequenceClassification`` (a tiny reward model)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    cfg = AutoConfig.for_model(arch, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=heads, vocab_size=len(tokenizer),
                               num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(cfg)


def save_tiny(path, model, tokenizer) -> str:
    """Write a model and tokenizer folder loadable by ``from_pretrained``."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_seq2seq_lm(tokenizer, arch: str = "t5", hidden: int = 32, layers: int = 2, heads: int = 2,
                    max_positions: int = 512, seed: int = 0):
    """A randomly initialised ``t5`` or ``bart`` sized for a CPU test (no dropout, so train and eval agree).
    The BART one forces BOS as the decoder's first token, as facebook/bart-large does."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    pad, bos, eos = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    if arch == "t5":
        cfg = AutoConfig.for_model("t5", d_model=hidden, num_layers=layers, num_decoder_layers=layers,
                                   num_heads=heads, d_kv=hidden // heads, d_ff=hidden * 2, vocab_size=len(tokenizer),
                                   decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos, dropout_rate=0.0)
    elif arch == "bart":
        cfg = AutoConfig.for_model("bart", d_model=hidden, encoder_layers=layers, decoder_layers=layers,
                                   encoder_attention_heads=heads, decoder_attention_heads=heads,
                                   encoder_ffn_dim=hidden * 2, decoder_ffn_dim=hidden * 2,
                                   max_position_embeddings=max_positions, vocab_size=len(tokenizer),
                                   pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=eos,
                                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    else:
        raise ValueError(f"tiny_seq2seq_lm: arch must be t5 or bart, got {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(cfg)
    if arch == "bart":
        model.generation_config.forced_bos_token_id = bos
        model.generation_config.forced_eos_token_id = None  # rlft never forces EOS at the length limit
    return model
